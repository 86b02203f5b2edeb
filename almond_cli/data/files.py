"""``data=file``: the user's own measurements from CSV/TSV, ``.npy`` or ``.npz``, checked cell by cell.

A statistician's table is read as floats, one row per data point (unit), with the observation columns picked
by name or index (``data.columns``) and the per-row columns the likelihood declares (``Likelihood.row_columns``),
each read from ``data.<name>_column`` (``row_column_key``) and carried after the observations in x: for the
heteroscedastic many-normal-means model the noise sd, ``data.sd_column`` (see ``HeteroscedasticGaussian``).
``data.truth_path`` optionally gives the true latent value of every row (a simulation written to disk), which
unlocks the KS/W1 scores and the posterior-mean MSE.

The table itself is read by ``data/tables.py``; every problem is a ``DataFileError`` naming the file, the row
and column and what to fix. ``validate_file_config`` holds the config rules, ``check_data_file`` reads the file
with every check, including the ones that depend on the likelihood and the batch size, before the ``almond``
command hands over to Hydra (the data registry calls both), so bad data never leaves a run folder behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from ..errors import require
from ..model.likelihoods import LIKELIHOODS, Likelihood, likelihood_class, row_column_names
from .dataset import Dataset
from .priors import EmpiricalPrior
from .tables import FORMATS, DataFileError, Table, check_finite, column_index, first_bad, read_table, select_columns


@dataclass
class FileDataConfig:
    """``data=file``: the user's own measurements. A likelihood's per-row column ``name`` is read from the key
    ``<name>_column`` (``row_column_key``): a new one (``trials``) needs only its key here and in file.yaml."""

    name: str = "file"
    path: Optional[str] = None
    format: str = "auto"
    header: Optional[bool] = None
    array: Optional[str] = None
    columns: Optional[List[str]] = None
    sd_column: Optional[str] = None
    id_column: Optional[str] = None
    truth_path: Optional[str] = None
    truth_array: Optional[str] = None
    truth_columns: Optional[List[str]] = None
    n: Optional[int] = None
    holdout_fraction: float = 0.0


PATH_KEYS = ("path", "truth_path")
"""The keys of ``data=file`` that name files, relative to where ``almond train`` ran."""


def row_column_key(name: str) -> str:
    """The ``data`` key naming the file column of the per-row column ``name`` a likelihood declares: ``sd`` is
    read from ``data.sd_column``."""
    return f"{name}_column"


def check_likelihood_domain(
    table: Table, chosen: list[int], likelihood: type[Likelihood] | None, keys: dict[int, str] | None = None
) -> None:
    """Refuses values the likelihood gives zero probability (its ``support_violation``): counts for Poisson,
    [0, 1] for Bernoulli, an sd > 0 in gaussian_hetero's sd column, ..., naming the first such cell (and the
    config key that chose its column, from ``keys``: column index -> key)."""
    if likelihood is None:
        return
    violation = likelihood.support_violation(table.values[:, chosen])
    if violation is None:
        return
    bad, needs = violation
    row, column = first_bad(table, bad, chosen)
    value = table.values[row, column]
    key = f" ({keys[column]})" if keys and column in keys else ""
    raise DataFileError(
        f"{table.path}: {table.row_label(row)}, {table.column_label(column)}{key} is {value:g}, "
        f"{likelihood.describe_violation(value)}; {needs}"
    )


def likelihood_of(likelihood_cfg) -> type[Likelihood] | None:
    """The likelihood class a config's ``_target_`` names (None for one almond does not know)."""
    return likelihood_class(str(likelihood_cfg.get("_target_", "")))


@dataclass
class FileData:
    """What ``data=file`` read: observations, the per-row columns, truth, and the names for the output files.

    Attributes:
        row_columns: the likelihood's per-row column name -> its column index in ``table``, in the order rows
            carry them (``row_column_names``).
    """

    table: Table
    value_columns: list[int]
    row_columns: dict[str, int]
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
        """(n, D + k) observations, then the k per-row columns (the sd of gaussian_hetero)."""
        return self.table.values[:, self.value_columns + list(self.row_columns.values())]


def read_file_data(data_cfg, likelihood: type[Likelihood] | None = None) -> FileData:
    """Reads and checks ``data.path`` (and ``data.truth_path``) as ``data_cfg`` says.

    Args:
        data_cfg: the ``data`` config node of ``data=file``.
        likelihood: the likelihood class (``likelihood_of``) whose support the values must lie in; None skips
            that check.
    """
    if not data_cfg.path:
        raise DataFileError("data.path: data=file needs the file of your measurements: data.path=FILE")
    table = read_table(data_cfg.path, data_cfg.format, data_cfg.header, data_cfg.array)
    limit = data_cfg.get("n")
    if limit is not None and limit < table.values.shape[0]:  # a quick trial on the first rows
        table = table.head(limit)
    row_columns, keys = {}, {}
    for name in row_column_names():  # the likelihood's per-row columns, in the order rows carry them
        selector = data_cfg.get(row_column_key(name))
        if selector is not None:
            key = f"data.{row_column_key(name)}"
            row_columns[name] = column_index(table, selector, key)
            keys[row_columns[name]] = key
    id_column = None
    if data_cfg.get("id_column") is not None:
        id_column = column_index(table, data_cfg.id_column, "data.id_column")
    chosen = select_columns(
        table,
        data_cfg.columns,
        "data.columns",
        exclude=tuple(row_columns.values()) + ((id_column,) if id_column is not None else ()),
    )
    for name, column in row_columns.items():
        if column in chosen:
            raise DataFileError(
                f"{keys[column]}: {table.column_label(column)} is also listed in data.columns; "
                f"the {name} column cannot be an observation too"
            )
    used = chosen + list(row_columns.values())  # laid out as a row of x
    table.check_numeric(used)
    check_finite(table, used)
    check_likelihood_domain(table, used, likelihood, keys)
    truth, truth_path = None, None
    if data_cfg.truth_path:
        truth_table = read_table(
            data_cfg.truth_path, "auto", None, data_cfg.truth_array, key="data.truth_path", array_key="data.truth_array"
        )
        truth_columns = select_columns(truth_table, data_cfg.truth_columns, "data.truth_columns")
        truth_table.check_numeric(truth_columns)
        check_finite(truth_table, truth_columns)
        n, n_truth = table.values.shape[0], truth_table.values.shape[0]
        if limit is not None and limit < n_truth and limit == n:
            truth_table = truth_table.head(limit)
            n_truth = limit
        if n_truth != n:
            raise DataFileError(
                f"data.truth_path: {truth_table.path} has {n_truth} rows of true values but "
                f"{table.path} has {n} data rows; the truth needs exactly one row per data row"
            )
        if len(truth_columns) != len(chosen):
            raise DataFileError(
                f"data.truth_columns: {truth_table.path} gives {len(truth_columns)} true value(s) per row but there "
                f"are {len(chosen)} observation column(s); give one true latent value per observation column "
                "(select them with data.truth_columns)"
            )
        truth, truth_path = truth_table.values[:, truth_columns], truth_table.path
    return FileData(table, chosen, row_columns, truth, truth_path, id_column)


# ----- the data set ---------------------------------------------------------------------------------------------
def build_file_dataset(data_cfg, generator=None) -> Dataset:
    """The ``Dataset`` of ``data=file``: x (n, D) or (n, D + k) with the k per-row columns last, truth (n, D) if
    given. (``generator`` is unused: a file is not a simulation.)"""
    return _dataset_of(read_file_data(data_cfg))


def _dataset_of(data: FileData) -> Dataset:
    truth = None if data.truth is None else torch.as_tensor(data.truth, dtype=torch.float32)
    prior = None
    if data.truth is not None and data.truth.shape[1] == 1:
        prior = EmpiricalPrior(data.truth[:, 0], "empirical (data.truth_path)")
    names = data.table.names
    return Dataset(
        x=torch.as_tensor(data.x, dtype=torch.float32),
        name="file",
        truth=truth,
        prior=prior,
        source=str(data.table.path),
        row_labels=data.table.rows.tolist(),
        column_names=data.column_names,
        ids=data.ids,
        id_name=None if data.id_column is None or names is None else names[data.id_column],
    )


# ----- checks before a run starts ----------------------------------------------------------------------------------
def validate_file_config(cfg) -> None:
    """Config rules of ``data=file`` that need no file access (the data registry runs them in ``config.validate``):
    a path, a known format, and a ``data.<name>_column`` for each per-row column the likelihood declares and for
    no other."""
    data = cfg.data
    if not data.path:
        raise DataFileError(
            "data.path: data=file needs the file of your measurements: data.path=FILE (.csv, .tsv, .npy or .npz)"
        )
    if data.format not in FORMATS:
        raise DataFileError(f"data.format: must be one of {list(FORMATS)}, got {data.format!r}")
    require(data.n is None or data.n >= 2, "data.n", f"must be >= 2 or null (all rows), got {data.n}")
    likelihood = likelihood_of(cfg.likelihood)
    declared = likelihood.row_columns if likelihood is not None else ()
    for name in row_column_names():
        key = row_column_key(name)
        if data.get(key) is not None and name not in declared:
            readers = " or ".join(f"likelihood={cls.name}" for cls in LIKELIHOODS.values() if name in cls.row_columns)
            raise DataFileError(
                f"data.{key}: a per-row {name} column ({data[key]}) needs {readers}; add it to the "
                f"command, or drop data.{key}"
            )
        if name in declared and data.get(key) is None:
            raise DataFileError(
                f"data.{key}: likelihood={likelihood.name} reads each row's {name} from a column; "
                f"name it with data.{key}=NAME_OR_INDEX"
            )


def check_data_file(cfg, generator=None) -> Dataset:
    """Reads the data file of a composed config with every check, before any run folder exists, and returns its
    ``Dataset`` (every row as read; ``generator`` is unused).

    Besides the file checks, the data must fill at least one batch: fewer rows than ``schedule.batch_size``
    is refused rather than silently shrinking the batch.
    """
    data = read_file_data(cfg.data, likelihood_of(cfg.likelihood))
    n = data.table.values.shape[0]
    if n < 2:
        raise DataFileError(f"{data.table.path} has {n} data row; almond needs at least 2 rows (data points)")
    batch_size = cfg.schedule.batch_size
    if batch_size is not None and n < batch_size:
        raise DataFileError(
            f"schedule.batch_size: {data.table.path} has {n} data rows, fewer than one batch of "
            f"{batch_size}; lower schedule.batch_size to at most {n}, or null for the whole data set"
        )
    return _dataset_of(data)
