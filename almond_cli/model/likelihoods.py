"""Observation models f(x | u): the log-density of data given the decoder's output u = h(z).

Every likelihood maps a batch of observations x of shape (B, D) and decoder outputs u of shape (B, C, P)
(C chains or draws per data point) to log f(x | u) of shape (B, C), summed over the data dimensions.
Likelihoods are modules because some carry parameters that are learned with the decoder (theta).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Likelihood(nn.Module):
    """Base class. Subclasses define ``param_dim`` and ``log_prob``.

    ``param_dim(data_dim)`` is the size P of the decoder output the likelihood needs for data of
    dimension D, so the decoder can be built to match the data.
    """

    def param_dim(self, data_dim: int) -> int:
        raise NotImplementedError

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        """Args: x (B, D) observations; u (B, C, P) decoder outputs. Returns: (B, C) log f(x | u)."""
        raise NotImplementedError

    def encoder_input(self, x: Tensor) -> Tensor:
        """What the encoder q(z | x) reads of the observations (B, D) -> (B, D); by default x itself."""
        return x


class Gaussian(Likelihood):
    """x | u ~ N(u, sigma² I) with known noise standard deviation ``sigma`` (many normal means).

    Args:
        sigma: the known noise standard deviation, > 0.
    """

    def __init__(self, sigma: float = 1.0):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"likelihood.sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def param_dim(self, data_dim: int) -> int:
        return data_dim

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        residual = (x.unsqueeze(1) - u) / self.sigma
        normaliser = math.log(self.sigma) + 0.5 * math.log(2.0 * math.pi)
        return -(0.5 * residual.square() + normaliser).sum(-1)

    def value_and_grad_u(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """(log f(x | u) (B, C), ∂log f/∂u = (x − u) / sigma² (B, C, P)) without autograd (fast Langevin path)."""
        residual = x.unsqueeze(1) - u
        scaled = residual / self.sigma
        normaliser = math.log(self.sigma) + 0.5 * math.log(2.0 * math.pi)
        terms = scaled.squeeze(-1) if u.shape[-1] == 1 else scaled  # no reduction kernel over one column
        log_prob = -(0.5 * terms.square() + normaliser)
        if u.shape[-1] != 1:
            log_prob = log_prob.sum(-1)
        return log_prob, residual.div_(self.sigma**2)


class Bernoulli(Likelihood):
    """x | u ~ Bernoulli(sigmoid(u)) per pixel, u the logits: log f = Σ_j x_j u_j − softplus(u_j).

    The form x·u − softplus(u) never forms sigmoid(u) or log(0), so it is stable for any logit, and it
    accepts continuous x in [0, 1] (the paper's MNIST pixels), where it is the negative binary
    cross-entropy rather than a probability of the pixels.
    """

    def param_dim(self, data_dim: int) -> int:
        return data_dim

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        return (x.unsqueeze(1) * u - torch.nn.functional.softplus(u)).sum(-1)


class Poisson(Likelihood):
    """x | u ~ Poisson(exp(u)) per coordinate, u the log-rates; x non-negative integer counts."""

    def param_dim(self, data_dim: int) -> int:
        return data_dim

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        x = x.unsqueeze(1)
        return (x * u - u.exp() - torch.lgamma(x + 1.0)).sum(-1)


class HeteroscedasticGaussian(Likelihood):
    """x_i | u_i ~ N(u_i, sd_i² I) with a known noise sd per data point (the heteroscedastic normal means).

    The data carry the sd as their last column: x is (B, D + 1) = (measurements, sd), so the encoder sees
    each point's precision too, and the decoder outputs P = D means.
    """

    def param_dim(self, data_dim: int) -> int:
        if data_dim < 2:
            raise ValueError("a heteroscedastic Gaussian needs at least one measurement column and the sd column")
        return data_dim - 1

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        values, sd = x[:, :-1].unsqueeze(1), x[:, -1:].unsqueeze(1)
        residual = (values - u) / sd
        return -(0.5 * residual.square() + sd.log() + 0.5 * math.log(2.0 * math.pi)).sum(-1)


def _safe_exp(eta: Tensor, cap: float) -> Tensor:
    """exp(eta) for eta <= cap, and its second-order Taylor continuation exp(cap)(1 + d + d²/2), d = eta − cap,
    above: finite in float32 for any finite eta, still increasing and convex with a matching first and second
    derivative at cap, so gradients keep pushing a too-large linear predictor down instead of becoming inf/NaN."""
    excess = (eta - cap).clamp(min=0.0)
    return torch.exp(eta.clamp(max=cap)) * (1.0 + excess + 0.5 * excess.square())


class PoissonGLMM(Likelihood):
    """Poisson GLMM: y | u ~ Poisson(exp(x·beta + zeta·u)) with fixed effects beta learned with the decoder.

    An observation row holds [y, x_1..x_p, zeta_1..zeta_q]: the count, ``num_fixed`` fixed-effect covariates
    and q random-effect covariates; the decoder's output u (q values) is the random effect (Qiu & Wang 2019,
    Section 5.2). beta (p,) is an ``nn.Parameter`` of this module, so it is part of theta and trained by both
    phases.

    Numerical safety: log f = y·eta − exp(eta) − log(y!) is evaluated with exp replaced above
    ``max_linear_predictor`` by its quadratic Taylor continuation (see ``_safe_exp``). Below the cap (the
    whole range of sensible models: exp(30) ≈ 1e13 counts) the value is exact; above it, values and gradients
    stay finite in float32 where exp would overflow at eta ≈ 88.7 and poison the Langevin chains with inf.
    log(y!) is ``lgamma(y + 1)``, exact for large counts.

    Args:
        num_fixed: p, the number of fixed-effect covariates (set from the data).
        max_linear_predictor: the cap above which exp is continued quadratically.
    """

    def __init__(self, num_fixed: int, max_linear_predictor: float = 30.0):
        super().__init__()
        if num_fixed < 0:
            raise ValueError(f"num_fixed must be >= 0, got {num_fixed}")
        self.num_fixed = int(num_fixed)
        self.max_linear_predictor = float(max_linear_predictor)
        self.beta = nn.Parameter(torch.zeros(self.num_fixed))

    def param_dim(self, data_dim: int) -> int:
        num_random = data_dim - 1 - self.num_fixed
        if num_random < 1:
            raise ValueError(f"a GLMM row needs 1 + {self.num_fixed} + q columns with q >= 1, got {data_dim}")
        return num_random

    def linear_predictor(self, x: Tensor, u: Tensor) -> Tensor:
        """eta = x·beta + zeta·u. Args: x (B, D) rows [y, x, zeta]; u (B, C, q). Returns (B, C)."""
        fixed = x[:, 1:1 + self.num_fixed] @ self.beta
        random = (x[:, 1 + self.num_fixed:].unsqueeze(1) * u).sum(-1)
        return fixed.unsqueeze(1) + random

    def encoder_input(self, x: Tensor) -> Tensor:
        """Counts enter the encoder as log(1 + y): heavy-tailed random effects give counts in the tens of
        thousands, which as raw inputs saturate the encoder and overflow its log-variance."""
        return torch.cat([torch.log1p(x[:, :1]), x[:, 1:]], dim=1)

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        eta = self.linear_predictor(x, u)
        counts = x[:, :1]
        return counts * eta - _safe_exp(eta, self.max_linear_predictor) - torch.lgamma(counts + 1.0)

    def value_and_grad_u(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """(log f(x | u) (B, C), ∂log f/∂u = (y − safe_exp'(eta)) · zeta (B, C, q)) without autograd (the fast
        Langevin path); safe_exp' is exp below the cap and exp(cap)(1 + d) above, d = eta − cap."""
        eta = self.linear_predictor(x, u)
        counts = x[:, :1]
        cap = self.max_linear_predictor
        excess = (eta - cap).clamp(min=0.0)
        capped_exp = torch.exp(eta.clamp(max=cap))
        log_prob = counts * eta - capped_exp * (1.0 + excess + 0.5 * excess.square()) - torch.lgamma(counts + 1.0)
        rate_slope = capped_exp.mul_(1.0 + excess)
        zeta = x[:, 1 + self.num_fixed:].unsqueeze(1)
        return log_prob, (counts - rate_slope).unsqueeze(-1) * zeta
