"""``data=normal_means``: the config of the many-normal-means simulation (Qiu & Wang 2019, Section 5.1) and its
range checks; the simulation itself is ``dataset.make_normal_means``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..errors import require


class PriorName(Enum):
    normal = "normal"
    exponential = "exponential"
    mixture = "mixture"


@dataclass
class NormalMeansDataConfig:
    name: str = "normal_means"
    n: int = 1000
    prior: PriorName = PriorName.exponential
    noise_sd: float = 1.0
    holdout_fraction: float = 0.0


def validate_normal_means_config(cfg) -> None:
    """At least two points and a positive noise sd."""
    require(cfg.data.n >= 2, "data.n", f"must be >= 2, got {cfg.data.n}")
    require(cfg.data.noise_sd > 0, "data.noise_sd", f"must be > 0, got {cfg.data.noise_sd}")
