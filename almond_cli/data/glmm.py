"""GLMM data: the paper's Poisson GLMM simulation (``data=glmm``) and a user's CSV (``data=glmm_file``).

Both give rows [y, x_1..x_p, zeta_1..zeta_q] (the layout ``likelihoods.PoissonGLMM`` reads) and tell the
likelihood p through ``extras["likelihood_args"]``.

Simulation (Qiu & Wang 2019, Section 5.2): x_i, zeta_i ~ covariate_sd · N(0, I_p), beta ~ Uniform(−b, b)^p,
u_i from a Clayton copula (theta) with Gamma(shape, scale) − shape·scale marginals,
y_i ~ Poisson(exp(x_i·beta + zeta_i·u_i)).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from .clayton import ShiftedGamma, clayton_random_effects
from .dataset import Dataset
from ..errors import UsageError


class GLMMFileError(UsageError):
    """The GLMM CSV or its column choice is wrong; the message names the file, row and column."""


def make_glmm(n: int, p: int, covariate_sd: float, beta_bound: float, theta: float, gamma_shape: float,
              gamma_scale: float, generator: torch.Generator) -> Dataset:
    """Simulates the paper's Poisson GLMM with Clayton/shifted-gamma random effects.

    The marginal is shifted by −shape·scale so the random effects have mean 0 (paper: Gamma(2, 1) − 2).
    Returns a Dataset with x (n, 1 + 2p), truth u (n, p), prior = the marginal, extras beta (p,) and theta.
    """
    marginal = ShiftedGamma(gamma_shape, gamma_scale, -gamma_shape * gamma_scale)
    beta = (2.0 * torch.rand(p, generator=generator, dtype=torch.float64) - 1.0) * beta_bound
    fixed = covariate_sd * torch.randn(n, p, generator=generator, dtype=torch.float64)
    random = covariate_sd * torch.randn(n, p, generator=generator, dtype=torch.float64)
    effects = clayton_random_effects(n, p, theta, marginal, generator)
    rate = torch.exp(fixed @ beta + (random * effects).sum(1))
    counts = torch.poisson(rate, generator=generator)
    x = torch.cat([counts.unsqueeze(1), fixed, random], dim=1).float()
    return Dataset(x=x, name="glmm", truth=effects.float(), prior=marginal,
                   extras={"beta": beta, "theta": float(theta), "likelihood_args": {"num_fixed": p},
                           "fixed_names": [f"x{j + 1}" for j in range(p)]})


def _resolve_column(token, header: list[str] | None, width: int, path: Path, key: str) -> int:
    """A column given by header name or 0-based index -> its index; errors name ``key`` and the choices."""
    text = str(token).strip()
    if header is not None and text in header:
        return header.index(text)
    if text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < width:
            return index
        raise GLMMFileError(f"{key}: column index {index} is out of range for {path}, which has {width} "
                            f"columns (indices 0 to {width - 1})")
    choices = f"its header names are {header}" if header is not None else "it has no header (data.header=false)"
    raise GLMMFileError(f"{key}: no column named {text!r} in {path}; {choices}. Give a header name or a "
                        "0-based column index")


def load_glmm_file(path: str, response, fixed_effects, random_effects, header: bool = True,
                   n: int | None = None) -> Dataset:
    """Reads a Poisson GLMM data set from a CSV file.

    Args:
        path: the CSV file (comma-separated, one data point per row).
        response: the count column (header name or 0-based index).
        fixed_effects: the fixed-effect covariate columns (names or indices; may be empty).
        random_effects: the random-effect covariate columns (names or indices; at least one).
        header: whether the first row holds column names.
        n: read only the first n data rows (None: all).

    Returns:
        A Dataset with x (n, 1 + p + q) in the order [response, fixed..., random...].

    Raises:
        GLMMFileError: a missing or empty file, an unknown column, a column used twice, a ragged row, a value
            that is not a finite number, or a count that is negative or not an integer.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise GLMMFileError(f"data.path: {file} does not exist or is not a file; give the path of a CSV file "
                            "with one data point per row")
    with open(file, newline="", encoding="utf-8") as handle:
        rows = [(number, row) for number, row in enumerate(csv.reader(handle), start=1)
                if any(cell.strip() for cell in row)]
    names = [cell.strip() for cell in rows[0][1]] if header and rows else None
    body = rows[1:] if header else rows
    if not body:
        raise GLMMFileError(f"data.path: {file} holds no data rows; it needs a header row (data.header=true) "
                            "and at least one row of numbers")
    if n is not None:
        body = body[:n]
    width = len(names) if names is not None else len(body[0][1])
    if not random_effects:
        raise GLMMFileError("data.random_effects: give at least one random-effect covariate column, for example "
                            "data.random_effects=[z1,z2]")
    chosen = {"data.response": [response]}
    chosen["data.fixed_effects"] = list(fixed_effects)
    chosen["data.random_effects"] = list(random_effects)
    indices: dict[str, list[int]] = {key: [_resolve_column(token, names, width, file, key) for token in tokens]
                                     for key, tokens in chosen.items()}
    order = indices["data.response"] + indices["data.fixed_effects"] + indices["data.random_effects"]
    if len(set(order)) != len(order):
        repeated = sorted({index for index in order if order.count(index) > 1})
        label = [names[index] if names else index for index in repeated]
        raise GLMMFileError(f"data: column(s) {label} of {file} are used more than once among data.response, "
                            "data.fixed_effects and data.random_effects; each column may play one role")
    values = torch.empty(len(body), len(order), dtype=torch.float64)
    for position, (line, row) in enumerate(body):
        if len(row) != width:
            reference = "the header has" if names is not None else "the first row has"
            raise GLMMFileError(f"data.path: {file} row {line} has {len(row)} fields, {reference} {width}; "
                                "every row needs the same number of comma-separated fields")
        for slot, index in enumerate(order):
            cell = row[index].strip()
            column = names[index] if names else f"index {index}"
            try:
                value = float(cell)
            except ValueError:
                raise GLMMFileError(f"data.path: {file} row {line}, column {column!r}: {cell!r} is not a number")
            if not math.isfinite(value):
                raise GLMMFileError(f"data.path: {file} row {line}, column {column!r}: {cell!r} is not finite; "
                                    "remove the row or impute the value")
            if slot == 0 and (value < 0 or value != math.floor(value)):
                raise GLMMFileError(f"data.response: {file} row {line}, column {column!r}: {cell!r} is not a "
                                    "count (a non-negative integer); the Poisson GLMM needs counts")
            values[position, slot] = value
    fixed_names = [names[index] if names else f"col{index}" for index in indices["data.fixed_effects"]]
    return Dataset(x=values.float(), name="glmm_file",
                   extras={"likelihood_args": {"num_fixed": len(indices["data.fixed_effects"])},
                           "fixed_names": fixed_names})


def build_glmm_dataset(data_cfg, generator: torch.Generator) -> Dataset:
    """The GLMM data set ``data_cfg`` names (``glmm`` or ``glmm_file``)."""
    if data_cfg.name == "glmm":
        return make_glmm(data_cfg.n, data_cfg.p, data_cfg.covariate_sd, data_cfg.beta_bound,
                         data_cfg.copula_theta, data_cfg.gamma_shape, data_cfg.gamma_scale, generator)
    return load_glmm_file(data_cfg.path, data_cfg.response, data_cfg.fixed_effects, data_cfg.random_effects,
                          data_cfg.header, data_cfg.get("n"))
