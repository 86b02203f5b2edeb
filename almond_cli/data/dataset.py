"""Data sets: observations x (n, D) and, for simulations, the truth that scores a fit.

The many-normal-means simulation follows Qiu & Wang (2019, Section 5.1): mu_i ~ prior, x_i = mu_i + N(0, 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from .priors import Prior, make_prior


@dataclass
class Dataset:
    """Observations and what is known about how they were made.

    Attributes:
        x: (n, D) float32 observations, one row per data point.
        name: the data option that made them.
        truth: (n, P) true latent values u_i, where known.
        prior: the true distribution of u, where known (a simulation).
        extras: task-specific facts (for example true fixed effects).
        transform: optional ``transform(x (B, D), generator) -> (B, D)`` applied to every training batch with
            the run's seeded noise generator (dynamic binarisation of images); None for most data.
    """

    x: Tensor
    name: str
    truth: Tensor | None = None
    prior: Prior | None = None
    extras: dict = field(default_factory=dict)
    transform: Optional[Callable[[Tensor, torch.Generator], Tensor]] = None

    @property
    def num_points(self) -> int:
        return self.x.shape[0]

    @property
    def data_dim(self) -> int:
        return self.x.shape[1]


def make_normal_means(n: int, prior_name: str, noise_sd: float, generator: torch.Generator) -> Dataset:
    """n draws mu_i from the named prior and x_i = mu_i + noise_sd · N(0, 1)."""
    prior = make_prior(prior_name)
    mu = prior.sample(n, generator)
    x = mu + noise_sd * torch.randn(n, generator=generator, dtype=torch.float64)
    return Dataset(x=x.float().unsqueeze(1), name="normal_means", truth=mu.float().unsqueeze(1), prior=prior)


def build_dataset(data_cfg, seed: int) -> Dataset:
    """Builds the data set that ``data_cfg`` names; simulations draw from a generator seeded by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    if data_cfg.name == "normal_means":
        prior = getattr(data_cfg.prior, "value", data_cfg.prior)  # a typed config holds an Enum
        return make_normal_means(data_cfg.n, str(prior), data_cfg.noise_sd, generator)
    if data_cfg.name == "file":
        from .files import load_file_dataset

        return load_file_dataset(data_cfg)
    if data_cfg.name == "mnist":
        from .mnist import build_mnist

        return build_mnist(data_cfg)
    if data_cfg.name in ("glmm", "glmm_file"):
        from .glmm import build_glmm_dataset

        return build_glmm_dataset(data_cfg, generator)
    raise ValueError(f"unknown data set {data_cfg.name!r}")
