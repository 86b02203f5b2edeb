"""decoder=linear recovers a known Gaussian random-effects covariance through the VAE + ALMOND phases."""

import pytest
import torch

from almond_cli.langevin.settings import SamplerSettings
from almond_cli.model.likelihoods import Gaussian
from almond_cli.model.model import LatentVariableModel
from almond_cli.model.networks import LinearDecoder, MLPEncoder
from almond_cli.training import phases


@pytest.mark.slow
def test_linear_decoder_recovers_the_random_effects_covariance():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    n, sigma = 2000, 0.5
    covariance = torch.tensor([[1.0, 0.6], [0.6, 0.8]])
    mean = torch.tensor([0.5, -1.0])
    effects = mean + torch.randn(n, 2, generator=generator) @ torch.linalg.cholesky(covariance).T
    x = effects + sigma * torch.randn(n, 2, generator=generator)
    model = LatentVariableModel(MLPEncoder(2, 2, [16]), LinearDecoder(2, 2), Gaussian(sigma))
    vae_optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        phases.vae_update(model, vae_optimiser, x, 4, generator)
    chains = phases.initial_chains(model, x, 8, generator, n)
    optimiser = torch.optim.Adam(model.generative_parameters, lr=0.005)
    # A small Langevin step matters: ULA's stationary law has its variance inflated by about 1/(1 − s/(2τ²))
    # for a posterior variance τ² (≈ 0.2 here), which shrinks the fitted A; s = 0.1 ended at 0.73 instead
    # of 1.0 for Σ_11, s = 0.01 leaves a bias of about 2.5%.
    for _ in range(100):
        phases.almond_update(
            model, optimiser, chains, torch.arange(n), x, 0.01, SamplerSettings(num_steps=5, burn_in=3), generator
        )
    fitted = model.decoder.covariance().detach()
    # The maximum-likelihood covariance of u is cov(x) − sigma² I; with n = 2,000 its entries have standard
    # errors ≈ sqrt((Σ_ii Σ_jj + Σ_ij²) / n) ≈ 0.03, so 0.12 (4 SE) separates "recovered" from "not".
    assert torch.allclose(fitted, covariance, atol=0.12), fitted
    assert torch.allclose(model.decoder.linear.bias.detach(), mean, atol=0.1)
    # Closer still to the data's own MLE (only optimisation and Langevin error remain).
    mle = torch.cov(x.T) - sigma**2 * torch.eye(2)
    assert torch.allclose(fitted, mle, atol=0.06), (fitted, mle)
