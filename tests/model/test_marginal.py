"""The importance-sampled held-out NLL on a linear-Gaussian model, whose marginal likelihood is known:
z ~ N(0, I_d), x | z ~ N(W z + b, σ² I_D)  ⇒  x ~ N(b, W Wᵀ + σ² I_D)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from almond_cli.model.likelihoods import Gaussian
from almond_cli.model.marginal import estimate_log_marginal, nll_summary
from almond_cli.model.model import LatentVariableModel
from almond_cli.model.networks import Decoder, Encoder

D, LATENT, SIGMA = 6, 2, 0.5


class LinearDecoder(Decoder):
    def __init__(self, weight, bias):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, z):
        return z @ self.weight.T + self.bias


class PosteriorEncoder(Encoder):
    """The exact posterior N(S Wᵀ (x − b) / σ², S), S = (I + WᵀW / σ²)⁻¹, optionally shifted and widened."""

    def __init__(self, weight, bias, shift=0.0, variance_factor=1.0):
        super().__init__()
        self.weight, self.bias, self.shift, self.factor = weight, bias, shift, variance_factor
        self.cov = torch.linalg.inv(torch.eye(LATENT, dtype=torch.float64) + weight.T @ weight / SIGMA**2)

    def forward(self, x):
        mean = ((x.double() - self.bias) @ self.weight / SIGMA**2) @ self.cov.T + self.shift
        log_var = torch.log(torch.diagonal(self.cov) * self.factor).expand_as(mean)
        return mean, log_var


def linear_gaussian(seed, num_images, column_scales=(2.0, 1.2)):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(D, LATENT, generator=generator, dtype=torch.float64)
    # A diagonal posterior needs orthogonal columns of W: then WᵀW is diagonal and so is S.
    weight, _ = torch.linalg.qr(weight)
    weight = weight * torch.tensor(column_scales, dtype=torch.float64)
    bias = torch.randn(D, generator=generator, dtype=torch.float64)
    z = torch.randn(num_images, LATENT, generator=generator, dtype=torch.float64)
    x = z @ weight.T + bias + SIGMA * torch.randn(num_images, D, generator=generator, dtype=torch.float64)
    marginal = torch.distributions.MultivariateNormal(
        bias, weight @ weight.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
    )
    return weight, bias, x, marginal.log_prob(x)


def model_with(encoder, weight, bias):
    return LatentVariableModel(encoder, LinearDecoder(weight.clone(), bias.clone()), Gaussian(SIGMA)).double()


def test_exact_posterior_proposal_gives_the_exact_marginal_for_every_image():
    weight, bias, x, exact = linear_gaussian(seed=0, num_images=50)
    model = model_with(PosteriorEncoder(weight, bias), weight, bias)
    estimate = estimate_log_marginal(model, x, num_samples=3, seed=1)
    # With q = p(z | x) every importance weight equals p(x): no Monte Carlo error at all.
    torch.testing.assert_close(estimate.log_marginal, exact, rtol=0, atol=1e-8)
    assert float(estimate.mc_variance.max()) < 1e-12
    # Uniform weights: E[z | x] is the average of K draws; K = 2000 puts it within 4 sd/sqrt(K) of the truth.
    posterior_mean, log_var = model.encoder(x)
    many = estimate_log_marginal(model, x, num_samples=2000, seed=1)
    tolerance = 4 * float((0.5 * log_var).exp().max()) / math.sqrt(2000)
    assert float((many.posterior_mean.double() - posterior_mean).abs().max()) < tolerance


def test_encoder_proposal_estimate_is_within_its_standard_errors():
    weight, bias, x, exact = linear_gaussian(seed=2, num_images=400)
    model = model_with(PosteriorEncoder(weight, bias, shift=0.3, variance_factor=2.0), weight, bias)
    estimate = estimate_log_marginal(model, x, num_samples=200, seed=3, chunk=1000)
    summary = nll_summary(estimate)
    exact_nll = float(-exact.mean())
    # The reported standard error (over images) covers the exact mean NLL of the same images.
    assert abs(summary["test_nll"] - exact_nll) < summary["test_nll_se"]
    # Sharper: the Monte Carlo error of the mean of log p̂ over 400 images, from the weights' own variance
    # (delta method). 4 of those standard errors, plus the Jensen bias E[log p̂] − log p ≈ −Var/2, bound it;
    # a missing −log K would be off by 5.3 nats, a wrong proposal density by far more.
    mc_se = math.sqrt(float(estimate.mc_variance.sum())) / x.shape[0]
    jensen = float(estimate.mc_variance.mean()) / 2
    error = float((estimate.log_marginal - exact).mean())
    assert abs(error + jensen) < 4 * mc_se + 1e-9, (error, jensen, mc_se)
    assert mc_se < 0.01  # the test has power: the proposal is good enough for a precise check


def test_same_seed_gives_the_same_draws_and_more_samples_shrink_the_gap():
    weight, bias, x, exact = linear_gaussian(seed=4, num_images=100)
    model = model_with(PosteriorEncoder(weight, bias, shift=0.8, variance_factor=0.5), weight, bias)
    first = estimate_log_marginal(model, x, num_samples=10, seed=5)
    again = estimate_log_marginal(model, x, num_samples=10, seed=5, chunk=7)  # other batching, same draws
    torch.testing.assert_close(first.log_marginal, again.log_marginal)
    large = estimate_log_marginal(model, x, num_samples=2000, seed=5)
    gap_small = float((exact - first.log_marginal).mean())
    gap_large = float((exact - large.log_marginal).mean())
    # IWAE: the expected gap log p − E log p̂ is positive and shrinks with K.
    assert gap_small > gap_large > -0.01 and gap_small > 0.02


class ScaledInputGaussian(Gaussian):
    """The Gaussian likelihood with an encoder input of x / 3: a stand-in for the GLMM's log(1 + y)."""

    def encoder_input(self, x):
        return x / 3.0


def test_the_encoder_reads_the_likelihoods_encoder_input_as_in_training():
    """The estimator's proposal is the encoder fed exactly as training feeds it (``model.encode``): with an
    encoder that expects x / 3, the exact-posterior proposal is exact again (zero Monte Carlo error); an
    estimator feeding raw x would propose from the wrong place and miss log p(x) by far more than 1e-8."""
    weight, bias, x, exact = linear_gaussian(seed=6, num_images=40)

    class ExpectsScaledInput(PosteriorEncoder):
        def forward(self, scaled):
            return super().forward(scaled * 3.0)

    model = LatentVariableModel(
        ExpectsScaledInput(weight, bias), LinearDecoder(weight.clone(), bias.clone()), ScaledInputGaussian(SIGMA)
    ).double()
    estimate = estimate_log_marginal(model, x, num_samples=3, seed=1)
    torch.testing.assert_close(estimate.log_marginal, exact, rtol=0, atol=1e-8)


def test_posterior_mean_of_the_decoder_output_uses_the_importance_weights():
    """E[h(z) | x] for the linear decoder is W E[z | x] + b. With a shifted, widened proposal the weights are far
    from uniform, so the estimate must weight the draws of h(z) exactly as those of z (to float rounding), and it
    lands near the exact W m(x) + b: within 4 sd/sqrt(K) of each z coordinate, times |W_ij| <= 2 over d = 2."""
    weight, bias, x, _ = linear_gaussian(seed=7, num_images=50)
    model = model_with(PosteriorEncoder(weight, bias, shift=0.3, variance_factor=2.0), weight, bias)
    estimate = estimate_log_marginal(model, x, num_samples=2000, seed=8, with_mean_u=True)
    torch.testing.assert_close(
        estimate.posterior_mean_u, estimate.posterior_mean.double() @ weight.T + bias, rtol=0, atol=1e-5
    )
    exact_mean, log_var = PosteriorEncoder(weight, bias)(x)
    tolerance = 4 * float((0.5 * log_var).exp().max()) / math.sqrt(2000) * 2 * 2
    assert float((estimate.posterior_mean_u - (exact_mean @ weight.T + bias)).abs().max()) < tolerance
    assert estimate_log_marginal(model, x, num_samples=20, seed=8).posterior_mean_u is None


def test_the_defensive_mixture_is_unbiased_and_rescues_a_stale_encoder():
    """With the prior's share a of the draws, every weight divides by a·N(z) + (1 − a)·q(z | x).
    A good encoder: the estimate stays within the Monte Carlo error of the exact log p(x), as with a = 0.
    A stale one (shifted by 2.5 posterior sds, variance 0.1×, as after ALMOND has moved the decoder): the encoder
    alone misses posterior mass and reads nats low. The mixture bounds every weight by f(x | h(z)) / a. Where the
    data say little about z (the GLMM: a row cuts the variance of u by ~10 %; here column scales 0.4, 0.24, posterior
    sds 0.78, 0.90), the a·K = 100 prior draws cover the posterior and the error is Monte Carlo noise again: within
    4 of its standard errors of the Jensen gap (measured −0.019 against −5.8 for the encoder alone). Where the
    posterior is sharp (sds 0.24, 0.38), 100 prior draws are few inside it and the mixture only limits the damage
    (measured −0.28 against −8.8)."""
    weight, bias, x, exact = linear_gaussian(seed=9, num_images=200)
    good = model_with(PosteriorEncoder(weight, bias, shift=0.3, variance_factor=2.0), weight, bias)
    estimate = estimate_log_marginal(good, x, num_samples=400, seed=10, prior_fraction=0.1)
    mc_se = math.sqrt(float(estimate.mc_variance.sum())) / x.shape[0]
    error = float((estimate.log_marginal - exact).mean())
    assert abs(error + float(estimate.mc_variance.mean()) / 2) < 4 * mc_se and mc_se < 0.01, (error, mc_se)

    def estimates(column_scales):
        weight, bias, x, exact = linear_gaussian(seed=9, num_images=200, column_scales=column_scales)
        sd = float(PosteriorEncoder(weight, bias).cov.diagonal().sqrt().max())
        stale = model_with(PosteriorEncoder(weight, bias, shift=2.5 * sd, variance_factor=0.1), weight, bias)
        return exact, [estimate_log_marginal(stale, x, num_samples=1000, seed=10, prior_fraction=a) for a in (0.0, 0.1)]

    exact, (encoder_only, mixture) = estimates((0.4, 0.24))
    mc_se = math.sqrt(float(mixture.mc_variance.sum())) / exact.numel()
    error = float((mixture.log_marginal - exact).mean())
    assert abs(error + float(mixture.mc_variance.mean()) / 2) < 4 * mc_se and mc_se < 0.02, (error, mc_se)
    assert float((encoder_only.log_marginal - exact).mean()) < -1.0
    exact, (encoder_only, mixture) = estimates((2.0, 1.2))
    assert float((encoder_only.log_marginal - exact).mean()) < -5.0
    assert -1.0 < float((mixture.log_marginal - exact).mean()) < 0.0


def test_prior_fraction_zero_is_the_encoder_alone_and_the_draws_split_as_asked():
    weight, bias, x, exact = linear_gaussian(seed=11, num_images=20)
    model = model_with(PosteriorEncoder(weight, bias), weight, bias)
    # a = 0 keeps the exact-posterior proposal exact; a > 0 mixes in prior draws, whose weights differ.
    torch.testing.assert_close(
        estimate_log_marginal(model, x, 5, seed=1, prior_fraction=0.0).log_marginal, exact, rtol=0, atol=1e-8
    )
    mixed = estimate_log_marginal(model, x, 10, seed=1, prior_fraction=0.2)
    assert float(mixed.mc_variance.max()) > 1e-6
    with pytest.raises(ValueError, match="prior_fraction"):
        estimate_log_marginal(model, x, 5, seed=1, prior_fraction=1.0)
