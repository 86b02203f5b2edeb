"""The new likelihoods against torch.distributions, and posterior draws on a conjugate case vs the closed form."""

from __future__ import annotations

import math

import pytest
import torch

from almond_cli.commands.sample import normal_eb_means, posterior_draws, summarise
from almond_cli.model.likelihoods import Bernoulli, Gaussian, HeteroscedasticGaussian, Poisson
from almond_cli.model.model import LatentVariableModel
from almond_cli.model.networks import MLPDecoder, MLPEncoder


def test_bernoulli_matches_torch_for_binary_and_grey_values():
    generator = torch.Generator().manual_seed(0)
    logits = 8 * torch.randn(3, 4, 5, generator=generator)  # large logits: the stable form must stay exact
    x = (torch.rand(3, 5, generator=generator) > 0.5).float()
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x.unsqueeze(1)).sum(-1)
    assert torch.allclose(Bernoulli().log_prob(x, logits), expected, atol=1e-5)
    grey = torch.rand(3, 5, generator=generator)  # continuous pixels: the cross-entropy, same formula
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, grey.unsqueeze(1).expand_as(logits), reduction="none"
    ).sum(-1)
    assert torch.allclose(Bernoulli().log_prob(grey, logits), expected, atol=1e-5)


def test_poisson_matches_torch():
    generator = torch.Generator().manual_seed(1)
    log_rate = torch.randn(4, 3, 2, generator=generator)
    counts = torch.poisson(torch.full((4, 2), 3.0), generator=generator)
    expected = torch.distributions.Poisson(log_rate.exp()).log_prob(counts.unsqueeze(1)).sum(-1)
    assert torch.allclose(Poisson().log_prob(counts, log_rate), expected, atol=1e-5)


def test_heteroscedastic_gaussian_reads_the_sd_column():
    generator = torch.Generator().manual_seed(2)
    values, sd = torch.randn(4, 2, generator=generator), torch.rand(4, 1, generator=generator) + 0.2
    u = torch.randn(4, 3, 2, generator=generator)
    expected = torch.distributions.Normal(u, sd.unsqueeze(1)).log_prob(values.unsqueeze(1)).sum(-1)
    got = HeteroscedasticGaussian().log_prob(torch.cat([values, sd], 1), u)
    assert torch.allclose(got, expected, atol=1e-5)
    assert HeteroscedasticGaussian().param_dim(3) == 2


def linear_model(likelihood, data_dim, slope, intercept):
    """h(z) = slope z + intercept: with a Gaussian likelihood the posterior of u is Gaussian in closed form."""
    decoder = MLPDecoder(latent_dim=1, output_dim=1, hidden_sizes=[])
    with torch.no_grad():
        decoder.net[0].weight.fill_(slope)
        decoder.net[0].bias.fill_(intercept)
    torch.manual_seed(0)
    encoder = MLPEncoder(data_dim=data_dim, latent_dim=1, hidden_sizes=[4])
    return LatentVariableModel(encoder, decoder, likelihood).eval()


@pytest.mark.parametrize("heteroscedastic", [False, True])
def test_posterior_draws_match_the_conjugate_posterior(heteroscedastic):
    slope, intercept = 1.5, 2.0  # prior u ~ N(2, 1.5²)
    x = torch.tensor([-1.0, 0.5, 2.0, 4.0, 7.0])
    sd = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.7]) if heteroscedastic else torch.ones(5)
    if heteroscedastic:
        model, data = linear_model(HeteroscedasticGaussian(), 2, slope, intercept), torch.stack([x, sd], 1)
    else:
        model, data = linear_model(Gaussian(1.0), 1, slope, intercept), x.unsqueeze(1)
    # z | x is Gaussian with precision lam = slope²/sd² + 1 and mean slope (x - intercept) / (sd² lam).
    lam = slope**2 / sd.square() + 1.0
    z_mean = slope * (x - intercept) / (sd.square() * lam)
    step = 0.01
    # Unadjusted Langevin on a Gaussian target keeps the mean exactly and inflates the variance to
    # 1 / (lam (1 - step lam / 2)) (solve v = (1 - s lam)² v + 2 s); we compare with that exact stationary law
    # and also check the inflation itself is small (< 6% here), so the draws are the posterior up to that.
    ula_var = 1.0 / (lam * (1.0 - step * lam / 2.0))
    assert float((ula_var * lam).max()) < 1.06
    num_chains, num_draws = 2000, 5
    draws = posterior_draws(
        model,
        data,
        num_chains=num_chains,
        num_draws=num_draws,
        thin=20,
        burn_in=600,
        step_size=step,
        generator=torch.Generator().manual_seed(3),
    )
    assert draws.shape == (5, num_chains * num_draws, 1)
    stats = summarise(draws, level=0.9)
    u_mean, u_sd = intercept + slope * z_mean, slope * ula_var.sqrt()
    # Monte Carlo tolerance: the 2000 chains are independent and each contributes at least one effective draw,
    # so the standard error of the mean is below u_sd / sqrt(2000) and that of the sd below u_sd / sqrt(2 * 2000);
    # 4 standard errors leaves a false-alarm chance below 1e-4 per comparison. Burn-in 600 steps shrinks the
    # distance from the encoder's start by (1 - step lam)^600 < 1e-4 for the smallest lam here.
    assert torch.all((stats["mean"][:, 0].double() - u_mean).abs() < 4 * u_sd / math.sqrt(num_chains))
    assert torch.all((stats["sd"][:, 0].double() - u_sd).abs() < 4 * u_sd / math.sqrt(2 * num_chains))
    # The 90% interval bounds are the Gaussian's 5% and 95% quantiles (±1.645 sd), sample quantile error
    # sqrt(0.05·0.95)/(phi(1.645)·sqrt(2000)) ≈ 0.047 sd per bound; 4 of those again.
    for key, sign in (("lower", -1), ("upper", 1)):
        assert torch.all((stats[key][:, 0].double() - (u_mean + sign * 1.6449 * u_sd)).abs() < 0.19 * u_sd)


def test_normal_eb_means_shrink_by_the_maximum_likelihood_prior():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 9.0], dtype=torch.float64)
    # Equal noise sd 1: the ML prior is N(mean, max(0, var_1/n(x) − 1)), so the shrinkage factor is
    # tau² / (tau² + 1) = 1 − 1 / var_1/n(x) (the divisor n, not n − 1: the likelihood's, not the moment fit's).
    mean, var = float(x.mean()), float(x.var(unbiased=False))
    factor = (var - 1.0) / var
    assert torch.allclose(normal_eb_means(x, 1.0), mean + factor * (x - mean), atol=1e-9)
