"""Classical empirical Bayes for Gaussian measurements x_i ~ N(u_i, s_i²), u_i ~ G, as baselines of ALMOND:

- the normal fit G = N(m, tau²) by moments (``tasks/normal_means.normal_empirical_bayes``);
- the Kiefer–Wolfowitz nonparametric maximum likelihood estimate (NPMLE) of G (Kiefer & Wolfowitz 1956): the
  G maximising the marginal likelihood prod_i ∫ N(x_i; u, s_i²) dG(u) over all distributions, computed as the
  weights of a fine grid of support points by EM (Laird 1978; Jiang & Zhang 2009 use the same fixed-grid EM),
  the classical gold standard of empirical Bayes.

For a prior in either form the marginal log-likelihood of each row, log ∫ N(x_i; u, s_i²) dG(u), is exact: what
ALMOND's importance-sampled ``train_nll`` is compared with.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data.priors import DiscretePrior, NormalPrior, Prior
from ..model.model import LOG_2PI


def _gaussian_log_density(x: Tensor, mean: Tensor, sd: Tensor) -> Tensor:
    return -0.5 * ((x - mean) / sd).square() - sd.log() - 0.5 * LOG_2PI


def _sds(x: Tensor, sd) -> Tensor:
    return torch.as_tensor(sd, dtype=torch.float64).expand_as(x)


def _log_joint(prior: DiscretePrior, x: Tensor, sd: Tensor) -> Tensor:
    """log [w_k N(x_i; u_k, s_i²)] for the support points u_k of a discrete prior: (n, K)."""
    return _gaussian_log_density(x[:, None], prior.support[None, :], sd[:, None]) + prior.weights.log()[None, :]


def marginal_log_likelihood(prior: Prior, x: Tensor, sd) -> Tensor:
    """log ∫ N(x_i; u, s_i²) dG(u) per row for a normal or discrete prior G.

    Args:
        prior: a ``NormalPrior`` (closed form: x_i ~ N(m, tau² + s_i²)) or a ``DiscretePrior`` (a log-sum-exp).
        x: (n,) measurements.
        sd: the noise sd, one number or (n,) per row.

    Returns:
        (n,) float64 log-likelihoods in nats.
    """
    x = x.double().flatten()
    sd = _sds(x, sd)
    if isinstance(prior, NormalPrior):
        return _gaussian_log_density(x, torch.full_like(x, prior.mean), (prior.sd**2 + sd.square()).sqrt())
    if isinstance(prior, DiscretePrior):
        return torch.logsumexp(_log_joint(prior, x, sd), dim=1)
    raise TypeError(f"no closed-form marginal likelihood for {type(prior).__name__}")


def fit_npmle(
    x: Tensor, sd, grid_size: int = 400, max_iterations: int = 5000, tolerance: float = 1e-8
) -> DiscretePrior:
    """The Kiefer–Wolfowitz NPMLE of the prior of Gaussian measurements, on a grid, by EM.

    The NPMLE of a Gaussian location mixture is supported within [min x, max x]; its weights on ``grid_size``
    equally spaced points there are found by the EM fixed point w_k ← w_k · mean_i [φ_ik / Σ_j w_j φ_ij], which
    never decreases the likelihood, until the mean log-likelihood changes by less than ``tolerance`` nats per
    iteration (at n = 1,000: 0.65 s on one core, within 1e-5 nats per row of the fit at 1e-9, which takes 0.8 s).

    Args:
        x: (n,) measurements.
        sd: the noise sd, one number or (n,) per row.

    Returns:
        The fitted ``DiscretePrior`` (points of negligible weight, < 1e-12, left out).
    """
    x = x.double().flatten()
    sd = _sds(x, sd)
    grid = torch.linspace(float(x.min()), float(x.max()), grid_size, dtype=torch.float64)
    log_kernel = _gaussian_log_density(x[:, None], grid[None, :], sd[:, None])
    shift = log_kernel.max(dim=1, keepdim=True).values  # row-wise scaling: the EM update is invariant to it
    kernel = (log_kernel - shift).exp()  # (n, grid_size)
    weights = torch.full((grid_size,), 1.0 / grid_size, dtype=torch.float64)
    previous = -math.inf
    for _ in range(max_iterations):
        mixture = kernel @ weights
        mean_log_likelihood = float(mixture.log().mean())
        if mean_log_likelihood - previous < tolerance:
            break
        previous = mean_log_likelihood
        weights = weights * (kernel.T @ (1.0 / mixture)) / x.numel()
    keep = weights > 1e-12
    return DiscretePrior(grid[keep], weights[keep], name="npmle")


def posterior_means(prior: Prior, x: Tensor, sd) -> Tensor:
    """E[u_i | x_i] under a normal or discrete prior: (n,) float64 shrinkage estimates."""
    x = x.double().flatten()
    sd = _sds(x, sd)
    if isinstance(prior, NormalPrior):
        tau2 = prior.sd**2
        return prior.mean + tau2 / (tau2 + sd.square()) * (x - prior.mean)
    if isinstance(prior, DiscretePrior):
        return (torch.softmax(_log_joint(prior, x, sd), dim=1) * prior.support[None, :]).sum(1)
    raise TypeError(f"no closed-form posterior mean for {type(prior).__name__}")
