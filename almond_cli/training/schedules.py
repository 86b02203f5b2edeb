"""Optimisation schedules of ALMOND (Qiu & Wang 2019, Section 5): Langevin step size and learning rates.

- Langevin step size in ALMOND epoch e (0-based): max(s · fraction, s / sqrt(e + 1)), the paper's
  max(s/10, s/sqrt(epoch + 1)).
- Parameters: Adam for the first ``warmup_epochs`` ALMOND epochs, then SGD with momentum and weight decay
  at lr sgd_lr / sqrt(e − warmup + 1).

Every rate depends on the epoch index alone, never on the epoch count, so each stays defined under
``almond_epochs=auto``; there the rates also carry a factor of 0.5 for each plateau the progress checks met by
halving them (``schedule.auto.halvings``, ``stopping.ProgressChecks.rate_factor``, passed in by the trainer);
Polyak-Ruppert averaging (``average_last`` > 0) then averages the parameters since the progress checks' last
significant gain (``training/stopping.py``): the plateau over which the run stopped.
"""

from __future__ import annotations

import math

import torch

from ..config import AUTO


def langevin_step_size(sampler_cfg, epoch: int) -> float:
    """The step size in force during ALMOND epoch ``epoch`` (0-based), from ``sampler_cfg`` (a ``SamplerSettings``
    or the ``sampler`` config: ``step_size``, ``step_size_decay``, ``min_step_size_fraction``)."""
    base = float(sampler_cfg.step_size)
    if sampler_cfg.step_size_decay == "constant":
        return base
    return max(base * float(sampler_cfg.min_step_size_fraction), base / math.sqrt(epoch + 1))


class AlmondOptimisers:
    """Adam during warm-up, then SGD (or Adam, ``schedule.after_warmup``) with a 1/sqrt decaying learning rate;
    both states are kept.

    Args:
        parameters: the generative parameters beta = (theta, eta).
        schedule_cfg: the ``schedule`` config.
    """

    def __init__(self, parameters, schedule_cfg):
        parameters = list(parameters)
        self.parameters = parameters
        self.cfg = schedule_cfg
        # Polyak-Ruppert: the running mean of the parameters over the last ``schedule.average_last`` of the ALMOND
        # epochs, which replaces them at the end (``use_average``): the noise of stochastic gradients averages out.
        self.average: list[torch.Tensor] | None = None
        self.averaged = 0
        self.adam = torch.optim.Adam(parameters, lr=schedule_cfg.adam_lr)
        self.sgd = torch.optim.SGD(
            parameters,
            lr=schedule_cfg.sgd_lr,
            momentum=schedule_cfg.sgd_momentum,
            weight_decay=schedule_cfg.weight_decay,
        )

    @property
    def _adam_after_warmup(self) -> bool:
        return getattr(self.cfg, "after_warmup", "sgd") == "adam"  # a run saved before the key: the paper's SGD

    def learning_rate(self, epoch: int, factor: float = 1.0) -> float:
        """The rate of ALMOND epoch ``epoch`` times ``factor`` (the auto checks' ``rate_factor``: 0.5 per plateau met
        by halving the rate)."""
        if epoch < self.cfg.warmup_epochs:
            return float(self.cfg.adam_lr) * factor
        base = self.cfg.adam_lr if self._adam_after_warmup else self.cfg.sgd_lr
        return float(base) * factor / math.sqrt(epoch - self.cfg.warmup_epochs + 1)

    def for_epoch(self, epoch: int, factor: float = 1.0) -> torch.optim.Optimizer:
        """The optimiser of ALMOND epoch ``epoch`` with its learning rate set (``learning_rate(epoch, factor)``): Adam
        during warm-up, then SGD (or, with ``schedule.after_warmup=adam``, Adam on) at a rate decaying as 1/sqrt."""
        warm = epoch < self.cfg.warmup_epochs
        optimiser = self.adam if warm or self._adam_after_warmup else self.sgd
        for group in optimiser.param_groups:
            group["lr"] = self.learning_rate(epoch, factor)
        return optimiser

    def average_start(self) -> int | None:
        """The first ALMOND epoch whose parameters are averaged, or None (``schedule.average_last`` 0: no average)."""
        fraction = float(getattr(self.cfg, "average_last", 0.0))  # a run saved before the key: no average
        if fraction <= 0:
            return None
        if self.cfg.almond_epochs == AUTO:  # the end is not known in advance: from the start, restarted at each gain
            return 0
        return int(round(int(self.cfg.almond_epochs) * (1.0 - fraction)))

    def restart_average(self) -> None:
        """Forgets the running mean (under ``almond_epochs=auto``, at each significant gain of the progress checks:
        the final average then covers the plateau since the last gain, the window that stopped the run)."""
        self.average, self.averaged = None, 0

    @torch.no_grad()
    def after_step(self, epoch: int) -> None:
        """Adds the parameters after an update of ALMOND epoch ``epoch`` to the running mean, once it has begun."""
        start = self.average_start()
        if start is None or epoch < start:
            return
        self.averaged += 1
        if self.average is None:
            self.average = [p.detach().clone() for p in self.parameters]
            return
        for mean, parameter in zip(self.average, self.parameters):
            mean.add_(parameter.detach() - mean, alpha=1.0 / self.averaged)

    @torch.no_grad()
    def use_average(self) -> None:
        """Puts the running mean into the parameters (at the end of the ALMOND phase); nothing without one."""
        if self.average is None:
            return
        for mean, parameter in zip(self.average, self.parameters):
            parameter.copy_(mean)

    def state_dict(self) -> dict:
        state = {"adam": self.adam.state_dict(), "sgd": self.sgd.state_dict()}
        if self.average is not None:
            state["average"] = {"mean": [m.clone() for m in self.average], "count": self.averaged}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.adam.load_state_dict(state["adam"])
        self.sgd.load_state_dict(state["sgd"])
        average = state.get("average")
        self.average = None if average is None else [m.clone() for m in average["mean"]]
        self.averaged = 0 if average is None else int(average["count"])
