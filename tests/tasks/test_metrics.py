import torch

from almond_cli.data.priors import ExponentialPrior, NormalMixturePrior, NormalPrior, make_prior
from almond_cli.tasks.metrics import ks_distance, w1_distance


def test_ks_of_a_point_mass_against_a_uniform():
    uniform_cdf = lambda t: t.clamp(0, 1)  # noqa: E731
    assert abs(ks_distance(torch.tensor([0.5]), uniform_cdf) - 0.5) < 1e-12
    # Evenly spaced quantiles (i - 0.5) / n are the best n-point fit: KS = 1 / (2n).
    n = 100
    assert abs(ks_distance((torch.arange(n, dtype=torch.float64) + 0.5) / n, uniform_cdf) - 0.5 / n) < 1e-12


def test_ks_takes_the_larger_of_both_one_sided_distances():
    """Both sides count: samples piled on the right (F_n below F) and on the left (F_n above F) give the same,
    hand-computed distance. D+ = max(i/n − F(s_i)), D− = max(F(s_i) − (i−1)/n) for sorted s_1..s_n."""
    uniform_cdf = lambda t: t.clamp(0, 1)  # noqa: E731
    # Right: D+ = max(1/3 − 0.9, 2/3 − 0.95, 1 − 0.99) = 0.01, D− = max(0.9, 0.95 − 1/3, 0.99 − 2/3) = 0.9.
    assert abs(ks_distance(torch.tensor([0.9, 0.95, 0.99], dtype=torch.float64), uniform_cdf) - 0.9) < 1e-12
    # Left, the mirror image: D+ = 1 − 0.1 = 0.9, D− = 0.1 − 2/3 < 0.
    assert abs(ks_distance(torch.tensor([0.01, 0.05, 0.1], dtype=torch.float64), uniform_cdf) - 0.9) < 1e-12


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


def test_distances_to_an_empirical_distribution_are_the_two_sample_distances():
    from almond_cli.data.priors import EmpiricalPrior

    generator = torch.Generator().manual_seed(3)
    draws = torch.randn(400, generator=generator, dtype=torch.float64) * 1.5 + 0.4
    truth = ExponentialPrior(2.0).sample(400, generator)
    prior = EmpiricalPrior(truth)
    # Two-sample KS by brute force: both empirical CDFs at every point of the pooled sample.
    pooled = torch.cat([draws, truth])
    ecdf = lambda sample: (sample.unsqueeze(0) <= pooled.unsqueeze(1)).double().mean(1)  # noqa: E731
    assert abs(ks_distance(draws, prior.cdf) - float((ecdf(draws) - ecdf(truth)).abs().max())) < 1e-12
    # For equal sizes W1 is exactly the mean gap between order statistics; w1_distance integrates on a grid.
    exact = float((torch.sort(draws).values - torch.sort(truth).values).abs().mean())
    assert abs(w1_distance(draws, prior.cdf, *prior.bulk()) - exact) <= grid_error_bound(draws, truth)


def grid_error_bound(draws, truth, grid_size=200_001):
    """w1_distance's trapezoid rule misplaces each jump of 1/n of either empirical CDF by at most one grid spacing,
    so with n draws and n truths (2n jumps) it is off by at most 2 spacings; a wrong pairing or a missing 1/n
    would be off by O(0.1)."""
    assert draws.numel() == truth.numel()
    span = float(torch.cat([draws, truth]).max() - torch.cat([draws, truth]).min())
    return 2.0 * span / (grid_size - 1)


def test_normal_means_scores_name_the_prior_and_the_true_means():
    from omegaconf import OmegaConf

    from almond_cli.tasks.normal_means import NormalMeansTask
    from almond_cli.tasks.registry import build_dataset

    dataset = build_dataset(
        OmegaConf.create({"name": "normal_means", "n": 500, "prior": "exponential", "noise_sd": 1.0}), 7
    )
    draws = dataset.x[:, 0].double()  # the data themselves: a fit with no deconvolution at all
    scores = NormalMeansTask._scores(draws, dataset)
    assert scores["ks"] == ks_distance(draws, dataset.prior.cdf)
    exact = float((torch.sort(draws).values - torch.sort(dataset.truth[:, 0].double()).values).abs().mean())
    assert abs(scores["w1_true_means"] - exact) <= grid_error_bound(draws, dataset.truth[:, 0].double())
    # Triangle inequality: the two targets differ by the means' own distance to the prior, so the pairs of
    # scores can be no further apart than that, up to the grid errors of the three W1s.
    truth = dataset.truth[:, 0].double()
    lower, upper = dataset.prior.bulk()
    own_w1, own_ks = w1_distance(truth, dataset.prior.cdf, lower, upper), ks_distance(truth, dataset.prior.cdf)
    assert abs(scores["w1_true_means"] - scores["w1"]) <= own_w1 + 3 * grid_error_bound(draws, truth)
    assert abs(scores["ks_true_means"] - scores["ks"]) <= own_ks + 1e-12
    assert scores["w1_true_means"] > 0.1  # the data are not the means: the noise spreads them
