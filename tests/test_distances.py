import torch

from almond_cli.distances import ks_distance, w1_distance
from almond_cli.priors import ExponentialPrior, NormalMixturePrior, NormalPrior, make_prior


def test_ks_of_a_point_mass_against_a_uniform():
    uniform_cdf = lambda t: t.clamp(0, 1)  # noqa: E731
    assert abs(ks_distance(torch.tensor([0.5]), uniform_cdf) - 0.5) < 1e-12
    # Evenly spaced quantiles (i - 0.5) / n are the best n-point fit: KS = 1 / (2n).
    n = 100
    assert abs(ks_distance((torch.arange(n, dtype=torch.float64) + 0.5) / n, uniform_cdf) - 0.5 / n) < 1e-12


def test_w1_of_a_shifted_sample_is_the_shift():
    prior = NormalPrior(0.0, 1.0)
    generator = torch.Generator().manual_seed(0)
    draws = prior.sample(200_000, generator)
    lower, upper = prior.bulk()
    base = w1_distance(draws, prior.cdf, lower, upper)
    shifted = w1_distance(draws + 0.3, prior.cdf, lower, upper)
    # W1 of a 200k sample to its own law is O(n^-1/2) ~ 0.003; a shift adds exactly 0.3 for the law.
    assert base < 0.01
    assert abs(shifted - 0.3) < 0.01


def test_priors_sample_their_own_cdf():
    for name in ("normal", "exponential", "mixture"):
        prior = make_prior(name)
        draws = prior.sample(20_000, torch.Generator().manual_seed(1))
        # KS of n iid draws to their own CDF: P(sqrt(n) KS > 1.63) = 1% (Kolmogorov distribution).
        assert ks_distance(draws, prior.cdf) < 1.63 / 20_000**0.5


def test_paper_prior_parameters_and_densities_integrate_to_one():
    assert isinstance(make_prior("exponential"), ExponentialPrior) and make_prior("exponential").scale == 2.0
    mixture = make_prior("mixture")
    assert isinstance(mixture, NormalMixturePrior)
    assert torch.allclose(mixture.weights, torch.tensor([0.4, 0.6], dtype=torch.float64))
    for name in ("normal", "exponential", "mixture"):
        prior = make_prior(name)
        lower, upper = prior.bulk()
        grid = torch.linspace(lower, upper, 200_001, dtype=torch.float64)
        assert abs(float(torch.trapezoid(prior.pdf(grid), grid)) - 1.0) < 1e-3
