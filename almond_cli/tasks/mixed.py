"""The mixed-model task (``data=mixed``): lme4's summary of a fit, and the Gaussian random-effects fit beside it.

A fit's row in ``summary.json`` holds ``fixed_effects`` ({term: estimate, se, z, p, ci_low, ci_high}, lme4's term
names; a learned law's mean moved into the fixed effect of the same name, so the random effects are centred),
``random_effects`` ({factor: sd, skewness, quantiles of the centred effects; per term where a factor has several}),
``log_lik`` and ``log_lik_se`` (the total over the training rows, nats; ``model/mixed_inference.py``), from
posterior draws of all the latents given all rows. With ``data.holdout_fraction`` (whole groups of one factor held
out: ``data/mixed.py``) also ``heldout_log_lik`` and ``heldout_log_lik_se``: the held-out rows' log p(y), their
random effects new draws from the fitted laws (``MixedModel.for_groups``), integrated by the same rules.

The baseline ``gaussian`` is lme4's model: the same formula and family with ``decoder=mixed_linear`` (each factor's
random effects N(0, L Lᵀ)), fitted as a child run by the same machinery (``training/baselines.py``), with
``almond_gain`` (mean over independent groups of log p_ALMOND(y_g) − log p_Gaussian(y_g)) and its SE.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from ..data.mixed import MixedDataset
from ..langevin import sampler
from ..langevin.diagnostics import ess_bulk, rank_rhat
from ..langevin.targets import target_for
from ..langevin.whitening import WhitenedTarget, Whitening
from ..model.mixed import MixedLinearDecoder, MixedModel
from ..model.mixed_inference import (
    components,
    integrated_log_lik,
    mixed_fit_statistics,
    needs_draws,
    polish_parameters,
    random_effect_laws,
)
from ..model.model import evaluation_mode
from .base import Task, gaussian_baseline_config

BASELINE = "gaussian"
LINEAR_DECODER = f"{MixedLinearDecoder.__module__}.{MixedLinearDecoder.__qualname__}"
GAUSSIAN_EXACT_EPOCHS = 50  # ALMOND epochs of the Gaussian baseline whose log-likelihood is exact (trained_baselines)
TARGET_ACCEPTANCE = 0.6


def component_cholesky(draws: torch.Tensor, parts: list[torch.Tensor]) -> torch.Tensor:
    """A block-diagonal lower-triangular L (d, d) with L Lᵀ ≈ the draws' covariance within each independent
    component (``model.mixed_inference.components``) and 0 across them: chains whitened by it see a posterior of
    about identity covariance, correlated nested effects included."""
    d = draws.shape[1]
    scale = draws.new_zeros(d, d)
    for coordinates in parts:
        sub = draws[:, coordinates].double()
        centred = sub - sub.mean(0)
        covariance = centred.T @ centred / max(sub.shape[0] - 1, 1)
        # shrunk towards its diagonal (few draws for many coordinates), floored so the map stays invertible
        shrink = min(1.0, sub.shape[1] / max(sub.shape[0], 1))
        covariance = (1 - shrink) * covariance + shrink * torch.diag(covariance.diagonal())
        covariance = covariance + 1e-8 * torch.eye(sub.shape[1], dtype=torch.float64)
        block = torch.linalg.cholesky(covariance).to(draws.dtype)
        scale[coordinates.unsqueeze(1), coordinates.unsqueeze(0)] = block
    return scale


@torch.no_grad()
def posterior_draws(
    model: MixedModel,
    x: torch.Tensor,
    num_chains: int = 20,
    burn_in: int = 400,
    kept: int = 800,
    thin: int = 4,
    step_size: float = 0.2,
    seed: int = 0,
) -> tuple[torch.Tensor, dict]:
    """Draws of every latent given all rows by MALA from the encoder's q, in whitened coordinates
    (``langevin.whitening``): first those of q, then, halfway through burn-in, those of the draws so far; the step is
    tuned to an acceptance of about 0.6 during burn-in (blocks of 25 steps) and fixed for the kept steps.

    Returns:
        ((kept / thin) · C, d) float64 draws and {acceptance, step_size}.
    """
    generator = torch.Generator().manual_seed(seed)
    units = torch.zeros(x.shape[0], dtype=torch.long)
    with evaluation_mode(model), model.frozen():
        z = model.sample_posterior_approx(x, num_chains, generator, units, 1)
        target = target_for(model, x, "fp32", units)
        whitening = Whitening(*model.chain_whitening())
        step = float(step_size)
        blocks = max(burn_in // 25, 2)
        history = []
        for block in range(blocks):
            states, info = sampler.run(
                whitening.whiten(z), WhitenedTarget(target, whitening), step, 25, 24, generator, "mala"
            )
            z = whitening.unwhiten(states[-1])
            history.append(z)
            step *= math.exp(2.0 * (float(info.acceptance_rate) - TARGET_ACCEPTANCE))
            if block == blocks // 2 - 1:  # re-centre and re-shape on the posterior seen so far
                seen = torch.cat(history[len(history) // 2 :], dim=1)[0]  # (chains x blocks, d)
                whitening = Whitening(seen.mean(0), component_cholesky(seen, components(model, x)[1]))
        states, info = sampler.run(
            whitening.whiten(z), WhitenedTarget(target, whitening), step, kept, 0, generator, "mala"
        )
        states = whitening.unwhiten(states[thin - 1 :: thin])  # (K, 1, C, d)
    draws = states[:, 0].reshape(-1, states.shape[-1]).double()
    return draws, {"acceptance": float(info.acceptance_rate), "step_size": step}


def rule_draws(model: MixedModel, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, dict | None]:
    """The posterior draws that centre ``model``'s integration rule (``posterior_draws``) and their sampling record;
    none, and None, where the rule is a dense grid (one factor of one term, or two nested ones), which needs none
    (``needs_draws``)."""
    if not needs_draws(model, x):
        return torch.zeros(0, model.layout.latent_dim, dtype=torch.float64), None
    return posterior_draws(model, x, seed=seed)


def fit_group_encoder(
    model: MixedModel, x: torch.Tensor, steps: int = 300, lr: float = 0.03, num_draws: int = 5, seed: int = 0
) -> MixedModel:
    """Fits the table encoder q(z) of ``model`` to the rows ``x`` by the ELBO, the fitted laws, fixed effects and
    dispersion held as they are (the preset's VAE phase on q alone: Adam at ``lr``, ``num_draws`` draws a step):
    where the chains of new groups start and the coordinates they move in (``posterior_draws``). Returns ``model``."""
    generator = torch.Generator().manual_seed(seed)
    units = torch.zeros(x.shape[0], dtype=torch.long)
    encoder = model.encoder
    optimiser = torch.optim.Adam(encoder.parameters(), lr=lr)
    held = [p for p in model.parameters() if all(p is not q for q in encoder.parameters())]
    flags = [p.requires_grad for p in held]
    for parameter in held:
        parameter.requires_grad_(False)
    try:
        with torch.enable_grad(), evaluation_mode(model):  # scoring may run under no_grad
            for _ in range(steps):
                optimiser.zero_grad()
                loss = -model.elbo(x, num_draws, generator, units).sum()
                loss.backward()
                optimiser.step()
    finally:
        for parameter, flag in zip(held, flags):
            parameter.requires_grad_(flag)
    return model


def groups_model(model: MixedModel, dataset: MixedDataset, seed: int = 0) -> MixedModel:
    """The fitted ``model`` laid out for the groups of ``dataset`` (held-out groups, or a new table's), their random
    effects new draws from the fitted laws (``MixedModel.for_groups``), with q fitted to their rows."""
    return fit_group_encoder(model.cpu().for_groups(dataset.layout), dataset.x, seed=seed)


def heldout_log_lik(model: MixedModel, dataset: MixedDataset, seed: int = 0) -> dict:
    """``integrated_log_lik`` of ``dataset``'s rows (held-out groups) under ``model`` fitted to other groups."""
    fresh = model.cpu().for_groups(dataset.layout)
    # q fitted first: where the chains start; a dense grid of z has no posterior to find
    if needs_draws(fresh, dataset.x):
        fit_group_encoder(fresh, dataset.x, seed=seed)
    draws, _ = rule_draws(fresh, dataset.x, seed=seed)
    return integrated_log_lik(fresh, dataset.x, draws, seed=seed)


def _plain(value):
    return [float(v) for v in value] if hasattr(value, "__len__") else float(value)


def law_summary(laws: list[dict]) -> dict:
    """``random_effects`` of the summary: per factor its sd, skewness and quantiles; per term where it has several
    (with their correlation)."""
    out: dict = {}
    for law in laws:
        terms = law["terms"]
        per_term = {
            term: {
                "sd": float(law["sd"][j]),
                "skewness": float(law["skewness"][j]),
                "quantiles": {f"{level:g}": float(values[j]) for level, values in law["quantiles"].items()},
            }
            for j, term in enumerate(terms)
        }
        key = law["factor"]
        while key in out:  # (1 + x || g) gives two blocks of one factor
            key += "'"
        if len(terms) == 1:
            out[key] = per_term[terms[0]]
        else:
            out[key] = {**per_term, "correlation": [_plain(row) for row in law["correlation"]]}
    return out


def fixed_effect_summary(model: MixedModel, dataset: MixedDataset, table: dict, laws: list[dict]) -> dict:
    """``fixed_effects``: each term's estimate (with the mean of a random term of the same name added: the random
    effects are reported centred), SE, z, two-sided p and 95 % interval."""
    names = list(dataset.design.fixed_names)
    estimate = table["beta"].clone()
    for law in laws:
        for j, term in enumerate(law["terms"]):
            if term in names:
                estimate[names.index(term)] += float(law["mean"][j])
    out = {}
    for j, name in enumerate(names):
        value, se = float(estimate[j]), float(table["se"][j])
        z = value / se if se > 0 else float("nan")
        p = math.erfc(abs(z) / math.sqrt(2.0)) if math.isfinite(z) else float("nan")
        out[name] = {
            "estimate": value,
            "se": se,
            "z": z,
            "p": p,
            "ci_low": value - 1.959964 * se,
            "ci_high": value + 1.959964 * se,
        }
    return out


@dataclass
class Scored:
    """One scoring of a fit: its ``parameters`` then (``_parameter_values``), its ``scores`` (summary.json's row), the
    ``mixed_fit_statistics`` ``table`` and, with held-out groups, their ``heldout_log_lik`` (else None)."""

    parameters: torch.Tensor
    scores: dict
    table: dict
    heldout: dict | None


class MixedTask(Task):
    """lme4's summary of each fit, the Gaussian baseline and ALMOND's gain over it."""

    shares_with_baselines = True  # the Gaussian child's scores, computed at its end, serve the parent's summary

    def __init__(self):
        self._scored: dict[int, Scored] = {}  # id(model): what scoring it found, with its parameters then

    def score(self, model, dataset, cfg, device):
        return copy.deepcopy(self._scored_now(model, dataset, cfg).scores)

    def _scored_now(self, model, dataset, cfg) -> Scored:
        """``model`` (moved to the CPU) scored with its parameters as they are now: computed once per state, so the
        Gaussian child run's scores serve its parent and a baseline's gain needs no second scoring."""
        model = model.cpu()
        found = self._scored.get(id(model))
        if found is None or not torch.equal(found.parameters, _parameter_values(model)):
            found = self._score(model, dataset, cfg)
            self._scored[id(model)] = found
        return found

    def _score(self, model, dataset, cfg) -> Scored:
        x = dataset.x
        draws, sampling = rule_draws(model, x, seed=int(cfg.seed))  # none for the dense grid: seconds of MALA saved
        table = mixed_fit_statistics(model, x, draws, seed=int(cfg.seed))
        laws = random_effect_laws(model)
        held = None
        scores = {
            "fixed_effects": fixed_effect_summary(model, dataset, table, laws),
            "random_effects": law_summary(laws),
            "log_lik": table["log_lik"],
            "log_lik_se": table["log_lik_se"],
            "log_lik_method": table["method"],
        }
        if sampling is not None:  # the acceptance of the draws that centred the integration rule
            scores["posterior_acceptance"] = sampling["acceptance"]
        if model.likelihood.learns_sigma:
            scores["residual_sd"] = float(model.likelihood.log_sigma.exp())
        scores["se_basis"] = table["se_basis"]
        scores["se_law_shape"] = table["se_law_shape"]
        if dataset.heldout is not None:  # whole groups kept out of training: scored as new groups of the fitted laws
            held = heldout_log_lik(model, dataset.heldout, seed=int(cfg.seed))
            scores["heldout_log_lik"] = held["log_lik"]
            scores["heldout_log_lik_se"] = held["log_lik_se"]
        return Scored(_parameter_values(model), scores, table, held)

    def finish_fit(self, model, dataset, cfg, device):
        """The fixed effects, each term's scale and the dispersion moved to the maximum of the log-likelihood with the
        laws' shapes held (``polish_parameters``), on a CPU copy whose state is then loaded into ``model``."""
        fitted = copy.deepcopy(model).cpu()
        draws, _ = rule_draws(fitted, dataset.x, seed=int(cfg.seed))
        found = polish_parameters(fitted, dataset.x, draws, seed=int(cfg.seed))
        if not found["applied"]:
            return f"final fit: already at the maximum of its log-likelihood ({found['log_lik_before']:.2f} nats)"
        model.load_state_dict(fitted.state_dict())
        return (
            f"final fit: fixed effects, random-effect scales and dispersion moved to the maximum of the log-likelihood "
            f"with each law's shape held: {found['log_lik_before']:.2f} -> {found['log_lik_after']:.2f} nats"
        )

    def check_log_lik(self, model, dataset, cfg, device, num_samples):
        """Each independent component's log-likelihood, for the progress checks: the held-out groups' as new groups
        of the fitted laws (``heldout_log_lik``), else the training rows', by ``log_lik``'s rules (exact where the grid
        or quadrature is); on a CPU copy, so training's model stays on its device. No Monte Carlo variance is
        reported per component (the importance-sampling SE is the total's)."""
        model = copy.deepcopy(model).cpu()
        if dataset.heldout is not None:
            table = heldout_log_lik(model, dataset.heldout, seed=int(cfg.seed))
        else:
            draws, _ = rule_draws(model, dataset.x, seed=int(cfg.seed))
            table = integrated_log_lik(model, dataset.x, draws, seed=int(cfg.seed))
        per_component = table["per_component"].detach().double()
        return per_component, torch.zeros_like(per_component)

    def trained_baselines(self, dataset, cfg):
        if not cfg.data.gaussian_baseline:
            return {}
        child = gaussian_baseline_config(cfg, LINEAR_DECODER, BASELINE)
        epochs = child.schedule.almond_epochs
        shorter = not isinstance(epochs, int) or epochs > GAUSSIAN_EXACT_EPOCHS  # 'auto', or more epochs
        if shorter and all(block.size == 1 for block in dataset.layout.blocks) and not needs_draws(dataset, dataset.x):
            # lme4's model with an exact log-likelihood: the final polish (finish_fit) is its maximum-likelihood fit,
            # so stochastic training only has to bring the warm start near it (a collapsed one repaired)
            child.schedule.almond_epochs = GAUSSIAN_EXACT_EPOCHS
        return {BASELINE: child}

    def baselines(self, model, dataset, cfg, device, fitted):
        if BASELINE not in fitted:
            return {}
        theirs = self._scored_now(fitted[BASELINE], dataset, cfg)  # the child run scored it at its end, here
        mine = self._scored_now(model, dataset, cfg)
        scores = copy.deepcopy(theirs.scores)
        difference = mine.table["per_component"] - theirs.table["per_component"]
        scores["almond_gain"], scores["almond_gain_se"] = _paired_gain(difference)
        scores["almond_gain_groups"] = difference.shape[0]
        if dataset.heldout is not None:  # the same pairing over the held-out groups' independent components
            difference = mine.heldout["per_component"] - theirs.heldout["per_component"]
            scores["almond_heldout_gain"], scores["almond_heldout_gain_se"] = _paired_gain(difference)
        return {BASELINE: scores}


def _parameter_values(model) -> torch.Tensor:
    """All of ``model``'s parameters as one float64 vector: what a cached score is checked against."""
    return torch.cat([p.detach().double().cpu().flatten() for p in model.parameters()])


def _paired_gain(difference: torch.Tensor) -> tuple[float, float]:
    """The mean of per-component differences (K,) of two fits' log-likelihoods and its SE (NaN for one component)."""
    count = difference.shape[0]
    return float(difference.mean()), float(difference.std() / math.sqrt(count)) if count > 1 else float("nan")


POSTERIOR_COLUMNS = ("factor", "group", "term", "post_mean", "post_sd", "q5", "q95", "rhat", "ess_bulk")


def group_posteriors(model: MixedModel, dataset: MixedDataset, num_chains: int = 20, seed: int = 0) -> dict:
    """Every level's random effect given all rows, centred as the summary reports it (u − the law's mean).

    Returns:
        {"rows": one tuple per (factor, level, term) in ``POSTERIOR_COLUMNS`` order, "max_rhat", "min_ess_bulk",
        "acceptance"}: R-hat and bulk ESS per quantity from ``num_chains`` chains (``langevin.diagnostics``).
    """
    model = model.cpu()
    draws, sampling = posterior_draws(model, dataset.x, num_chains=num_chains, seed=seed)
    chains = draws.reshape(-1, num_chains, draws.shape[-1])  # (K, C, d): draws come kept state by kept state
    laws = random_effect_laws(model, num_draws=20_000, seed=seed)
    with torch.no_grad(), evaluation_mode(model):
        effects = model.layout.split(model.decoder(chains.float()).double())  # (K, C, G, q) per block
    rows, rhats, esses = [], [], []
    for block, law, part, random in zip(model.layout.blocks, laws, effects, dataset.design.random):
        centred = part - law["mean"]
        for level in range(block.num_groups):
            for j, term in enumerate(block.terms):
                values = centred[:, :, level, j]  # (K, C)
                flat = values.reshape(-1)
                rhat = rank_rhat(values.T.numpy())
                ess = ess_bulk(values.T.numpy())
                rhats.append(rhat)
                esses.append(ess)
                rows.append(
                    (
                        block.factor,
                        random.levels[level],
                        term,
                        float(flat.mean()),
                        float(flat.std()),
                        float(torch.quantile(flat, 0.05)),
                        float(torch.quantile(flat, 0.95)),
                        rhat,
                        ess,
                    )
                )
    return {
        "rows": rows,
        "max_rhat": max(rhats),
        "min_ess_bulk": min(esses),
        "acceptance": sampling["acceptance"],
    }


def group_posterior_csv(table: dict, split: list[str] | None = None) -> str:
    """The CSV of ``group_posteriors``: a header and one line per factor, level and term, and where given each
    line's ``split`` (``train`` or ``heldout``) in a last column."""
    lines = [",".join(POSTERIOR_COLUMNS + (("split",) if split is not None else ()))]
    for index, (factor, group, term, *numbers) in enumerate(table["rows"]):
        cells = [_csv_cell(factor), _csv_cell(group), _csv_cell(term)] + [f"{value:.6g}" for value in numbers]
        lines.append(",".join(cells + ([split[index]] if split is not None else [])))
    return "\n".join(lines) + "\n"


def _csv_cell(text: str) -> str:
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


@torch.no_grad()
def law_draws(model: MixedModel, num_draws: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """Draws of each factor's random-effect law, centred (``almond sample what=prior``): column names
    "factor|term" and (num_draws, Σ q) draws (the factors are independent a priori)."""
    generator = torch.Generator().manual_seed(seed)
    names, columns = [], []
    with evaluation_mode(model):
        for index, block in enumerate(model.layout.blocks):
            z = torch.randn(num_draws, block.size, generator=generator)
            u = model.decoder.block_forward(index, z.to(next(model.parameters()).device)).double().cpu()
            mean = model.decoder.block_forward(index, torch.randn(100_000, block.size, generator=generator)).mean(0)
            columns.append(u - mean.double().cpu())
            names += [f"{block.factor}|{term}" for term in block.terms]
    return names, torch.cat(columns, dim=1)


class FactorLaw(torch.nn.Module):
    """One factor's random-effect law as a decoder of its own, z (..., q) -> u (..., q), for code that draws or
    summarises a law (``almond prior``): the mixed decoder's ``block_forward`` of that factor."""

    def __init__(self, decoder, index: int):
        super().__init__()
        self.decoder = decoder
        self.index = index
        self.latent_dim = decoder.layout.blocks[index].size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder.block_forward(self.index, z)
