"""``data=file``: the user's own measurements from CSV/TSV, ``.npy`` or ``.npz``, checked cell by cell.

A statistician's table is read as floats, one row per data point (unit), with the observation columns picked
by name or index (``data.columns``) and, for the heteroscedastic many-normal-means model, a per-row noise sd
column (``data.sd_column``) that travels as the last column of x (see ``HeteroscedasticGaussian``).
``data.truth_path`` optionally gives the true latent value of every row (a simulation written to disk), which
unlocks the KS/W1 scores and the posterior-mean MSE.

The table itself is read by ``data/tables.py``; every problem is a ``DataFileError`` naming the file, the row
and column and what to fix. ``check_data_file(cfg)`` runs all checks, including the ones that depend on the
likelihood and the batch size, before the ``almond`` command hands over to Hydra, so bad data never leaves a run
folder behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..model.likelihoods import Likelihood, likelihood_class
from .dataset import Dataset
from .priors import EmpiricalPrior
from .tables import FORMATS, DataFileError, Table, check_finite, column_index, first_bad, read_table, select_columns


def check_likelihood_domain(table: Table, chosen: list[int], likelihood: type[Likelihood] | None) -> None:
    """Refuses values the likelihood gives zero probability (its ``support_violation``): counts for Poisson,
    [0, 1] for Bernoulli, ..., naming the first such cell."""
    if likelihood is None:
        return
    violation = likelihood.support_violation(table.values[:, chosen])
    if violation is None:
        return
    bad, needs = violation
    row, column = first_bad(table, bad, chosen)
    value = table.values[row, column]
    raise DataFileError(f"{table.path}: {table.row_label(row)}, {table.column_label(column)} is {value:g}, "
                        f"{likelihood.describe_violation(value)}; {needs}")


def likelihood_of(likelihood_cfg) -> type[Likelihood] | None:
    """The likelihood class a config's ``_target_`` names (None for one almond does not know)."""
    return likelihood_class(str(likelihood_cfg.get("_target_", "")))


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
    sd_column = None
    if data_cfg.sd_column is not None:
        sd_column = column_index(table, data_cfg.sd_column, "data.sd_column")
    id_column = None
    if data_cfg.get("id_column") is not None:
        id_column = column_index(table, data_cfg.id_column, "data.id_column")
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
            row, column = first_bad(table, bad, [sd_column])
            raise DataFileError(f"{table.path}: {table.row_label(row)}, {table.column_label(column)} (data.sd_column) "
                                f"is {table.values[row, column]:g}; a noise standard deviation must be > 0")
    check_likelihood_domain(table, chosen + ([sd_column] if sd_column is not None else []), likelihood)  # as x
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
def build_file_dataset(data_cfg, generator=None) -> Dataset:
    """The ``Dataset`` of ``data=file``: x (n, D) or (n, D + 1) with the sd last, truth (n, D) if given.
    (``generator`` is unused: a file is not a simulation.)"""
    data = read_file_data(data_cfg)
    truth = None if data.truth is None else torch.as_tensor(data.truth, dtype=torch.float32)
    prior = None
    if data.truth is not None and data.truth.shape[1] == 1:
        prior = EmpiricalPrior(data.truth[:, 0], "empirical (data.truth_path)")
    names = data.table.names
    return Dataset(x=torch.as_tensor(data.x, dtype=torch.float32), name="file", truth=truth, prior=prior,
                   source=str(data.table.path), row_labels=data.table.rows.tolist(), column_names=data.column_names,
                   ids=data.ids, id_name=None if data.id_column is None or names is None else names[data.id_column])


# ----- checks before a run starts ----------------------------------------------------------------------------------
def validate_file_config(cfg) -> None:
    """Config rules of ``data=file`` that need no file access (called from ``config.validate``)."""
    data = cfg.data
    if not data.path:
        raise DataFileError("data.path: data=file needs the file of your measurements: data.path=FILE "
                            "(.csv, .tsv, .npy or .npz)")
    if data.format not in FORMATS:
        raise DataFileError(f"data.format: must be one of {list(FORMATS)}, got {data.format!r}")
    likelihood = likelihood_of(cfg.likelihood)
    reads_sd_column = likelihood is not None and likelihood.reads_sd_column
    if data.sd_column is not None and not reads_sd_column:
        raise DataFileError(f"data.sd_column: a per-row noise sd column ({data.sd_column}) needs "
                            "likelihood=gaussian_hetero; add it to the command, or drop data.sd_column to use one "
                            "known sd (likelihood.sigma)")
    if reads_sd_column and data.sd_column is None:
        raise DataFileError("data.sd_column: likelihood=gaussian_hetero reads each row's noise sd from a column; "
                            "name it with data.sd_column=NAME_OR_INDEX")


def check_data_file(cfg) -> None:
    """Reads the data file of a composed config and runs every check, before any run folder exists.

    Besides the file checks, the data must fill at least one batch: fewer rows than ``schedule.batch_size``
    is refused rather than silently shrinking the batch.
    """
    if cfg.data.name != "file":
        return
    data = read_file_data(cfg.data, likelihood_of(cfg.likelihood))
    n = data.table.values.shape[0]
    if n < 2:
        raise DataFileError(f"{data.table.path} has {n} data row; almond needs at least 2 rows (data points)")
    batch_size = cfg.schedule.batch_size
    if batch_size is not None and n < batch_size:
        raise DataFileError(f"schedule.batch_size: {data.table.path} has {n} data rows, fewer than one batch of "
                            f"{batch_size}; lower schedule.batch_size to at most {n}, or null for the whole data set")
