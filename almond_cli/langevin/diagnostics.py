"""Chain diagnostics: the field's conventions for any set of chains, the rank-normalised split-R-hat and the bulk and
tail effective sample sizes of Vehtari et al. (2021) (``rank_rhat``, ``ess_bulk``, ``ess_tail``), applied to the
persistent chains' trajectories (``trajectory_convergence``); and the chains against the exact posterior by
quadrature for latents of one or two dimensions (``posterior_ks``, ``posterior_marginal_ks``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..model.model import evaluation_mode, standard_normal_log_prob


# ----- rank-normalised split-R-hat and effective sample size (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021) ---
def _split_chains(draws: np.ndarray) -> np.ndarray:
    """(..., M, N) -> (..., 2M, N // 2): each chain's first and last halves (the middle draw of an odd N is dropped)."""
    half = draws.shape[-1] // 2
    return np.concatenate([draws[..., :half], draws[..., draws.shape[-1] - half :]], axis=-2)


def _rank_normalise(draws: np.ndarray) -> np.ndarray:
    """Normal scores of the fractional ranks pooled over the last two axes (chains and draws),
    Φ⁻¹((r − 3/8) / (S + 1/4)), ties given their average rank; leading axes are independent sets of chains."""
    rows = draws.reshape(-1, draws.shape[-2] * draws.shape[-1])
    size = rows.shape[1]
    positions = np.broadcast_to(np.arange(1, size + 1, dtype=np.float64), rows.shape)
    order = np.argsort(rows, axis=1)  # one sort per set: ties are averaged below, so it need not be stable
    ranks = np.empty(rows.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, positions, axis=1)
    ordered = np.take_along_axis(rows, order, axis=1)
    tied = ordered[:, 1:] == ordered[:, :-1]
    for row in np.flatnonzero(tied.any(axis=1)):  # average rank within each group of equal values
        group = np.concatenate([[0], np.cumsum(~tied[row])])  # group of each sorted value
        ranks[row, order[row]] = (np.bincount(group, weights=positions[row]) / np.bincount(group))[group]
    scores = torch.special.ndtri(torch.from_numpy((ranks - 0.375) / (size + 0.25))).numpy()
    return scores.reshape(draws.shape)


def _plain_rhat(draws: np.ndarray) -> np.ndarray:
    """sqrt((B / W + N − 1) / N) with B the between-chain and W the mean within-chain variance of (..., M, N) draws;
    1 where both vanish, inf where only W does."""
    num = draws.shape[-1]
    between = num * np.var(draws.mean(axis=-1), axis=-1, ddof=1)
    within = np.mean(np.var(draws, axis=-1, ddof=1), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rhat = np.sqrt((between / within + num - 1) / num)
    return np.where(within == 0, np.where(between == 0, 1.0, math.inf), rhat)


def rank_rhat(draws) -> float:
    """The rank-normalised split-R-hat of (M chains, N draws): the larger of the bulk R-hat (of the rank-normalised
    draws) and the tail R-hat (of the rank-normalised |draws − median|), as ArviZ's ``rhat(method="rank")``.
    Values above 1.01 say the chains disagree (Vehtari et al. 2021 recommend that threshold)."""
    draws = np.asarray(draws, dtype=np.float64)
    return float(_rank_rhat(draws, _rank_normalise(_split_chains(draws))))


def _rank_rhat(draws: np.ndarray, bulk_scores: np.ndarray) -> np.ndarray:
    """``rank_rhat`` of each set of chains (..., M, N), with the rank-normalised split chains already computed
    (the bulk ESS needs them too)."""
    pooled = draws.reshape(*draws.shape[:-2], -1)
    deviation = np.abs(draws - np.median(pooled, axis=-1)[..., None, None])
    return np.maximum(_plain_rhat(bulk_scores), _plain_rhat(_rank_normalise(_split_chains(deviation))))


def _autocovariance(draws: np.ndarray) -> np.ndarray:
    """Biased autocovariances of each chain, lags 0..N−1, by FFT: (..., M, N)."""
    num = draws.shape[-1]
    centred = draws - draws.mean(axis=-1, keepdims=True)
    size = 1 << (2 * num - 1).bit_length()
    spectrum = np.fft.rfft(centred, n=size, axis=-1)
    return np.fft.irfft(spectrum * np.conjugate(spectrum), n=size, axis=-1)[..., :num] / num


def _ess(draws: np.ndarray) -> np.ndarray:
    """Effective sample size of each set of (..., M, N) draws: Geyer's initial positive and monotone sequences on the
    multi-chain autocorrelation (Vehtari et al. 2021, Section 3.2; the same steps as ArviZ's ``_ess``)."""
    chains, num = draws.shape[-2:]
    leading = draws.shape[:-2]
    if num < 4:
        return np.full(leading, np.nan)
    mean_acov = _autocovariance(draws).mean(axis=-2).reshape(-1, num)  # the mean over chains at each lag
    chain_means = draws.mean(axis=-1).reshape(-1, chains)
    between = np.var(chain_means, axis=-1, ddof=1) if chains > 1 else np.zeros(len(chain_means))
    total = chains * num
    result = np.empty(len(mean_acov))
    for index, (acov, extra) in enumerate(zip(mean_acov, between)):
        mean_var = acov[0] * num / (num - 1.0)
        var_plus = mean_var * (num - 1.0) / num + extra
        if var_plus == 0:
            result[index] = total
            continue
        rho = np.zeros(num)
        rho_even, rho_odd = 1.0, 1.0 - (mean_var - acov[1]) / var_plus
        rho[0], rho[1] = rho_even, rho_odd
        t = 1
        while t < num - 3 and rho_even + rho_odd > 0.0:  # initial positive sequence
            rho_even = 1.0 - (mean_var - acov[t + 1]) / var_plus
            rho_odd = 1.0 - (mean_var - acov[t + 2]) / var_plus
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
        tau = -1.0 + 2.0 * np.sum(rho[: max_t + 1]) + np.sum(rho[max_t + 1 : max_t + 2])
        result[index] = total / max(tau, 1.0 / np.log10(total))
    return result.reshape(leading)


def _ess_tail(draws: np.ndarray) -> np.ndarray:
    """``ess_tail`` of each set of chains (..., M, N)."""
    pooled = draws.reshape(*draws.shape[:-2], -1)
    low, high = np.quantile(pooled, [0.05, 0.95], axis=-1)
    return np.minimum(
        _ess(_split_chains((draws <= low[..., None, None]).astype(np.float64))),
        _ess(_split_chains((draws <= high[..., None, None]).astype(np.float64))),
    )


def ess_bulk(draws) -> float:
    """Bulk effective sample size of (M chains, N draws): the ESS of the rank-normalised split chains."""
    return float(_ess(_rank_normalise(_split_chains(np.asarray(draws, dtype=np.float64)))))


def ess_tail(draws) -> float:
    """Tail effective sample size: the smaller ESS of the indicators of the 5 % and 95 % quantiles (split chains)."""
    return float(_ess_tail(np.asarray(draws, dtype=np.float64)))


def rhat_and_ess_bulk(draws) -> tuple[np.ndarray, np.ndarray]:
    """``rank_rhat`` and ``ess_bulk`` of every set of chains at once: (..., M chains, N draws) -> two (...) arrays
    (the rank normalisation shared by both; ESS is NaN below N = 8 draws per chain)."""
    draws = np.asarray(draws, dtype=np.float64)
    scores = _rank_normalise(_split_chains(draws))
    return _rank_rhat(draws, scores), _ess(scores)


def trajectory_convergence(draws) -> dict[str, float]:
    """R-hat and effective sample size of each data point's persistent chains over their trajectory.

    Args:
        draws: (P points, C chains, N draws, d) chain positions, one draw per chain per epoch, N >= 4.

    Returns:
        Over the points, with each point's worst coordinate (largest R-hat, smallest ESS): ``rhat_max`` and
        ``rhat_median`` of the rank-normalised split-R-hat, and from N >= 8 draws ``ess_bulk_min``,
        ``ess_bulk_median`` and ``ess_tail_min`` (effective draws per point, out of C · N).
    """
    draws = np.asarray(draws, dtype=np.float64)
    num = draws.shape[2]
    if num < 4:
        raise ValueError(f"trajectory diagnostics need >= 4 draws per chain, got {num}")
    chains = np.ascontiguousarray(draws.transpose(0, 3, 1, 2))  # (P, d, C, N): one set of chains per coordinate
    scores = _rank_normalise(_split_chains(chains))  # shared by the bulk R-hat and the bulk ESS
    rhat = _rank_rhat(chains, scores).max(axis=1)
    results = {"rhat_max": float(rhat.max()), "rhat_median": float(np.median(rhat))}
    if num >= 8:  # ESS splits each chain in two and needs >= 4 draws per half
        bulk, tail = _ess(scores).min(axis=1), _ess_tail(chains).min(axis=1)
        results.update(
            {
                "ess_bulk_min": float(bulk.min()),
                "ess_bulk_median": float(np.median(bulk)),
                "ess_tail_min": float(tail.min()),
            }
        )
    return results


# ----- the chains against the exact posterior (one- and two-dimensional latents) -----------------------------------
KOLMOGOROV_MEAN = math.sqrt(math.pi / 2) * math.log(2)  # E sup|Brownian bridge| ≈ 0.8687: sqrt(C) · KS of C exact draws


def _ks_against_grid_cdf(cdf_grid: Tensor, lower: Tensor, spacing: Tensor, positions: Tensor) -> Tensor:
    """KS of each row's sample against a CDF tabulated on a uniform grid (linear between nodes; 0 below, 1 above).

    Args:
        cdf_grid: (B, G) the CDF at lower + spacing · (0..G-1), per row.
        lower, spacing: (B,) each row's grid.
        positions: (B, C) the sample.
    """
    grid_size = cdf_grid.shape[1]
    positions = torch.sort(positions.double(), dim=1).values
    scaled = ((positions - lower[:, None]) / spacing[:, None]).clamp(0, grid_size - 1)
    index = scaled.floor().long().clamp(0, grid_size - 2)
    share = scaled - index
    cdf = torch.gather(cdf_grid, 1, index) * (1 - share) + torch.gather(cdf_grid, 1, index + 1) * share
    count = positions.shape[1]
    ranks = torch.arange(1, count + 1, dtype=torch.float64, device=positions.device)
    return torch.maximum(ranks / count - cdf, cdf - (ranks - 1) / count).max(dim=1).values


def _trapezoid_cdf(density: Tensor, spacing: Tensor) -> Tensor:
    """(B, G) unnormalised density on uniform grids of ``spacing`` (B,) -> (B, G) CDF by the trapezoid rule."""
    steps = 0.5 * (density[:, 1:] + density[:, :-1]) * spacing[:, None]
    cumulative = torch.cat([torch.zeros_like(density[:, :1]), torch.cumsum(steps, dim=1)], dim=1)
    return cumulative / cumulative[:, -1:]


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
    batch = x.shape[0]
    spacing = torch.full((batch,), 2 * limit / (grid_size - 1), dtype=torch.float64, device=x.device)
    lower = torch.full((batch,), -limit, dtype=torch.float64, device=x.device)
    return _ks_against_grid_cdf(_trapezoid_cdf(density, spacing), lower, spacing, z[..., 0])


def _log_joint_on_grid(model, x: Tensor, nodes: Tensor) -> Tensor:
    """log p(x_i, z) (B, N) at ``nodes``: (N, d) shared by every row of x (B, D), decoded once, or (B, N, d) per row;
    one row at a time through the likelihood (bounded memory)."""
    with evaluation_mode(model):
        if nodes.dim() == 2:
            u = model.decoder(nodes).unsqueeze(0)
            prior = standard_normal_log_prob(nodes)
            rows = [model.likelihood.log_prob(x[i : i + 1], u) + prior for i in range(x.shape[0])]
        else:
            rows = [model.log_joint(x[i : i + 1], nodes[i : i + 1]) for i in range(x.shape[0])]
    return torch.cat(rows).double()


def _square_grid(lower: Tensor, upper: Tensor, size: int) -> Tensor:
    """(B, size², 2) nodes of each row's box [lower, upper] (B, 2), axis 0 slow and axis 1 fast."""
    steps = torch.linspace(0, 1, size, dtype=lower.dtype, device=lower.device)
    axes = lower[:, None, :] + (upper - lower)[:, None, :] * steps[None, :, None]  # (B, size, 2)
    first = axes[:, :, None, 0].expand(-1, size, size)
    second = axes[:, None, :, 1].expand(-1, size, size)
    return torch.stack([first, second], dim=-1).reshape(lower.shape[0], size * size, 2)


@torch.no_grad()
def posterior_marginal_ks(model, x: Tensor, z: Tensor, grid_size: int = 61, limit: float = 8.5) -> Tensor:
    """KS distance of each coordinate of the chains to the same marginal of the exact posterior, for d = 1 or 2.

    For d = 2 the posterior is tabulated on a ``grid_size``² grid in two passes: over [−limit, limit]² to find the
    box holding its mass (nodes above 1e-12 of the largest density, widened by a node and joined with the chains'
    range), then over that box, where the marginal densities are summed out and integrated by the trapezoid
    rule. A second pass keeps sharp posteriors (sd ≪ 2 · limit / grid_size) resolved.

    Args:
        z: (B, C, d) the chains of the data points x (B, D).

    Returns:
        (B, d) KS distances; exact draws give about 0.87 / sqrt(C) for each coordinate.
    """
    latent_dim = z.shape[-1]
    if latent_dim == 1:
        return posterior_ks(model, x, z).unsqueeze(1)
    if latent_dim != 2:
        raise ValueError(f"the exact posterior is tabulated for d = 1 or 2, got d = {latent_dim}")
    batch = x.shape[0]
    box_lower = torch.full((batch, 2), -limit, dtype=torch.float64, device=x.device)
    box_upper = -box_lower
    coarse = _square_grid(box_lower[:1], box_upper[:1], grid_size)[0].to(z.dtype)  # decoded once for all rows
    log_joint = _log_joint_on_grid(model, x, coarse)
    mass = (log_joint - log_joint.max(dim=1, keepdim=True).values).exp() > 1e-12  # (B, G²)
    node = (box_upper - box_lower) / (grid_size - 1)
    coarse = coarse.double().unsqueeze(0)
    lowest = torch.where(mass[..., None], coarse, math.inf).amin(dim=1) - node
    highest = torch.where(mass[..., None], coarse, -math.inf).amax(dim=1) + node
    chains = z.double()
    box_lower = torch.minimum(lowest, chains.amin(dim=1)).clamp(min=-limit)
    box_upper = torch.maximum(highest, chains.amax(dim=1)).clamp(max=limit)
    log_joint = _log_joint_on_grid(model, x, _square_grid(box_lower, box_upper, grid_size).to(z.dtype))
    density = (log_joint - log_joint.max(dim=1, keepdim=True).values).exp()
    square = density.view(batch, grid_size, grid_size)
    spacing = (box_upper - box_lower) / (grid_size - 1)
    results = []
    for axis, other in ((0, 2), (1, 1)):
        # The marginal of coordinate ``axis``: the trapezoid sum over the other axis (its spacing is a constant).
        weights = torch.ones(grid_size, dtype=torch.float64, device=x.device)
        weights[0] = weights[-1] = 0.5
        marginal = (square * (weights.view(1, 1, -1) if other == 2 else weights.view(1, -1, 1))).sum(dim=other)
        results.append(
            _ks_against_grid_cdf(
                _trapezoid_cdf(marginal, spacing[:, axis]), box_lower[:, axis], spacing[:, axis], z[..., axis]
            )
        )
    return torch.stack(results, dim=1)
