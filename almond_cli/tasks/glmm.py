"""The Poisson GLMM task: scores a fitted random-effects distribution and fits the Gaussian GLMM baseline.

Qiu & Wang (2019, Section 5.2, Table 3): draw u = h(z), z ~ N(0, I), and compare with the true random
effects: KS and W1 of each marginal against Gamma(2, 1) − 2 (``ks``/``w1`` of the first coordinate,
``ks_mean``/``w1_mean`` over all), the L1 distance between the estimated and true Kendall lambda functions of
the first two coordinates (``lambda_l1``), and the Euclidean error of the fitted fixed effects
(``beta_error``).

The baseline ``gaussian_glmm`` is the classical Gaussian GLMM: the same likelihood with ``decoder=linear``
(u = A z + b ~ N(b, A Aᵀ)), trained by the same VAE + ALMOND machinery as a child run in
``<run>/baselines/gaussian_glmm/`` (its own metrics, checkpoints and summary; an interrupted baseline resumes
from its own checkpoint when the parent run is resumed).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf
from torch import Tensor

from ..data.clayton import lambda_l1
from ..data.dataset import Dataset
from .metrics import ks_distance, w1_distance
from .glmm_figures import random_effects_figure
from .normal_means import draw_latent
from .base import Task

log = logging.getLogger("almond")

BASELINE = "gaussian_glmm"
LINEAR_DECODER = "almond_cli.model.networks.LinearDecoder"


def random_effect_scores(draws: Tensor, dataset: Dataset) -> dict[str, float]:
    """KS/W1 per marginal against the truth and Kendall lambda L1 of the first two coordinates.

    Args:
        draws: (N, q) draws of the fitted random-effects distribution.
        dataset: the simulation (its ``prior`` is the true marginal, ``extras["theta"]`` the copula's).
    """
    prior = dataset.prior
    lower, upper = prior.bulk()
    ks = [ks_distance(draws[:, j], prior.cdf) for j in range(draws.shape[1])]
    w1 = [w1_distance(draws[:, j], prior.cdf, lower, upper) for j in range(draws.shape[1])]
    scores = {"ks": ks[0], "w1": w1[0], "ks_mean": sum(ks) / len(ks), "w1_mean": sum(w1) / len(w1)}
    if draws.shape[1] >= 2:
        scores["lambda_l1"] = lambda_l1(draws[:, 0], draws[:, 1], dataset.extras["theta"])
    return scores


def fixed_effect_scores(beta: Tensor, dataset: Dataset) -> dict[str, float]:
    """``beta_error`` against the simulation's truth; on a user's file, the fitted ``beta_<column>`` values."""
    beta = beta.detach().double().cpu()
    if "beta" in dataset.extras:
        return {"beta_error": float((beta - dataset.extras["beta"]).norm())}
    return {f"beta_{name}": float(value) for name, value in zip(dataset.extras["fixed_names"], beta)}


def score_model(model, dataset: Dataset, cfg, device) -> tuple[dict[str, float], Tensor]:
    """All metrics of a fitted GLMM and the draws they were computed from, (num_draws, q) on CPU."""
    draws = draw_latent(model.decoder, cfg.latent_dim, cfg.evaluation.num_draws, cfg.evaluation.seed, device)
    scores = random_effect_scores(draws, dataset) if dataset.prior is not None else {}
    scores.update(fixed_effect_scores(model.likelihood.beta, dataset))
    return scores, draws


def gaussian_glmm_config(cfg):
    """The parent run's config with ``decoder=linear`` and no baseline of its own: a plain DictConfig."""
    child = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    child.decoder = {"_target_": LINEAR_DECODER}
    child.data.gaussian_baseline = False
    child.resume = None
    child.experiment_name = f"{cfg.experiment_name}/{BASELINE}"
    return child


def fit_gaussian_glmm(cfg, run_dir: Path):
    """Trains the Gaussian GLMM baseline in ``run_dir`` (resuming its checkpoint if there is one).

    Returns the finished ``TrainingRun``; its ``model`` is the fitted Gaussian GLMM.
    """
    from ..training.checkpoint import load_checkpoint
    from ..training.trainer import TrainingRun

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    run = TrainingRun(gaussian_glmm_config(cfg), run_dir)
    last = run.checkpoint_dir / "last.pt"
    if last.is_file():
        log.info("resuming the %s baseline from %s", BASELINE, last)
        run.resume_from(load_checkpoint(last))
    else:
        log.info("fitting the %s baseline (decoder=linear) in %s", BASELINE, run_dir)
    run.run()
    return run


class GLMMTask(Task):
    """Random-effects distribution scores, fixed-effect error, the Gaussian GLMM baseline, the figure."""

    def __init__(self):
        self._baseline_draws: dict[str, tuple[Tensor, dict]] = {}

    def score(self, model, dataset, cfg, device):
        return score_model(model, dataset, cfg, device)[0]

    def baselines(self, dataset, cfg, device):
        if not cfg.data.gaussian_baseline:
            return {}
        if self.run_dir is None:
            raise RuntimeError("GLMMTask.run_dir must be set before baselines are fitted")
        run = fit_gaussian_glmm(cfg, Path(self.run_dir) / "baselines" / BASELINE)
        scores, draws = score_model(run.model, dataset, cfg, run.device)
        self._baseline_draws[BASELINE] = (draws, scores)
        return {BASELINE: scores}

    def snapshot(self, model, dataset, cfg, device):
        draws = draw_latent(model.decoder, cfg.latent_dim, cfg.evaluation.num_draws, cfg.evaluation.seed, device)
        return {"draws": draws}

    def figures(self, run_dir, model, dataset, cfg, device, summary, vae_snapshot):
        panels = {}
        if vae_snapshot is not None:
            panels["vae"] = (vae_snapshot["draws"], summary["vae"])
        final = draw_latent(model.decoder, cfg.latent_dim, cfg.evaluation.num_draws, cfg.evaluation.seed, device)
        panels["almond"] = (final, summary["almond"])
        panels.update(self._baseline_draws)
        theta = dataset.extras.get("theta")
        random_effects_figure(panels, dataset.prior, theta, Path(run_dir) / "figures" / "random_effects.png")
