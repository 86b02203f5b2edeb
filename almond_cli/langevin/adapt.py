"""MALA's step size tuned during warm-up, one step per data point, by dual averaging on the log step.

The chains of data point i run MALA (``sampler.mala_step``) with their own step s_i; after every transition the
fraction a_t of its C chains that accepted moves log s_i by the dual-averaging rule of Nesterov (2009) as Hoffman &
Gelman (2014, Section 3.2, Algorithm 5) and Stan use it:

    H_t = (1 − 1/(t + t0)) H_{t−1} + (δ − a_t) / (t + t0)
    log s_t = μ − sqrt(t) / γ · H_t,        μ = log(10 s_0)
    log s̄_t = t^(−κ) log s_t + (1 − t^(−κ)) log s̄_{t−1}

and the averaged step s̄ is the one the chains keep once warm-up ends. δ is the target acceptance rate: 0.8 by
default, not the 0.574 at which MALA's efficiency peaks for targets of many coordinates (Roberts & Rosenthal 1998):
almond's latents have a few coordinates, and where the decoder is steep somewhere in a posterior (the edge of a
prior's support, a gap between modes) a step tuned to 0.574 leaves a chain that wanders there stuck for hundreds of
rejections. On the README's worked example the rows hardest to sample gave, after 4,000 steps, R-hat up to 1.06 and
bulk ESS down to 220 of 8,000 draws at 0.574, and R-hat 1.001 and ESS above 6,000 at 0.8 (0.7: 1.011, 1,875).
Adaptation stops
before any draw is kept, so the kept chain is a Markov chain with a fixed kernel (an adapted kernel that kept
changing would not leave the posterior invariant). The acceptance fraction of C chains is a noisy but unbiased
estimate of the expected acceptance; the averaging over t is what removes its noise.

Pure, like ``sampler``: the caller builds the target for each segment of steps (``make_target``) and owns the
generator; no Hydra, no models.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from . import sampler
from .targets import Target

TARGET_ACCEPTANCE = 0.8  # robust for a latent of a few coordinates (module docstring); 0.574 is the many-d optimum
# Stan's dual-averaging constants (Hoffman & Gelman 2014): gamma, t0 and kappa.
GAMMA, T0, KAPPA = 0.05, 10.0, 0.75
# log s is kept in [LOG_STEP_MIN, LOG_STEP_MAX]: the posterior of z is at most as wide as its N(0, I) prior in every
# direction, so a step beyond e³ ≈ 20 is never wanted, and one below e⁻²⁵ means the chains cannot move at all.
LOG_STEP_MIN, LOG_STEP_MAX = -25.0, 3.0


class DualAveraging(NamedTuple):
    """The dual-averaging state of every data point's log step, each (B,) float64.

    Attributes:
        log_step: log s_t, the step of the next transition.
        log_step_average: log s̄_t, the averaged step kept after warm-up.
        error_average: H_t, the running average of δ − a.
        centre: μ = log(10 s_0), where the steps are shrunk towards.
        count: t, the transitions seen so far.
    """

    log_step: Tensor
    log_step_average: Tensor
    error_average: Tensor
    centre: Tensor
    count: int


def dual_averaging_start(step_size: Tensor) -> DualAveraging:
    """The state before the first transition, from the initial steps s_0 (B,) > 0."""
    log_step = step_size.double().log()
    return DualAveraging(log_step, log_step.clone(), torch.zeros_like(log_step), log_step + math.log(10.0), 0)


def dual_averaging_update(state: DualAveraging, acceptance: Tensor, target: float = TARGET_ACCEPTANCE) -> DualAveraging:
    """One dual-averaging update after a transition whose acceptance fraction per data point was ``acceptance`` (B,).

    Returns the state with the next step (``log_step``) and the averaged one (``log_step_average``)."""
    count = state.count + 1
    weight = 1.0 / (count + T0)
    error = (1.0 - weight) * state.error_average + weight * (target - acceptance.double())
    log_step = (state.centre - math.sqrt(count) / GAMMA * error).clamp(LOG_STEP_MIN, LOG_STEP_MAX)
    decay = count**-KAPPA
    average = decay * log_step + (1.0 - decay) * state.log_step_average
    return DualAveraging(log_step, average, error, state.centre, count)


class WarmUp(NamedTuple):
    """What ``warm_up`` leaves.

    Attributes:
        z: (B, C, d) the chains' positions at the end of warm-up.
        step_size: (B,) the tuned step of each data point (the averaged step s̄).
        acceptance: (B,) each data point's acceptance fraction over the last ``segment`` transitions of warm-up
            (run at the adapted, not yet averaged, steps: a check that the adaptation settled).
    """

    z: Tensor
    step_size: Tensor
    acceptance: Tensor


def warm_up(
    z: Tensor,
    make_target: Callable[[Tensor, float, int], Target],
    step_size: float | Tensor,
    num_steps: int,
    generator: torch.Generator | None = None,
    target_acceptance: float = TARGET_ACCEPTANCE,
    segment: int = 10,
) -> WarmUp:
    """Runs ``num_steps`` MALA transitions from ``z``, adapting each data point's step to ``target_acceptance``.

    Args:
        z: (B, C, d) starting positions.
        make_target: ``make_target(z, largest step, steps) -> Target``: the target for the next ``steps``
            transitions of chains at ``z`` (B, C, d) (``settings.build_target``: a tabulated decoder's grid is
            widened for them); called once per ``segment`` transitions.
        step_size: s_0 > 0, one number or (B,) per data point: where the adaptation starts.
        num_steps: transitions of warm-up, >= 1.
        generator: noise source.
        target_acceptance: δ in (0, 1).
        segment: transitions per target.

    Returns:
        ``WarmUp``: the chains' positions, the tuned (B,) steps and the last segment's acceptance.
    """
    if num_steps < 1:
        raise ValueError(f"warm-up needs num_steps >= 1, got {num_steps}")
    batch = z.shape[0]
    start = torch.as_tensor(step_size, dtype=torch.float64, device=z.device).expand(batch).clone()
    state = dual_averaging_start(start)
    accepted = torch.zeros(batch, device=z.device)
    for first in range(0, num_steps, segment):
        steps = min(segment, num_steps - first)
        current = state.log_step.exp()
        target = make_target(z, float(current.max()), steps)
        chains = sampler.initial_state(z, target)
        accepted = torch.zeros(batch, device=z.device)
        for _ in range(steps):
            step = state.log_step.exp().to(z.dtype).view(batch, 1, 1)
            chains, accept = sampler.mala_step(chains, target, step, generator)
            fraction = accept.float().mean(1)
            accepted = accepted + fraction
            state = dual_averaging_update(state, fraction, target_acceptance)
        z = chains.z
        accepted = accepted / steps
    return WarmUp(z, state.log_step_average.exp(), accepted)
