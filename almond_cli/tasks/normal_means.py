"""The many-normal-means task: scoring a fitted model against the true prior, and the baseline.

Many normal means (Qiu & Wang 2019, Table 1): draw u = h(z), z ~ N(0, 1), and measure the
Kolmogorov–Smirnov and 1-Wasserstein distances of those draws to the true prior (``ks``, ``w1``) and to the
empirical distribution of the n means mu_i the data were drawn with (``ks_true_means``, ``w1_true_means``).
The second pair is the compound-decision view of empirical Bayes: the data carry information about the
realised means, and only through them about the prior; a fit that recovered every mu_i exactly would still
be ~0.08 from the exponential prior in W1 at n = 1000 (benchmarks/reproduce_mnn.py prints this per seed).
The baseline is the normal empirical-Bayes fit mu ~ N(mean(x), var(x) − sigma²). Every fit also reports the
training rows' ``train_nll``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..data.dataset import Dataset
from ..data.priors import EmpiricalPrior, NormalPrior, Prior
from .base import Task
from .figures import latent_density_figure
from .metrics import evaluation_generator, ks_distance, latent_draws, train_likelihood, w1_distance


def distribution_scores(draws: Tensor, prior: Prior) -> dict[str, float]:
    """``ks`` and ``w1`` of univariate ``draws`` (n,) to the true ``prior``."""
    lower, upper = prior.bulk()
    return {"ks": ks_distance(draws, prior.cdf), "w1": w1_distance(draws, prior.cdf, lower, upper)}


def truth_scores(draws: Tensor, truth: Tensor) -> dict[str, float]:
    """``ks_true_means`` and ``w1_true_means``: two-sample distances of ``draws`` (m,) to the true means (n,)."""
    scores = distribution_scores(draws, EmpiricalPrior(truth))
    return {f"{name}_true_means": value for name, value in scores.items()}


def normal_empirical_bayes(x: Tensor, noise_sd: float) -> NormalPrior:
    """The normal prior fitted by moments: mean of x, variance of x minus the noise variance (floored)."""
    x = x.double().flatten()
    variance = max(float(x.var()) - noise_sd**2, 1e-6)
    return NormalPrior(mean=float(x.mean()), variance=variance)


def baseline_priors(likelihood, dataset: Dataset) -> dict[str, Prior]:
    """The normal empirical-Bayes prior, for Gaussian likelihoods with one measurement per row."""
    sd = likelihood.noise_sd(dataset.x)
    x = likelihood.observations(dataset.x)
    if sd is None or x.shape[1] != 1:
        return {}
    return {"normal_eb": normal_empirical_bayes(x, sd)}


class NormalMeansTask(Task):
    """KS and W1 of the learned latent distribution to the true prior and to the true means; the normal
    empirical-Bayes baseline scored alike."""

    def score(self, model, dataset, cfg, device):
        draws = latent_draws(model, cfg, device)
        return {**self._scores(draws[:, 0], dataset), **train_likelihood(model, dataset, cfg, device)}

    def baselines(self, model, dataset, cfg, device, fitted):
        return {name: self._scores(fit.sample(cfg.evaluation.num_draws, evaluation_generator(cfg)), dataset)
                for name, fit in baseline_priors(model.likelihood, dataset).items()}

    @staticmethod
    def _scores(draws: Tensor, dataset: Dataset) -> dict[str, float]:
        return {**distribution_scores(draws, dataset.prior), **truth_scores(draws, dataset.truth[:, 0])}

    def snapshot(self, model, dataset, cfg, device):
        return {"draws": latent_draws(model, cfg, device)[:, 0]}

    def figures(self, run_dir, model, dataset, cfg, device, summary, vae_snapshot):
        panels = {}
        if vae_snapshot is not None:
            panels["vae"] = (vae_snapshot["draws"], summary["vae"])
        panels["almond"] = (latent_draws(model, cfg, device)[:, 0], summary["almond"])
        for name, fit in baseline_priors(model.likelihood, dataset).items():
            panels[name] = (fit.sample(cfg.evaluation.num_draws, evaluation_generator(cfg)), summary["baselines"][name])
        latent_density_figure(panels, dataset.prior, float(cfg.data.noise_sd),
                              Path(run_dir) / "figures" / "latent_density.png")
