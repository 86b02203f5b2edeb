"""Langevin targets: log p(x, z) and its z-gradient, behind one method the sampler calls.

Every target is a ``Target``: ``target(z)`` is log p(x, z) (B, C) for z (B, C, d), a differentiable
function of z, and ``target.value_and_grad(z)`` is (log p(x, z) (B, C) detached, ∇_z log p(x, z) (B, C, d)).
``sampler`` calls ``value_and_grad`` and nothing else; which gradient it gets is the target's business:

- ``AutogradTarget(log_joint_fn)``, the default: wraps any differentiable z -> log p(x, z) and takes the
  gradient with ``torch.autograd.grad``;
- ``MLPTarget``: the hand-written value and gradient for MLP decoders, described below.

``target_for(model, x, precision)`` returns an ``MLPTarget`` when the decoder and the likelihood allow it, else an
``AutogradTarget`` of z -> model.log_joint(x, z), so callers never choose (a reference that wants autograd builds
the ``AutogradTarget`` itself; ``settings.build_target`` adds the tabulated decoder). The
tests check both give the same chains for the same generator state (tests/langevin/test_targets.py).
``precision`` (``sampler.precision``, see ``precision.py``) puts the ``MLPTarget``'s decoder sweeps in bfloat16;
an ``AutogradTarget`` runs float32 whatever is asked. ``target.precision`` says which ran.

The hand-written gradient. For an MLP decoder u = W_L a_{L-1} + b_L, a_l = act(W_l a_{l-1} + b_l), a_0 = z,
∇_z log p(x, z) is one backward sweep of matrix products and elementwise derivative factors; written by hand
it needs no graph, saves only act'(h_l) per layer, and folds work away where the shapes allow:

- a layer with input width 1 (d = 1) is a broadcast multiply-add instead of a k = 1 matmul;
- a scalar output (P = 1) makes the backward sweep independent of the data up to one factor per
  particle: ∇_z = ∂log f/∂u · ∂u/∂z, and the last layer's weights fold into the next matrix
  (diag(w_L) W_{L-1}), so the backward sweep starts one layer lower;
- act'(h) overwrites h in place (softplus' = sigmoid, tanh' = 1 − tanh², relu' = 1[h > 0]);
- on one CPU thread the sweeps run over blocks of data rows (each with all its chains) small enough that a
  block's activations stay in cache between the elementwise passes (``BLOCK_BYTES``).

A likelihood joins the fast path by defining ``value_and_grad_u(x, u) -> (log f (B, C), ∂log f/∂u
(B, C, P))`` (``likelihoods.Gaussian`` does).

Units of several rows (``model.units``): with ``units`` (R,) mapping the rows x (R, D) to the B units whose
latents z (B, C, d) move, the target is Σ_{r in unit} log f(x_r | h(z)) + log N(z; 0, I) per unit. The MLP
target then runs the decoder's sweeps per (unit, chain), reads each row's u with one gather, takes the
likelihood's value and ∂/∂u per row, and sums both back onto the units (``index_add``) before the backward
sweep. ``units=None`` (every row its own unit) keeps the one-row path, with no gather.
"""

from __future__ import annotations

import abc
from typing import Callable

import torch
from torch import Tensor, nn

from ..model.model import LOG_2PI
from ..model.networks import MLPDecoder, fast_tanh
from ..model.units import sum_over_rows
from .precision import DTYPES, resolve_precision

# With one CPU thread, a float32 sweep over all B·C particles at once streams each layer's activations (40 MB for
# the mixture's 100-unit layer at B 1000, C 100) through main memory on every elementwise pass; swept in blocks of
# rows whose widest activation takes about this many bytes, those passes hit cache. Measured on the 2-core EPYC
# with the product's process settings (benchmarks/blocked_sweep.py, benchmarks/README.md): one thread, 1.22x per
# mixture update and 1.14x per GLMM update. With two threads every elementwise op of a block is split between the
# threads, and blocks ranged from 0.87x to 1.27x of the whole batch from run to run, so only a single thread blocks
# (``BLOCK_MAX_THREADS``). bfloat16 is not blocked: its products go through oneDNN, whose per-call cost made 2 MiB
# blocks slower in the one comparison made (mixture, 2 threads: 41 -> 49 ms per step). Nor is a GPU (not measured
# here): each op is a kernel launch there, and launches over the whole batch are what keep the device busy.
BLOCK_BYTES = 2 * 1024 * 1024
BLOCK_MAX_THREADS = 1


class Target(abc.ABC):
    """The Langevin target log p(x, z) of one batch of data, as the sampler sees it.

    Contract, for z of shape (B, C, d) (B units: data points, or groups of rows; C chains, d latent dimensions):

    - ``target(z)`` returns log p(x, z) of shape (B, C) as a differentiable function of z (autograd works
      through it; tests and diagnostics call it);
    - ``target.value_and_grad(z)`` returns (log p(x, z) (B, C) detached, ∇_z log p(x, z) (B, C, d)). It is the
      only method the sampler calls; a subclass with its own gradient must agree with autograd on
      ``__call__`` (``AutogradTarget`` is that autograd).

    ``precision`` is the number format the decoder's products run in, ``"fp32"`` or ``"bf16"``.
    """

    precision = "fp32"

    @abc.abstractmethod
    def __call__(self, z: Tensor) -> Tensor:
        """log p(x, z) (B, C) for z (B, C, d), differentiable in z."""

    @abc.abstractmethod
    def value_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(log p(x, z) (B, C) detached, ∇_z log p(x, z) (B, C, d)) for z (B, C, d)."""


class AutogradTarget(Target):
    """The default target: any differentiable ``log_joint_fn`` z (B, C, d) -> log p(x, z) (B, C), with the
    gradient taken by ``torch.autograd.grad`` with respect to z alone (no parameter gradient is accumulated;
    callers freeze the decoder's parameters to skip their backward work too).
    """

    def __init__(self, log_joint_fn: Callable[[Tensor], Tensor]):
        self.log_joint_fn = log_joint_fn

    def __call__(self, z: Tensor) -> Tensor:
        return self.log_joint_fn(z)

    def value_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_joint = self.log_joint_fn(z)
            (grad,) = torch.autograd.grad(log_joint.sum(), z)
        return log_joint.detach(), grad


class BlockTarget(AutogradTarget):
    """A target of independent blocks of coordinates, log p(x, z) = Σ_k log p_k(x, z_k) (a mixed model's components:
    rows linked through no shared level have independent latents), whose ``value_and_grad`` returns the per-block
    values (B, C, K), so MALA accepts each block on its own (``sampler.mala_step``); ``target(z)`` is their sum.

    Args:
        log_joint_blocks_fn: z (B, C, d) -> (B, C, K), differentiable in z.
        block_of_coordinate: (d,) each coordinate's block 0..K-1.
    """

    def __init__(self, log_joint_blocks_fn: Callable[[Tensor], Tensor], block_of_coordinate: Tensor):
        super().__init__(log_joint_blocks_fn)  # AutogradTarget.value_and_grad: the per-block values, ∇ of their sum
        self.block_of_coordinate = block_of_coordinate
        self.num_blocks = int(block_of_coordinate.max()) + 1

    def __call__(self, z: Tensor) -> Tensor:
        return self.log_joint_fn(z).sum(-1)


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
        a = fast_tanh(h)
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
    with supported activations (``target_for`` then returns an ``AutogradTarget``)."""
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
    layers[-1] = (decoder.output_layer(), None)
    return layers


def _linear(a: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """a (N, k) @ weight.T (k → m) + bias; a broadcast multiply-add when k = 1 (an outer product), except in
    bfloat16, whose broadcast multiply-add torch runs 4–9× slower on CPU than a k = 1 bfloat16 addmm."""
    if weight.shape[1] == 1 and weight.dtype != torch.bfloat16:
        return torch.addcmul(bias, a, weight.view(1, -1))
    return torch.addmm(bias, a, weight.t())


class MLPTarget(Target):
    """log p(x, z) = log f(x | h(z)) + log N(z; 0, I) and its z-gradient for an MLP decoder.

    With ``precision="bf16"`` the decoder's sweeps (products, bias adds, activations and their derivatives) run
    in bfloat16 on weights rounded once per target; z enters rounded to bfloat16, u and ∂log p/∂z leave as
    float32, and the likelihood's value and gradient, the prior term and −z are float32. The value feeds MALA's
    acceptance test, which then corrects towards the bfloat16 decoder's posterior.

    Args:
        model: the ``LatentVariableModel``; its likelihood has ``value_and_grad_u``.
        layers: the decoder's layers from ``mlp_layers``.
        x: (R, D) the batch's rows.
        precision: ``"fp32"`` (the parameters' own dtype, bitwise the plain path) or ``"bf16"``.
        units: (R,) each row's unit 0..B-1 in the batch; None: row i is unit i (R = B).
    """

    def __init__(self, model, layers, x: Tensor, precision: str = "fp32", units: Tensor | None = None):
        self.model = model
        self.layers = layers
        self.likelihood = model.likelihood
        self.x = x
        self.units = units
        self.precision = precision
        weights = [linear.weight.detach() for linear, _ in layers]
        # fp32 keeps the parameters' dtype, so every .to(self.dtype) below is a no-op there.
        self.dtype = weights[0].dtype if precision == "fp32" else DTYPES[precision]
        self.weights = [weight.to(self.dtype) for weight in weights]
        self.biases = [linear.bias.detach().to(self.dtype) for linear, _ in layers]
        self.scalar_output = self.weights[-1].shape[0] == 1 and len(layers) > 1
        if self.scalar_output:
            # ∂u/∂a_{L-1} = w_L for every particle: fold it into the layer below, diag(w_L) W_{L-1} (in the
            # parameters' dtype, then rounded once).
            self.folded = (weights[-1].view(-1, 1) * weights[-2]).to(self.dtype)

    def __call__(self, z: Tensor) -> Tensor:
        """log p(x, z) for z (B, C, d), (B, C), through the model's own forward (autograd works)."""
        return self.model.log_joint(self.x, z, self.units)

    def value_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(log p(x, z) (B, C), ∇_z log p(x, z) (B, C, d)) for z (B, C, d), by one forward and one backward
        sweep written out (no graph), over blocks of rows (of units, each with all its rows) on one CPU thread."""
        rows = self.rows_per_block(z)
        if self.units is not None:
            if rows >= z.shape[0]:
                return self._sweep(self.x, z, self._unit_likelihood(self.units))
            blocks = [
                self._sweep(x, z[start : start + rows], self._unit_likelihood(units))
                for start, x, units in self._unit_blocks(rows, z.shape[0])
            ]
        elif rows >= z.shape[0]:
            return self._sweep(self.x, z)
        else:
            blocks = [
                self._sweep(self.x[start : start + rows], z[start : start + rows])
                for start in range(0, z.shape[0], rows)
            ]
        return torch.cat([value for value, _ in blocks]), torch.cat([grad for _, grad in blocks])

    def rows_per_block(self, z: Tensor) -> int:
        """How many data rows (with all their chains) one sweep takes: all of them on a GPU, in bfloat16 or with more
        than ``BLOCK_MAX_THREADS`` CPU threads, else as many as keep the widest activation within ``BLOCK_BYTES``."""
        if z.device.type != "cpu" or self.dtype == torch.bfloat16 or torch.get_num_threads() > BLOCK_MAX_THREADS:
            return z.shape[0]
        widest = max(weight.shape[0] for weight in self.weights)
        per_row = z.shape[1] * widest * self.weights[0].element_size()
        return max(1, BLOCK_BYTES // per_row)

    def _unit_likelihood(self, units: Tensor):
        """``value_and_grad_u`` per unit, for rows whose units are ``units`` (R,): u (B, C, P) per unit read by
        each row, the rows' values (R, C) and gradients (R, C, P) summed onto their units: (B, C), (B, C, P)."""

        def value_and_grad(x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
            log_lik, grad_u = self.likelihood.value_and_grad_u(x, u.index_select(0, units))
            return sum_over_rows(log_lik, units, u.shape[0]), sum_over_rows(grad_u, units, u.shape[0])

        return value_and_grad

    def _unit_blocks(self, size: int, num_units: int) -> list[tuple[int, Tensor, Tensor]]:
        """[(first unit, its block's rows (r, D), their units from 0 (r,))] for blocks of ``size`` units, found once
        per block size (the batch's rows and units do not change while the chains move)."""
        if getattr(self, "_blocks", (None,))[0] != size:
            blocks = []
            for start in range(0, num_units, size):
                rows = ((self.units >= start) & (self.units < start + size)).nonzero().squeeze(1)
                blocks.append((start, self.x.index_select(0, rows), self.units.index_select(0, rows) - start))
            self._blocks = (size, blocks)
        return self._blocks[1]

    def _sweep(self, x: Tensor, z: Tensor, likelihood=None) -> tuple[Tensor, Tensor]:
        """``value_and_grad`` of the rows ``x`` (b, D) with their chains ``z`` (b, C, d), all at once;
        ``likelihood(x, u)`` is the likelihood's value and ∂/∂u (``value_and_grad_u`` when None)."""
        batch, chains, latent_dim = z.shape
        with torch.no_grad():
            a = z.reshape(batch * chains, latent_dim).to(self.dtype)
            derivatives = []
            for (_linear_module, activation), weight, bias in zip(self.layers, self.weights, self.biases):
                h = _linear(a, weight, bias)
                if activation is None:
                    a = h
                else:
                    a = _activation_and_derivative(activation, h)
                    derivatives.append(h)
            u = a.view(batch, chains, -1).to(z.dtype)
            log_lik, grad_u = (likelihood or self.likelihood.value_and_grad_u)(x, u)
            grad_u = grad_u.reshape(batch * chains, -1)
            if self.scalar_output:
                # ∂u/∂z per particle, then times ∂log f/∂u (N, 1).
                g = derivatives[-1]
                hidden = len(derivatives) - 1
                g = self._back(g, self.folded)
                for index in range(hidden - 1, -1, -1):
                    g.mul_(derivatives[index])
                    g = self._back(g, self.weights[index])
                grad = g.to(z.dtype).mul_(grad_u)
            else:
                g = grad_u.to(self.dtype)
                for index in range(len(self.layers) - 1, -1, -1):
                    g = self._back(g, self.weights[index])
                    if index > 0:
                        g.mul_(derivatives[index - 1])
                grad = g.to(z.dtype)
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


def _fast_layers(model):
    """``mlp_layers`` of the decoder when the fused path applies (likelihood with ``value_and_grad_u``, plain MLP
    decoder), else None."""
    if hasattr(model.likelihood, "value_and_grad_u"):
        return mlp_layers(model.decoder)
    return None


def target_for(model, x: Tensor, precision: str = "fp32", units: Tensor | None = None, laws=None) -> Target:
    """The Langevin target of ``model`` on data ``x`` (R, D): the fused ``MLPTarget`` where the decoder and
    likelihood allow it, else ``AutogradTarget`` of z -> model.log_joint(x, z, units).
    ``units`` (R,) maps each row to its unit 0..B-1 (z is (B, C, d)); None: row i is unit i. ``laws``: a mixed
    model's decoder read from tables (``tabulated.TabulatedLaws``) for its per-component target.

    ``precision`` is ``sampler.precision`` (``"fp32"``, ``"bf16"`` or ``"auto"``, resolved for ``x``'s device by
    ``precision.resolve_precision``); it applies to the ``MLPTarget`` only: an ``AutogradTarget`` (conv or
    other non-MLP decoders, likelihoods without ``value_and_grad_u``) runs float32.
    The returned target's ``precision`` is the one that runs (``target_precision`` says it without building one).
    """
    layers = _fast_layers(model)
    if layers is not None:
        return MLPTarget(model, layers, x, resolve_precision(precision, x.device), units)
    blocks = model.latent_blocks(x) if hasattr(model, "latent_blocks") else None
    if blocks is not None:  # independent blocks of latents (a mixed model's components): MALA accepts each alone
        return BlockTarget(lambda z: model.log_joint_blocks(x, z, units, laws), blocks)
    if units is None:
        return AutogradTarget(lambda z: model.log_joint(x, z))
    return AutogradTarget(lambda z: model.log_joint(x, z, units))


def target_precision(model, device: torch.device | str, precision: str) -> str:
    """The precision ``target_for(model, x, precision)`` runs for data on ``device``: ``"fp32"`` or ``"bf16"``
    (what a run records in summary.json)."""
    if _fast_layers(model) is None:
        return "fp32"
    return resolve_precision(precision, device)
