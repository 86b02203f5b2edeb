"""The exact Clayton copula sampler, the shifted-gamma marginal and Kendall's lambda function."""

import math

import pytest
import torch

from almond_cli.data.clayton import (
    ShiftedGamma,
    clayton_lambda,
    clayton_random_effects,
    clayton_uniforms,
    empirical_lambda,
    kendall_tau,
    lambda_l1,
)
from almond_cli.tasks.metrics import ks_distance


def test_kendall_tau_of_every_pair_is_theta_over_theta_plus_two():
    theta, n = 2.0, 2000
    u = clayton_uniforms(n, 5, theta, torch.Generator().manual_seed(7))
    assert u.shape == (n, 5) and u.dtype == torch.float64
    assert bool(((u > 0) & (u < 1)).all())
    target = theta / (theta + 2.0)
    for i in range(5):
        for j in range(i + 1, 5):
            tau, standard_error = kendall_tau(u[:, i], u[:, j])
            # The U-statistic is asymptotically normal with the Hoeffding standard error (about 0.011 at
            # n = 2000); 4 SE makes a false failure a 6e-5 event per pair (6e-4 over the 10 pairs), while a
            # sampler with the wrong dependence (tau off by 0.05) fails.
            assert standard_error < 0.02
            assert abs(tau - target) < 4 * standard_error, (i, j, tau, standard_error)


def test_independent_draws_have_kendall_tau_zero():
    generator = torch.Generator().manual_seed(3)
    a, b = torch.rand(1500, generator=generator), torch.rand(1500, generator=generator)
    tau, standard_error = kendall_tau(a, b)
    assert abs(tau) < 4 * standard_error


def test_sampler_is_reproducible_and_rejects_bad_theta():
    first = clayton_uniforms(10, 3, 2.0, torch.Generator().manual_seed(1))
    second = clayton_uniforms(10, 3, 2.0, torch.Generator().manual_seed(1))
    assert torch.equal(first, second)
    with pytest.raises(ValueError):
        clayton_uniforms(10, 3, 0.0, torch.Generator().manual_seed(1))


def test_shifted_gamma_quantile_inverts_the_cdf_and_matches_the_closed_form():
    marginal = ShiftedGamma(2.0, 1.0, -2.0)
    p = torch.linspace(1e-6, 1 - 1e-6, 501, dtype=torch.float64)
    q = marginal.icdf(p)
    assert torch.allclose(marginal.cdf(q), p, atol=1e-10)
    s = q + 2.0
    # Gamma(2, 1) has CDF 1 − (1 + s) e^{−s} and density s e^{−s}.
    assert torch.allclose(marginal.cdf(q), 1 - (1 + s) * torch.exp(-s), atol=1e-12)
    assert torch.allclose(marginal.pdf(q), s * torch.exp(-s), atol=1e-12)
    assert float(marginal.cdf(torch.tensor(-3.0))) == 0.0 and float(marginal.pdf(torch.tensor(-3.0))) == 0.0


def test_random_effects_have_the_shifted_gamma_marginal():
    n = 4000
    marginal = ShiftedGamma(2.0, 1.0, -2.0)
    u = clayton_random_effects(n, 3, 2.0, marginal, torch.Generator().manual_seed(11))
    for j in range(3):
        # 1.63 / sqrt(n) is the 1% critical value of the one-sample KS statistic.
        assert ks_distance(u[:, j], marginal.cdf) < 1.63 / math.sqrt(n)
    # Mean 0 and variance 2 per column; the mean of 3 correlated columns has SE at most sqrt(2 / n).
    assert abs(float(u.mean())) < 4 * math.sqrt(2.0 / n)


def test_clayton_lambda_closed_form():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(clayton_lambda(t, 2.0), -(t - t**3) / 2)


def test_empirical_lambda_tells_clayton_from_independence():
    n = 3000
    u = clayton_uniforms(n, 2, 2.0, torch.Generator().manual_seed(5))
    # Genest–Rivest's K_n converges at rate 1/sqrt(n) (0.018 here) in sup norm; its L1 error is smaller.
    assert lambda_l1(u[:, 0], u[:, 1], 2.0) < 0.018
    # Monotone marginal transforms leave lambda unchanged: it depends on ranks only.
    assert lambda_l1(torch.log(u[:, 0]), u[:, 1] ** 3, 2.0) == pytest.approx(lambda_l1(u[:, 0], u[:, 1], 2.0))
    independent = torch.rand(n, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    # Independence has lambda(t) = t log t, at L1 distance 0.125 from Clayton(2)'s.
    assert lambda_l1(independent[:, 0], independent[:, 1], 2.0) > 0.1
    grid = torch.linspace(0, 1, 5, dtype=torch.float64)
    assert torch.all(empirical_lambda(u[:, 0], u[:, 1], grid) <= 1e-12)
