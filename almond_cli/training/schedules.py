"""Optimisation schedules of ALMOND (Qiu & Wang 2019, Section 5): Langevin step size and learning rates.

- Langevin step size in ALMOND epoch e (0-based): max(s · fraction, s / sqrt(e + 1)), the paper's
  max(s/10, s/sqrt(epoch + 1)).
- Parameters: Adam for the first ``warmup_epochs`` ALMOND epochs, then SGD with momentum and weight decay
  at lr sgd_lr / sqrt(e − warmup + 1).
"""

from __future__ import annotations

import math

import torch


def langevin_step_size(sampler_cfg, epoch: int) -> float:
    """The step size in force during ALMOND epoch ``epoch`` (0-based), from ``sampler_cfg`` (a ``SamplerSettings``
    or the ``sampler`` config: ``step_size``, ``step_size_decay``, ``min_step_size_fraction``)."""
    base = float(sampler_cfg.step_size)
    if sampler_cfg.step_size_decay == "constant":
        return base
    return max(base * float(sampler_cfg.min_step_size_fraction), base / math.sqrt(epoch + 1))


class AlmondOptimisers:
    """Adam during warm-up, then SGD with a 1/sqrt decaying learning rate; both states are kept.

    Args:
        parameters: the generative parameters beta = (theta, eta).
        schedule_cfg: the ``schedule`` config.
    """

    def __init__(self, parameters, schedule_cfg):
        parameters = list(parameters)
        self.cfg = schedule_cfg
        self.adam = torch.optim.Adam(parameters, lr=schedule_cfg.adam_lr)
        self.sgd = torch.optim.SGD(
            parameters,
            lr=schedule_cfg.sgd_lr,
            momentum=schedule_cfg.sgd_momentum,
            weight_decay=schedule_cfg.weight_decay,
        )

    def learning_rate(self, epoch: int) -> float:
        if epoch < self.cfg.warmup_epochs:
            return float(self.cfg.adam_lr)
        return float(self.cfg.sgd_lr) / math.sqrt(epoch - self.cfg.warmup_epochs + 1)

    def for_epoch(self, epoch: int) -> torch.optim.Optimizer:
        """The optimiser of ALMOND epoch ``epoch`` with its learning rate set."""
        optimiser = self.adam if epoch < self.cfg.warmup_epochs else self.sgd
        for group in optimiser.param_groups:
            group["lr"] = self.learning_rate(epoch)
        return optimiser

    def state_dict(self) -> dict:
        return {"adam": self.adam.state_dict(), "sgd": self.sgd.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.adam.load_state_dict(state["adam"])
        self.sgd.load_state_dict(state["sgd"])
