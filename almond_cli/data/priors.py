"""True latent distributions of the simulations, with sampling, CDF and density.

The many-normal-means experiments of Qiu & Wang (2019, Section 5.1) draw mu_i from one of these priors;
the same objects score a fitted model (KS and W1 need the true CDF) and draw the figures (density).
All computations are in float64.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def _as_double(t) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


def _normal_cdf(t: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(t / math.sqrt(2.0)))


def _normal_pdf(t: Tensor) -> Tensor:
    return torch.exp(-0.5 * t.square()) / math.sqrt(2.0 * math.pi)


class Prior:
    """A univariate distribution: ``sample(n, generator) -> (n,)``, ``cdf(t)``, ``pdf(t)``."""

    name = "prior"

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def cdf(self, t) -> Tensor:
        raise NotImplementedError

    def pdf(self, t) -> Tensor:
        raise NotImplementedError

    def bulk(self) -> tuple[float, float]:
        """An interval holding all but about 1e-9 of the mass (the W1 integral's range)."""
        raise NotImplementedError


class NormalPrior(Prior):
    """N(mean, variance)."""

    name = "normal"

    def __init__(self, mean: float = 2.0, variance: float = 0.5):
        self.mean, self.sd = float(mean), math.sqrt(float(variance))

    def sample(self, n, generator):
        return self.mean + self.sd * torch.randn(n, generator=generator, dtype=torch.float64)

    def cdf(self, t):
        return _normal_cdf((_as_double(t) - self.mean) / self.sd)

    def pdf(self, t):
        return _normal_pdf((_as_double(t) - self.mean) / self.sd) / self.sd

    def bulk(self):
        return self.mean - 7 * self.sd, self.mean + 7 * self.sd


class ExponentialPrior(Prior):
    """Exponential with the given scale (mean)."""

    name = "exponential"

    def __init__(self, scale: float = 2.0):
        self.scale = float(scale)

    def sample(self, n, generator):
        uniform = torch.rand(n, generator=generator, dtype=torch.float64)
        return -self.scale * torch.log1p(-uniform)

    def cdf(self, t):
        t = _as_double(t)
        return torch.where(t > 0, -torch.expm1(-t.clamp(min=0) / self.scale), torch.zeros_like(t))

    def pdf(self, t):
        t = _as_double(t)
        return torch.where(t >= 0, torch.exp(-t.clamp(min=0) / self.scale) / self.scale, torch.zeros_like(t))

    def bulk(self):
        return 0.0, 21.0 * self.scale


class NormalMixturePrior(Prior):
    """A finite mixture of normals: sum_k weights[k] N(means[k], sds[k]²)."""

    name = "mixture"

    def __init__(
        self,
        weights: Sequence[float] = (0.4, 0.6),
        means: Sequence[float] = (0.0, 3.0),
        sds: Sequence[float] = (0.5, 0.5),
    ):
        if not (len(weights) == len(means) == len(sds)):
            raise ValueError("mixture weights, means and sds must have the same length")
        self.weights = _as_double(weights) / float(sum(weights))
        self.means, self.sds = _as_double(means), _as_double(sds)

    def sample(self, n, generator):
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, generator=generator, dtype=torch.float64)
        return self.means[component] + self.sds[component] * noise

    def cdf(self, t):
        t = _as_double(t).unsqueeze(-1)
        return (self.weights * _normal_cdf((t - self.means) / self.sds)).sum(-1)

    def pdf(self, t):
        t = _as_double(t).unsqueeze(-1)
        return (self.weights * _normal_pdf((t - self.means) / self.sds) / self.sds).sum(-1)

    def bulk(self):
        return float((self.means - 7 * self.sds).min()), float((self.means + 7 * self.sds).max())


PRIORS = {"normal": NormalPrior, "exponential": ExponentialPrior, "mixture": NormalMixturePrior}


class EmpiricalPrior(Prior):
    """The empirical distribution of known true latent values (a truth file, or a simulation's draws).

    KS and W1 against it are the two-sample distances between the model's draws and the true values; the
    density (for figures only) is a Gaussian kernel estimate with Silverman's bandwidth.
    """

    def __init__(self, values, name: str = "empirical"):
        self.name = name
        self.values = torch.sort(torch.as_tensor(values, dtype=torch.float64).flatten()).values
        n = self.values.numel()
        spread = min(float(self.values.std()), float(self.values.quantile(0.75) - self.values.quantile(0.25)) / 1.34)
        self.bandwidth = max(0.9 * (spread if spread > 0 else float(self.values.std()) or 1.0) * n**-0.2, 1e-6)

    def sample(self, n, generator):
        index = torch.randint(self.values.numel(), (n,), generator=generator)
        return self.values[index]

    def cdf(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.searchsorted(self.values, t, right=True).double() / self.values.numel()

    def pdf(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        scaled = (t.unsqueeze(-1) - self.values) / self.bandwidth
        return torch.exp(-0.5 * scaled.square()).mean(-1) / (self.bandwidth * (2 * torch.pi) ** 0.5)

    def bulk(self):
        return float(self.values[0]), float(self.values[-1])


class DiscretePrior(Prior):
    """A distribution on finitely many points: sum_k weights[k] delta(support[k]) (the NPMLE's form)."""

    def __init__(self, support, weights, name: str = "discrete"):
        self.name = name
        order = torch.argsort(_as_double(support))
        self.support = _as_double(support)[order]
        self.weights = _as_double(weights)[order] / float(_as_double(weights).sum())
        self._cumulative = torch.cumsum(self.weights, 0)

    def sample(self, n, generator):
        return self.support[torch.multinomial(self.weights, n, replacement=True, generator=generator)]

    def cdf(self, t):
        t = _as_double(t)
        index = torch.searchsorted(self.support, t, right=True)
        padded = torch.cat([torch.zeros(1, dtype=torch.float64), self._cumulative])
        return padded[index]

    def pdf(self, t):
        raise NotImplementedError("a discrete distribution has no density")

    def bulk(self):
        return float(self.support[0]), float(self.support[-1])


def make_prior(name: str) -> Prior:
    """The paper's prior called ``name`` (one of ``PRIORS``), with the paper's parameters."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of {sorted(PRIORS)}")
    return PRIORS[name]()
