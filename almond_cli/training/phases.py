"""One parameter update of each training phase (Qiu & Wang 2019, Algorithm 1).

- VAE warm start: maximise the ELBO over encoder and decoder with reparameterised draws.
- ALMOND: run the persistent Langevin chains of a batch under the current decoder, then step the
  generative parameters along the average of ∇_beta log f(x | h(z)) over the kept states of all chains.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..langevin import sampler, tabulated
from ..langevin.chains import PersistentChains
from ..langevin.settings import SamplerSettings, build_target
from ..langevin.whitening import WhitenedTarget, Whitening
from ..model.model import LatentVariableModel, evaluation_mode
from ..model.units import UnitRows


def vae_update(
    model: LatentVariableModel,
    optimiser: torch.optim.Optimizer,
    x: Tensor,
    num_draws: int,
    generator: torch.Generator,
    units: Tensor | None = None,
) -> Tensor:
    """One Adam step on −ELBO of the batch ``x`` (R, D), the rows of B units (``units`` (R,) each row's unit
    0..B-1; None: row i is unit i); returns the detached loss (per unit)."""
    optimiser.zero_grad(set_to_none=True)
    loss = -model.elbo(x, num_draws, generator, units).mean()
    loss.backward()
    optimiser.step()
    return loss.detach()


@torch.no_grad()
def initial_chains(
    model: LatentVariableModel,
    x: Tensor,
    num_chains: int,
    generator: torch.Generator,
    batch_size: int,
    unit_index: Tensor | None = None,
) -> PersistentChains:
    """Starts C chains per unit at draws from the encoder's q(z | x_unit), ``batch_size`` units at a time.

    Args:
        x: (n, D) every row.
        unit_index: (n,) each row's unit 0..U-1; None: row i is unit i.

    Returns:
        The (U, C, d) chains.
    """
    with evaluation_mode(model):
        if unit_index is None:
            parts = [
                model.sample_posterior_approx(x[start : start + batch_size], num_chains, generator)
                for start in range(0, x.shape[0], batch_size)
            ]
        else:
            unit_rows = UnitRows(unit_index)
            parts = []
            for start in range(0, unit_rows.num_units, batch_size):
                units = torch.arange(start, min(start + batch_size, unit_rows.num_units))
                rows, local = unit_rows.of(units)
                parts.append(
                    model.sample_posterior_approx(
                        x[rows.to(x.device)], num_chains, generator, local.to(x.device), units.shape[0]
                    )
                )
    return PersistentChains(torch.cat(parts))


def almond_update(
    model: LatentVariableModel,
    optimiser: torch.optim.Optimizer,
    chains: PersistentChains,
    indices: Tensor,
    x: Tensor,
    step_size: float,
    settings: SamplerSettings,
    generator: torch.Generator,
    units: Tensor | None = None,
) -> tuple[Tensor, sampler.StepInfo]:
    """One ALMOND update of the generative parameters on the batch of units ``indices`` (B,) with their rows
    ``x`` (R, D); ``units`` (R,) is each row's unit 0..B-1 in the batch (None: row i is unit i, R = B).

    The chains move ``settings.num_steps`` steps of size ``step_size`` (the schedule's, this epoch) by
    ``settings.method`` (``sampler.run``) under a frozen copy of the target that ``langevin.settings.build_target``
    builds (no parameter gradients while sampling): the tabulated decoder where ``settings.tabulate`` asks for it,
    else the fused MLP target in ``settings.precision`` where the model allows it, else autograd. The loss is −mean
    over units, the states kept after ``settings.burn_in`` and chains of log f(x_unit | h(z)) (a sum over the unit's
    rows), always in the parameters' own dtype; under a table it is ``tabulated.tabulated_loss``: its value from the
    interpolated h, the likelihood parameters' gradient at the particles, the decoder's through the G nodes (equal to
    the exact gradient up to the Hermite error).

    Returns:
        (detached loss, Langevin diagnostics of the batch).
    """
    # Eval mode for the whole update: batch norm then uses its running statistics, so the Langevin target is one
    # fixed function of z (not of the other chains in the batch) and the loss below differentiates that same
    # target (see model/conv_networks.py). Networks without batch norm or dropout are unaffected.
    with evaluation_mode(model):
        start = chains.gather(indices)
        with model.frozen():
            target = build_target(model, x, start, settings, step_size, settings.num_steps, units)
            scales = model.chain_whitening()  # None but for models whose latents differ widely in spread
            if scales is None:
                kept, info = sampler.run(
                    start, target, step_size, settings.num_steps, settings.burn_in, generator, settings.method
                )
            else:
                whitening = Whitening(*scales)
                kept, info = sampler.run(
                    whitening.whiten(start),
                    WhitenedTarget(target, whitening),
                    step_size,
                    settings.num_steps,
                    settings.burn_in,
                    generator,
                    settings.method,
                )
                kept = whitening.unwhiten(kept)
        chains.scatter(indices, kept[-1])
        num_kept, batch, num_chains, latent_dim = kept.shape
        # Kept states of all chains form one (B, K'·C) axis of particles per unit.
        particles = kept.permute(1, 0, 2, 3).reshape(batch, num_kept * num_chains, latent_dim)
        optimiser.zero_grad(set_to_none=True)
        if isinstance(target, tabulated.TabulatedTarget):
            # the same loss, its decoder gradient through the table's G nodes instead of every particle
            loss = tabulated.tabulated_loss(model, target, x, particles, units)
        else:
            loss = -model.log_lik(x, particles, units).mean()
        loss.backward()
        optimiser.step()
    return loss.detach(), info
