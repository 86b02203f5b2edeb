"""Persistent Langevin chains, stored by unit index.

ALMOND keeps every unit's C chains from one update to the next (persistent contrastive style), so a
mini-batch of units gathers its chains by index before sampling and scatters them back after. A unit is what
carries one latent (``model.units``): a data point when every row is its own unit, a group of rows otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A healthy chain stays where its N(0, I) prior lives: a coordinate beyond ±1e4 has prior log-density below −5e7, far
# more than one data point's likelihood can make up. An unadjusted sampler that got there has gone unstable; it can
# wander at such magnitudes for many epochs, finite and useless, before it overflows (a GLMM run at n = 40,000 sat at
# |z| ≈ 1e9 for 63 epochs).
ESCAPE_BOUND = 1e4


def within_prior_range(z: Tensor) -> bool:
    """True when every coordinate of ``z`` is finite and within ±``ESCAPE_BOUND``."""
    if z.numel() == 0:
        return True
    return bool(z.abs().amax() <= ESCAPE_BOUND)  # NaN compares False, so a NaN chain is out of range


class PersistentChains:
    """A (U, C, d) store of chain positions for U units, C chains each, d latent dimensions.

    Args:
        positions: (U, C, d) initial positions; the store owns this tensor.
    """

    def __init__(self, positions: Tensor):
        if positions.dim() != 3:
            raise ValueError(f"positions must be (n, C, d), got shape {tuple(positions.shape)}")
        self.positions = positions

    @property
    def num_chains(self) -> int:
        return self.positions.shape[1]

    def healthy(self) -> bool:
        """True when every position is finite and within ±``ESCAPE_BOUND``."""
        return within_prior_range(self.positions)

    def gather(self, indices: Tensor) -> Tensor:
        """Returns a copy of the chains of units ``indices`` (B,), shape (B, C, d)."""
        return self.positions.index_select(0, indices.to(self.positions.device))

    def scatter(self, indices: Tensor, z: Tensor) -> None:
        """Stores ``z`` (B, C, d) as the chains of units ``indices`` (B,)."""
        self.positions.index_copy_(0, indices.to(self.positions.device), z.detach().to(self.positions.dtype))

    def state_dict(self) -> dict:
        return {"positions": self.positions}

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> PersistentChains:
        return cls(state["positions"].to(device))
