"""The fitted prior as numbers: the density, CDF, quantiles and moments of u = h(z), z ~ N(0, I_d), per
coordinate, and for several coordinates their correlations and Kendall's tau.

For a one-dimensional latent (d = 1) everything is exact up to quadrature: on a fine grid z_0 < ... < z_N over
[−8.5, 8.5], h is taken as linear between grid points, so u = h(Z) has, by change of variables, the CDF
F(t) = Σ_j P(z_j < Z < z_{j+1}, h(Z) ≤ t) (Gaussian masses Φ(·) − Φ(·) of the part of each segment below t) and
the density f(t) = Σ_{segments j that reach t} φ(z*_j(t)) / |h'_j|, a sum over the branches where h is not
monotone; the moments are Gaussian quadratures E h(Z)^k = ∫ h(z)^k φ(z) dz on the same grid. For d ≥ 2 the
marginals come from ``num_draws`` draws of u: the empirical CDF and quantiles, and a Gaussian kernel density
estimate (Silverman's bandwidth), which ``method`` in the summary names.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data.clayton import kendall_tau
from ..data.priors import EmpiricalPrior
from ..model.model import evaluation_mode

QUANTILE_LEVELS = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)
KENDALL_DRAWS = 2000  # Kendall's tau is O(n²): 2,000 draws give it to about ±0.01 (its standard error is reported)
Z_LIMIT = 8.5  # P(|Z| > 8.5) ≈ 2e-17: nothing a float64 CDF can see is left out


def _standard_normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * torch.special.erfc(-z / math.sqrt(2.0))


@torch.no_grad()
def pushforward_grid(decoder, num_points: int = 20_001, device="cpu") -> tuple[Tensor, Tensor]:
    """(z (N,), u = h(z) (N, P)) on an equally spaced grid over [−Z_LIMIT, Z_LIMIT], float64 on the CPU."""
    z = torch.linspace(-Z_LIMIT, Z_LIMIT, num_points, dtype=torch.float64)
    with evaluation_mode(decoder):
        u = decoder(z.float().unsqueeze(1).to(device)).double().cpu()
    return z, u


def exact_cdf_and_density(z: Tensor, u: Tensor, t: Tensor, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """CDF and density of h(Z) at the points t, for h piecewise linear through (z_j, u_j) (see the module).

    Args:
        z: (N,) increasing grid; u: (N,) h on it; t: (M,) where to evaluate.

    Returns:
        (cdf (M,), density (M,)), float64.
    """
    left_z, right_z, left_u, right_u = z[:-1], z[1:], u[:-1], u[1:]
    slope = (right_u - left_u) / (right_z - left_z)
    left_mass, right_mass = _standard_normal_cdf(left_z), _standard_normal_cdf(right_z)
    cdfs, densities = [], []
    for start in range(0, t.numel(), chunk):
        point = t[start : start + chunk, None]  # (m, 1) against the (N - 1) segments
        flat = slope == 0
        crossing = (point - left_u) / torch.where(flat, torch.ones_like(slope), slope) + left_z
        crossing = crossing.clamp(min=left_z, max=right_z)
        crossing_mass = _standard_normal_cdf(crossing)
        below = torch.where(slope > 0, crossing_mass - left_mass, right_mass - crossing_mass)
        below = torch.where(flat, (left_u <= point).double() * (right_mass - left_mass), below)
        cdfs.append(below.sum(1))
        inside = (point >= torch.minimum(left_u, right_u)) & (point < torch.maximum(left_u, right_u)) & ~flat
        contribution = torch.exp(-0.5 * crossing.square()) / math.sqrt(2 * math.pi) / slope.abs()
        densities.append(torch.where(inside, contribution, torch.zeros_like(contribution)).sum(1))
    return torch.cat(cdfs).clamp(0.0, 1.0), torch.cat(densities)


def exact_quantiles(z: Tensor, u: Tensor, levels, iterations: int = 100) -> Tensor:
    """Quantiles of h(Z) at ``levels`` by bisection on the exact CDF (to float64 resolution after ~60 steps)."""
    levels = torch.as_tensor(levels, dtype=torch.float64)
    low = torch.full_like(levels, float(u.min()))
    high = torch.full_like(levels, float(u.max()))
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        below = exact_cdf_and_density(z, u, middle)[0] < levels
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    return 0.5 * (low + high)


def summarise_prior(decoder, latent_dim: int, draws: Tensor, grid_size: int = 1001, device="cpu") -> dict:
    """The fitted prior's grid (u, density, CDF per coordinate), its per-coordinate summary and, for P ≥ 2
    coordinates, their Pearson correlations and Kendall's tau.

    Args:
        decoder: the fitted h.
        latent_dim: d; d = 1 gives the exact change-of-variables results, d ≥ 2 the draw-based ones.
        draws: (n, P) draws of u = h(z) (for d ≥ 2 and for the dependence of the coordinates).
        grid_size: points of the u grid per coordinate.

    Returns:
        {"grid": [(coordinate, u, density, cdf), ...], "summary": [{coordinate, method, mean, sd, skewness,
        q1, ..., q99}, ...], "dependence": [{first, second, pearson, kendall_tau, kendall_tau_se}, ...]}.
    """
    draws = draws.double()
    grid_rows, summary = [], []
    if latent_dim == 1:
        z, u_on_z = pushforward_grid(decoder, device=device)
        weights = torch.exp(-0.5 * z.square()) / math.sqrt(2 * math.pi) * (z[1] - z[0])  # quadrature weights
    for p in range(draws.shape[1]):
        if latent_dim == 1:
            u = u_on_z[:, p]
            # The grid spans the central 99.9 % and a tenth of that width beyond; the quantiles are exact.
            edges = exact_quantiles(z, u, [0.0005, 0.9995])
            margin = 0.1 * float(edges[1] - edges[0])
            lo, hi = max(float(u.min()), float(edges[0]) - margin), min(float(u.max()), float(edges[1]) + margin)
            t = (
                torch.linspace(lo, hi, grid_size, dtype=torch.float64)
                if hi > lo
                else torch.tensor([lo], dtype=torch.float64)
            )
            cdf, density = exact_cdf_and_density(z, u, t)
            quantiles = exact_quantiles(z, u, QUANTILE_LEVELS).tolist()
            mean = float((weights * u).sum())
            variance = float((weights * (u - mean).square()).sum())
            third = float((weights * (u - mean) ** 3).sum())
            method = "exact (change of variables, d = 1)"
        else:
            sample = draws[:, p]
            lo, hi = float(sample.min()), float(sample.max())
            t = torch.linspace(lo, hi, grid_size, dtype=torch.float64)
            empirical = EmpiricalPrior(sample)
            cdf, density = empirical.cdf(t), empirical.pdf(t)
            mean, variance = float(sample.mean()), float(sample.var())
            third = float(((sample - mean) ** 3).mean())
            method = f"draws (n = {sample.numel()}): empirical CDF, Gaussian kernel density"
            quantiles = torch.quantile(sample, torch.tensor(QUANTILE_LEVELS, dtype=torch.float64)).tolist()
        sd = math.sqrt(max(variance, 0.0))
        summary.append(
            {
                "coordinate": p,
                "method": method,
                "mean": mean,
                "sd": sd,
                "skewness": third / sd**3 if sd > 0 else 0.0,
                **{f"q{round(100 * level)}": value for level, value in zip(QUANTILE_LEVELS, quantiles)},
            }
        )
        grid_rows += [(p, float(a), float(b), float(c)) for a, b, c in zip(t, density, cdf)]
    dependence = []
    if draws.shape[1] >= 2:
        correlation = torch.corrcoef(draws.T)
        for i in range(draws.shape[1]):
            for j in range(i + 1, draws.shape[1]):
                tau, se = kendall_tau(draws[:KENDALL_DRAWS, i], draws[:KENDALL_DRAWS, j])
                dependence.append(
                    {
                        "first": i,
                        "second": j,
                        "pearson": float(correlation[i, j]),
                        "kendall_tau": tau,
                        "kendall_tau_se": se,
                    }
                )
    return {"grid": grid_rows, "summary": summary, "dependence": dependence}
