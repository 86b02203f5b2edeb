"""The classical empirical-Bayes baselines: exact marginal likelihoods, the maximum-likelihood normal prior, the
Kiefer–Wolfowitz NPMLE, posterior means."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from almond_cli.data.priors import DiscretePrior, NormalPrior
from almond_cli.tasks.empirical_bayes import fit_normal_prior, fit_npmle, marginal_log_likelihood, posterior_means
from almond_cli.tasks.normal_means import baseline_priors

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _golden_maximum(function, lower: float, upper: float, iterations: int = 120) -> float:
    """The argmax of a unimodal ``function`` on [lower, upper] by golden-section search (written here, apart from
    the code under test)."""
    left, right = upper - GOLDEN * (upper - lower), lower + GOLDEN * (upper - lower)
    f_left, f_right = function(left), function(right)
    for _ in range(iterations):
        if f_left >= f_right:
            upper, right, f_right = right, left, f_left
            left = upper - GOLDEN * (upper - lower)
            f_left = function(left)
        else:
            lower, left, f_left = left, right, f_right
            right = lower + GOLDEN * (upper - lower)
            f_right = function(right)
    return 0.5 * (lower + upper)


def _direct_maximum(x: torch.Tensor, sd: torch.Tensor) -> tuple[float, float]:
    """(m, tau) maximising sum_i log N(x_i; m, tau² + s_i²) directly over both: for each tau a golden-section search
    over m (no closed form used), and over tau a dense grid on [0, range(x)] then golden-section search in the best
    grid cell and its neighbours."""
    x, variance = x.double(), sd.double().square()

    def log_likelihood(mean: float, tau: float) -> float:
        total = tau**2 + variance
        return float((-0.5 * ((x - mean).square() / total + total.log())).sum())

    def best_mean(tau: float) -> float:
        return _golden_maximum(lambda m: log_likelihood(m, tau), float(x.min()), float(x.max()))

    profile = lambda tau: log_likelihood(best_mean(tau), tau)  # noqa: E731
    taus = torch.linspace(0.0, float(x.max() - x.min()), 400, dtype=torch.float64).tolist()
    best = max(range(len(taus)), key=lambda k: profile(taus[k]))
    tau = _golden_maximum(profile, taus[max(best - 1, 0)], taus[min(best + 1, len(taus) - 1)])
    if profile(0.0) >= profile(tau):  # the boundary: golden section only approaches it
        tau = 0.0
    return best_mean(tau), tau


@pytest.mark.parametrize("spread", [0.7, 0.0], ids=["interior", "boundary"])
def test_normal_prior_is_the_direct_maximum_likelihood_fit_with_unequal_sds(spread):
    """The Fay–Herriot fit equals a direct numerical maximisation over (m, tau) to 1e-6, with sds from 0.2 to 1.7,
    inside (true tau = 0.7) and on the boundary (true tau = 0, data less spread than their noise: tau = 0 best).
    Golden section locates a maximum of a smooth function to about sqrt(float64 eps) ≈ 1e-8 of its bracket, well
    inside 1e-6; the moment fit (mean, var(x) - mean s²) misses by more than 1e-3 here, so the test sees it."""
    generator = torch.Generator().manual_seed(7)
    sd = 0.2 + 1.5 * torch.rand(300, generator=generator, dtype=torch.float64)
    u = 1.0 + spread * torch.randn(300, generator=generator, dtype=torch.float64)
    shrink = 1.0 if spread else 0.8  # on the boundary the data are less spread than their own noise
    x = u + shrink * sd * torch.randn(300, generator=generator, dtype=torch.float64)
    fitted = fit_normal_prior(x, sd)
    mean, tau = _direct_maximum(x, sd)
    assert abs(fitted.mean - mean) < 1e-6 and abs(fitted.sd - tau) < 1e-6
    assert (fitted.sd == 0.0) == (spread == 0.0)
    moment_mean = float(x.mean())
    assert abs(moment_mean - mean) > 1e-3  # the plain mean is not the fit once the sds differ


def test_normal_prior_with_one_sd_is_the_closed_form():
    """Equal s: m = mean(x), tau² = max(0, mean((x - x̄)²) - s²) (divisor n), to rounding."""
    generator = torch.Generator().manual_seed(1)
    for scale, noise in ((2.0, 1.0), (0.3, 1.0)):
        x = scale * torch.randn(200, generator=generator, dtype=torch.float64) + noise * torch.randn(
            200, generator=generator, dtype=torch.float64
        )
        fitted = fit_normal_prior(x, noise)
        expected = max(0.0, float((x - x.mean()).square().mean()) - noise**2)
        assert abs(fitted.mean - float(x.mean())) < 1e-12 and abs(fitted.sd**2 - expected) < 1e-12
    assert fit_normal_prior(torch.full((5,), 2.0), 1.0).sd == 0.0  # no spread at all: tau = 0, m = x


def test_gaussian_hetero_baseline_uses_each_rows_sd():
    """``normal_eb`` of heteroscedastic rows (value, sd) is the fit with each row's own sd, not with their rms."""
    from almond_cli.model.likelihoods import HeteroscedasticGaussian

    generator = torch.Generator().manual_seed(2)
    sd = 0.2 + 1.5 * torch.rand(300, generator=generator, dtype=torch.float64)
    x = (
        1.0
        + 0.5 * torch.randn(300, generator=generator, dtype=torch.float64)
        + sd * torch.randn(300, generator=generator, dtype=torch.float64)
    )

    rows = SimpleNamespace(x=torch.stack([x, sd], dim=1).float())  # what baseline_priors reads of a Dataset
    fitted = baseline_priors(HeteroscedasticGaussian(), rows)["normal_eb"]
    expected = fit_normal_prior(rows.x[:, 0], rows.x[:, 1])
    assert (fitted.mean, fitted.sd) == (expected.mean, expected.sd)
    assert abs(fitted.mean - fit_normal_prior(rows.x[:, 0], float(sd.square().mean().sqrt())).mean) > 1e-3


def test_normal_prior_marginal_is_the_closed_form():
    """x_i ~ N(m, tau² + s_i²) under u ~ N(m, tau²), per row, with one sd or one per row."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, generator=generator, dtype=torch.float64) * 2 + 1
    sd = torch.rand(50, generator=generator, dtype=torch.float64) + 0.5
    prior = NormalPrior(mean=0.7, variance=1.8)
    mean = torch.tensor(0.7, dtype=torch.float64)  # a Python float would make the distribution float32
    expected = torch.distributions.Normal(mean, (1.8 + sd.square()).sqrt()).log_prob(x)
    torch.testing.assert_close(marginal_log_likelihood(prior, x, sd), expected, rtol=0, atol=1e-12)
    one = torch.distributions.Normal(mean, torch.tensor(2.8, dtype=torch.float64).sqrt()).log_prob(x)
    torch.testing.assert_close(marginal_log_likelihood(prior, x, 1.0), one, rtol=0, atol=1e-12)


def test_discrete_prior_marginal_and_posterior_mean_by_hand():
    prior = DiscretePrior([0.0, 3.0], [0.4, 0.6])
    x = torch.tensor([0.5, 2.0], dtype=torch.float64)
    normal = torch.distributions.Normal(torch.tensor([0.0, 3.0], dtype=torch.float64), 1.0)
    density = normal.log_prob(x[:, None]).exp() * torch.tensor([0.4, 0.6], dtype=torch.float64)
    torch.testing.assert_close(marginal_log_likelihood(prior, x, 1.0), density.sum(1).log(), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        posterior_means(prior, x, 1.0), (density * torch.tensor([0.0, 3.0])).sum(1) / density.sum(1), rtol=0, atol=1e-12
    )
    assert prior.cdf(torch.tensor([-1.0, 0.0, 1.0, 3.0])).tolist() == [0.0, 0.4, 0.4, 1.0]


def test_npmle_recovers_a_known_discrete_prior():
    """Data from G = 0.4 δ(0) + 0.6 δ(3) with unit noise, n = 2000. The NPMLE maximises the likelihood over all
    priors, so it is at least as likely as G itself (up to its grid, 400 points over the data's range: spacing
    ~0.02, which costs far less than the 1e-3 nats per row allowed). Its mass near each atom is G's within 0.05:
    four standard errors of a proportion at n = 2000 (sqrt(0.24 / 2000) ≈ 0.011) plus what unit noise lets leak."""
    generator = torch.Generator().manual_seed(3)
    truth = DiscretePrior([0.0, 3.0], [0.4, 0.6])
    u = truth.sample(2000, generator)
    sd = torch.full((2000,), 1.0, dtype=torch.float64)
    x = u + sd * torch.randn(2000, generator=generator, dtype=torch.float64)
    fitted = fit_npmle(x, sd)
    assert marginal_log_likelihood(fitted, x, sd).mean() >= marginal_log_likelihood(truth, x, sd).mean() - 1e-3
    near_zero = float(fitted.weights[(fitted.support - 0.0).abs() < 1.0].sum())
    near_three = float(fitted.weights[(fitted.support - 3.0).abs() < 1.0].sum())
    assert abs(near_zero - 0.4) < 0.05 and abs(near_three - 0.6) < 0.05
    assert abs(float(fitted.weights.sum()) - 1.0) < 1e-12
    # Heteroscedastic rows work too and give a valid distribution.
    hetero = fit_npmle(x, torch.linspace(0.5, 1.5, 2000, dtype=torch.float64))
    assert abs(float(hetero.weights.sum()) - 1.0) < 1e-12 and bool((hetero.weights > 0).all())
