"""Chains that move in whitened coordinates: z = centre + scale · w, one centre and scale per latent coordinate.

Where the posterior's coordinates differ in spread by orders of magnitude (a mixed model: a level with hundreds
of rows is pinned down, one with two rows is not), one scalar Langevin step is either unstable for the narrow ones
or barely moves the wide ones. Running the chains on w, whose posterior spread is about 1 in every coordinate,
is a diagonal preconditioner: the same ULA or MALA transition, with ∇_w log p = scale · ∇_z log p (the Jacobian of
the map is constant, so the log density changes by a constant only and MALA's acceptance is unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .targets import Target


@dataclass(frozen=True)
class Whitening:
    """z = centre + scale · w, per coordinate: centre and scale (d,) (or broadcastable to the chains (B, C, d))."""

    centre: Tensor
    scale: Tensor

    def whiten(self, z: Tensor) -> Tensor:
        return (z - self.centre) / self.scale

    def unwhiten(self, w: Tensor) -> Tensor:
        return self.centre + self.scale * w


class WhitenedTarget(Target):
    """``target`` seen from w: log p(z(w)) and ∇_w = scale · ∇_z log p(z(w))."""

    def __init__(self, target: Target, whitening: Whitening):
        self.target = target
        self.whitening = whitening

    def __call__(self, w: Tensor) -> Tensor:
        return self.target(self.whitening.unwhiten(w))

    def value_and_grad(self, w: Tensor) -> tuple[Tensor, Tensor]:
        value, grad = self.target.value_and_grad(self.whitening.unwhiten(w))
        return value, grad * self.whitening.scale
