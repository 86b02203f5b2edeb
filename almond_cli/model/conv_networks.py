"""Convolutional encoder and decoder for images (``encoder=conv``, ``decoder=conv``).

The default is the architecture of Qiu & Wang (2019, Section 5.3): three stride-2 4×4 convolutions with
batch norm and 64 filters each, into a 1024-unit dense layer; the decoder mirrors it with a dense layer and
three stride-2 4×4 transposed convolutions back to one logit per pixel. Every size is a config value.

Both networks keep the row contract of ``model/networks.py``: images travel as flat rows (B, D) with
D = channels·rows·cols and are reshaped inside. The decoder accepts z with any leading dimensions, (B, C, d)
for C chains per image, and runs them as one batch of B·C.

Batch norm while the chains run: the Langevin target p_beta(x, z) must be one fixed function of z during
sampling. In training mode batch norm normalises with the statistics of the current batch of chains, so a
chain's density would depend on the other chains, and every call would move the running statistics. almond
therefore runs the whole ALMOND phase in eval mode (``phases.almond_update``): batch norm is the fixed
affine map given by the running statistics the VAE warm start left, in the Langevin moves and in the
log-likelihood whose gradient updates beta alike; its scale and shift (gamma, beta of the layer) are still
learned by ALMOND, the running statistics are frozen. Training mode (batch statistics) is used only in
the VAE warm start, whose objective is the usual one of batch-normalised VAEs.

Speed: convolution weights and feature maps use the channels-last memory layout, which oneDNN runs
about 1.6x faster on our 2-core CPU for these layers (a VAE update of 200 images: 290 → 175 ms, 1 thread).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import UsageError
from .networks import ACTIVATIONS, Decoder, Encoder


class ImageShapeError(UsageError, ValueError):
    """The conv networks' sizes do not fit the images; the message names the keys to change."""


def image_shape_for(data_dim: int, image_shape: Sequence[int] | None) -> tuple[int, int, int]:
    """The (channels, rows, cols) of a flat row of ``data_dim`` pixels.

    ``image_shape`` None means one channel and a square image; otherwise its product must be ``data_dim``.
    """
    if image_shape is None:
        side = math.isqrt(int(data_dim))
        if side * side != data_dim:
            raise ImageShapeError(
                f"encoder.image_shape: a row of {data_dim} values is not a square one-channel image; "
                f"set encoder.image_shape and decoder.image_shape to [channels, rows, cols]"
            )
        return (1, side, side)
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or math.prod(shape) != data_dim:
        raise ImageShapeError(f"encoder.image_shape: {list(shape)} does not hold the {data_dim} values of a row")
    return shape  # type: ignore[return-value]


def conv_output_sizes(size: int, num_layers: int, kernel_size: int, stride: int, padding: int) -> list[int]:
    """Spatial sizes after each of ``num_layers`` convolutions, starting with ``size``: a list of num_layers + 1."""
    sizes = [size]
    for _ in range(num_layers):
        size = (size + 2 * padding - kernel_size) // stride + 1
        if size < 1:
            raise ImageShapeError(
                "encoder.channels: too many or too large convolutions for the image size; "
                "use fewer layers or a smaller kernel_size"
            )
        sizes.append(size)
    return sizes


def _norm(kind: str, width: int, enabled: bool) -> nn.Module:
    if not enabled:
        return nn.Identity()
    return nn.BatchNorm2d(width) if kind == "2d" else nn.BatchNorm1d(width)


class ChannelsLast(nn.Module):
    """Re-lays a (N, C, H, W) feature map out channels-last (same values, faster oneDNN convolutions)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last)


class ConvEncoder(Encoder):
    """Strided convolutions, a dense layer, then the mean and log-variance of q(z | x).

    Args:
        data_dim: D, pixels per flat row.
        latent_dim: d.
        channels: filters of each convolution (paper: [64, 64, 64]).
        kernel_size: square kernel of every convolution (paper: 4).
        stride: stride of every convolution (paper: 2); padding is ``(kernel_size - 1) // 2``.
        dense_units: width of the dense layer after the convolutions (paper: 1024).
        batch_norm: batch norm after every convolution and the dense layer.
        activation: name from ``networks.ACTIVATIONS``.
        image_shape: (channels, rows, cols) of a row, or None for a square one-channel image.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        channels: Sequence[int] = (64, 64, 64),
        kernel_size: int = 4,
        stride: int = 2,
        dense_units: int = 1024,
        batch_norm: bool = True,
        activation: str = "relu",
        image_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape = image_shape_for(data_dim, image_shape)
        padding = (kernel_size - 1) // 2
        in_channels, rows, cols = self.image_shape
        row_sizes = conv_output_sizes(rows, len(channels), kernel_size, stride, padding)
        col_sizes = conv_output_sizes(cols, len(channels), kernel_size, stride, padding)
        layers: list[nn.Module] = []
        for width in channels:
            layers += [
                nn.Conv2d(in_channels, int(width), kernel_size, stride, padding, bias=not batch_norm),
                _norm("2d", int(width), batch_norm),
                ACTIVATIONS[activation](),
            ]
            in_channels = int(width)
        flat = in_channels * row_sizes[-1] * col_sizes[-1]
        layers += [
            nn.Flatten(),
            nn.Linear(flat, dense_units, bias=not batch_norm),
            _norm("1d", dense_units, batch_norm),
            ACTIVATIONS[activation](),
            nn.Linear(dense_units, 2 * latent_dim),
        ]
        self.net = nn.Sequential(*layers).to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Args: x (B, D). Returns: mean, log_var, each (B, d)."""
        images = x.reshape(x.shape[0], *self.image_shape).contiguous(memory_format=torch.channels_last)
        mean, log_var = self.net(images).chunk(2, dim=-1)
        return mean, log_var


class ConvDecoder(Decoder):
    """A dense layer, then transposed convolutions mirroring ``ConvEncoder``, to one logit per pixel.

    Args:
        latent_dim: d.
        output_dim: P = D, one natural parameter (logit) per pixel.
        channels: filters of the encoder's convolutions, which the decoder mirrors (paper: [64, 64, 64]);
            the last transposed convolution maps to the image's channels.
        kernel_size, stride, dense_units, batch_norm, activation, image_shape: as ``ConvEncoder``.
    """

    def __init__(
        self,
        latent_dim: int,
        output_dim: int,
        channels: Sequence[int] = (64, 64, 64),
        kernel_size: int = 4,
        stride: int = 2,
        dense_units: int = 1024,
        batch_norm: bool = True,
        activation: str = "relu",
        image_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.output_dim = output_dim
        self.image_shape = image_shape_for(output_dim, image_shape)
        padding = (kernel_size - 1) // 2
        out_channels, rows, cols = self.image_shape
        channels = [int(width) for width in channels]
        row_sizes = conv_output_sizes(rows, len(channels), kernel_size, stride, padding)
        col_sizes = conv_output_sizes(cols, len(channels), kernel_size, stride, padding)
        self.start_shape = (channels[-1], row_sizes[-1], col_sizes[-1])
        flat = math.prod(self.start_shape)
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, dense_units, bias=not batch_norm),
            _norm("1d", dense_units, batch_norm),
            ACTIVATIONS[activation](),
            nn.Linear(dense_units, flat, bias=not batch_norm),
            _norm("1d", flat, batch_norm),
            ACTIVATIONS[activation](),
            nn.Unflatten(1, self.start_shape),
            ChannelsLast(),
        ]
        widths_out = list(reversed(channels[:-1])) + [out_channels]
        in_channels = channels[-1]
        for index, width in enumerate(widths_out):
            # Output padding makes each transposed convolution land exactly on the encoder's size (3 → 7 on MNIST).
            target_rows, target_cols = row_sizes[-2 - index], col_sizes[-2 - index]
            base_rows = (row_sizes[-1 - index] - 1) * stride - 2 * padding + kernel_size
            base_cols = (col_sizes[-1 - index] - 1) * stride - 2 * padding + kernel_size
            output_padding = (target_rows - base_rows, target_cols - base_cols)
            if not all(0 <= pad < stride for pad in output_padding):
                raise ImageShapeError(
                    f"decoder.kernel_size: transposed convolutions with kernel {kernel_size} and "
                    f"stride {stride} cannot return to {target_rows}x{target_cols}; "
                    f"use kernel_size = 2·stride (the paper's 4 with stride 2)"
                )
            last = index == len(widths_out) - 1
            layers.append(
                nn.ConvTranspose2d(
                    in_channels,
                    width,
                    kernel_size,
                    stride,
                    padding,
                    output_padding=output_padding,
                    bias=last or not batch_norm,
                )
            )
            if not last:
                layers += [_norm("2d", width, batch_norm), ACTIVATIONS[activation]()]
            in_channels = width
        self.net = nn.Sequential(*layers).to(memory_format=torch.channels_last)

    def forward(self, z: Tensor) -> Tensor:
        """Args: z (..., d). Returns: logits (..., D)."""
        leading = z.shape[:-1]
        logits = self.net(z.reshape(-1, z.shape[-1]))
        return logits.reshape(*leading, self.output_dim)
