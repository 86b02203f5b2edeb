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
from .units import count, sum_over_rows

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

    def log_lik(self, x: Tensor, z: Tensor, units: Tensor | None = None) -> Tensor:
        """log f(x | h(z)) per unit: the sum over each unit's rows (``model.units``).

        Args:
            x: (R, D) the rows of B units.
            z: (B, C, d) C latents per unit.
            units: (R,) each row's unit 0..B-1 in the batch; None: row i is unit i (R = B).

        Returns:
            (B, C).
        """
        u = self.decoder(z)
        if units is None:
            return self.likelihood.log_prob(x, u)
        # h once per unit, then each row reads its unit's u.
        return sum_over_rows(self.likelihood.log_prob(x, u.index_select(0, units)), units, z.shape[0])

    def log_joint(self, x: Tensor, z: Tensor, units: Tensor | None = None) -> Tensor:
        """log f(x | h(z)) + log N(z; 0, I) per unit. Args: x (R, D), z (B, C, d), units (R,) or None (see
        ``log_lik``). Returns (B, C)."""
        return self.log_lik(x, z, units) + standard_normal_log_prob(z)

    def encode(self, x: Tensor, units: Tensor | None = None, num_units: int | None = None) -> tuple[Tensor, Tensor]:
        """(mean, log_var) of q(z | x_unit), each (B, d), for the rows x (R, D) of B units: the encoder reads x
        through the likelihood's ``encoder_input``, in training, chain starts and likelihood estimates alike.

        A unit of several rows combines its rows' Gaussians q_r = N(m_r, 1/λ_r) (λ per coordinate) as a product
        of experts with the prior counted once: if each q_r were the exact posterior p(z | x_r) ∝ N(z; 0, I)
        f(x_r | z) of a Gaussian model, p(z | x_1..k) ∝ N(z; 0, I)^(1-k) Π_r q_r is Gaussian with precision
        λ = Σ_r λ_r − (k − 1) and mean Σ_r λ_r m_r / λ (the prior's mean is 0), which is what this returns. Where
        the encoder calls a row wider than the prior (λ_r < 1) that precision could fall to 0 or below, so it is
        floored at max_r λ_r: a unit is never less certain than its surest row (in the Gaussian model it is
        always at least that certain). The encoder is trained through this combination by the per-unit ELBO, so
        it is an amortised q of the unit either way. A unit of one row gets that row's q, bitwise.

        Args:
            x: (R, D) rows.
            units: (R,) each row's unit 0..B-1; None: row i is unit i (the encoder's output itself).
            num_units: B; by default ``units.max() + 1``.
        """
        mean, log_var = self.encoder(self.likelihood.encoder_input(x))
        if units is None:
            return mean, log_var
        num_units = count(units, x.shape[0]) if num_units is None else num_units
        precision = (-log_var).exp()
        total = sum_over_rows(precision, units, num_units)
        weighted = sum_over_rows(precision * mean, units, num_units)
        rows = sum_over_rows(torch.ones_like(units, dtype=precision.dtype), units, num_units).unsqueeze(-1)
        surest = precision.new_zeros((num_units, precision.shape[-1])).scatter_reduce_(
            0, units.unsqueeze(-1).expand_as(precision), precision, "amax", include_self=False
        )
        combined = torch.maximum(total - (rows - 1.0), surest)
        # A one-row unit takes its row's (mean, log_var) as they are (a sum of one term is exact), so an explicit
        # one-row-per-unit map gives bitwise the outputs of units=None.
        single = rows == 1.0
        return (
            torch.where(single, sum_over_rows(mean, units, num_units), weighted / combined),
            torch.where(single, sum_over_rows(log_var, units, num_units), -combined.log()),
        )

    def sample_posterior_approx(
        self,
        x: Tensor,
        num_draws: int,
        generator: torch.Generator | None,
        units: Tensor | None = None,
        num_units: int | None = None,
    ) -> Tensor:
        """Draws from q(z | x_unit). Args: x (R, D), units (R,) or None (see ``encode``). Returns z (B, num_draws,
        d)."""
        mean, log_var = self.encode(x, units, num_units)
        return reparameterise(mean, log_var, num_draws, generator)

    def elbo(self, x: Tensor, num_draws: int, generator: torch.Generator | None, units: Tensor | None = None) -> Tensor:
        """The evidence lower bound per unit with ``num_draws`` reparameterised draws.

        Args: x (R, D), units (R,) or None (every row its own unit; see ``log_lik``). Returns (B,):
        E_q[Σ_{r in unit} log f(x_r | h(z))] - KL(q(z | x_unit) || N(0, I)).
        """
        mean, log_var = self.encode(x, units)
        z = reparameterise(mean, log_var, num_draws, generator)
        expected_log_lik = self.log_lik(x, z, units).mean(1)
        kl = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(-1)
        return expected_log_lik - kl

    def chain_whitening(self):
        """(centre, scale) of the coordinates w the Langevin chains move in, z = centre + scale · w
        (``langevin.whitening``), or None: z itself. A model whose latents differ widely in posterior spread
        (``mixed.MixedModel``) whitens them."""
        return None

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
