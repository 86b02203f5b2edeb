"""The classical empirical-Bayes baselines: exact marginal likelihoods, the Kiefer–Wolfowitz NPMLE, posterior means."""

from __future__ import annotations

import torch

from almond_cli.data.priors import DiscretePrior, NormalPrior
from almond_cli.tasks.empirical_bayes import fit_npmle, marginal_log_likelihood, posterior_means


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
