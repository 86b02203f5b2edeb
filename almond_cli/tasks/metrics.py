"""What the tasks measure: the distances of a sample to a known distribution (Kolmogorov–Smirnov, 1-Wasserstein),
the draws of a learned latent distribution they are computed on, and the training (and held-out) rows'
likelihood.

The distances score a learned latent distribution against the simulation's true prior (Qiu & Wang 2019, Table 1).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..model.marginal import estimate_with, nll_summary
from ..model.model import prior_draws

CdfFn = Callable[[Tensor], Tensor]


def ks_distance(samples: Tensor, cdf: CdfFn) -> float:
    """sup_t |F_n(t) - F(t)| for the empirical CDF F_n of ``samples`` (n,) and a continuous CDF F."""
    sorted_samples = torch.sort(samples.double().flatten()).values
    n = sorted_samples.numel()
    true_cdf = cdf(sorted_samples)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    above = ranks / n - true_cdf
    below = true_cdf - (ranks - 1) / n
    return float(torch.maximum(above, below).max())


def w1_distance(samples: Tensor, cdf: CdfFn, lower: float, upper: float, grid_size: int = 200_001) -> float:
    """∫ |F_n(t) - F(t)| dt, the 1-Wasserstein distance, by the trapezoid rule on [lower, upper].

    The interval is widened to cover every sample; the caller picks ``lower`` and ``upper`` so that F puts
    negligible mass outside (for example its 1e-7 and 1 - 1e-7 quantiles).
    """
    sorted_samples = torch.sort(samples.double().flatten()).values
    lower = min(lower, float(sorted_samples[0]))
    upper = max(upper, float(sorted_samples[-1]))
    grid = torch.linspace(lower, upper, grid_size, dtype=torch.float64)
    empirical = torch.searchsorted(sorted_samples, grid, right=True).double() / sorted_samples.numel()
    return float(torch.trapezoid((empirical - cdf(grid)).abs(), grid))


def evaluation_generator(cfg) -> torch.Generator:
    """A CPU generator seeded by ``evaluation.seed``: VAE, ALMOND and baselines are scored on the same draws."""
    return torch.Generator().manual_seed(int(cfg.evaluation.seed))


def latent_draws(model, cfg, device) -> Tensor:
    """``evaluation.num_draws`` draws of u = h(z) of a fitted model, (num_draws, P) on the CPU."""
    return prior_draws(
        model.decoder, int(cfg.latent_dim), int(cfg.evaluation.num_draws), evaluation_generator(cfg), device
    )


# What a score of the training rows is called when it is computed alike on the held-out rows (data.holdout_fraction).
HELDOUT_NAMES = {
    "train_nll": "heldout_nll",
    "train_nll_se": "heldout_nll_se",
    "almond_gain": "almond_heldout_gain",
    "almond_gain_se": "almond_heldout_gain_se",
    "mse_posterior_mean": "heldout_mse_posterior_mean",
}


def heldout_names(scores: dict[str, float]) -> dict[str, float]:
    """``scores`` of the held-out rows under their held-out names (``HELDOUT_NAMES``)."""
    return {HELDOUT_NAMES[name]: value for name, value in scores.items()}


def train_likelihood(model, dataset, cfg, device) -> dict[str, float]:
    """``train_nll`` and ``train_nll_se``: −log p(x) per data point on the training rows and its standard error,
    by the importance-sampling estimator of ``model.marginal`` with ``evaluation.nll_samples`` draws each; where
    the true u of every row is known, also ``mse_posterior_mean``: the mean squared error of the estimated
    E[u_i | x_i] (the empirical-Bayes estimates) against them. Where ``dataset.heldout`` holds rows kept out of
    training, the same scores of those rows too: ``heldout_nll``, ``heldout_nll_se``, ``heldout_mse_posterior_mean``."""
    scores = _likelihood_scores(model, dataset, cfg, device)
    if dataset.heldout is not None:
        scores.update(heldout_names(_likelihood_scores(model, dataset.heldout, cfg, device)))
    return scores


def _likelihood_scores(model, dataset, cfg, device) -> dict[str, float]:
    """``train_likelihood``'s scores of the rows of ``dataset`` alone."""
    truth = dataset.truth
    # Per unit where rows are grouped in units (train_nll is then per unit); row by row otherwise.
    estimate = estimate_with(
        cfg.evaluation, model, dataset.x.to(device), with_mean_u=truth is not None, unit_index=dataset.unit_index
    )
    scores = nll_summary(estimate, "train")
    if truth is not None and estimate.posterior_mean_u.shape == truth.shape:
        scores["mse_posterior_mean"] = float((estimate.posterior_mean_u - truth.double()).square().mean())
    return scores
