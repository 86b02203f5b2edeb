"""Multi-chain unadjusted Langevin dynamics (ULA) over latent variables.

ALMOND (Qiu & Wang, JASA 2019, Section 3) draws z from the posterior p(z | x) ∝ f(x | h(z)) N(z; 0, I)
with the Langevin update

    z ← z + s ∇_z log p(x, z) + sqrt(2 s) ε,    ε ~ N(0, I),

run on C chains per data point. This module is pure: it knows the target only through one method,
``target.value_and_grad(z) -> (log p(x, z) (B, C), ∇_z log p(x, z) (B, C, d))`` of a ``targets.Target``
(autograd by default, ``targets.AutogradTarget``; or a hand-written gradient, ``targets.MLPTarget``), knows
nothing of models and holds no counters; the caller builds the target (``targets.target_for``, or
``targets.AutogradTarget`` around a closure) and decides burn-in, averaging and the step-size schedule.
Chains are a tensor axis: a state has shape (B, C, d) for B data points, C chains, d latent dimensions. A step
size is one number, or a (B, 1, 1) tensor giving each data point's chains their own step (``adapt.warm_up`` tunes
one per data point); the float path is unchanged by the tensor one.

``method="mala"`` adds a Metropolis–Hastings correction to each move (MALA, Roberts & Tweedie 1996):
the proposal above is accepted with probability min(1, p(z')q(z | z') / p(z)q(z' | z)), chain by chain,
which removes the step-size bias of ULA at the cost of one more target evaluation per update and one
uniform draw per chain and step. The acceptance rate is reported as a tensor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:  # for annotations only: the sampler needs nothing of targets.py at run time
    from .targets import Target


class LangevinState(NamedTuple):
    """Where the chains are, with the target's value and gradient there (one evaluation per step).

    Attributes:
        z: (B, C, d) chain positions.
        log_joint: (B, C) log p(x, z) at ``z``; (B, C, K) per independent block where the target has blocks
            (``blocks_of``).
        grad: (B, C, d) ∇_z log p(x, z) at ``z``.
    """

    z: Tensor
    log_joint: Tensor
    grad: Tensor


class StepInfo(NamedTuple):
    """Per-step diagnostics, kept as tensors so the loop never waits for the host.

    Attributes:
        mean_log_joint: () mean of log p(x, z) over all chains after the step.
        grad_norm: () mean Euclidean norm of ∇_z log p(x, z) after the step.
        nonfinite_fraction: () fraction of chains whose new log-joint is not finite.
        acceptance_rate: () MALA's fraction of accepted proposals over chains and steps; None for ULA.
    """

    mean_log_joint: Tensor
    grad_norm: Tensor
    nonfinite_fraction: Tensor
    acceptance_rate: Tensor | None = None


METHODS = ("ula", "mala")


def initial_state(z: Tensor, target: Target) -> LangevinState:
    """The chains' state at ``z`` (B, C, d): the target and its gradient there, by ``target.value_and_grad``, the
    one method of the target the sampler calls (a plain log-joint function is not a target: wrap it in
    ``targets.AutogradTarget``, and the sampler refuses one rather than choose a gradient for it)."""
    if not hasattr(target, "value_and_grad"):
        raise TypeError(
            f"the Langevin target must be a targets.Target with value_and_grad(z), got "
            f"{type(target).__name__}; wrap a log-joint function in targets.AutogradTarget"
        )
    log_joint, grad = target.value_and_grad(z.detach())
    return LangevinState(z.detach(), log_joint, grad)


def propose(state: LangevinState, step_size: float | Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The Langevin move z + s ∇ log p(x, z) + sqrt(2 s) ε from ``state``; returns the new z (B, C, d)."""
    noise = torch.randn(state.z.shape, generator=generator, device=state.z.device, dtype=state.z.dtype)
    return state.z + step_size * state.grad + (2.0 * step_size) ** 0.5 * noise


def diagnose(state: LangevinState) -> StepInfo:
    """Diagnostics of a state, as tensors (no host synchronisation)."""
    return StepInfo(
        mean_log_joint=state.log_joint.mean(),
        grad_norm=state.grad.norm(dim=-1).mean(),
        nonfinite_fraction=(~torch.isfinite(state.log_joint)).float().mean(),
    )


def step(
    state: LangevinState,
    target: Target,
    step_size: float | Tensor,
    generator: torch.Generator | None = None,
) -> tuple[LangevinState, StepInfo]:
    """One unadjusted Langevin transition of every chain.

    Args:
        state: current chains, z of shape (B, C, d).
        target: the ``targets.Target`` log p(x, z); its ``value_and_grad`` gives (B, C) and (B, C, d) at z.
        step_size: s > 0, the Langevin step size (or (B, 1, 1) per data point).
        generator: the source of the Gaussian noise; same generator state gives the same chains.

    Returns:
        The new state and its diagnostics.
    """
    new_state, _ = transition(state, target, step_size, generator)
    return new_state, diagnose(new_state)


def blocks_of(target) -> tuple[Tensor, int] | None:
    """(block of each latent coordinate (d,), number of blocks K) where ``target`` splits into independent blocks
    (its ``block_of_coordinate``: log p(x, z) = Σ_k log p_k(x, z_k), each block's value in ``value_and_grad``'s
    (B, C, K)), else None."""
    blocks = getattr(target, "block_of_coordinate", None)
    return None if blocks is None else (blocks, int(target.num_blocks))


def log_proposal_density(
    to: Tensor, start: LangevinState, step_size: float | Tensor, blocks: tuple[Tensor, int] | None = None
) -> Tensor:
    """log q(to | start) up to a constant: the Langevin proposal is N(z + s ∇, 2 s I). Returns (B, C), or (B, C, K)
    summed within each of ``blocks``' K blocks (``blocks_of``): the proposal factorises over coordinates.

    ``step_size`` is one number, or (B, 1, 1) per-row steps (``adapt.warm_up``'s), as everywhere in this module."""
    squared = (to - start.z - step_size * start.grad).square()  # (B, C, d)
    if blocks is not None:
        index, count = blocks
        summed = squared.new_zeros(*squared.shape[:-1], count).index_add_(-1, index.to(squared.device), squared)
        return -summed / (4.0 * step_size)  # a (B, 1, 1) step broadcasts against (B, C, K) as it is
    squared = squared.sum(-1)
    if isinstance(step_size, Tensor):  # (B, 1, 1) -> (B, 1), against the (B, C) sums
        step_size = step_size.squeeze(-1)
    return -squared / (4.0 * step_size)


def mala_step(
    state: LangevinState,
    target: Target,
    step_size: float | Tensor,
    generator: torch.Generator | None = None,
) -> tuple[LangevinState, Tensor]:
    """One Metropolis-adjusted Langevin transition of every chain.

    The Langevin move of ``propose`` is accepted chain by chain with probability
    min(1, exp(log p(z') − log p(z) + log q(z | z') − log q(z' | z))); a proposal whose log-joint is not
    finite is rejected. Where the target splits into independent blocks (``blocks_of``: a mixed model's components)
    each block of each chain is accepted on its own: the target and the proposal both factorise over the blocks,
    so this is one MALA chain per block, run side by side, and exact; one test for hundreds of blocks at once would
    reject a move whenever any one block's proposal is poor (a mixed model's training chains froze so, acceptance
    0.02 to 0 over 500 levels). Everything stays a tensor (no host synchronisation).

    Args:
        state: current chains, z of shape (B, C, d), with log-joint and gradient.
        target: the ``targets.Target`` log p(x, z); its ``value_and_grad`` gives (B, C) and (B, C, d) at z.
        step_size: s > 0 (or (B, 1, 1) per data point).
        generator: the source of the Gaussian noise and of the uniform acceptance draws.

    Returns:
        (the new state, (B, C) boolean tensor of accepted proposals; (B, C, K) with blocks).
    """
    blocks = blocks_of(target)
    proposal = initial_state(propose(state, step_size, generator), target)
    log_ratio = (
        proposal.log_joint
        - state.log_joint
        + log_proposal_density(state.z, proposal, step_size, blocks)
        - log_proposal_density(proposal.z, state, step_size, blocks)
    )
    uniform = torch.rand(log_ratio.shape, generator=generator, device=log_ratio.device, dtype=log_ratio.dtype)
    accept = torch.log(uniform) < torch.nan_to_num(log_ratio, nan=-torch.inf)
    mask = accept.unsqueeze(-1) if blocks is None else accept[..., blocks[0].to(accept.device)]
    new_state = LangevinState(
        torch.where(mask, proposal.z, state.z),
        torch.where(accept, proposal.log_joint, state.log_joint),
        torch.where(mask, proposal.grad, state.grad),
    )
    return new_state, accept


def transition(
    state: LangevinState,
    target: Target,
    step_size: float | Tensor,
    generator: torch.Generator | None = None,
    method: str = "ula",
) -> tuple[LangevinState, Tensor | None]:
    """One transition of every chain by ``method`` without diagnostics: ULA (``step``'s move) or MALA
    (``mala_step``). Returns (the new state, MALA's (B, C) boolean tensor of accepted proposals or None)."""
    if method == "mala":
        return mala_step(state, target, step_size, generator)
    return initial_state(propose(state, step_size, generator), target), None


def run(
    z: Tensor,
    target: Target,
    step_size: float | Tensor,
    num_steps: int,
    burn_in: int,
    generator: torch.Generator | None = None,
    method: str = "ula",
) -> tuple[Tensor, StepInfo]:
    """Runs ``num_steps`` transitions from ``z`` and returns the positions kept after burn-in.

    Every transition is ``transition``'s (``step``'s move, or ``mala_step``), except that ULA's last move is only
    proposed. The target is evaluated num_steps times: at the start and after every move but the last, since the
    final positions are only kept (the caller's parameter update changes the target before they move again).

    Args:
        z: (B, C, d) starting positions.
        target: the ``targets.Target`` log p(x, z); its ``value_and_grad`` gives (B, C) and (B, C, d) at z.
        step_size: s > 0 (or (B, 1, 1) per data point).
        num_steps: K >= 1 transitions.
        burn_in: the first ``burn_in`` states (0 <= burn_in < K) are discarded.
        generator: noise source.
        method: ``"ula"`` (unadjusted) or ``"mala"`` (Metropolis-adjusted: K + 1 evaluations, since every
            proposal is evaluated to be accepted or not).

    Returns:
        (kept positions of shape (K - burn_in, B, C, d), the last kept state's position is ``kept[-1]``;
        diagnostics of the last evaluated state, with MALA's acceptance rate over all chains and steps).
    """
    if not 0 <= burn_in < num_steps:
        raise ValueError(f"need 0 <= burn_in < num_steps, got burn_in={burn_in}, num_steps={num_steps}")
    if method not in METHODS:
        raise ValueError(f"unknown sampler method {method!r}; choose one of {list(METHODS)}")
    state = initial_state(z, target)
    kept, accepted = [], torch.zeros((), device=z.device)
    for index in range(num_steps):
        if method == "ula" and index == num_steps - 1:
            position = propose(state, step_size, generator)  # the last ULA move is only kept: not evaluated
        else:
            state, accept = transition(state, target, step_size, generator, method)
            position = state.z
            if accept is not None:
                accepted = accepted + accept.float().mean()
        if index >= burn_in:
            kept.append(position)
    info = diagnose(state)
    if method == "mala":
        info = info._replace(acceptance_rate=accepted / num_steps)
    return torch.stack(kept), info
