"""GLMM data: the paper's Poisson GLMM simulation (``data=glmm``) and a user's table (``data=glmm_file``).

Both give a ``GLMMDataset`` of rows [y, x_1..x_p, zeta_1..zeta_q] (the layout ``model.likelihoods.PoissonGLMM``
reads) that tells the likelihood p (``likelihood_args``).

Simulation (Qiu & Wang 2019, Section 5.2): x_i, zeta_i ~ covariate_sd · N(0, I_p), beta ~ Uniform(−b, b)^p,
u_i from a Clayton copula (theta) with Gamma(shape, scale) − shape·scale marginals,
y_i ~ Poisson(exp(x_i·beta + zeta_i·u_i)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from omegaconf import MISSING

from ..errors import require
from .clayton import ShiftedGamma, clayton_random_effects
from .dataset import GLMMDataset
from .tables import EXTENSIONS, FLOAT32_MAX, DataFileError, check_finite, column_index, first_bad, read_table


@dataclass
class GLMMDataConfig:
    """``data=glmm``: the paper's simulation (see ``make_glmm``)."""

    name: str = "glmm"
    n: int = 10_000
    p: int = 5
    covariate_sd: float = 0.2
    beta_bound: float = 2.0
    copula_theta: float = 2.0
    gamma_shape: float = 2.0
    gamma_scale: float = 1.0
    gaussian_baseline: bool = True
    holdout_fraction: float = 0.0


@dataclass
class GLMMFileDataConfig:
    """``data=glmm_file``: a user's count table (see ``load_glmm_file``)."""

    name: str = "glmm_file"
    path: str = MISSING
    n: Optional[int] = None
    header: bool = True
    response: str = MISSING
    fixed_effects: List[str] = field(default_factory=list)
    random_effects: List[str] = field(default_factory=list)
    gaussian_baseline: bool = True
    holdout_fraction: float = 0.0


def validate_glmm_config(cfg) -> None:
    """The ranges of ``data=glmm``'s simulation."""
    data = cfg.data
    require(data.n >= 2, "data.n", f"must be >= 2, got {data.n}")
    require(data.p >= 1, "data.p", f"must be >= 1, got {data.p}")
    for key in ("covariate_sd", "beta_bound", "copula_theta", "gamma_shape", "gamma_scale"):
        require(data[key] > 0, f"data.{key}", f"must be > 0, got {data[key]}")


def validate_glmm_file_config(cfg) -> None:
    """Config rules of ``data=glmm_file`` that need no file access."""
    data = cfg.data
    require(data.n is None or data.n >= 2, "data.n", f"must be >= 2 or null (all rows), got {data.n}")
    require(
        len(data.random_effects) >= 1,
        "data.random_effects",
        "give at least one random-effect covariate column, for example data.random_effects=[z1,z2]",
    )


def make_glmm(
    n: int,
    p: int,
    covariate_sd: float,
    beta_bound: float,
    theta: float,
    gamma_shape: float,
    gamma_scale: float,
    generator: torch.Generator,
) -> GLMMDataset:
    """Simulates the paper's Poisson GLMM with Clayton/shifted-gamma random effects.

    The marginal is shifted by −shape·scale so the random effects have mean 0 (paper: Gamma(2, 1) − 2).
    Returns a GLMMDataset with x (n, 1 + 2p), truth u (n, p), prior = the marginal, the true beta (p,) and theta.
    """
    marginal = ShiftedGamma(gamma_shape, gamma_scale, -gamma_shape * gamma_scale)
    beta = (2.0 * torch.rand(p, generator=generator, dtype=torch.float64) - 1.0) * beta_bound
    fixed = covariate_sd * torch.randn(n, p, generator=generator, dtype=torch.float64)
    random = covariate_sd * torch.randn(n, p, generator=generator, dtype=torch.float64)
    effects = clayton_random_effects(n, p, theta, marginal, generator)
    rate = torch.exp(fixed @ beta + (random * effects).sum(1))
    counts = torch.poisson(rate, generator=generator)
    x = torch.cat([counts.unsqueeze(1), fixed, random], dim=1).float()
    return GLMMDataset(
        x=x,
        name="glmm",
        truth=effects.float(),
        prior=marginal,
        num_fixed=p,
        fixed_names=[f"x{j + 1}" for j in range(p)],
        true_beta=beta,
        copula_theta=float(theta),
    )


def covariate_bound(max_linear_predictor: float) -> float:
    """The largest covariate magnitude the Poisson GLMM can compute with in float32.

    A covariate x enters the linear predictor eta = x·beta + zeta·u, and above ``max_linear_predictor`` (the cap)
    the rate's continuation exp(cap)(1 + d + d²/2), d = eta − cap, has the slope exp(cap)(1 + d); the gradient
    of log f in u multiplies it by zeta again (``PoissonGLMM.value_and_grad_u``). At a coefficient of order one
    (beta and u start at the scale of N(0, 1)) d ≈ |x|, so exp(cap)·x² must stay below float32's largest value:
    |x| <= sqrt(FLOAT32_MAX / exp(cap)), about 5.6e12 at the default cap of 30. Beyond it the first update
    overflows whatever the settings."""
    return math.sqrt(FLOAT32_MAX / math.exp(max_linear_predictor))


def load_glmm_file(
    path: str,
    response,
    fixed_effects,
    random_effects,
    header: bool = True,
    n: int | None = None,
    max_linear_predictor: float | None = None,
) -> GLMMDataset:
    """Reads a Poisson GLMM data set from a table (CSV, or any format of ``data/tables.py``).

    Args:
        path: the file, one data point per row (a file without a known extension is read as CSV).
        response: the count column (header name or 0-based index).
        fixed_effects: the fixed-effect covariate columns (names or indices; may be empty).
        random_effects: the random-effect covariate columns (names or indices; at least one).
        header: whether the first row holds column names.
        n: read only the first n data rows (None: all).
        max_linear_predictor: the likelihood's cap; given, covariates beyond ``covariate_bound`` of it are refused.

    Returns:
        A GLMMDataset with x (n, 1 + p + q) in the order [response, fixed..., random...].

    Raises:
        DataFileError: a missing or empty file, an unknown column, a column used twice, a ragged row, a value
            that is not a finite number, or a count that is negative or not an integer.
    """
    if not random_effects:
        raise DataFileError(
            "data.random_effects: give at least one random-effect covariate column, for example "
            "data.random_effects=[z1,z2]"
        )
    fmt = "auto" if str(path).lower().endswith(tuple(EXTENSIONS)) else "csv"
    table = read_table(path, fmt, header)
    if table.values.shape[0] == 0:
        raise DataFileError(
            f"data.path: {table.path} holds no data rows; it needs a header row (data.header=true) "
            "and at least one row of numbers"
        )
    if n is not None:
        table = table.head(n)
    roles = {
        "data.response": [response],
        "data.fixed_effects": list(fixed_effects),
        "data.random_effects": list(random_effects),
    }
    indices = {key: [column_index(table, token, key) for token in tokens] for key, tokens in roles.items()}
    order = indices["data.response"] + indices["data.fixed_effects"] + indices["data.random_effects"]
    if len(set(order)) != len(order):
        repeated = sorted({index for index in order if order.count(index) > 1})
        label = [table.names[index] if table.names else index for index in repeated]
        raise DataFileError(
            f"data: column(s) {label} of {table.path} are used more than once among data.response, "
            "data.fixed_effects and data.random_effects; each column may play one role"
        )
    for key, columns in indices.items():  # the message names the key that chose the column
        try:
            table.check_numeric(columns)
            check_finite(table, columns)
        except DataFileError as error:
            raise DataFileError(f"{key}: {error}") from None
    if max_linear_predictor is not None:
        bound = covariate_bound(max_linear_predictor)
        for key in ("data.fixed_effects", "data.random_effects"):
            too_large = np.abs(table.values[:, indices[key]]) > bound
            if too_large.any():
                row, column = first_bad(table, too_large, indices[key])
                raise DataFileError(
                    f"{key}: {table.path}: {table.row_label(row)}, {table.column_label(column)} is "
                    f"{table.values[row, column]:g}; the GLMM's linear predictor x·beta + zeta·u overflows float32 "
                    f"for covariates beyond ±{bound:.2g} (at likelihood.max_linear_predictor={max_linear_predictor:g})"
                    f"; rescale that column (standardise it, or other units) or drop the row"
                )
    counts = table.values[:, order[:1]]
    bad = (counts < 0) | (counts != np.round(counts))
    if bad.any():
        row, column = first_bad(table, bad, order[:1])
        raise DataFileError(
            f"data.response: {table.path}: {table.row_label(row)}, {table.column_label(column)} is "
            f"{table.values[row, column]:g}, which is not a count (a non-negative integer); the "
            "Poisson GLMM needs counts"
        )
    fixed_names = [table.names[index] if table.names else f"col{index}" for index in indices["data.fixed_effects"]]
    return GLMMDataset(
        x=torch.as_tensor(table.values[:, order]).float(),
        name="glmm_file",
        source=str(table.path),
        row_labels=table.rows.tolist(),
        num_fixed=len(fixed_names),
        fixed_names=fixed_names,
    )


def build_glmm_simulation(data_cfg, generator: torch.Generator) -> GLMMDataset:
    """The ``data=glmm`` simulation ``data_cfg`` describes."""
    return make_glmm(
        data_cfg.n,
        data_cfg.p,
        data_cfg.covariate_sd,
        data_cfg.beta_bound,
        data_cfg.copula_theta,
        data_cfg.gamma_shape,
        data_cfg.gamma_scale,
        generator,
    )


def build_glmm_file(data_cfg, generator: torch.Generator | None = None) -> GLMMDataset:
    """The ``data=glmm_file`` table ``data_cfg`` names (``generator`` is unused: a file is not a simulation)."""
    return load_glmm_file(
        data_cfg.path,
        data_cfg.response,
        data_cfg.fixed_effects,
        data_cfg.random_effects,
        data_cfg.header,
        data_cfg.get("n"),
    )


def check_glmm_file(cfg, generator: torch.Generator | None = None) -> GLMMDataset:
    """Reads ``data=glmm_file``'s table with every check (counts in the response, finite covariates within float32,
    each column in one role, covariates the linear predictor can hold: ``covariate_bound``), before any run folder
    exists; returns it as ``build_glmm_file`` does."""
    data = cfg.data
    cap = cfg.likelihood.get("max_linear_predictor")  # the Poisson GLMM's; other likelihoods have no such bound
    return load_glmm_file(
        data.path,
        data.response,
        data.fixed_effects,
        data.random_effects,
        data.header,
        data.get("n"),
        None if cap is None else float(cap),
    )
