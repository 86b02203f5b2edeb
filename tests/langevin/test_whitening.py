"""Chains in whitened coordinates (``langevin/whitening.py``): the gradient seen from w, and MALA on a target whose
coordinates differ in spread by orders of magnitude."""

from __future__ import annotations

import torch

from almond_cli.langevin import sampler
from almond_cli.langevin.targets import AutogradTarget
from almond_cli.langevin.whitening import WhitenedTarget, Whitening

CENTRE = torch.tensor([3.0, -1.0, 0.5, 10.0], dtype=torch.float64)
SD = torch.tensor([0.01, 1.0, 5.0, 0.2], dtype=torch.float64)  # spreads 500-fold apart


def _gaussian(z: torch.Tensor) -> torch.Tensor:
    """log N(z; CENTRE, diag SD²) up to a constant: (B, C, d) -> (B, C)."""
    return -0.5 * ((z - CENTRE) / SD).square().sum(-1)


def _skewed(z: torch.Tensor) -> torch.Tensor:
    """A non-quadratic log density, so the chain rule is exercised beyond a constant Hessian."""
    return -(z.square() + 0.3 * z.pow(3).tanh()).sum(-1) + torch.sin(z[..., 0] * z[..., 1])


def test_whitened_gradient_is_autograd_of_the_composed_function():
    whitening = Whitening(CENTRE, SD)
    target = WhitenedTarget(AutogradTarget(_skewed), whitening)
    w = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    value, grad = target.value_and_grad(w)
    w_ = w.clone().requires_grad_(True)
    composed = _skewed(CENTRE + SD * w_)
    (expected,) = torch.autograd.grad(composed.sum(), w_)
    torch.testing.assert_close(value, composed.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(target(w), composed.detach())
    # whiten and unwhiten are inverse maps
    z = whitening.unwhiten(w)
    torch.testing.assert_close(whitening.whiten(z), w)


def test_mala_in_whitened_coordinates_reaches_every_coordinates_variance():
    """With z = centre + sd · w the target is N(0, I) in w: one step size suits every coordinate. The unwhitened
    draws have the target's variances, coordinate by coordinate (unwhitened, one step cannot serve 0.01 and 5)."""
    generator = torch.Generator().manual_seed(1)
    # a whitening that is only roughly right (as the warm start's q is): centre off by half an sd, scale 1.5x wide
    whitening = Whitening(CENTRE + 0.5 * SD, 1.5 * SD)
    target = WhitenedTarget(AutogradTarget(_gaussian), whitening)
    start = whitening.whiten(CENTRE.expand(1, 200, 4).clone())
    kept, info = sampler.run(start, target, 0.5, 600, 200, generator, "mala")
    assert 0.3 < float(info.acceptance_rate) < 0.99
    draws = whitening.unwhiten(kept).reshape(-1, 4)  # 400 kept x 200 chains
    variance_ratio = draws.var(0) / SD.square()
    mean_error = (draws.mean(0) - CENTRE) / SD
    # 80,000 correlated draws, an effective few thousand per coordinate at worst: a variance ratio's sd is
    # about sqrt(2 / 2000) ≈ 0.03, so 0.15 is 5 of it; a mean's (in sds) about 0.02, so 0.1 is 5 of it.
    assert torch.all((variance_ratio - 1).abs() < 0.15), variance_ratio
    assert torch.all(mean_error.abs() < 0.1), mean_error


# A correlated target (nested effects: an outer level's effect and its inner levels' move together).
COVARIANCE = torch.tensor(
    [[4.0, 1.9, 0.0], [1.9, 1.0, 0.001], [0.0, 0.001, 1e-4]], dtype=torch.float64
)  # correlation 0.95 between the first two, sds 2, 1, 0.01
CHOLESKY = torch.linalg.cholesky(COVARIANCE)
MEAN3 = torch.tensor([1.0, -2.0, 0.3], dtype=torch.float64)


def _correlated(z: torch.Tensor) -> torch.Tensor:
    shifted = (z - MEAN3).reshape(-1, 3).T
    solved = torch.linalg.solve_triangular(CHOLESKY, shifted, upper=False)
    return -0.5 * solved.square().sum(0).reshape(z.shape[:-1])


def test_matrix_whitening_gradient_is_autograd_and_maps_are_inverse():
    scale = CHOLESKY * 1.3
    whitening = Whitening(MEAN3, scale)
    assert whitening.is_matrix
    target = WhitenedTarget(AutogradTarget(lambda z: _skewed(z) + _correlated(z)), whitening)
    w = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    value, grad = target.value_and_grad(w)
    w_ = w.clone().requires_grad_(True)
    z_ = MEAN3 + w_ @ scale.T  # z = centre + L w
    composed = _skewed(z_) + _correlated(z_)
    (expected,) = torch.autograd.grad(composed.sum(), w_)
    torch.testing.assert_close(value, composed.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(whitening.whiten(whitening.unwhiten(w)), w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(whitening.unwhiten(w)[1, 2], MEAN3 + scale @ w[1, 2])


def test_mala_with_a_cholesky_whitening_reaches_a_correlated_targets_covariance():
    generator = torch.Generator().manual_seed(3)
    whitening = Whitening(MEAN3, CHOLESKY * 1.2)  # roughly right, as draws so far would give it
    target = WhitenedTarget(AutogradTarget(_correlated), whitening)
    start = torch.zeros(1, 200, 3, dtype=torch.float64)
    kept, info = sampler.run(start, target, 0.6, 500, 100, generator, "mala")
    assert 0.3 < float(info.acceptance_rate) < 0.99
    draws = whitening.unwhiten(kept).reshape(-1, 3)
    sd = COVARIANCE.diagonal().sqrt()
    estimated = torch.cov(draws.T)
    # 80,000 correlated draws (an effective several thousand): a variance ratio's sd ≈ 0.03 and a correlation's
    # ≈ (1 - 0.95²)/sqrt(n_eff) < 0.005; bounds 0.15 and 0.03 are about 5 of those (deterministic seed anyway).
    assert torch.all((estimated.diagonal() / COVARIANCE.diagonal() - 1).abs() < 0.15), estimated.diagonal()
    correlation = estimated[0, 1] / (estimated[0, 0] * estimated[1, 1]).sqrt()
    assert abs(float(correlation) - 0.95) < 0.03
    assert torch.all(((draws.mean(0) - MEAN3) / sd).abs() < 0.1)
