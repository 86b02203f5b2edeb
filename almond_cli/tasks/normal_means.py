"""The many-normal-means task: scoring a fitted model against the true prior, and the baseline.

Many normal means (Qiu & Wang 2019, Table 1): draw u = h(z), z ~ N(0, 1), and measure the
Kolmogorov–Smirnov and 1-Wasserstein distances of those draws to the true prior (``ks``, ``w1``) and to the
empirical distribution of the n means mu_i the data were drawn with (``ks_true_means``, ``w1_true_means``).
The second pair is the compound-decision view of empirical Bayes: the data carry information about the
realised means, and only through them about the prior; a fit that recovered every mu_i exactly would still
be ~0.08 from the exponential prior in W1 at n = 1000 (benchmarks/reproduce_mnn.py prints this per seed).
The baselines are the maximum-likelihood normal prior mu ~ N(m, tau²) (with one sigma: m = mean(x),
tau² = max(0, var(x) − sigma²), the variance with divisor n) and the Kiefer–Wolfowitz NPMLE (``tasks/empirical_bayes.py``). Every fit also reports the training rows' ``train_nll`` (exact for the baselines),
and each baseline ALMOND's paired gain in log-likelihood per row; with ``data.holdout_fraction`` the same of the
held-out rows (``heldout_nll``, ``almond_heldout_gain``), every fit made on the training rows alone.
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import Tensor

from ..data.dataset import Dataset
from ..data.priors import EmpiricalPrior, Prior
from ..model.marginal import estimate_with
from .base import Task
from .empirical_bayes import fit_normal_prior, fit_npmle, marginal_log_likelihood, posterior_means
from .figures import latent_density_figure, method_panels
from .metrics import evaluation_generator, heldout_names, ks_distance, latent_draws, train_likelihood, w1_distance


def distribution_scores(draws: Tensor, prior: Prior) -> dict[str, float]:
    """``ks`` and ``w1`` of univariate ``draws`` (n,) to the true ``prior``."""
    lower, upper = prior.bulk()
    return {"ks": ks_distance(draws, prior.cdf), "w1": w1_distance(draws, prior.cdf, lower, upper)}


def truth_scores(draws: Tensor, truth: Tensor) -> dict[str, float]:
    """``ks_true_means`` and ``w1_true_means``: two-sample distances of ``draws`` (m,) to the true means (n,)."""
    scores = distribution_scores(draws, EmpiricalPrior(truth))
    return {f"{name}_true_means": value for name, value in scores.items()}


def row_noise_sd(likelihood, x: Tensor):
    """Each row's known noise sd: the ``sd`` row column of a likelihood that declares one (``gaussian_hetero``),
    else the one ``likelihood.sigma``."""
    return likelihood.row_column(x, "sd").double() if "sd" in likelihood.row_columns else likelihood.noise_sd(x)


def baseline_priors(likelihood, dataset: Dataset) -> dict[str, Prior]:
    """The classical empirical-Bayes priors, for Gaussian likelihoods with one measurement per row: the
    maximum-likelihood normal prior with each row's own noise sd (``normal_eb``; the Fay–Herriot fit where the sds
    differ) and the Kiefer–Wolfowitz NPMLE (``npmle``)."""
    x = likelihood.observations(dataset.x)
    if likelihood.noise_sd(dataset.x) is None or x.shape[1] != 1:
        return {}
    sd = row_noise_sd(likelihood, dataset.x)
    return {"normal_eb": fit_normal_prior(x[:, 0], sd), "npmle": fit_npmle(x[:, 0], sd)}


def likelihood_comparison(model, dataset: Dataset, cfg, device, priors: dict[str, Prior]) -> dict[str, dict]:
    """Each baseline's exact marginal log-likelihood per row, as ``train_nll`` ± ``train_nll_se`` (nats per row,
    standard error over rows), and ALMOND's paired gain over it, ``almond_gain`` ± ``almond_gain_se``: the mean over
    rows of ALMOND's estimated log p(x_i) minus the baseline's, > 0 where the neural prior fits the data better.
    Where ``dataset.heldout`` holds rows kept out of training, the same of those rows under the priors fitted to the
    training rows: ``heldout_nll`` ± ``heldout_nll_se`` and ``almond_heldout_gain`` ± ``almond_heldout_gain_se``."""
    if not priors:
        return {}
    results = _paired_comparison(model, dataset, cfg, device, priors)
    if dataset.heldout is not None:
        for name, scores in _paired_comparison(model, dataset.heldout, cfg, device, priors).items():
            results[name].update(heldout_names(scores))
    return results


def _paired_comparison(model, dataset: Dataset, cfg, device, priors: dict[str, Prior]) -> dict[str, dict]:
    """``likelihood_comparison``'s scores of the rows of ``dataset`` alone, under their training-row names."""
    almond = estimate_with(cfg.evaluation, model, dataset.x.to(device)).log_marginal.double()
    x = model.likelihood.observations(dataset.x)[:, 0]
    sd = row_noise_sd(model.likelihood, dataset.x)
    results = {}
    for name, prior in priors.items():
        exact = marginal_log_likelihood(prior, x, sd)
        gain = almond - exact
        results[name] = {
            "train_nll": float(-exact.mean()),
            "train_nll_se": _standard_error(exact),
            "almond_gain": float(gain.mean()),
            "almond_gain_se": _standard_error(gain),
        }
        if dataset.truth is not None and dataset.truth.shape[1] == 1:
            error = posterior_means(prior, x, sd) - dataset.truth[:, 0].double()
            results[name]["mse_posterior_mean"] = float(error.square().mean())
    return results


def _standard_error(values: Tensor) -> float:
    """The standard error of the mean of ``values`` (n,); NaN for one row (a held-out set of one)."""
    count = values.numel()
    return float(values.std()) / math.sqrt(count) if count > 1 else float("nan")


class GaussianBaselinesMixin:
    """The empirical-Bayes baselines of a task on Gaussian data, fitted once per task (scores and figures)."""

    _priors: dict[str, Prior] | None = None

    def _baseline_priors(self, model, dataset: Dataset) -> dict[str, Prior]:
        if self._priors is None:
            self._priors = baseline_priors(model.likelihood, dataset)
        return self._priors

    def signal_moments(self, model, dataset: Dataset):
        """The maximum-likelihood normal prior's (mean, sd) of Gaussian data with one measurement per row (the
        ``normal_eb`` baseline's fit); None for other data."""
        x = model.likelihood.observations(dataset.x)
        if model.likelihood.noise_sd(dataset.x) is None or x.shape[1] != 1:
            return None
        prior = fit_normal_prior(x[:, 0], row_noise_sd(model.likelihood, dataset.x))
        return [prior.mean], [prior.sd]


class NormalMeansTask(GaussianBaselinesMixin, Task):
    """KS and W1 of the learned latent distribution to the true prior and to the true means; the normal
    empirical-Bayes and NPMLE baselines scored alike."""

    def score(self, model, dataset, cfg, device):
        draws = latent_draws(model, cfg, device)
        return {**self._scores(draws[:, 0], dataset), **train_likelihood(model, dataset, cfg, device)}

    def baselines(self, model, dataset, cfg, device, fitted):
        priors = self._baseline_priors(model, dataset)
        likelihoods = likelihood_comparison(model, dataset, cfg, device, priors)
        return {
            name: {
                **self._scores(fit.sample(cfg.evaluation.num_draws, evaluation_generator(cfg)), dataset),
                **likelihoods[name],
            }
            for name, fit in priors.items()
        }

    @staticmethod
    def _scores(draws: Tensor, dataset: Dataset) -> dict[str, float]:
        return {**distribution_scores(draws, dataset.prior), **truth_scores(draws, dataset.truth[:, 0])}

    def snapshot(self, model, dataset, cfg, device):
        return {"draws": latent_draws(model, cfg, device)[:, 0]}

    def figures(self, run_dir, model, dataset, cfg, device, summary, vae_snapshot):
        baselines = {
            name: fit.sample(cfg.evaluation.num_draws, evaluation_generator(cfg))
            for name, fit in self._baseline_priors(model, dataset).items()
        }
        panels = method_panels(
            summary,
            None if vae_snapshot is None else vae_snapshot["draws"],
            latent_draws(model, cfg, device)[:, 0],
            baselines,
        )
        latent_density_figure(
            panels, dataset.prior, float(cfg.data.noise_sd), Path(run_dir) / "figures" / "latent_density.png"
        )
