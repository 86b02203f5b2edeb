"""Chains that move in whitened coordinates: z = centre + scale · w, one centre and scale per latent coordinate.

Where the posterior's coordinates differ in spread by orders of magnitude (a mixed model: a level with hundreds
of rows is pinned down, one with two rows is not), one scalar Langevin step is either unstable for the narrow ones
or barely moves the wide ones. Running the chains on w, whose posterior spread is about 1 in every coordinate,
is a diagonal preconditioner: the same ULA or MALA transition, with ∇_w log p = scale · ∇_z log p (the Jacobian of
the map is constant, so the log density changes by a constant only and MALA's acceptance is unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .targets import Target


@dataclass(frozen=True)
class Whitening:
    """z = centre + scale · w per coordinate (``scale`` (d,)), or z = centre + L w with a lower-triangular ``scale``
    L (d, d) where the posterior's coordinates are correlated (a mixed model's nested effects); ``centre`` (d,)."""

    centre: Tensor
    scale: Tensor

    @property
    def is_matrix(self) -> bool:
        return self.scale.dim() == 2

    def whiten(self, z: Tensor) -> Tensor:
        if self.is_matrix:
            shifted = (z - self.centre).reshape(-1, z.shape[-1]).T
            return torch.linalg.solve_triangular(self.scale, shifted, upper=False).T.reshape(z.shape)
        return (z - self.centre) / self.scale

    def unwhiten(self, w: Tensor) -> Tensor:
        if self.is_matrix:
            return self.centre + w @ self.scale.T
        return self.centre + self.scale * w

    def gradient(self, grad_z: Tensor) -> Tensor:
        """∇_w = Lᵀ ∇_z (or scale · ∇_z)."""
        return grad_z @ self.scale if self.is_matrix else grad_z * self.scale


class WhitenedTarget(Target):
    """``target`` seen from w: log p(z(w)) and ∇_w log p(z(w))."""

    def __init__(self, target: Target, whitening: Whitening):
        self.target = target
        self.whitening = whitening
        # a diagonal map, or a matrix with no entry across two blocks, keeps each w coordinate in its z coordinate's
        # block; a matrix that mixes blocks makes the target one block again (MALA's joint test, still exact)
        blocks = getattr(target, "block_of_coordinate", None)
        if blocks is not None and whitening.is_matrix:
            index = blocks.to(whitening.scale.device)
            if bool(((whitening.scale != 0) & (index.unsqueeze(1) != index.unsqueeze(0))).any()):
                blocks = None
        self.block_of_coordinate = blocks
        self.num_blocks = getattr(target, "num_blocks", None) if blocks is not None else None

    def __call__(self, w: Tensor) -> Tensor:
        return self.target(self.whitening.unwhiten(w))

    def value_and_grad(self, w: Tensor) -> tuple[Tensor, Tensor]:
        value, grad = self.target.value_and_grad(self.whitening.unwhiten(w))
        if self.block_of_coordinate is None and value.dim() == 3:  # blocks the map mixes: one joint value
            value = value.sum(-1)
        return value, self.whitening.gradient(grad)
