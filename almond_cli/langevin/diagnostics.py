"""Chain diagnostics: the split-R-hat of the log-joint across the persistent chains of a data point, and the
field's conventions for any set of chains, the rank-normalised split-R-hat and the bulk and tail effective sample
sizes of Vehtari et al. (2021) (``rank_rhat``, ``ess_bulk``, ``ess_tail``).

Gelman et al. (Bayesian Data Analysis, 3rd ed., Section 11.4): split each of C chains of N draws into two
halves, compare the variance between the 2C half-chain means (B) with the mean within-half variance (W);

    var+ = (n - 1) / n · W + B / n,    R-hat = sqrt(var+ / W),    n = N // 2.

R-hat near 1 says the chains agree; well above 1 (say > 1.1) says they have not mixed, i.e. the draws
after ``burn_in`` still remember where each chain started. ALMOND runs every data point's C chains for
``num_steps`` steps per update and keeps those after ``burn_in`` (Qiu & Wang 2019, Algorithm 1), so the check
runs the same sampler from the persistent chains for ``burn_in + rhat_draws`` steps under the current model.
It draws its noise from its own generator, so training (and exact resume) is unaffected.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..model.model import evaluation_mode
from . import sampler
from .targets import AutogradTarget


def split_rhat(draws: Tensor) -> Tensor:
    """Split-R-hat over the chain axis.

    Args:
        draws: (..., C, N) a scalar statistic of C chains with N >= 4 draws each, in draw order.

    Returns:
        (...) R-hat per leading index: 1 when both variances vanish (identical constant chains), +inf when
        the chains are constant but disagree.
    """
    num_draws = draws.shape[-1]
    if num_draws < 4:
        raise ValueError(f"split-R-hat needs >= 4 draws per chain, got {num_draws}")
    half = num_draws // 2
    # The middle draw of an odd-length chain is dropped so both halves have n draws (as BDA3 does).
    halves = torch.cat([draws[..., :half], draws[..., num_draws - half:]], dim=-2).double()  # (..., 2C, n)
    chain_means = halves.mean(-1)
    between = half * chain_means.var(-1, unbiased=True)
    within = halves.var(-1, unbiased=True).mean(-1)
    pooled = (half - 1) / half * within + between / half
    rhat = (pooled / within).sqrt()
    rhat = torch.where((within == 0) & (between == 0), torch.ones_like(rhat), rhat)
    return torch.where((within == 0) & (between > 0), torch.full_like(rhat, float("inf")), rhat)


def chain_rhat(model, chains, x: Tensor, num_points: int, step_size: float, burn_in: int, num_draws: int,
               generator: torch.Generator) -> dict[str, float]:
    """Split-R-hat of log p(x, z) across each data point's chains, from the persistent chains.

    Args:
        model: the ``LatentVariableModel`` whose log-joint is the target.
        chains: the ``PersistentChains`` of the data ``x`` (n, C, d); they are read, not moved.
        x: (n, D) the data the chains belong to.
        num_points: how many data points (the first ones) to check.
        step_size: the Langevin step size in force.
        burn_in: steps discarded before the draws are kept.
        num_draws: draws kept per chain (>= 4).
        generator: the check's own noise source.

    Returns:
        ``rhat_max`` and ``rhat_median`` over the checked data points.
    """
    count = min(num_points, x.shape[0])
    indices = torch.arange(count)
    batch = x[:count]
    state = None
    kept = []
    # Eval mode, as the ALMOND update: in train mode batch norm would normalise by this check's own batch and
    # overwrite the running statistics that define the training target and the scored model.
    target = AutogradTarget(lambda z: model.log_joint(batch, z))
    with evaluation_mode(model), model.frozen():
        state = sampler.evaluate(chains.gather(indices), target)
        for index in range(burn_in + num_draws):
            state, _ = sampler.step(state, target, step_size, generator)
            if index >= burn_in:
                kept.append(state.log_joint)
    rhat = split_rhat(torch.stack(kept, dim=-1))  # (B, C, N) -> (B,)
    return {"rhat_max": float(rhat.max()), "rhat_median": float(rhat.median())}


# ----- rank-normalised split-R-hat and effective sample size (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021) ---
def _split_chains(draws: np.ndarray) -> np.ndarray:
    """(M, N) -> (2M, N // 2): each chain's first and last halves (the middle draw of an odd N is dropped)."""
    half = draws.shape[1] // 2
    return np.concatenate([draws[:, :half], draws[:, draws.shape[1] - half:]], axis=0)


def _rank_normalise(draws: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled fractional ranks, Φ⁻¹((r − 3/8) / (S + 1/4)), ties given their average rank."""
    flat = draws.ravel()
    order = np.argsort(flat, kind="mergesort")
    ranks = np.empty(flat.size, dtype=np.float64)
    ranks[order] = np.arange(1, flat.size + 1, dtype=np.float64)
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if (counts > 1).any():  # average rank within each group of ties
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    scores = torch.special.ndtri(torch.from_numpy((ranks - 0.375) / (flat.size + 0.25))).numpy()
    return scores.reshape(draws.shape)


def _plain_rhat(draws: np.ndarray) -> float:
    """sqrt((B / W + N − 1) / N) with B the between-chain and W the mean within-chain variance of (M, N) draws."""
    num = draws.shape[1]
    between = num * np.var(draws.mean(axis=1), ddof=1)
    within = np.mean(np.var(draws, axis=1, ddof=1))
    if within == 0:
        return 1.0 if between == 0 else math.inf
    return float(np.sqrt((between / within + num - 1) / num))


def rank_rhat(draws) -> float:
    """The rank-normalised split-R-hat of (M chains, N draws): the larger of the bulk R-hat (of the rank-normalised
    draws) and the tail R-hat (of the rank-normalised |draws − median|), as ArviZ's ``rhat(method="rank")``.
    Values above 1.01 say the chains disagree (Vehtari et al. 2021 recommend that threshold)."""
    draws = np.asarray(draws, dtype=np.float64)
    bulk = _plain_rhat(_rank_normalise(_split_chains(draws)))
    tail = _plain_rhat(_rank_normalise(_split_chains(np.abs(draws - np.median(draws)))))
    return max(bulk, tail)


def _autocovariance(draws: np.ndarray) -> np.ndarray:
    """Biased autocovariances of each chain, lags 0..N−1, by FFT: (M, N)."""
    num = draws.shape[1]
    centred = draws - draws.mean(axis=1, keepdims=True)
    size = 1 << (2 * num - 1).bit_length()
    spectrum = np.fft.rfft(centred, n=size, axis=1)
    return np.fft.irfft(spectrum * np.conjugate(spectrum), n=size, axis=1)[:, :num] / num


def _ess(draws: np.ndarray) -> float:
    """Effective sample size of (M, N) draws: Geyer's initial positive and monotone sequences on the multi-chain
    autocorrelation (Vehtari et al. 2021, Section 3.2; the same steps as ArviZ's ``_ess``)."""
    chains, num = draws.shape
    if num < 4:
        return float("nan")
    acov = _autocovariance(draws)
    mean_var = np.mean(acov[:, 0]) * num / (num - 1.0)
    var_plus = mean_var * (num - 1.0) / num
    if chains > 1:
        var_plus += np.var(draws.mean(axis=1), ddof=1)
    if var_plus == 0:
        return float(chains * num)
    rho = np.zeros(num)
    rho_even, rho_odd = 1.0, 1.0 - (mean_var - np.mean(acov[:, 1])) / var_plus
    rho[0], rho[1] = rho_even, rho_odd
    t = 1
    while t < num - 3 and rho_even + rho_odd > 0.0:  # initial positive sequence
        rho_even = 1.0 - (mean_var - np.mean(acov[:, t + 1])) / var_plus
        rho_odd = 1.0 - (mean_var - np.mean(acov[:, t + 2])) / var_plus
        if rho_even + rho_odd >= 0:
            rho[t + 1], rho[t + 2] = rho_even, rho_odd
        t += 2
    max_t = t - 2
    if rho_even > 0:
        rho[max_t + 1] = rho_even
    t = 1
    while t <= max_t - 2:  # initial monotone sequence
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2.0
        t += 2
    total = chains * num
    tau = -1.0 + 2.0 * np.sum(rho[:max_t + 1]) + np.sum(rho[max_t + 1:max_t + 2])
    return float(total / max(tau, 1.0 / np.log10(total)))


def ess_bulk(draws) -> float:
    """Bulk effective sample size of (M chains, N draws): the ESS of the rank-normalised split chains."""
    return _ess(_rank_normalise(_split_chains(np.asarray(draws, dtype=np.float64))))


def ess_tail(draws) -> float:
    """Tail effective sample size: the smaller ESS of the indicators of the 5 % and 95 % quantiles (split chains)."""
    draws = np.asarray(draws, dtype=np.float64)
    low, high = np.quantile(draws, [0.05, 0.95])
    return min(_ess(_split_chains((draws <= low).astype(np.float64))),
               _ess(_split_chains((draws <= high).astype(np.float64))))


# ----- the chains against the exact posterior (one-dimensional latents) -------------------------------------------
KOLMOGOROV_MEAN = math.sqrt(math.pi / 2) * math.log(2)  # E sup|Brownian bridge| ≈ 0.8687: sqrt(C) · KS of C exact draws


@torch.no_grad()
def posterior_ks(model, x: Tensor, z: Tensor, grid_size: int = 2001, limit: float = 8.5) -> Tensor:
    """KS distance between each data point's chains and its exact posterior p(z | x_i), for a latent of d = 1.

    The posterior is p(z | x) ∝ f(x | h(z)) N(z; 0, 1), normalised by the trapezoid rule on ``grid_size`` points of
    [−limit, limit] (outside, the prior alone has mass < 1e-16); its CDF is interpolated linearly between them.

    Args:
        model: the ``LatentVariableModel`` (evaluated in eval mode, parameters untouched).
        x: (B, D) data points.
        z: (B, C, 1) their chains.

    Returns:
        (B,) KS distances. C exact draws give about 0.87 / sqrt(C) (``KOLMOGOROV_MEAN``); much more says the chains
        do not follow the posterior (too few steps, a step size too large, a bad start).
    """
    grid = torch.linspace(-limit, limit, grid_size, device=x.device, dtype=z.dtype)
    with evaluation_mode(model):
        log_joint = model.log_joint(x, grid.view(1, -1, 1).expand(x.shape[0], -1, -1)).double()  # (B, G)
    density = (log_joint - log_joint.max(dim=1, keepdim=True).values).exp()
    spacing = float(grid[1] - grid[0])
    cumulative = torch.cat([torch.zeros_like(density[:, :1]),
                            torch.cumsum(0.5 * (density[:, 1:] + density[:, :-1]) * spacing, dim=1)], dim=1)
    cdf_grid = cumulative / cumulative[:, -1:]
    positions = torch.sort(z[..., 0].double(), dim=1).values.clamp(-limit, limit)  # (B, C)
    scaled = (positions + limit) / spacing
    lower = scaled.floor().long().clamp(0, grid_size - 2)
    share = scaled - lower
    cdf = torch.gather(cdf_grid, 1, lower) * (1 - share) + torch.gather(cdf_grid, 1, lower + 1) * share
    count = positions.shape[1]
    ranks = torch.arange(1, count + 1, dtype=torch.float64, device=x.device)
    return torch.maximum(ranks / count - cdf, cdf - (ranks - 1) / count).max(dim=1).values
