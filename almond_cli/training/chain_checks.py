"""When training checks its chains, every ``diagnostics.rhat_every_epochs`` ALMOND epochs and at the last one:

- the split-R-hat of ``langevin.diagnostics.chain_rhat`` (``rhat_max``, ``rhat_median``), from a noise stream of its
  own so training is unaffected;
- for a one-dimensional latent, the persistent chains against the exact posterior of each checked data point
  (``posterior_ks_mean``, ``posterior_ks_max``; ``posterior_ks_reference`` is what exact draws would give):
  what ALMOND relies on, that the chains it averages over follow p(z | x). When the mean is more than 1.5 times the
  reference, a warning with the remedy goes to the screen and ``train.log``.
"""

from __future__ import annotations

import hashlib
import logging
import math

import torch

from ..langevin.diagnostics import KOLMOGOROV_MEAN, chain_rhat, posterior_ks
from .position import Phase
from .schedules import langevin_step_size


log = logging.getLogger("almond")
ALARM_FACTOR = 1.5  # measured: healthy runs 0.92–1.03 times the reference; ULA steps of 0.5 and 0.8 (paper 0.01) 1.4–2.1


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
    results = chain_rhat(run.model, run.chains, run.x, cfg.diagnostics.rhat_points,
                         langevin_step_size(cfg.sampler, position.epoch), cfg.sampler.burn_in,
                         cfg.diagnostics.rhat_draws, generator)
    if int(cfg.latent_dim) == 1:
        results.update(posterior_check(run, done))
    return results


def posterior_check(run, epoch: int) -> dict[str, float]:
    """KS of the first ``diagnostics.rhat_points`` data points' chains against their exact posteriors."""
    count = min(int(run.cfg.diagnostics.rhat_points), run.x.shape[0])
    indices = torch.arange(count)
    ks = posterior_ks(run.model, run.x[:count], run.chains.gather(indices))
    reference = KOLMOGOROV_MEAN / math.sqrt(run.chains.num_chains)
    results = {"posterior_ks_mean": float(ks.mean()), "posterior_ks_max": float(ks.max()),
               "posterior_ks_reference": reference}
    if results["posterior_ks_mean"] > ALARM_FACTOR * reference:
        log.warning("ALMOND epoch %d: the chains do not follow the exact posterior p(z | x) of the checked data "
                    "points (mean KS %.3f, exact draws would give about %.3f): the gradient averages over the wrong "
                    "z. More Langevin steps per update (sampler.num_steps), a smaller sampler.step_size if the chains "
                    "diverge, or more epochs usually help.", epoch, results["posterior_ks_mean"], reference)
    return results
