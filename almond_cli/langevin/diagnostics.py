"""Chain diagnostics: the split-R-hat of the log-joint across the persistent chains of a data point.

Gelman et al. (Bayesian Data Analysis, 3rd ed., Section 11.4): split each of C chains of N draws into two
halves, compare the variance between the 2C half-chain means (B) with the mean within-half variance (W);

    var+ = (n - 1) / n · W + B / n,    R-hat = sqrt(var+ / W),    n = N // 2.

R-hat near 1 says the chains agree; well above 1 (say > 1.1) says they have not mixed, i.e. the draws
after ``burn_in`` still remember where each chain started. ALMOND runs every data point's C chains for
``num_steps`` steps per update and keeps those after ``burn_in`` (Qiu & Wang 2019, Algorithm 1), so the check
runs the same sampler from the persistent chains for ``burn_in + rhat_draws`` steps under the current model.
It draws its noise from its own generator, so training (and exact resume) is unaffected.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.model import evaluation_mode
from . import sampler
from .targets import AutogradTarget


def split_rhat(draws: Tensor) -> Tensor:
    """Split-R-hat over the chain axis.

    Args:
        draws: (..., C, N) a scalar statistic of C chains with N >= 4 draws each, in draw order.

    Returns:
        (...) R-hat per leading index: 1 when both variances vanish (identical constant chains), +inf when
        the chains are constant but disagree.
    """
    num_draws = draws.shape[-1]
    if num_draws < 4:
        raise ValueError(f"split-R-hat needs >= 4 draws per chain, got {num_draws}")
    half = num_draws // 2
    # The middle draw of an odd-length chain is dropped so both halves have n draws (as BDA3 does).
    halves = torch.cat([draws[..., :half], draws[..., num_draws - half:]], dim=-2).double()  # (..., 2C, n)
    chain_means = halves.mean(-1)
    between = half * chain_means.var(-1, unbiased=True)
    within = halves.var(-1, unbiased=True).mean(-1)
    pooled = (half - 1) / half * within + between / half
    rhat = (pooled / within).sqrt()
    rhat = torch.where((within == 0) & (between == 0), torch.ones_like(rhat), rhat)
    return torch.where((within == 0) & (between > 0), torch.full_like(rhat, float("inf")), rhat)


def chain_rhat(model, chains, x: Tensor, num_points: int, step_size: float, burn_in: int, num_draws: int,
               generator: torch.Generator) -> dict[str, float]:
    """Split-R-hat of log p(x, z) across each data point's chains, from the persistent chains.

    Args:
        model: the ``LatentVariableModel`` whose log-joint is the target.
        chains: the ``PersistentChains`` of the data ``x`` (n, C, d); they are read, not moved.
        x: (n, D) the data the chains belong to.
        num_points: how many data points (the first ones) to check.
        step_size: the Langevin step size in force.
        burn_in: steps discarded before the draws are kept.
        num_draws: draws kept per chain (>= 4).
        generator: the check's own noise source.

    Returns:
        ``rhat_max`` and ``rhat_median`` over the checked data points.
    """
    count = min(num_points, x.shape[0])
    indices = torch.arange(count)
    batch = x[:count]
    state = None
    kept = []
    # Eval mode, as the ALMOND update: in train mode batch norm would normalise by this check's own batch and
    # overwrite the running statistics that define the training target and the scored model.
    target = AutogradTarget(lambda z: model.log_joint(batch, z))
    with evaluation_mode(model), model.frozen():
        state = sampler.evaluate(chains.gather(indices), target)
        for index in range(burn_in + num_draws):
            state, _ = sampler.step(state, target, step_size, generator)
            if index >= burn_in:
                kept.append(state.log_joint)
    rhat = split_rhat(torch.stack(kept, dim=-1))  # (B, C, N) -> (B,)
    return {"rhat_max": float(rhat.max()), "rhat_median": float(rhat.median())}
