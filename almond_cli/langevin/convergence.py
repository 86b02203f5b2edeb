"""Drawing until the chains pass their own checks: every row's rank-normalised split-R-hat at most 1.01 and bulk
ESS at least 400 (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021, Section 4), or until a cap.

``run_until_converged`` draws a block for every row, checks each row, and doubles the length of the chains of the
rows that fail (keeping every other draw, so memory stays fixed), again and again, until every row passes or the
cap ``max_draws`` (draws' worth of steps per chain) or ``max_seconds`` stops it: the work a row gets is at most
twice what its checks needed. It knows the draws only as a tensor (rows, draws · C, P) laid out draw-major, as
``almond sample``'s ``posterior_draws`` returns them; the caller keeps the chains moving between blocks with a
fixed kernel (the adaptation of ``adapt`` is over by then). Pure: no Hydra, no models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .diagnostics import rhat_and_ess_bulk

RHAT_TARGET = 1.01  # Vehtari et al. (2021): chains agree when the rank-normalised split-R-hat is below 1.01
ESS_TARGET = 400  # ... and 400 effective draws make the mean, sd and central quantiles' MC error small


@dataclass(frozen=True)
class Convergence:
    """Where the checks stood when drawing stopped.

    Attributes:
        rhat: (rows,) each row's rank-normalised split-R-hat (its largest over coordinates).
        ess_bulk: (rows,) each row's bulk effective sample size (its smallest over coordinates).
        draws_per_chain: the draws of every chain that are kept (and summarised).
        spacing: (rows,) long, each row's kept draws are every ``spacing``-th of its chain's draws: 1 for a row
            that passed at once, 2, 4, ... for one whose chains ran 2, 4, ... times longer.
        checks: how many times the criteria were checked (blocks drawn).
        converged: whether every row met both criteria.
        stopped_by: ``"converged"``, ``"max_draws"``, ``"max_seconds"`` or, for a fixed number of draws,
            ``"num_draws"``.
    """

    rhat: np.ndarray
    ess_bulk: np.ndarray
    draws_per_chain: int
    spacing: np.ndarray
    checks: int
    converged: bool
    stopped_by: str

    @property
    def rhat_max(self) -> float:
        return float(np.max(self.rhat))

    @property
    def ess_bulk_min(self) -> float:
        return float(np.min(self.ess_bulk))

    @property
    def longest_chain(self) -> int:
        """The most draws' worth of steps any chain ran (``draws_per_chain`` times the largest spacing)."""
        return int(self.draws_per_chain * int(np.max(self.spacing)))


def row_diagnostics(draws: Tensor, num_chains: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's largest R-hat and smallest bulk ESS over its coordinates.

    Args:
        draws: (rows, N · C, P) draws, draw-major (index k · C + c is chain c's k-th draw).
        num_chains: C.

    Returns:
        (rhat (rows,), ess_bulk (rows,)).
    """
    rows, total, width = draws.shape
    chains = draws.double().reshape(rows, total // num_chains, num_chains, width).permute(0, 3, 2, 1).numpy()
    rhat, ess = rhat_and_ess_bulk(chains)  # each (rows, P)
    return rhat.max(axis=1), ess.min(axis=1)


def passing(rhat: np.ndarray, ess: np.ndarray, rhat_target: float = RHAT_TARGET, ess_target: float = ESS_TARGET):
    """(rows,) bool: R-hat <= ``rhat_target`` and bulk ESS >= ``ess_target`` (NaN fails)."""
    return (rhat <= rhat_target) & (ess >= ess_target)


def halve(draws: Tensor, num_chains: int) -> Tensor:
    """Every other draw of each chain, the later of each pair: (rows, 2N · C, P) -> (rows, N · C, P), draw-major."""
    rows, total, width = draws.shape
    return draws.view(rows, total // num_chains, num_chains, width)[:, 1::2].reshape(rows, -1, width)


def run_until_converged(
    draw_block: Callable[[Tensor, int, int], Tensor],
    num_rows: int,
    num_chains: int,
    num_draws: int,
    max_draws: int,
    rhat_target: float = RHAT_TARGET,
    ess_target: float = ESS_TARGET,
    max_seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Tensor, Convergence]:
    """Draws until every row passes both checks or a cap stops it, doubling the chains of the rows that fail.

    First every row's chains draw ``num_draws`` each. Then, while some rows fail, those rows' chains run as long again
    as they have run so far: ``num_draws`` more draws spaced twice as far apart (``draw_block``'s ``spacing``), and
    each chain keeps every other draw of the doubled chain (``halve``). So the kept draws stay ``num_draws`` per
    chain (memory stays rows × num_draws × C) while a failing row's chains grow 2, 4, 8, ... times longer, and rows
    that pass stop. It stops when every row passes, when the next doubling would take a chain past ``max_draws``
    draws' worth of steps, or when ``max_seconds`` have passed.

    Args:
        draw_block: ``draw_block(rows, k, spacing)`` moves on the chains of ``rows`` ((r,) long, increasing) and
            returns their next k draws per chain, one every ``spacing`` draws' worth of steps: (r, k · C, P).
        num_rows: the rows (units).
        num_chains: C.
        num_draws: draws kept per chain (>= 8: ESS splits each chain in halves of >= 4).
        max_draws: the cap: no chain runs more than this many draws' worth of steps (>= ``num_draws``).
        rhat_target, ess_target: the criteria.
        max_seconds: no new block starts after this many seconds (None: no time bound).
        clock: seconds, for the time bound.

    Returns:
        (the kept draws (rows, num_draws · C, P), the ``Convergence`` of the last check).
    """
    if num_draws < 8 or max_draws < num_draws:
        raise ValueError(f"need 8 <= num_draws <= max_draws, got {num_draws} and {max_draws}")
    started = clock()
    every = torch.arange(num_rows)
    draws = draw_block(every, num_draws, 1)
    rhat, ess = row_diagnostics(draws, num_chains)
    spacing = np.ones(num_rows, dtype=np.int64)
    checks, factor = 1, 1
    while True:
        failing = np.flatnonzero(~passing(rhat, ess, rhat_target, ess_target))
        if not len(failing):
            stopped_by = "converged"
        elif num_draws * factor * 2 > max_draws:
            stopped_by = "max_draws"
        elif max_seconds is not None and clock() - started >= max_seconds:
            stopped_by = "max_seconds"
        else:
            rows = torch.from_numpy(failing)
            more = draw_block(rows, num_draws, factor)
            draws[rows] = halve(torch.cat([draws[rows], more], dim=1), num_chains)
            factor *= 2
            spacing[failing] = factor
            rhat[failing], ess[failing] = row_diagnostics(draws[rows], num_chains)
            checks += 1
            continue
        return draws, Convergence(rhat, ess, num_draws, spacing, checks, stopped_by == "converged", stopped_by)
