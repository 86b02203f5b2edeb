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
