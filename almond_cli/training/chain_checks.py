"""When training checks its chains: the split-R-hat of ``langevin.diagnostics`` every
``diagnostics.rhat_every_epochs`` ALMOND epochs, from a noise stream of its own so training is unaffected."""

from __future__ import annotations

import hashlib

import torch

from ..langevin.diagnostics import chain_rhat
from .position import Phase
from .schedules import langevin_step_size


def check_seed(seed: int, epoch: int) -> int:
    """The seed of the check at ALMOND epoch ``epoch``: fixed by the run's seed, apart from training's."""
    return int.from_bytes(hashlib.sha256(f"almond:{seed}:rhat:{epoch}".encode()).digest()[:8], "little") >> 1


def periodic_rhat(run) -> dict[str, float]:
    """The R-hat check of a ``TrainingRun`` at the end of its current ALMOND epoch, when one is due.

    Due every ``diagnostics.rhat_every_epochs`` epochs and at the last one; returns {} otherwise.
    """
    cfg, position = run.cfg, run.position
    every = cfg.diagnostics.rhat_every_epochs
    done = position.epoch + 1
    if position.phase != Phase.ALMOND or run.chains is None or not every:
        return {}
    if done % every != 0 and done != cfg.schedule.almond_epochs:
        return {}
    generator = torch.Generator(device=run.device).manual_seed(check_seed(cfg.seed, done))
    return chain_rhat(run.model, run.chains, run.x, cfg.diagnostics.rhat_points,
                      langevin_step_size(cfg.sampler, position.epoch), cfg.sampler.burn_in,
                      cfg.diagnostics.rhat_draws, generator)
