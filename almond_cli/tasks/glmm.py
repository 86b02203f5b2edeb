"""The Poisson GLMM task: scores a fitted random-effects distribution and fits the Gaussian GLMM baseline.

Qiu & Wang (2019, Section 5.2, Table 3): draw u = h(z), z ~ N(0, I), and compare with the true random
effects: KS and W1 of each marginal against Gamma(2, 1) − 2 (``ks``/``w1`` of the first coordinate,
``ks_mean``/``w1_mean`` over all), the L1 distance between the estimated and true Kendall lambda functions of
the first two coordinates (``lambda_l1``), and the Euclidean error of the fitted fixed effects
(``beta_error``).

The baseline ``gaussian_glmm`` is the classical Gaussian GLMM: the same likelihood with ``decoder=linear``
(u = A z + b ~ N(b, A Aᵀ)). This task only names its config (``trained_baselines``); training fits it by the same
VAE + ALMOND machinery as a child run in ``<run>/baselines/gaussian_glmm/`` (``training/baselines.py``), and this
task scores the fitted model like the others.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..data.clayton import lambda_l1
from ..data.dataset import GLMMDataset
from ..model.networks import LinearDecoder
from .base import Task, gaussian_baseline_config
from .figures import method_panels
from .glmm_figures import random_effects_figure
from .metrics import ks_distance, latent_draws, train_likelihood, w1_distance

BASELINE = "gaussian_glmm"
LINEAR_DECODER = f"{LinearDecoder.__module__}.{LinearDecoder.__qualname__}"


def random_effect_scores(draws: Tensor, dataset: GLMMDataset) -> dict[str, float]:
    """KS/W1 per marginal against the truth and Kendall lambda L1 of the first two coordinates.

    Args:
        draws: (N, q) draws of the fitted random-effects distribution.
        dataset: the simulation (its ``prior`` is the true marginal, ``copula_theta`` the copula's).
    """
    prior = dataset.prior
    lower, upper = prior.bulk()
    ks = [ks_distance(draws[:, j], prior.cdf) for j in range(draws.shape[1])]
    w1 = [w1_distance(draws[:, j], prior.cdf, lower, upper) for j in range(draws.shape[1])]
    scores = {"ks": ks[0], "w1": w1[0], "ks_mean": sum(ks) / len(ks), "w1_mean": sum(w1) / len(w1)}
    if draws.shape[1] >= 2:
        scores["lambda_l1"] = lambda_l1(draws[:, 0], draws[:, 1], dataset.copula_theta)
    return scores


def fixed_effect_scores(beta: Tensor, dataset: GLMMDataset) -> dict[str, float]:
    """``beta_error`` against the simulation's truth; on a user's file, the fitted ``beta_<column>`` values."""
    beta = beta.detach().double().cpu()
    if dataset.true_beta is not None:
        return {"beta_error": float((beta - dataset.true_beta).norm())}
    return {f"beta_{name}": float(value) for name, value in zip(dataset.fixed_names, beta)}


def score_model(model, dataset: GLMMDataset, cfg, device) -> tuple[dict[str, float], Tensor]:
    """All metrics of a fitted GLMM and the draws they were computed from, (num_draws, q) on CPU."""
    draws = latent_draws(model, cfg, device)
    scores = random_effect_scores(draws, dataset) if dataset.prior is not None else {}
    scores.update(fixed_effect_scores(model.likelihood.beta, dataset))
    return scores, draws


class GLMMTask(Task):
    """Random-effects distribution scores, fixed-effect error, the Gaussian GLMM baseline, the figure."""

    def __init__(self):
        self._baseline_draws: dict[str, Tensor] = {}

    def score(self, model, dataset, cfg, device):
        return {**score_model(model, dataset, cfg, device)[0], **train_likelihood(model, dataset, cfg, device)}

    def trained_baselines(self, dataset, cfg):
        return {BASELINE: gaussian_baseline_config(cfg, LINEAR_DECODER, BASELINE)} if cfg.data.gaussian_baseline else {}

    def baselines(self, model, dataset, cfg, device, fitted):
        if BASELINE not in fitted:
            return {}
        scores, draws = score_model(fitted[BASELINE], dataset, cfg, device)
        scores.update(train_likelihood(fitted[BASELINE], dataset, cfg, device))
        self._baseline_draws[BASELINE] = draws
        return {BASELINE: scores}

    def snapshot(self, model, dataset, cfg, device):
        return {"draws": latent_draws(model, cfg, device)}

    def figures(self, run_dir, model, dataset, cfg, device, summary, vae_snapshot):
        panels = method_panels(
            summary,
            None if vae_snapshot is None else vae_snapshot["draws"],
            latent_draws(model, cfg, device),
            self._baseline_draws,
        )
        random_effects_figure(
            panels, dataset.prior, dataset.copula_theta, Path(run_dir) / "figures" / "random_effects.png"
        )
