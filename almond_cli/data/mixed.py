"""``data=mixed``: a user's table and a model formula, ``y ~ fixed part + (terms | factor) + ...`` (lme4's syntax).

The formula is turned into columns by ``data/formula.py`` (the fixed part by formulaic, the random terms by our
parser); this module lays them out as the rows a ``model.mixed.MixedModel`` reads (``MixedLayout``) and starts the
fixed effects at the fixed-effects-only GLM fit, so training starts near the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional

import numpy as np
import torch
from omegaconf import MISSING, OmegaConf

from ..errors import ConfigError, UsageError, require
from ..model.likelihoods import LIKELIHOODS, Likelihood, likelihood_class
from ..model.mixed import MixedLayout, MixedLikelihood, MixedModel
from .dataset import Dataset
from .formula import FormulaError, MixedDesign, _aliased, build_design, design_on_new_data
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
    holdout_fraction: float = 0.0
    holdout_by: Optional[str] = None


@dataclass
class MixedDataset(Dataset):
    """A mixed model's rows (``MixedLayout``), one unit for the whole table (``model/mixed.py``).

    Attributes:
        design: the formula's columns (``data/formula.py``).
        layout: where each column sits in a row and each level in the latent.
        holdout_by: the grouping factor whose groups ``data.holdout_fraction`` holds out (``data.holdout_by``);
            None: the outermost factor (``holdout_factor``).
    """

    design: MixedDesign | None = None
    layout: MixedLayout | None = None
    holdout_by: str | None = None

    def latent_dim_for(self, requested: int) -> int:
        return self.layout.latent_dim

    def network_args(self) -> dict:
        return {"blocks": self.layout.plain()}

    def holdout_split(self, fraction: float, generator: torch.Generator) -> tuple[MixedDataset, MixedDataset]:
        """Holds out whole groups of one grouping factor (``holdout_factor``): ``round(fraction · G)`` of its G
        levels, the first of a permutation drawn from ``generator``, with every row in them. Each part is a table
        of its own, its levels renumbered: the held-out rows' random effects, those of another factor's level they
        share with training rows included, are new draws from the fitted laws when they are scored.

        Raises:
            ConfigError: no group held out or none left to train on (``data.holdout_fraction``), an unknown
                ``data.holdout_by``, or training rows that cannot estimate a fixed effect any more.
        """
        factor = holdout_factor(self.design, self.holdout_by)
        block = next(b for b in self.design.random if b.factor == factor)
        total = len(block.levels)
        count = round(fraction * total)
        where = f"{fraction} of the {total} groups of {factor}"
        require(
            count >= 1,
            "data.holdout_fraction",
            f"{where} holds out none (it rounds to 0); raise it to at least {1.0 / total:.3g} for one group, or "
            "0 to train on every row",
        )
        require(
            count < total,
            "data.holdout_fraction",
            f"{where} holds out {count}, which leaves no group to train on; lower it (0 trains on every row)",
        )
        held_levels = torch.randperm(total, generator=generator)[:count].numpy()
        held = np.isin(block.group, held_levels)
        trained = subset_design(self.design, ~held)
        aliased = _aliased(trained.fixed)
        if aliased is not None:
            raise ConfigError(
                "data.holdout_fraction",
                f"holding out {count} of the {total} groups of {factor} leaves training rows that cannot estimate "
                f"the fixed effect '{trained.fixed_names[aliased]}' (its column is zero or a combination of the "
                "others there: the held-out groups hold every row of a level); hold out fewer groups, by another "
                "factor (data.holdout_by), or with another seed",
            )
        return (
            mixed_dataset(trained, self.source, self.holdout_by),
            mixed_dataset(subset_design(self.design, held), self.source, self.holdout_by),
        )

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


def subset_design(design: MixedDesign, rows: np.ndarray) -> MixedDesign:
    """The design of some of its rows (``rows``: (n,) bool), each factor's levels cut to those the rows touch and
    renumbered in their order; the formula's specs (contrasts, ``scale()``'s statistics) are kept as they are."""
    blocks = []
    for block in design.random:
        present, group = np.unique(block.group[rows], return_inverse=True)
        levels = tuple(block.levels[k] for k in present.tolist())
        blocks.append(
            replace(block, columns=block.columns[rows], group=group.reshape(-1).astype(np.int64), levels=levels)
        )
    return replace(
        design,
        response=design.response[rows],
        trials=None if design.trials is None else design.trials[rows],
        offset=design.offset[rows],
        fixed=design.fixed[rows],
        random=tuple(blocks),
        rows=design.rows[rows],
    )


def nested_in(inner: np.ndarray, outer: np.ndarray) -> bool:
    """Whether every level of the grouping ``inner`` (n,) lies within one level of ``outer`` (n,)."""
    pairs = np.unique(np.stack([inner, outer], axis=1), axis=0)
    return pairs.shape[0] == np.unique(inner).shape[0]


def holdout_factor(design: MixedDesign, name: str | None = None) -> str:
    """The grouping factor whose groups are held out: ``name`` (``data.holdout_by``) where given, else the
    outermost factor (the first in which every other factor is nested: LOCATION of broods within locations, ``a``
    of ``(1|a/b)``), else the formula's first factor (crossed factors).

    Raises:
        ConfigError: ``name`` is not a grouping factor of the formula.
    """
    factors = list(dict.fromkeys(block.factor for block in design.random))
    if name is not None:
        require(
            name in factors,
            "data.holdout_by",
            f"'{name}' is not a grouping factor of the formula '{design.formula}'; its factors are "
            f"{', '.join(factors)}",
        )
        return name
    for block in design.random:
        if all(nested_in(other.group, block.group) for other in design.random):
            return block.factor
    return factors[0]


def mixed_dataset(design: MixedDesign, source: str | None = None, holdout_by: str | None = None) -> MixedDataset:
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
        holdout_by=holdout_by,
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
    return mixed_dataset(read_design(data_cfg), str(data_cfg.path), data_cfg.get("holdout_by"))


def check_mixed(cfg, generator=None) -> MixedDataset:
    """Everything training will check, before a run folder exists: the formula, the table and the response."""
    design = read_design(cfg.data)
    check_response(design, family_name_of(cfg.likelihood))
    holdout_by = cfg.data.get("holdout_by")
    if holdout_by is not None:  # named even where nothing is held out: a typo is refused, not ignored
        holdout_factor(design, holdout_by)
    return mixed_dataset(design, str(cfg.data.path), holdout_by)


def required_columns(design: MixedDesign) -> list[str]:
    """The table columns the formula reads (response, fixed part, offsets, random terms, grouping factors)."""
    specs = [design.fixed_spec, *design.response_specs, *design.offset_specs, *(b.spec for b in design.random)]
    names: list[str] = []
    for spec in specs:
        names += sorted(str(v) for v in getattr(spec, "required_variables", ()) or ()) if spec is not None else []
    if design.parsed is not None:  # a factor response is read as a column, without a spec
        names += [arg.strip("` ") for arg in design.parsed.response_args]
    names += [name for block in design.random for name in block.groupings]
    return list(dict.fromkeys(names))


def read_new_groups(cfg, path: str, trained: MixedDataset, command: str) -> MixedDataset:
    """The rows of the table ``path``, with the columns of the run's table, laid out by the run's formula as
    training laid out its own (``formula.design_on_new_data``: the same contrasts, factor levels and ``scale()``
    statistics) and checked as training checks its response: their groups are new groups, whatever their labels.

    Args:
        cfg: the run's saved config (``data.header``, ``likelihood``).
        path: the new table.
        trained: the run's data set (its design).
        command: the command, for the messages.

    Raises:
        UsageError: one line naming ``data=path``: a column the formula reads is missing, a fixed effect's factor
            has a level training did not see, a response the family cannot take, no row left.
    """
    frame = read_frame(path, header=bool(cfg.data.header), key=f"{command}: data")
    design = trained.design
    missing = [name for name in required_columns(design) if name not in frame.columns]
    if missing:
        raise UsageError(
            f"{command}: data={path} has no column '{missing[0]}', which the run's formula '{design.formula}' reads; "
            f"the new table needs the columns of the training table ({', '.join(required_columns(design))})"
        )
    try:
        new = design_on_new_data(design, frame)
        check_response(new, family_name_of(cfg.likelihood))
    except (ConfigError, FormulaError) as error:  # named data.formula in training; here the new table is at fault
        raise UsageError(f"{command}: data={path}: {str(error).removeprefix(error.key + ': ')}") from None
    return mixed_dataset(new, str(path), trained.holdout_by)
