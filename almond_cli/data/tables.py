"""The one reader of users' tables: CSV/TSV/TXT, ``.npy`` and ``.npz`` files as numeric tables, checked cell by cell.

Used by ``data=file`` (``data/files.py``) and ``data=glmm_file`` (``data/glmm.py``). Every problem is a
``DataFileError`` naming the file, the row and column (CSV rows are counted as a spreadsheet does: line numbers
of the file, header included; array rows are 0-based indices) and what to fix.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError

FORMATS = ("auto", "csv", "tsv", "npy", "npz")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "csv", ".npy": "npy", ".npz": "npz"}


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

    def head(self, limit: int) -> Table:
        """The first ``limit`` rows."""
        cut = lambda array: None if array is None else array[:limit]  # noqa: E731
        return Table(
            self.values[:limit],
            self.names,
            self.rows[:limit],
            self.path,
            self.is_text,
            cut(self.cells),
            cut(self.unparsed),
        )

    def check_numeric(self, chosen: list[int]) -> None:
        """Refuses a cell of the ``chosen`` columns that is not a number, naming the first."""
        if self.unparsed is None or not self.unparsed[:, chosen].any():
            return
        row, column = first_bad(self, self.unparsed[:, chosen], chosen)
        cell = str(self.cells[row, column])
        problem = "is empty" if cell == "" else f"holds '{cell[:40]}', which is not a number"
        raise DataFileError(
            f"{self.path}: {self.row_label(row)}, {self.column_label(column)} {problem}; every "
            "cell of the selected columns must be a number (missing values are not supported: "
            "drop or impute that row; a column of labels or ids can be left out by listing the "
            "observation columns in data.columns)"
        )

    def row_label(self, index: int) -> str:
        return (
            f"row {int(self.rows[index])} (line {int(self.rows[index])} of the file)"
            if self.is_text
            else f"row index {int(self.rows[index])} (0-based)"
        )

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
        raise DataFileError(
            f"{key}: cannot tell the format of {path} from its extension '{path.suffix}'; "
            f"name it .csv, .tsv, .npy or .npz, or set data.format to one of {list(FORMATS[1:])}"
        )
    return found


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_text(path: Path, delimiter: str | None, header: bool | None, key: str = "data.path") -> Table:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataFileError(
            f"{path} is not a UTF-8 text file (byte {error.start} cannot be decoded); "
            "save it as UTF-8 CSV, or set data.format if it is a .npy/.npz file"
        ) from None
    if not text.strip():
        raise DataFileError(f"{path} is empty: it has no rows; point {key} at the file with your measurements")
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
    _refuse_another_delimiter(path, delimiter, rows, lines)
    first = rows[0]
    if header is None:  # a header is a first row with text where the next row has a number (as csv.Sniffer)
        second = rows[1] if len(rows) > 1 else None
        header = any(
            not _is_number(cell) and (second is None or (j < len(second) and _is_number(second[j])))
            for j, cell in enumerate(first)
            if cell
        )
    has_header = header
    names = None
    if has_header:
        names = first
        rows, lines = rows[1:], lines[1:]
        if not rows:
            raise DataFileError(f"{key}: {path} has a header row ({', '.join(names)}) but no data rows below it")
    width = len(names) if names is not None else len(rows[0])
    what = "the header" if names is not None else f"line {lines[0]}"
    for fields, line in zip(rows, lines):
        if len(fields) != width:
            raise DataFileError(
                f"{path}: row {line} (line {line} of the file) has {len(fields)} columns but {what} has {width}; "
                f"every row needs the same number of '{delimiter_name(delimiter)}'-separated cells"
            )
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


def _refuse_another_delimiter(path: Path, delimiter: str, rows: list[list[str]], lines: list[int]) -> None:
    """A file whose lines are one cell each, all split by the same other delimiter (a semicolon CSV, as
    spreadsheets in many locales save it, or tabs in a .csv), is refused naming the delimiter found; reading it
    as one column would report its header row as a cell that is not a number."""
    if delimiter == " " or any(len(fields) != 1 for fields in rows[:2]):
        return
    for other in ("\t", ";", ",", "|"):
        counts = [fields[0].count(other) for fields in rows[:2]]
        if other != delimiter and counts[0] >= 1 and len(set(counts)) == 1:
            advice = (
                "name it .tsv (or set data.format=tsv)"
                if other == "\t"
                else "save it with commas, or name it .txt (almond then takes the delimiter from its first line)"
            )
            raise DataFileError(
                f"{path} is read as {delimiter_name(delimiter)}-separated, but line {lines[0]} is separated by "
                f"{delimiter_name(other)}s ({rows[0][0][:60]!r}); {advice}"
            )


def delimiter_name(delimiter: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", " ": "space", "|": "pipe"}.get(delimiter, delimiter)


def _array_table(array: np.ndarray, path: Path, what: str) -> Table:
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataFileError(
            f"{path}: {what} has dtype {array.dtype}, not numbers; save a numeric array "
            "(for example with np.save(path, x.astype(float)))"
        )
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
        raise DataFileError(
            f"{path} cannot be read as a .npy array ({str(error)[:160]}); save it with "
            "np.save from a numeric array (object arrays need pickling, which almond refuses)"
        ) from None
    except (OSError, EOFError) as error:
        raise DataFileError(
            f"{path} is damaged or not a .npy file ({type(error).__name__}: {str(error)[:120]})"
        ) from None
    if not isinstance(array, np.ndarray):
        raise DataFileError(f"{path} holds several arrays (an .npz archive); set data.format=npz")
    return _array_table(array, path, "the array")


def _read_npz(path: Path, name: str | None, key: str) -> Table:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataFileError(
            f"{path} is damaged or not a .npz archive ({type(error).__name__}: {str(error)[:120]})"
        ) from None
    if isinstance(archive, np.ndarray):
        return _array_table(archive, path, "the array")
    with archive:
        names = list(archive.files)
        if not names:
            raise DataFileError(f"{path} is an empty .npz archive: it holds no arrays")
        if name is None:
            if len(names) > 1:
                raise DataFileError(
                    f"{path} holds {len(names)} arrays ({', '.join(names)}); choose one with {key}=NAME"
                )
            name = names[0]
        if name not in names:
            raise DataFileError(f"{key}: {path} has no array '{name}'; it holds {', '.join(names)}")
        try:
            array = archive[name]
        except ValueError as error:
            raise DataFileError(
                f"{path}: array '{name}' cannot be read without pickling ({str(error)[:120]})"
            ) from None
    return _array_table(array, path, f"array '{name}'")


def read_table(
    path: str | Path,
    fmt: str = "auto",
    header: bool | None = None,
    array: str | None = None,
    key: str = "data.path",
    array_key: str = "data.array",
) -> Table:
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
    return _read_text(
        path, {"csv": ",", "tsv": "\t"}[kind] if path.suffix.lower() != ".txt" or fmt != "auto" else None, header, key
    )


# ----- selecting and checking -------------------------------------------------------------------------------------
def column_index(table: Table, selector, key: str) -> int:
    text = str(selector).strip()
    if table.names is not None and text in table.names:
        if table.names.count(text) > 1:
            raise DataFileError(
                f"{key}: {table.path} has {table.names.count(text)} columns named '{text}'; "
                "rename them or select by 0-based index"
            )
        return table.names.index(text)
    try:
        index = int(text)
    except ValueError:
        known = (
            f"its columns are {', '.join(table.names)}"
            if table.names is not None
            else "it has no header row, so select columns by 0-based index"
        )
        raise DataFileError(f"{key}: {table.path} has no column '{text}'; {known}") from None
    width = table.values.shape[1]
    if not 0 <= index < width:
        raise DataFileError(
            f"{key}: column index {index} is out of range: {table.path} has {width} column(s) "
            f"(indices 0 to {width - 1})"
        )
    return index


def select_columns(table: Table, columns, key: str, exclude: tuple[int, ...] = ()) -> list[int]:
    """0-based column indices of ``columns`` (names or indices); None means all columns but ``exclude``."""
    if columns is None:
        chosen = [j for j in range(table.values.shape[1]) if j not in exclude]
    else:
        chosen = [column_index(table, selector, key) for selector in columns]
    if not chosen:
        raise DataFileError(f"{key}: no observation columns are left in {table.path}; list them in data.columns")
    return chosen


def first_bad(table: Table, mask: np.ndarray, chosen: list[int]) -> tuple[int, int]:
    row, position = np.argwhere(mask)[0]
    return int(row), chosen[int(position)]


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_finite(table: Table, chosen: list[int]) -> None:
    """Refuses NaN and ±inf cells in the chosen columns, and values that are finite as read (float64) but not in
    the float32 that training computes in (|value| > 3.4e38), naming the first."""
    values = table.values[:, chosen]
    bad = ~np.isfinite(values)
    if bad.any():
        row, column = first_bad(table, bad, chosen)
        raise DataFileError(
            f"{table.path}: {table.row_label(row)}, {table.column_label(column)} is {table.values[row, column]}; "
            "every value must be a finite number (drop or impute that row)"
        )
    too_large = np.abs(values) > FLOAT32_MAX
    if too_large.any():
        row, column = first_bad(table, too_large, chosen)
        raise DataFileError(
            f"{table.path}: {table.row_label(row)}, {table.column_label(column)} is {table.values[row, column]:g}, "
            f"beyond the float32 range (±{FLOAT32_MAX:.3g}) that training computes in; rescale that column "
            "(other units) or drop the row"
        )
