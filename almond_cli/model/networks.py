"""Encoder and decoder networks.

Contract: networks return natural parameters, never samples.
- An encoder maps x (B, D) to the mean and log-variance of a diagonal Gaussian q(z | x), each (B, d).
- A decoder maps z (..., d) to u = h(z) of shape (..., P), the parameter the likelihood reads
  (a mean, a logit, a random effect). Leading dimensions are arbitrary: (B, C, d) for chains.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn


def fast_tanh(x: Tensor) -> Tensor:
    """tanh(x) as 2 sigmoid(2x) − 1 (the same function; within 1.8e-7 of ``torch.tanh`` in float32, absolute, on [-20, 20]):
    torch's CPU tanh runs about 6x slower than its sigmoid (0.46 against 0.07 ms on a (30, 181, 32) float32 tensor,
    one thread, AMD EPYC with AVX-512), and a mixed model's decoders spend most of their time in it."""
    return torch.sigmoid(2.0 * x).mul_(2.0).sub_(1.0)


class _FastTanhFunction(torch.autograd.Function):
    """``fast_tanh`` with tanh's backward from its output, g · (1 − y²): two cheap ops instead of autograd's four."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = fast_tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad * (1.0 - y * y)


class Tanh(nn.Tanh):
    """``nn.Tanh`` computed by ``fast_tanh`` (a subclass: code that asks for a tanh still finds one; no parameters,
    so checkpoints are unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        return _FastTanhFunction.apply(x)


ACTIVATIONS = {"softplus": nn.Softplus, "relu": nn.ReLU, "tanh": Tanh, "elu": nn.ELU, "gelu": nn.GELU}
# How the weights of a fully connected network start:
# - "pytorch": torch's own nn.Linear default (weights and biases uniform in ±1/sqrt(fan_in));
# - "xavier_uniform": weights uniform in ±sqrt(6 / (fan_in + fan_out)), biases zero, as the authors' reference
#   implementation starts (MXNet's Xavier initializer with its zero bias default). On the paper's exponential
#   prior it gives a lower W1 in 15 of 20 seeds (docs/reproducing-the-paper.md), with the same KS.
INITIALISATIONS = ("pytorch", "xavier_uniform")


def make_mlp(
    in_dim: int, hidden_sizes: Sequence[int], out_dim: int, activation: str, init: str = "pytorch"
) -> nn.Sequential:
    """A fully connected network in_dim → hidden_sizes → out_dim with ``activation`` between layers, its
    weights started as ``init`` says (one of ``INITIALISATIONS``)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if init not in INITIALISATIONS:
        raise ValueError(f"unknown init {init!r}; choose one of {list(INITIALISATIONS)}")
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, int(hidden)), ACTIVATIONS[activation]()]
        width = int(hidden)
    layers.append(nn.Linear(width, out_dim))
    if init == "xavier_uniform":
        for layer in layers:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Base class: ``forward(x (B, D)) -> (mean (B, d), log_var (B, d))`` of q(z | x)."""


class Decoder(nn.Module):
    """Base class: ``forward(z (..., d)) -> u (..., P)``, the likelihood's parameter h(z)."""


class MLPEncoder(Encoder):
    """An MLP from x to the mean and log-variance of q(z | x).

    Args:
        data_dim: D, the width of one observation.
        latent_dim: d.
        hidden_sizes: widths of the hidden layers.
        activation: name from ``ACTIVATIONS``.
        init: name from ``INITIALISATIONS``.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden_sizes: Sequence[int],
        activation: str = "softplus",
        init: str = "pytorch",
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = make_mlp(data_dim, hidden_sizes, 2 * latent_dim, activation, init)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_var = self.net(x).chunk(2, dim=-1)
        return mean, log_var


class LayerNumbers(NamedTuple):
    """A linear layer's weight (m, k) and bias (m,), without a module (no parameters, no initialisation drawn)."""

    weight: Tensor
    bias: Tensor


class MLPDecoder(Decoder):
    """An MLP from z to u = h(z) = shift + scale · net(z).

    ``output_shift`` and ``output_scale`` (buffers, (P,); 0 and 1 unless set) put the network's output in the data's
    units, so that its weights work in standardised ones: Adam moves every weight by about its learning rate, which
    on data whose signal sd is 0.03 (batting averages) moves u by several of those sds per step where the weights
    carry the scale (tests/training/test_stopping.py). ``collapse.reset_to_normal_prior`` sets them; a checkpoint saved before them loads with
    the identity.

    Args:
        latent_dim: d.
        output_dim: P, set from the likelihood and the data.
        hidden_sizes: widths of the hidden layers.
        activation: name from ``ACTIVATIONS``.
        init: name from ``INITIALISATIONS``.
    """

    def __init__(
        self,
        latent_dim: int,
        output_dim: int,
        hidden_sizes: Sequence[int],
        activation: str = "softplus",
        init: str = "pytorch",
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = make_mlp(latent_dim, hidden_sizes, output_dim, activation, init)
        self.register_buffer("output_shift", torch.zeros(output_dim))
        self.register_buffer("output_scale", torch.ones(output_dim))

    def forward(self, z: Tensor) -> Tensor:
        # shift + 1 · net(z) is net(z) exactly, so a decoder without an affine gives the same bits as before it
        return torch.addcmul(self.output_shift, self.output_scale, self.net(z))

    @torch.no_grad()
    def output_layer(self) -> LayerNumbers:
        """The network's last layer with the output affine folded in, detached (the same numbers as the layer where
        there is no affine): the layer a fused forward sweep (``langevin.targets.mlp_layers``) multiplies by."""
        last = self.net[-1]
        weight = last.weight.detach() * self.output_scale.unsqueeze(1)
        return LayerNumbers(weight, torch.addcmul(self.output_shift, self.output_scale, last.bias.detach()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint saved before the output affine: its network's output is u itself.
        state_dict.setdefault(prefix + "output_shift", torch.zeros_like(self.output_shift))
        state_dict.setdefault(prefix + "output_scale", torch.ones_like(self.output_scale))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LinearDecoder(Decoder):
    """u = A z + b: the push-forward of N(0, I_d) is N(b, A Aᵀ), a Gaussian with a full covariance.

    With a GLMM likelihood this is the classical Gaussian GLMM, fitted by the same VAE + ALMOND machinery.

    Args:
        latent_dim: d.
        output_dim: P.
    """

    def __init__(self, latent_dim: int, output_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.linear = nn.Linear(latent_dim, output_dim)

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z)

    def covariance(self) -> Tensor:
        """A Aᵀ, the covariance of u: (P, P)."""
        weight = self.linear.weight
        return weight @ weight.T


@torch.no_grad()
def scale_decoder_output(decoder: nn.Module, scale: Tensor, shift: Tensor) -> bool:
    """Makes the decoder's output h'(z) = scale · h(z) + shift, exactly, by changing its output layer (W, b) to
    (scale · W, scale · b + shift); returns False, changing nothing, for a decoder without one (not an MLP or linear
    decoder). Behind an MLP's output affine (m, s), u = m + s · (W a + b), the bias takes the shift in the network's
    units: scale · b + (shift + (scale − 1) · m) / s.

    Args:
        decoder: the decoder.
        scale: (P,) per output coordinate.
        shift: (P,).
    """
    # in float64, then stored: scale · b and shift may nearly cancel (a collapsed h has b far from its small spread)
    scale, shift = scale.double(), shift.double()
    if isinstance(decoder, MLPDecoder):
        layer = decoder.net[-1]
        affine_shift, affine_scale = decoder.output_shift.double().cpu(), decoder.output_scale.double().cpu()
        shift = (shift + (scale - 1.0) * affine_shift) / affine_scale
    elif isinstance(decoder, LinearDecoder):
        layer = decoder.linear
    else:
        return False
    layer.weight.copy_(layer.weight.double() * scale.to(layer.weight.device).unsqueeze(1))
    layer.bias.copy_(layer.bias.double() * scale.to(layer.bias.device) + shift.to(layer.bias.device))
    return True
