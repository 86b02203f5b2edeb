"""The GLMM simulation's non-Gaussian random effects: a Clayton copula with shifted-gamma marginals.

Qiu & Wang (2019, Section 5.2) draw random effects u_i in R^p whose dependence is a Clayton copula
(theta = 2) and whose marginals are Gamma(shape 2, scale 1) − 2 (mean 0, skewed). This module samples that
law exactly and gives what scores a fit against it:

- ``clayton_uniforms``: the Marshall–Olkin gamma-frailty construction, exact (no MCMC, no rejection):
  V ~ Gamma(1/theta, 1), E_j ~ Exp(1) iid, U_j = (1 + E_j / V)^(−1/theta) has the Clayton copula.
- ``ShiftedGamma``: the marginal as a ``Prior`` (sample, CDF, density, quantile).
- Kendall's tau and Kendall's lambda function lambda(t) = t − K(t), where K is the distribution function of
  C(U_1, U_2) (Genest & Rivest 1993); for Clayton lambda(t) = −(t − t^(theta+1)) / theta. Both depend only
  on the copula, so they are computed from ranks and need no marginal transform.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .priors import Prior


def clayton_uniforms(n: int, dim: int, theta: float, generator: torch.Generator) -> Tensor:
    """n draws of a dim-variate Clayton copula with parameter ``theta`` > 0, exactly.

    Returns:
        (n, dim) float64 uniforms on (0, 1).
    """
    if not theta > 0:
        raise ValueError(f"the Clayton parameter theta must be > 0, got {theta}")
    concentration = torch.full((n, 1), 1.0 / theta, dtype=torch.float64)
    frailty = torch._standard_gamma(concentration, generator=generator)
    exponentials = -torch.log1p(-torch.rand(n, dim, generator=generator, dtype=torch.float64))
    # (1 + E/V)^(-1/theta) computed as exp(-log1p(E/V)/theta): stays in (0, 1) even when V is tiny.
    return torch.exp(-torch.log1p(exponentials / frailty) / theta)


class ShiftedGamma(Prior):
    """Gamma(shape, scale) + shift: the GLMM random effects' marginal (paper: shape 2, scale 1, shift −2)."""

    name = "shifted_gamma"

    def __init__(self, shape: float = 2.0, scale: float = 1.0, shift: float = -2.0):
        if not (shape > 0 and scale > 0):
            raise ValueError(f"gamma shape and scale must be > 0, got {shape}, {scale}")
        self.shape, self.scale, self.shift = float(shape), float(scale), float(shift)

    def _standardised(self, t) -> Tensor:
        return ((torch.as_tensor(t, dtype=torch.float64) - self.shift) / self.scale).clamp(min=0.0)

    def sample(self, n, generator):
        return self.icdf(torch.rand(n, generator=generator, dtype=torch.float64))

    def cdf(self, t):
        return torch.special.gammainc(torch.tensor(self.shape, dtype=torch.float64), self._standardised(t))

    def pdf(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        s = self._standardised(t)
        log_density = (self.shape - 1) * torch.log(s) - s - math.lgamma(self.shape) - math.log(self.scale)
        return torch.where(t > self.shift, log_density.exp(), torch.zeros_like(t))

    def icdf(self, probabilities: Tensor) -> Tensor:
        """The quantile function by safeguarded Newton on the CDF: a Newton step that leaves the bracket
        known to hold the root is replaced by bisection, so it converges for every p in (0, 1).

        Args: probabilities (...,) in [0, 1]. Returns (...,) float64 quantiles.
        """
        p = torch.as_tensor(probabilities, dtype=torch.float64)
        shape = torch.tensor(self.shape, dtype=torch.float64)
        low = torch.zeros_like(p)
        high = torch.full_like(p, self.shape + 60.0 * math.sqrt(self.shape) + 60.0)
        guess = torch.full_like(p, self.shape)
        log_norm = math.lgamma(self.shape)
        for _ in range(60):
            excess = torch.special.gammainc(shape, guess) - p
            low = torch.where(excess < 0, guess, low)
            high = torch.where(excess >= 0, guess, high)
            density = torch.exp((self.shape - 1) * torch.log(guess) - guess - log_norm)
            newton = guess - excess / density
            inside = (newton > low) & (newton < high) & torch.isfinite(newton)
            step = torch.where(inside, newton, 0.5 * (low + high))
            if bool(((step - guess).abs() <= 1e-11 * (1.0 + guess)).all()):
                guess = step
                break
            guess = step
        return self.shift + self.scale * guess

    def bulk(self):
        return self.shift, float(self.icdf(torch.tensor(1.0 - 1e-10))) + self.scale


def clayton_random_effects(
    n: int, dim: int, theta: float, marginal: ShiftedGamma, generator: torch.Generator
) -> Tensor:
    """u_i = F^{-1}(U_i) with U_i from the Clayton copula and F the marginal: (n, dim) float64."""
    return marginal.icdf(clayton_uniforms(n, dim, theta, generator))


def kendall_tau(first: Tensor, second: Tensor) -> tuple[float, float]:
    """Sample Kendall's tau of paired draws and its standard error.

    The estimator is the U-statistic with kernel sign((a_i − a_j)(b_i − b_j)); its standard error is the
    Hoeffding projection's: 2 · sd(h_i) / sqrt(n) with h_i the mean kernel of point i against the others.

    Args: first, second (n,) paired draws (no ties expected). Returns (tau, standard error).
    """
    a, b = first.double().flatten(), second.double().flatten()
    n = a.numel()
    row_sums = torch.zeros(n, dtype=torch.float64)
    for start in range(0, n, 1024):
        stop = min(start + 1024, n)
        kernel = torch.sign(a[start:stop, None] - a[None, :]) * torch.sign(b[start:stop, None] - b[None, :])
        row_sums[start:stop] = kernel.sum(1)
    projections = row_sums / (n - 1)
    tau = float(projections.mean())
    return tau, float(2.0 * projections.std() / math.sqrt(n))


def clayton_lambda(t: Tensor, theta: float) -> Tensor:
    """Kendall's lambda function of the Clayton copula: −(t − t^(theta+1)) / theta. Args/returns (m,)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return -(t - t.pow(theta + 1.0)) / theta


def empirical_lambda(first: Tensor, second: Tensor, grid: Tensor) -> Tensor:
    """Genest–Rivest estimate of lambda(t) = t − K(t) from paired draws.

    W_i = #{j ≠ i: a_j < a_i and b_j < b_i} / (n − 1) are pseudo-observations of C(U_1, U_2); K is their
    empirical CDF. O(n²) comparisons in blocks (10,000 draws: 1e8, about a second on one core).

    Args: first, second (n,) paired draws; grid (m,) points in [0, 1]. Returns (m,) float64.
    """
    a, b = first.double().flatten(), second.double().flatten()
    n = a.numel()
    counts = torch.zeros(n, dtype=torch.float64)
    for start in range(0, n, 1024):
        stop = min(start + 1024, n)
        below = (a[None, :] < a[start:stop, None]) & (b[None, :] < b[start:stop, None])
        counts[start:stop] = below.sum(1).double()
    pseudo = torch.sort(counts / (n - 1)).values
    grid = torch.as_tensor(grid, dtype=torch.float64)
    kendall_cdf = torch.searchsorted(pseudo, grid, right=True).double() / n
    return grid - kendall_cdf


def lambda_l1(first: Tensor, second: Tensor, theta: float, grid_size: int = 2001) -> float:
    """∫_0^1 |lambda_n(t) − lambda_Clayton(t)| dt by the trapezoid rule; lambda_n from ``empirical_lambda``."""
    grid = torch.linspace(0.0, 1.0, grid_size, dtype=torch.float64)
    difference = (empirical_lambda(first, second, grid) - clayton_lambda(grid, theta)).abs()
    return float(torch.trapezoid(difference, grid))
