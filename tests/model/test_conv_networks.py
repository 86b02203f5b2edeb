"""Convolutional networks: shapes, the paper's default sizes, and batch norm while the chains run;
the Bernoulli likelihood against torch.distributions."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from almond_cli.config import ConvNetworkConfig
from almond_cli.errors import UsageError
from almond_cli.langevin.chains import PersistentChains
from almond_cli.langevin.settings import SamplerSettings
from almond_cli.model.conv_networks import ConvDecoder, ConvEncoder
from almond_cli.model.likelihoods import Bernoulli
from almond_cli.model.model import LatentVariableModel
from almond_cli.training.phases import almond_update, vae_update


def small_model(latent_dim=3, batch_norm=True):
    encoder = ConvEncoder(784, latent_dim, channels=[4, 8, 8], dense_units=32, batch_norm=batch_norm)
    decoder = ConvDecoder(latent_dim, 784, channels=[4, 8, 8], dense_units=32, batch_norm=batch_norm)
    return LatentVariableModel(encoder, decoder, Bernoulli())


def test_paper_architecture_by_default():
    encoder, decoder = ConvEncoder(784, 20), ConvDecoder(20, 784)
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(64, (4, 4), (2, 2))] * 3
    assert any(isinstance(m, torch.nn.Linear) and m.out_features == 1024 for m in encoder.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules()) == 3
    transposed = [m for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(t.out_channels, t.kernel_size, t.stride) for t in transposed] == [
        (64, (4, 4), (2, 2)),
        (64, (4, 4), (2, 2)),
        (1, (4, 4), (2, 2)),
    ]
    assert decoder.start_shape == (64, 3, 3)  # 28 → 14 → 7 → 3, mirrored 3 → 7 → 14 → 28


def test_shapes_with_chain_axes_and_config_sizes():
    cfg = OmegaConf.structured(ConvNetworkConfig)
    cfg.channels, cfg.dense_units, cfg.kernel_size = [8, 16], 64, 3
    encoder = instantiate(
        OmegaConf.merge(cfg, {"_target_": "almond_cli.model.conv_networks.ConvEncoder"}), data_dim=784, latent_dim=5
    )
    decoder = instantiate(
        OmegaConf.merge(cfg, {"_target_": "almond_cli.model.conv_networks.ConvDecoder"}), latent_dim=5, output_dim=784
    )
    mean, log_var = encoder(torch.rand(6, 784))
    assert mean.shape == (6, 5) and log_var.shape == (6, 5)
    assert decoder(torch.randn(6, 4, 5)).shape == (6, 4, 784)
    assert decoder(torch.randn(2, 3, 4, 5)).shape == (2, 3, 4, 784)


def test_non_square_multichannel_images():
    encoder = ConvEncoder(3 * 20 * 12, 2, channels=[4, 4], dense_units=16, image_shape=[3, 20, 12])
    decoder = ConvDecoder(2, 3 * 20 * 12, channels=[4, 4], dense_units=16, image_shape=[3, 20, 12])
    assert encoder(torch.rand(2, 720))[0].shape == (2, 2)
    assert decoder(torch.randn(2, 7, 2)).shape == (2, 7, 720)
    with pytest.raises(UsageError, match="not a square one-channel image"):
        ConvEncoder(700, 2)


def test_chain_axis_is_the_same_as_separate_calls_in_eval_mode():
    decoder = ConvDecoder(3, 784, channels=[4, 8, 8], dense_units=32).eval()
    z = torch.randn(2, 5, 3)
    together = decoder(z)
    for b in range(2):
        for c in range(5):
            torch.testing.assert_close(together[b, c], decoder(z[b, c].unsqueeze(0))[0], rtol=1e-4, atol=1e-4)


def test_almond_update_samples_a_fixed_target_and_freezes_running_statistics():
    torch.manual_seed(0)
    model = small_model()
    x = torch.rand(8, 784)
    vae_optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        vae_update(model, vae_optimiser, x, 2, torch.Generator().manual_seed(1))
    norms = [m for m in model.decoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    before = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    # The density of one chain does not depend on the other chains of the batch (eval mode = fixed target).
    model.eval()
    z = torch.randn(8, 4, 3)
    alone = model.log_joint(x[:1], z[:1, :1])
    shifted = z.clone()
    shifted[:, 1:] += 5.0
    torch.testing.assert_close(model.log_joint(x, shifted)[:1, :1], alone, rtol=1e-5, atol=1e-3)
    model.train()
    chains = PersistentChains(torch.randn(8, 4, 3))
    optimiser = torch.optim.Adam(model.generative_parameters, lr=1e-3)
    gamma_before = norms[0].weight.detach().clone()
    almond_update(
        model,
        optimiser,
        chains,
        torch.arange(8),
        x,
        0.01,
        SamplerSettings(num_steps=3, burn_in=1),
        torch.Generator().manual_seed(2),
    )
    for module, (mean, var, count) in zip(norms, before):
        assert torch.equal(module.running_mean, mean) and torch.equal(module.running_var, var)
        assert torch.equal(module.num_batches_tracked, count)
    assert not torch.equal(norms[0].weight.detach(), gamma_before)  # the scale is still learned
    assert model.training  # the caller's mode is restored


def test_bernoulli_matches_torch_distributions():
    torch.manual_seed(1)
    x = torch.bernoulli(torch.full((4, 30), 0.4))
    logits = torch.randn(4, 3, 30) * 4
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x.unsqueeze(1).expand_as(logits)).sum(-1)
    torch.testing.assert_close(Bernoulli().log_prob(x, logits), expected)
    assert Bernoulli().param_dim(784) == 784


def test_bernoulli_is_stable_for_continuous_pixels_and_extreme_logits():
    x = torch.tensor([[0.0, 1.0, 0.3, 0.7]])
    logits = torch.tensor([[[-200.0, 200.0, 0.5, -0.5]], [[200.0, -200.0, 0.0, 0.0]]]).transpose(0, 1)
    value = Bernoulli().log_prob(x, logits)
    assert torch.isfinite(value).all()
    # Continuous x: minus the binary cross-entropy, checked against torch's stable implementation.
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x.unsqueeze(1).expand_as(logits), reduction="none"
    ).sum(-1)
    torch.testing.assert_close(value, expected)
    # By hand: saturated logits cost ~0; x u - softplus(u) = 0.15 - softplus(0.5) = -0.35 - softplus(-0.5).
    assert float(value[0, 0]) == pytest.approx(2 * (0.15 - 0.9740770), abs=1e-5)
