"""The latent-variable model x | z ~ f_theta(x | h_eta(z)), z ~ N(0, I_d), and its variational encoder.

``log_joint`` is the Langevin target log f(x | h(z)) + log N(z; 0, I); ``elbo`` is the VAE warm start's
objective (Qiu & Wang 2019, Section 2 and Algorithm 1).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .likelihoods import Likelihood
from .networks import Decoder, Encoder

LOG_2PI = math.log(2.0 * math.pi)


@contextmanager
def evaluation_mode(module: nn.Module):
    """Eval mode for the duration, restored afterwards: batch norm then uses its running statistics and leaves
    them alone, so every evaluation of the target outside a VAE update (Langevin moves, the ALMOND loss, checks,
    scoring) sees one fixed function of z and changes nothing in the model."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension: (..., d) -> (...)."""
    return -0.5 * (z.square().sum(-1) + z.shape[-1] * LOG_2PI)


def reparameterise(mean: Tensor, log_var: Tensor, num_draws: int, generator: torch.Generator | None) -> Tensor:
    """Draws z = mean + exp(log_var / 2) ε. Args: mean, log_var (B, d). Returns (B, num_draws, d)."""
    noise = torch.randn(
        (mean.shape[0], num_draws, mean.shape[-1]), generator=generator, device=mean.device, dtype=mean.dtype
    )
    return mean.unsqueeze(1) + (0.5 * log_var).exp().unsqueeze(1) * noise


@torch.no_grad()
def prior_draws(decoder: nn.Module, latent_dim: int, num_draws: int, generator: torch.Generator, device) -> Tensor:
    """u = h(z) for ``num_draws`` z ~ N(0, I_d) from ``generator`` (a CPU generator: the same draws on any device),
    the decoder in eval mode: (num_draws, P) on the CPU. The one way almond draws from a learned latent
    distribution (scores, figures, ``almond sample what=prior``)."""
    z = torch.randn(num_draws, latent_dim, generator=generator)
    with evaluation_mode(decoder):
        u = decoder(z.to(device))
    return u.detach().cpu()


class LatentVariableModel(nn.Module):
    """Encoder q(z | x), decoder h(z) and likelihood f(x | u) together.

    Args:
        encoder: maps x (B, D) to (mean, log_var) of q(z | x).
        decoder: maps z (..., d) to u (..., P).
        likelihood: log f(x | u).
    """

    def __init__(self, encoder: Encoder, decoder: Decoder, likelihood: Likelihood):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood

    @property
    def generative_parameters(self) -> list[nn.Parameter]:
        """beta = (theta, eta): the decoder's and the likelihood's parameters."""
        return list(self.decoder.parameters()) + list(self.likelihood.parameters())

    def log_lik(self, x: Tensor, z: Tensor) -> Tensor:
        """log f(x | h(z)). Args: x (B, D), z (B, C, d). Returns (B, C)."""
        return self.likelihood.log_prob(x, self.decoder(z))

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log f(x | h(z)) + log N(z; 0, I). Args: x (B, D), z (B, C, d). Returns (B, C)."""
        return self.log_lik(x, z) + standard_normal_log_prob(z)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_var) of q(z | x), each (B, d), for data x (B, D): the encoder reads x through the
        likelihood's ``encoder_input``, in training, chain starts and likelihood estimates alike."""
        return self.encoder(self.likelihood.encoder_input(x))

    def sample_posterior_approx(self, x: Tensor, num_draws: int, generator: torch.Generator | None) -> Tensor:
        """Draws from q(z | x). Args: x (B, D). Returns z (B, num_draws, d)."""
        mean, log_var = self.encode(x)
        return reparameterise(mean, log_var, num_draws, generator)

    def elbo(self, x: Tensor, num_draws: int, generator: torch.Generator | None) -> Tensor:
        """The evidence lower bound per data point with ``num_draws`` reparameterised draws.

        Args: x (B, D). Returns (B,): E_q[log f(x | h(z))] - KL(q(z | x) || N(0, I)).
        """
        mean, log_var = self.encode(x)
        z = reparameterise(mean, log_var, num_draws, generator)
        expected_log_lik = self.log_lik(x, z).mean(1)
        kl = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(-1)
        return expected_log_lik - kl

    @contextmanager
    def frozen(self):
        """Stops parameter gradients while the chains run: the Langevin target needs only ∇_z."""
        flags = [(p, p.requires_grad) for p in self.parameters()]
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        try:
            yield self
        finally:
            for parameter, flag in flags:
                parameter.requires_grad_(flag)
