"""``data=file``: the user's own measurements from CSV/TSV, ``.npy`` or ``.npz``, checked cell by cell.

A statistician's table is read as floats, one row per data point (unit), with the observation columns picked
by name or index (``data.columns``) and, for the heteroscedastic many-normal-means model, a per-row noise sd
column (``data.sd_column``) that travels as the last column of x (see ``HeteroscedasticGaussian``).
``data.truth_path`` optionally gives the true latent value of every row (a simulation written to disk), which
unlocks the KS/W1 scores and the posterior-mean MSE.

Every problem is a ``DataFileError`` naming the file, the row and column (CSV rows are counted as a
spreadsheet does: line numbers of the file, header included; array rows are 0-based indices) and what to fix.
``check_data_file(cfg)`` runs all checks, including the ones that depend on the likelihood and the batch size,
before the ``almond`` command hands over to Hydra, so bad data never leaves a run folder behind.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dataset import Dataset
from ..errors import UsageError
from .priors import EmpiricalPrior

FORMATS = ("auto", "csv", "tsv", "npy", "npz")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "csv", ".npy": "npy", ".npz": "npz"}
LIKELIHOOD_KINDS = {
    "almond_cli.model.likelihoods.Gaussian": "gaussian",
    "almond_cli.model.likelihoods.HeteroscedasticGaussian": "gaussian_hetero",
    "almond_cli.model.likelihoods.Bernoulli": "bernoulli",
    "almond_cli.model.likelihoods.Poisson": "poisson",
}


class DataFileError(UsageError):
    """A data file cannot be used as it is; the message names the file, the place and the fix."""


@dataclass
class Table:
    """A numeric table read from a file.

    Attributes:
        values: (n, k) float64 cells (NaN where a text cell is not a number; see ``unparsed``).
        names: the k column names from a header row, or None.
        rows: (n,) how each row is named in messages: file line numbers (CSV) or 0-based indices (arrays).
        path: the file.
        is_text: CSV/TSV (rows are line numbers) rather than an array file.
        cells: (n, k) the text cells of a CSV/TSV table.
        unparsed: (n, k) True where a text cell is not a number (allowed in columns that are not used).
    """

    values: np.ndarray
    names: list[str] | None
    rows: np.ndarray
    path: Path
    is_text: bool
    cells: np.ndarray | None = None
    unparsed: np.ndarray | None = None

    def head(self, limit: int) -> "Table":
        """The first ``limit`` rows."""
        cut = lambda array: None if array is None else array[:limit]  # noqa: E731
        return Table(self.values[:limit], self.names, self.rows[:limit], self.path, self.is_text,
                     cut(self.cells), cut(self.unparsed))

    def check_numeric(self, chosen: list[int]) -> None:
        """Refuses a cell of the ``chosen`` columns that is not a number, naming the first."""
        if self.unparsed is None or not self.unparsed[:, chosen].any():
            return
        row, column = _first_bad(self, self.unparsed[:, chosen], chosen)
        cell = str(self.cells[row, column])
        problem = "is empty" if cell == "" else f"holds '{cell[:40]}', which is not a number"
        raise DataFileError(f"{self.path}: {self.row_label(row)}, {self.column_label(column)} {problem}; every "
                            "cell of the selected columns must be a number (missing values are not supported: "
                            "drop or impute that row; a column of labels or ids can be left out by listing the "
                            "observation columns in data.columns)")

    def row_label(self, index: int) -> str:
        return f"row {int(self.rows[index])} (line {int(self.rows[index])} of the file)" if self.is_text \
            else f"row index {int(self.rows[index])} (0-based)"

    def column_label(self, column: int) -> str:
        if self.names is not None:
            return f"column '{self.names[column]}' (index {column})"
        return f"column index {column} (0-based)"


# ----- reading ---------------------------------------------------------------------------------------------------
def _format_of(path: Path, fmt: str, key: str) -> str:
    if fmt != "auto":
        return fmt
    found = EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise DataFileError(f"{key}: cannot tell the format of {path} from its extension '{path.suffix}'; "
                            f"name it .csv, .tsv, .npy or .npz, or set data.format to one of {list(FORMATS[1:])}")
    return found


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_text(path: Path, delimiter: str | None, header: bool | None) -> Table:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataFileError(f"{path} is not a UTF-8 text file (byte {error.start} cannot be decoded); "
                            "save it as UTF-8 CSV, or set data.format if it is a .npy/.npz file") from None
    if not text.strip():
        raise DataFileError(f"{path} is empty: it has no rows; point data.path at the file with your measurements")
    if delimiter is None:  # .txt: the first line decides between comma, tab, semicolon and spaces (np.savetxt)
        first = text.lstrip().splitlines()[0]
        delimiter = max([",", "\t", ";"], key=first.count) if any(c in first for c in ",\t;") else " "
    rows, lines = [], []
    if delimiter == " ":
        numbered = [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1)]
        source = ((fields, number) for number, fields in numbered)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        source = ((fields, reader.line_num) for fields in reader)
    for fields, line_number in source:
        if not fields or all(not cell.strip() for cell in fields):
            continue  # blank lines, including the usual trailing one
        rows.append([cell.strip() for cell in fields])
        lines.append(line_number)
    first = rows[0]
    if header is None:  # a header is a first row with text where the next row has a number (as csv.Sniffer)
        second = rows[1] if len(rows) > 1 else None
        header = any(not _is_number(cell) and (second is None or (j < len(second) and _is_number(second[j])))
                     for j, cell in enumerate(first) if cell)
    has_header = header
    names = None
    if has_header:
        names = first
        rows, lines = rows[1:], lines[1:]
        if not rows:
            raise DataFileError(f"{path} has a header row ({', '.join(names)}) but no data rows below it")
    width = len(names) if names is not None else len(rows[0])
    what = "the header" if names is not None else f"line {lines[0]}"
    for fields, line in zip(rows, lines):
        if len(fields) != width:
            raise DataFileError(
                f"{path}: row {line} (line {line} of the file) has {len(fields)} columns but {what} has {width}; "
                f"every row needs the same number of '{delimiter_name(delimiter)}'-separated cells")
    cells = np.asarray(rows, dtype=str).reshape(len(rows), width)
    values = np.empty(cells.shape, dtype=np.float64)
    unparsed = np.zeros(cells.shape, dtype=bool)
    for column in range(width):  # columns that are not observations (ids, labels) may hold text
        try:
            values[:, column] = cells[:, column].astype(np.float64)
        except ValueError:
            for row, cell in enumerate(cells[:, column]):
                try:
                    values[row, column] = float(cell)
                except ValueError:
                    values[row, column], unparsed[row, column] = np.nan, True
    return Table(values, names, np.asarray(lines), path, True, cells, unparsed)


def delimiter_name(delimiter: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", " ": "space"}.get(delimiter, delimiter)


def _array_table(array: np.ndarray, path: Path, what: str) -> Table:
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataFileError(f"{path}: {what} has dtype {array.dtype}, not numbers; save a numeric array "
                            "(for example with np.save(path, x.astype(float)))")
    if array.ndim == 0 or array.size == 0 or array.shape[0] == 0:
        raise DataFileError(f"{path}: {what} is empty (shape {array.shape}); it needs one row per data point")
    if array.ndim == 1:
        array = array[:, None]  # a vector is one measurement per row
    elif array.ndim > 2:
        array = array.reshape(array.shape[0], -1)  # images and the like: one flattened row per data point
    values = array.astype(np.float64)
    return Table(values, None, np.arange(values.shape[0]), path, False)


def _read_npy(path: Path) -> Table:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise DataFileError(f"{path} cannot be read as a .npy array ({str(error)[:160]}); save it with "
                            "np.save from a numeric array (object arrays need pickling, which almond refuses)") from None
    except (OSError, EOFError) as error:
        raise DataFileError(f"{path} is damaged or not a .npy file ({type(error).__name__}: {str(error)[:120]})") from None
    if not isinstance(array, np.ndarray):
        raise DataFileError(f"{path} holds several arrays (an .npz archive); set data.format=npz")
    return _array_table(array, path, "the array")


def _read_npz(path: Path, name: str | None, key: str) -> Table:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataFileError(f"{path} is damaged or not a .npz archive ({type(error).__name__}: {str(error)[:120]})") from None
    if isinstance(archive, np.ndarray):
        return _array_table(archive, path, "the array")
    with archive:
        names = list(archive.files)
        if not names:
            raise DataFileError(f"{path} is an empty .npz archive: it holds no arrays")
        if name is None:
            if len(names) > 1:
                raise DataFileError(f"{path} holds {len(names)} arrays ({', '.join(names)}); choose one with "
                                    f"{key}=NAME")
            name = names[0]
        if name not in names:
            raise DataFileError(f"{key}: {path} has no array '{name}'; it holds {', '.join(names)}")
        try:
            array = archive[name]
        except ValueError as error:
            raise DataFileError(f"{path}: array '{name}' cannot be read without pickling ({str(error)[:120]})") from None
    return _array_table(array, path, f"array '{name}'")


def read_table(path: str | Path, fmt: str = "auto", header: bool | None = None, array: str | None = None,
               key: str = "data.path", array_key: str = "data.array") -> Table:
    """Reads a numeric table from ``path``.

    Args:
        path: a .csv/.tsv/.txt table or a .npy/.npz array file.
        fmt: one of ``FORMATS``; ``auto`` goes by the extension.
        header: CSV/TSV header row: None detects it (a first row with a non-numeric cell), True/False forces.
        array: the array of an .npz archive; None takes the only one.
        key: the config key that named the file, for messages.
        array_key: the config key that names the .npz array, for messages.

    Returns:
        The table; rows with non-finite cells are not yet refused (see ``check_finite``).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataFileError(f"{key}: {path} does not exist (looked from {Path.cwd()}); give the path of your data file")
    if path.is_dir():
        raise DataFileError(f"{key}: {path} is a folder; give the path of a .csv, .tsv, .npy or .npz file")
    if path.stat().st_size == 0:
        raise DataFileError(f"{path} is empty (0 bytes); point {key} at the file with your measurements")
    kind = _format_of(path, fmt, key)
    if kind == "npy":
        return _read_npy(path)
    if kind == "npz":
        return _read_npz(path, array, array_key)
    return _read_text(path, {"csv": ",", "tsv": "\t"}[kind] if path.suffix.lower() != ".txt" or fmt != "auto" else None,
                      header)


# ----- selecting and checking -------------------------------------------------------------------------------------
def _column_index(table: Table, selector, key: str) -> int:
    text = str(selector).strip()
    if table.names is not None and text in table.names:
        if table.names.count(text) > 1:
            raise DataFileError(f"{key}: {table.path} has {table.names.count(text)} columns named '{text}'; "
                                "rename them or select by 0-based index")
        return table.names.index(text)
    try:
        index = int(text)
    except ValueError:
        known = f"its columns are {', '.join(table.names)}" if table.names is not None else \
            "it has no header row, so select columns by 0-based index"
        raise DataFileError(f"{key}: {table.path} has no column '{text}'; {known}") from None
    width = table.values.shape[1]
    if not 0 <= index < width:
        raise DataFileError(f"{key}: column index {index} is out of range: {table.path} has {width} column(s) "
                            f"(indices 0 to {width - 1})")
    return index


def select_columns(table: Table, columns, key: str, exclude: tuple[int, ...] = ()) -> list[int]:
    """0-based column indices of ``columns`` (names or indices); None means all columns but ``exclude``."""
    if columns is None:
        chosen = [j for j in range(table.values.shape[1]) if j not in exclude]
    else:
        chosen = [_column_index(table, selector, key) for selector in columns]
    if not chosen:
        raise DataFileError(f"{key}: no observation columns are left in {table.path}; list them in data.columns")
    return chosen


def _first_bad(table: Table, mask: np.ndarray, chosen: list[int]) -> tuple[int, int]:
    row, position = np.argwhere(mask)[0]
    return int(row), chosen[int(position)]


def check_finite(table: Table, chosen: list[int]) -> None:
    """Refuses NaN and ±inf cells in the chosen columns, naming the first."""
    values = table.values[:, chosen]
    bad = ~np.isfinite(values)
    if bad.any():
        row, column = _first_bad(table, bad, chosen)
        raise DataFileError(
            f"{table.path}: {table.row_label(row)}, {table.column_label(column)} is {table.values[row, column]}; "
            "every value must be a finite number (drop or impute that row)")


def check_likelihood_domain(table: Table, chosen: list[int], kind: str | None) -> None:
    """Refuses values the likelihood gives zero probability: counts for Poisson, [0, 1] for Bernoulli."""
    values = table.values[:, chosen]
    if kind == "poisson":
        bad = (values < 0) | (values != np.round(values))
        if bad.any():
            row, column = _first_bad(table, bad, chosen)
            value = table.values[row, column]
            problem = "negative" if value < 0 else "not an integer"
            raise DataFileError(
                f"{table.path}: {table.row_label(row)}, {table.column_label(column)} is {value:g}, which is "
                f"{problem}; likelihood=poisson needs counts 0, 1, 2, ... in every observation column")
    elif kind == "bernoulli":
        bad = (values < 0) | (values > 1)
        if bad.any():
            row, column = _first_bad(table, bad, chosen)
            raise DataFileError(
                f"{table.path}: {table.row_label(row)}, {table.column_label(column)} is "
                f"{table.values[row, column]:g}, outside [0, 1]; likelihood=bernoulli needs 0/1 values "
                "(or grey levels in [0, 1])")


def likelihood_kind(likelihood_cfg) -> str | None:
    """The likelihood's short name from its ``_target_`` (None for one this module does not know)."""
    return LIKELIHOOD_KINDS.get(str(likelihood_cfg.get("_target_", "")))


@dataclass
class FileData:
    """What ``data=file`` read: observations, per-row sd, truth, and the names for the output files."""

    table: Table
    value_columns: list[int]
    sd_column: int | None
    truth: np.ndarray | None
    truth_path: Path | None
    id_column: int | None = None

    @property
    def ids(self) -> list[str] | None:
        """The row labels of ``data.id_column`` as text, or None."""
        if self.id_column is None:
            return None
        if self.table.cells is not None:
            return [str(cell) for cell in self.table.cells[:, self.id_column]]
        return [f"{value:g}" for value in self.table.values[:, self.id_column]]

    @property
    def column_names(self) -> list[str]:
        names = self.table.names
        return [names[j] if names is not None else f"x{j}" for j in self.value_columns]

    @property
    def x(self) -> np.ndarray:
        """(n, D) observations, or (n, D + 1) with the per-row sd last."""
        columns = self.value_columns + ([self.sd_column] if self.sd_column is not None else [])
        return self.table.values[:, columns]


def read_file_data(data_cfg, kind: str | None = None) -> FileData:
    """Reads and checks ``data.path`` (and ``data.truth_path``) as ``data_cfg`` says.

    Args:
        data_cfg: the ``data`` config node of ``data=file``.
        kind: the likelihood's short name (``likelihood_kind``) for the domain checks; None skips them.
    """
    if not data_cfg.path:
        raise DataFileError("data.path: data=file needs the file of your measurements: data.path=FILE")
    table = read_table(data_cfg.path, data_cfg.format, data_cfg.header, data_cfg.array)
    limit = data_cfg.get("n")
    if limit is not None and limit < table.values.shape[0]:  # a quick trial on the first rows
        table = table.head(limit)
    sd_column = None
    if data_cfg.sd_column is not None:
        sd_column = _column_index(table, data_cfg.sd_column, "data.sd_column")
    id_column = None
    if data_cfg.get("id_column") is not None:
        id_column = _column_index(table, data_cfg.id_column, "data.id_column")
    chosen = select_columns(table, data_cfg.columns, "data.columns",
                            exclude=tuple(j for j in (sd_column, id_column) if j is not None))
    if sd_column is not None and sd_column in chosen:
        raise DataFileError(f"data.sd_column: {table.column_label(sd_column)} is also listed in data.columns; "
                            "the sd column cannot be an observation too")
    table.check_numeric(chosen + ([sd_column] if sd_column is not None else []))
    check_finite(table, chosen + ([sd_column] if sd_column is not None else []))
    if sd_column is not None:
        bad = table.values[:, [sd_column]] <= 0
        if bad.any():
            row, column = _first_bad(table, bad, [sd_column])
            raise DataFileError(f"{table.path}: {table.row_label(row)}, {table.column_label(column)} (data.sd_column) "
                                f"is {table.values[row, column]:g}; a noise standard deviation must be > 0")
    check_likelihood_domain(table, chosen, kind)
    truth, truth_path = None, None
    if data_cfg.truth_path:
        truth_table = read_table(data_cfg.truth_path, "auto", None, data_cfg.truth_array, key="data.truth_path",
                                 array_key="data.truth_array")
        truth_columns = select_columns(truth_table, data_cfg.truth_columns, "data.truth_columns")
        truth_table.check_numeric(truth_columns)
        check_finite(truth_table, truth_columns)
        n, n_truth = table.values.shape[0], truth_table.values.shape[0]
        if limit is not None and limit < n_truth and limit == n:
            truth_table = truth_table.head(limit)
            n_truth = limit
        if n_truth != n:
            raise DataFileError(f"data.truth_path: {truth_table.path} has {n_truth} rows of true values but "
                                f"{table.path} has {n} data rows; the truth needs exactly one row per data row")
        if len(truth_columns) != len(chosen):
            raise DataFileError(
                f"data.truth_columns: {truth_table.path} gives {len(truth_columns)} true value(s) per row but there "
                f"are {len(chosen)} observation column(s); give one true latent value per observation column "
                "(select them with data.truth_columns)")
        truth, truth_path = truth_table.values[:, truth_columns], truth_table.path
    return FileData(table, chosen, sd_column, truth, truth_path, id_column)


# ----- the data set ---------------------------------------------------------------------------------------------
def load_file_dataset(data_cfg, kind: str | None = None) -> Dataset:
    """The ``Dataset`` of ``data=file``: x (n, D) or (n, D + 1) with the sd last, truth (n, D) if given."""
    data = read_file_data(data_cfg, kind)
    truth = None if data.truth is None else torch.as_tensor(data.truth, dtype=torch.float32)
    prior = None
    if data.truth is not None and data.truth.shape[1] == 1:
        prior = EmpiricalPrior(data.truth[:, 0], "empirical (data.truth_path)")
    extras = {"path": str(data.table.path), "column_names": data.column_names,
              "has_sd_column": data.sd_column is not None, "rows": data.table.rows.tolist(),
              "row_is_line": data.table.is_text, "ids": data.ids,
              "id_name": None if data.id_column is None or data.table.names is None else data.table.names[data.id_column]}
    return Dataset(x=torch.as_tensor(data.x, dtype=torch.float32), name="file", truth=truth, prior=prior,
                   extras=extras)


# ----- checks before a run starts ----------------------------------------------------------------------------------
def validate_file_config(cfg) -> None:
    """Config rules of ``data=file`` that need no file access (called from ``config.validate``)."""
    data = cfg.data
    if not data.path:
        raise DataFileError("data.path: data=file needs the file of your measurements: data.path=FILE "
                            "(.csv, .tsv, .npy or .npz)")
    if data.format not in FORMATS:
        raise DataFileError(f"data.format: must be one of {list(FORMATS)}, got {data.format!r}")
    kind = likelihood_kind(cfg.likelihood)
    if data.sd_column is not None and kind != "gaussian_hetero":
        raise DataFileError(f"data.sd_column: a per-row noise sd column ({data.sd_column}) needs "
                            "likelihood=gaussian_hetero; add it to the command, or drop data.sd_column to use one "
                            "known sd (likelihood.sigma)")
    if kind == "gaussian_hetero" and data.sd_column is None:
        raise DataFileError("data.sd_column: likelihood=gaussian_hetero reads each row's noise sd from a column; "
                            "name it with data.sd_column=NAME_OR_INDEX")


def check_data_file(cfg) -> None:
    """Reads the data file of a composed config and runs every check, before any run folder exists.

    Besides the file checks, the data must fill at least one batch: fewer rows than ``schedule.batch_size``
    is refused rather than silently shrinking the batch.
    """
    if cfg.data.name != "file":
        return
    data = read_file_data(cfg.data, likelihood_kind(cfg.likelihood))
    n = data.table.values.shape[0]
    if n < 2:
        raise DataFileError(f"{data.table.path} has {n} data row; almond needs at least 2 rows (data points)")
    batch_size = cfg.schedule.batch_size
    if batch_size is not None and n < batch_size:
        raise DataFileError(f"schedule.batch_size: {data.table.path} has {n} data rows, fewer than one batch of "
                            f"{batch_size}; lower schedule.batch_size to at most {n}, or null for the whole data set")
