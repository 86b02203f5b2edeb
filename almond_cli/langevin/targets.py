"""Hand-written value and gradient of the Langevin target for MLP decoders: no autograd graph.

The Langevin target needs only log p(x, z) and ∇_z log p(x, z). For an MLP decoder
u = W_L a_{L-1} + b_L, a_l = act(W_l a_{l-1} + b_l), a_0 = z, the gradient is one backward sweep of
matrix products and elementwise derivative factors; written by hand it needs no graph, saves only
act'(h_l) per layer, and folds work away where the shapes allow:

- a layer with input width 1 (d = 1) is a broadcast multiply-add instead of a k = 1 matmul;
- a scalar output (P = 1) makes the backward sweep independent of the data up to one factor per
  particle: ∇_z = ∂log f/∂u · ∂u/∂z, and the last layer's weights fold into the next matrix
  (diag(w_L) W_{L-1}), so the backward sweep starts one layer lower;
- act'(h) overwrites h in place (softplus' = sigmoid, tanh' = 1 − tanh², relu' = 1[h > 0]).

A target built here is a callable (``log_joint(z)``, for any caller) with a ``value_and_grad(z)``
method that ``sampler.evaluate`` uses instead of autograd. ``target_for`` returns the plain autograd
closure when the decoder or the likelihood is not one it knows, so nothing else has to choose. The
tests check both give the same chains for the same generator state (tests/test_fast_gradients.py).

A likelihood joins the fast path by defining ``value_and_grad_u(x, u) -> (log f (B, C), ∂log f/∂u
(B, C, P))`` (``likelihoods.Gaussian`` does).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ..model.networks import MLPDecoder

LOG_2PI = math.log(2.0 * math.pi)

# Activations with a closed-form derivative computable from the pre-activation in place.
_SUPPORTED = (nn.Softplus, nn.Tanh, nn.ReLU)


def _activation_and_derivative(module: nn.Module, h: Tensor) -> Tensor:
    """Returns act(h) as a new tensor and overwrites ``h`` with act'(h) (both (N, width))."""
    if isinstance(module, nn.Softplus):
        a = torch.nn.functional.softplus(h, module.beta, module.threshold)
        if module.beta == 1:
            h.sigmoid_()
        else:
            h.mul_(module.beta).sigmoid_()
        return a
    if isinstance(module, nn.Tanh):
        a = torch.tanh(h)
        torch.mul(a, a, out=h)
        h.neg_().add_(1.0)
        return a
    if isinstance(module, nn.ReLU):
        a = torch.relu(h)
        h.gt_(0)
        return a
    raise TypeError(f"unsupported activation {type(module).__name__}")


def mlp_layers(decoder: nn.Module) -> list[tuple[nn.Linear, nn.Module | None]] | None:
    """[(linear, activation after it or None)] of an ``MLPDecoder``, or None when it is not a plain MLP
    with supported activations (the caller then uses autograd)."""
    if not isinstance(decoder, MLPDecoder):
        return None
    modules = list(decoder.net)
    layers: list[tuple[nn.Linear, nn.Module | None]] = []
    index = 0
    while index < len(modules):
        linear = modules[index]
        if not isinstance(linear, nn.Linear) or linear.bias is None:
            return None
        activation = modules[index + 1] if index + 1 < len(modules) else None
        if activation is not None and not isinstance(activation, _SUPPORTED):
            return None
        layers.append((linear, activation))
        index += 2
    if layers[-1][1] is not None:
        return None
    return layers


def _linear(a: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """a (N, k) @ weight.T (k → m) + bias; a broadcast multiply-add when k = 1 (an outer product)."""
    if weight.shape[1] == 1:
        return torch.addcmul(bias, a, weight.view(1, -1))
    return torch.addmm(bias, a, weight.t())


class MLPTarget:
    """log p(x, z) = log f(x | h(z)) + log N(z; 0, I) and its z-gradient for an MLP decoder.

    Args:
        model: the ``LatentVariableModel``; its likelihood has ``value_and_grad_u``.
        layers: the decoder's layers from ``mlp_layers``.
        x: (B, D) the batch's data.
    """

    def __init__(self, model, layers, x: Tensor):
        self.model = model
        self.layers = layers
        self.likelihood = model.likelihood
        self.x = x
        self.weights = [linear.weight.detach() for linear, _ in layers]
        self.biases = [linear.bias.detach() for linear, _ in layers]
        self.scalar_output = self.weights[-1].shape[0] == 1 and len(layers) > 1
        if self.scalar_output:
            # ∂u/∂a_{L-1} = w_L for every particle: fold it into the layer below, diag(w_L) W_{L-1}.
            self.folded = self.weights[-1].view(-1, 1) * self.weights[-2]

    def __call__(self, z: Tensor) -> Tensor:
        """log p(x, z) for z (B, C, d), (B, C), through the model's own forward (autograd works)."""
        return self.model.log_joint(self.x, z)

    def value_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(log p(x, z) (B, C), ∇_z log p(x, z) (B, C, d)) for z (B, C, d), by one forward and one backward
        sweep written out (no graph)."""
        batch, chains, latent_dim = z.shape
        with torch.no_grad():
            a = z.reshape(batch * chains, latent_dim)
            derivatives = []
            for (linear, activation), weight, bias in zip(self.layers, self.weights, self.biases):
                h = _linear(a, weight, bias)
                if activation is None:
                    a = h
                else:
                    a = _activation_and_derivative(activation, h)
                    derivatives.append(h)
            u = a.view(batch, chains, -1)
            log_lik, grad_u = self.likelihood.value_and_grad_u(self.x, u)
            grad_u = grad_u.reshape(batch * chains, -1)
            if self.scalar_output:
                # ∂u/∂z per particle, then times ∂log f/∂u (N, 1).
                g = derivatives[-1]
                hidden = len(derivatives) - 1
                g = self._back(g, self.folded)
                for index in range(hidden - 1, -1, -1):
                    g.mul_(derivatives[index])
                    g = self._back(g, self.weights[index])
                grad = g.mul_(grad_u)
            else:
                g = grad_u
                for index in range(len(self.layers) - 1, -1, -1):
                    g = self._back(g, self.weights[index])
                    if index > 0:
                        g.mul_(derivatives[index - 1])
                grad = g
            grad = grad.view(batch, chains, latent_dim).sub_(z)
            # A sum over a length-1 axis is a reduction kernel (~50 µs on 100k chains); a view is free.
            squared = z.view(batch, chains).square() if latent_dim == 1 else z.square().sum(-1)
            log_joint = log_lik - 0.5 * (squared + latent_dim * LOG_2PI)
        return log_joint, grad

    @staticmethod
    def _back(g: Tensor, weight: Tensor) -> Tensor:
        """g (N, m) @ weight (m, k): the backward of a linear layer; a broadcast when m = 1 (a new tensor)."""
        if weight.shape[0] == 1:
            return g * weight
        return g @ weight


def target_for(model, x: Tensor, fast: bool = True) -> Callable[[Tensor], Tensor]:
    """The Langevin target of ``model`` on data ``x`` (B, D): the fused ``MLPTarget`` where the decoder and
    likelihood allow it and ``fast`` is set, else the autograd closure z -> model.log_joint(x, z)."""
    if fast and hasattr(model.likelihood, "value_and_grad_u"):
        layers = mlp_layers(model.decoder)
        if layers is not None:
            return MLPTarget(model, layers, x)
    return lambda z: model.log_joint(x, z)
