"""``data=mixed``: a user's table and a model formula, ``y ~ fixed part + (terms | factor) + ...`` (lme4's syntax).

The formula is turned into columns by ``data/formula.py`` (the fixed part by formulaic, the random terms by our
parser); this module lays them out as the rows a ``model.mixed.MixedModel`` reads (``MixedLayout``) and starts the
fixed effects at the fixed-effects-only GLM fit, so training starts near the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from omegaconf import MISSING, OmegaConf

from ..errors import ConfigError, require
from ..model.likelihoods import LIKELIHOODS, Likelihood, likelihood_class
from ..model.mixed import MixedLayout, MixedLikelihood, MixedModel
from .dataset import Dataset
from .formula import MixedDesign, build_design
from .frames import read_frame

MIXED_LIKELIHOODS = ("poisson", "binomial", "bernoulli", "gaussian", "negative_binomial")


@dataclass
class MixedDataConfig:
    """``data=mixed``: a table and a formula (see ``configs/data/mixed.yaml``)."""

    name: str = "mixed"
    path: str = MISSING
    formula: str = MISSING
    factors: List[str] = field(default_factory=list)
    header: bool = True
    n: Optional[int] = None
    gaussian_baseline: bool = True


@dataclass
class MixedDataset(Dataset):
    """A mixed model's rows (``MixedLayout``), one unit for the whole table (``model/mixed.py``).

    Attributes:
        design: the formula's columns (``data/formula.py``).
        layout: where each column sits in a row and each level in the latent.
    """

    design: MixedDesign | None = None
    layout: MixedLayout | None = None

    def latent_dim_for(self, requested: int) -> int:
        return self.layout.latent_dim

    def network_args(self) -> dict:
        return {"blocks": self.layout.plain()}

    def model(self, encoder, decoder, likelihood: Likelihood) -> MixedModel:
        """The mixed model around the family ``likelihood``, its fixed effects started at the fixed-effects-only
        fit (a Gaussian family's residual sd at that fit's)."""
        beta, sigma = fixed_effects_fit(likelihood, self.x, self.layout)
        return MixedModel(encoder, decoder, MixedLikelihood(likelihood, self.layout, beta, sigma))


def pack_rows(design: MixedDesign) -> tuple[np.ndarray, MixedLayout]:
    """The design's columns as rows (n, D) float64 laid out as ``MixedLayout`` says."""
    family = [design.response[:, None]]
    if design.trials is not None:
        family.append(design.trials[:, None])
    z_columns = [block.columns for block in design.random]
    groups = [block.group[:, None].astype(np.float64) for block in design.random]
    rows = np.concatenate([*family, design.offset[:, None], design.fixed, *z_columns, *groups], axis=1)
    layout = MixedLayout.of(
        [(block.factor, block.terms, len(block.levels)) for block in design.random],
        design.fixed.shape[1],
        len(family),
    )
    return rows, layout


def fixed_effects_fit(
    family: Likelihood, rows: torch.Tensor, layout: MixedLayout, steps: int = 50
) -> tuple[torch.Tensor, float]:
    """The fixed-effects-only GLM fit (random effects at 0): (beta (p,), the residual sd for a Gaussian family,
    else 1.0), where the mixed fit starts. Least squares for a Gaussian family, L-BFGS on the log-likelihood else;
    zeros where that fails (separation)."""
    likelihood = MixedLikelihood(family, layout).double()
    rows = rows.double()
    if likelihood.learns_sigma:
        response = rows[:, 0] - rows[:, layout.offset_column]
        beta = torch.linalg.lstsq(rows[:, layout.fixed_columns], response.unsqueeze(1)).solution.squeeze(1)
        residual = response - rows[:, layout.fixed_columns] @ beta
        return beta.float(), max(float(residual.std()), 1e-3)
    parameters = [likelihood.beta]
    optimiser = torch.optim.LBFGS(parameters, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = -likelihood.log_prob_eta(rows, likelihood.fixed_part(rows).unsqueeze(1)).mean()
        loss.backward()
        return loss

    optimiser.step(closure)
    beta = likelihood.beta.detach().float()
    return (beta if torch.isfinite(beta).all() else torch.zeros_like(beta)), 1.0


def mixed_dataset(design: MixedDesign, source: str | None = None) -> MixedDataset:
    """The rows of ``design`` as a data set of one unit."""
    rows, layout = pack_rows(design)
    x = torch.from_numpy(rows)
    return MixedDataset(
        x=x.float(),
        name="mixed",
        source=source,
        row_labels=[int(r) for r in design.rows],
        unit_index=torch.zeros(x.shape[0], dtype=torch.long),
        unit_labels=["all"],
        design=design,
        layout=layout,
    )


def read_design(data_cfg) -> MixedDesign:
    """The formula's columns from the table ``data.path`` (first ``data.n`` rows where set)."""
    frame = read_frame(data_cfg.path, header=bool(data_cfg.header), key="data.path")
    if data_cfg.n is not None:
        frame = frame.iloc[: int(data_cfg.n)]
    return build_design(str(data_cfg.formula), frame, factors=list(data_cfg.factors))


def validate_mixed_config(cfg) -> None:
    """Config rules of ``data=mixed`` that need no file."""
    data = cfg.data
    for key, example in (("path", "data.path=grouseticks.csv"), ("formula", """'data.formula="y ~ x + (1|g)"'""")):
        require(not OmegaConf.is_missing(data, key), f"data.{key}", f"is required by data=mixed, e.g. {example}")
    require(data.n is None or data.n >= 2, "data.n", f"must be >= 2 or null (all rows), got {data.n}")


def check_response(design: MixedDesign, family_name: str) -> None:
    """Refuses a response the family cannot take (a cbind response without likelihood=binomial, counts that are
    not counts, ...), naming the first bad row."""
    if (design.trials is not None) != (family_name == "binomial"):
        fix = (
            "write the response as cbind(successes, failures) for likelihood=binomial"
            if family_name == "binomial"
            else "a cbind(successes, failures) response needs likelihood=binomial"
        )
        raise ConfigError("data.formula", f"{design.response_name} with likelihood={family_name}: {fix}")
    values = design.response[:, None] if design.trials is None else np.stack([design.response, design.trials], 1)
    found = LIKELIHOODS[family_name].support_violation(values)
    if found is not None:
        mask, phrase = found
        row = int(np.argwhere(mask)[0][0])
        value = float(values[row][mask[row]][0])
        raise ConfigError(
            "data.formula",
            f"the response {design.response_name} is {value:g} in row {int(design.rows[row]) + 1} of the data "
            f"({LIKELIHOODS[family_name].describe_violation(value)}); {phrase}",
        )


def family_name_of(likelihood_cfg) -> str:
    """The family ``likelihood=`` chose, by name; ``ConfigError`` for one ``data=mixed`` does not fit."""
    cls = likelihood_class(str(likelihood_cfg.get("_target_", "")))
    if cls is None or cls.name not in MIXED_LIKELIHOODS:
        raise ConfigError("likelihood", f"data=mixed fits the families {', '.join(MIXED_LIKELIHOODS)}; choose one")
    return cls.name


def build_mixed(data_cfg, generator=None) -> MixedDataset:
    """``data=mixed``'s data set (nothing is simulated: ``generator`` is not used)."""
    return mixed_dataset(read_design(data_cfg), str(data_cfg.path))


def check_mixed(cfg, generator=None) -> MixedDataset:
    """Everything training will check, before a run folder exists: the formula, the table and the response."""
    design = read_design(cfg.data)
    check_response(design, family_name_of(cfg.likelihood))
    return mixed_dataset(design, str(cfg.data.path))
