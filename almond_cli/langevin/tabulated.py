"""A tabulated Langevin target for one-dimensional latents: the decoder interpolated, not evaluated, per particle.

Within one ALMOND update (Qiu & Wang 2019, Algorithm 1) the decoder u = h(z) is fixed while the chains move. For
latent_dim d = 1, h: R -> R^P and h' can therefore be computed ONCE per update at G nodes of a uniform grid over
where the chains can be, and each of the B × C particles of each of the K Langevin steps reads them back from a
piecewise cubic Hermite interpolant p (value and slope matched at every node; p' is the derivative of the cubic)
instead of running through the network. The likelihood and the prior stay exact:

    log p(x, z) ≈ log f(x | p(z)) − z²/2 − log(2π)/2,    ∇_z ≈ ∂log f/∂u(x, p(z)) · p'(z) − z.

Error (cubic Hermite on spacing Δ, for h with four continuous derivatives; per output coordinate):

    |h − p|   ≤ Δ⁴ / 384 · max|h⁽⁴⁾|        (the remainder h⁽⁴⁾(ξ)/4! (z − a)²(z − b)², max of (z−a)²(z−b)² = Δ⁴/16)
    |h' − p'| ≤ √3 / 216 · Δ³ · max|h⁽⁴⁾|   (Birkhoff & Priver 1967; sharp: h = z⁴ attains it at the cell's
                                             points a + Δ(1/2 ± 1/(2√3)). Rolle alone gives the safe Δ³/24:
                                             h' − p' vanishes at a, b and inside, so it is a quadratic's
                                             interpolation error times h⁽⁴⁾/3!.)

The softplus decoder (the default) is analytic, so the bound applies; with G = 2049 nodes over a range of ~15 the
spacing is ~0.0075 and both errors are below 1e-6 for max|h⁽⁴⁾| up to ~300 (on the trained mnn_mixture_fast
decoder the interpolation moves ∇_z by at most 4.7e-7, below the float32 exact path's own 2.7e-6; docs/speed.md).
ReLU decoders are piecewise linear, where the bound does not hold at the kinks: ``auto`` does not tabulate them
(``applies`` checks the activation).

The grid covers the chains' current range widened by a margin for where they can move in K steps (``around``);
a particle outside the grid — or not finite — is never extrapolated: its h and h' come from the exact decoder, by
one forward and one backward pass over those particles alone. Checking for them costs one host synchronisation
per step.

The parameter step after sampling reads the same table (``tabulated_loss``). p is linear in the node data:
p(z) = Σ_j [H_j(t) h(z_j) + Δ S_j(t) h'(z_j)] over the two ends j of z's cell (H, S the Hermite value and slope
basis), so the decoder gradient of Σ_p log f(x | p(z_p)) is Σ_j [a_j · ∇_β h(z_j) + b_j · ∇_β h'(z_j)] with
a_j = Σ_p g_p H_j(t_p) and b_j = Σ_p g_p Δ S_j(t_p), g_p = ∂log f/∂u at particle p: the B·K'·C particles are
summed onto the G nodes and only the nodes run through the network. That gradient is the exact gradient of the
interpolated loss; it differs from the exact loss's by the interpolation error of ∇_β h, which is the cubic Hermite
interpolant of z ↦ ∇_β h(z) (interpolation commutes with ∇_β), so |∇_β h − ∇_β p| ≤ Δ⁴/384 · max|∂_z⁴ ∇_β h|,
plus the change of g at p(z) instead of h(z), |∂²log f/∂u²| · |h − p| · |∇_β h|: both O(Δ⁴), ~1e-12 relative
in float64 at G = 2049 on random softplus MLPs, far below float32 rounding.

The table holds per cell the cubic's coefficients in t = (z − a)/Δ ∈ [0, 1] and those of its derivative, seven
numbers per output, so a particle costs one gather and five fused multiply-adds per output coordinate.
"""

from __future__ import annotations

import math
from itertools import chain

import torch
from torch import Tensor, nn

from ..model.mixed import MixedMLPDecoder
from ..model.model import LOG_2PI
from ..model.networks import MLPDecoder
from ..model.units import sum_over_rows
from .targets import Target

TABULATE_MODES = ("off", "on", "auto")
# The grid's margin beyond the chains' range: the noise of K steps, sqrt(2 s K) per chain, NUM_SD times (a chain
# escapes it with probability ~2e-9 per update), plus the drift of K steps at a gradient of at most DRIFT_BOUND.
# A chain beyond it is evaluated exactly, so these only set how rarely that happens, never the accuracy.
NUM_SD = 6.0
DRIFT_BOUND = 10.0
# Activations with a smooth h (four continuous derivatives), where the error bound above holds; ReLU is not.
SMOOTH_ACTIVATIONS = (nn.Softplus, nn.Tanh, nn.ELU, nn.GELU)
# With one CPU thread a one-output table is read from its coefficient-major copy (``HermiteTable.columns``): each
# coefficient then comes out of the gather as a contiguous vector, and the five multiply-adds run on contiguous
# operands rather than on every seventh number (benchmarks/table_layout.py: 1.36x per lookup, 1.13x per default
# update). torch splits a gather along dim 0 between threads but not one along dim 1, so with more threads the
# cell-major table is read, as before. Both give bitwise the same numbers.
COLUMN_MAX_THREADS = 1


def applies(model) -> bool:
    """Whether ``sampler.tabulate=auto`` tabulates ``model``: a one-dimensional latent, an ``MLPDecoder`` whose
    activations are smooth, and a likelihood with ``value_and_grad_u``."""
    decoder = model.decoder
    if not isinstance(decoder, MLPDecoder) or decoder.latent_dim != 1:
        return False
    smooth = all(isinstance(module, (nn.Linear, *SMOOTH_ACTIVATIONS)) for module in decoder.net)
    return smooth and hasattr(model.likelihood, "value_and_grad_u")


def wanted(model, mode: str) -> bool:
    """Whether the Langevin target of ``model`` is tabulated under ``sampler.tabulate`` = ``mode``: ``off`` never,
    ``auto`` where ``applies``, ``on`` always (any decoder; raises when the latent is not one-dimensional or the
    likelihood has no ``value_and_grad_u``)."""
    if mode not in TABULATE_MODES:
        raise ValueError(f"sampler.tabulate must be one of {list(TABULATE_MODES)}, got {mode!r}")
    if mode == "auto":
        return applies(model)
    if mode == "on" and (
        getattr(model.decoder, "latent_dim", None) != 1 or not hasattr(model.likelihood, "value_and_grad_u")
    ):
        raise ValueError(
            "sampler.tabulate=on needs a one-dimensional latent and a likelihood with value_and_grad_u "
            f"({type(model.likelihood).__name__}); use sampler.tabulate=auto or off"
        )
    return mode == "on"


def decoder_value_and_slope(decoder: nn.Module, z: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """u = h(z) and dh/dz at z (N, 1), both (N, P) and detached: one forward pass and one backward pass per output
    (row n of u depends on z_n alone, so the gradient of a column's sum is that column's derivative, row by row).

    Args:
        decoder: the decoder network, h: R -> R^P.
        z: (N, 1) points.
        dtype: evaluate in this floating dtype (a float64 table from a float32 decoder); None: the decoder's own.
    """
    if dtype is None:
        function = decoder
    else:
        state = {
            name: tensor.detach().to(dtype) if tensor.is_floating_point() else tensor
            for name, tensor in chain(decoder.named_parameters(), decoder.named_buffers())
        }
        z = z.to(dtype)

        def function(points: Tensor) -> Tensor:
            return torch.func.functional_call(decoder, state, (points,))

    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        u = function(z)
        outputs = u.shape[-1]
        slopes = [
            torch.autograd.grad(u[:, index].sum(), z, retain_graph=index < outputs - 1)[0] for index in range(outputs)
        ]
    return u.detach(), torch.cat(slopes, dim=-1)


class HermiteTable:
    """A cubic Hermite interpolant p of h: R -> R^P on G uniform nodes over [lower, upper], from h and h' there
    (module docstring): per cell the cubic's coefficients in t = (z − a)/Δ and those of its derivative.

    Args:
        lower, upper: the grid's ends, lower < upper.
        num_nodes: G >= 2 nodes, spacing Δ = (upper − lower) / (G − 1).
        values, slopes: (G, P) h and h' at the nodes (float64: the table's own rounding is then ``dtype``'s alone).
        dtype: the table's dtype (the parameters').
    """

    def __init__(self, lower: float, upper: float, num_nodes: int, values: Tensor, slopes: Tensor, dtype: torch.dtype):
        if num_nodes < 2 or not lower < upper:
            raise ValueError(f"need num_nodes >= 2 and lower < upper, got {num_nodes}, [{lower}, {upper}]")
        self.lower, self.upper, self.num_nodes = float(lower), float(upper), int(num_nodes)
        self.spacing = (self.upper - self.lower) / (self.num_nodes - 1)
        self.inverse_spacing = 1.0 / self.spacing
        left, right = values[:-1], values[1:]
        left_slope, right_slope = slopes[:-1] * self.spacing, slopes[1:] * self.spacing  # per unit of t
        quadratic = 3.0 * (right - left) - 2.0 * left_slope - right_slope
        cubic = 2.0 * (left - right) + left_slope + right_slope
        # (G − 1, 7, P): p(t) = c0 + c1 t + c2 t² + c3 t³ and p'(z) = e1 + e2 t + e3 t² (already per unit of z).
        table = torch.stack(
            [
                left,
                left_slope,
                quadratic,
                cubic,
                left_slope * self.inverse_spacing,
                2.0 * quadratic * self.inverse_spacing,
                3.0 * cubic * self.inverse_spacing,
            ],
            dim=1,
        )
        self.output_dim = values.shape[-1]
        self.table = table.reshape(self.num_nodes - 1, -1).to(dtype).contiguous()
        # (7, G − 1) for one output: coefficient k of every cell in row k (COLUMN_MAX_THREADS).
        self.columns = self.table.t().contiguous() if self.output_dim == 1 else None

    def nodes(self, device: torch.device | str | None = None) -> Tensor:
        """The G nodes (G,), float64."""
        return torch.linspace(self.lower, self.upper, self.num_nodes, dtype=torch.float64, device=device)

    def locate(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(cell (N,), t (N, 1), outside (M,)) for z (N,): each particle's cell (float, integral; 0 where outside)
        and its position t = (z − a)/Δ ∈ [0, 1) in it (differentiable in z; 0 where outside), and the indices of
        the M particles outside the grid or not finite, which the table never serves."""
        position = z * self.inverse_spacing - self.lower * self.inverse_spacing  # in units of cells from ``lower``
        # One reduction decides the common case, every particle strictly inside: cell = floor(position) is then a
        # valid cell and t in [0, 1). NaN anywhere makes the comparison false and takes the careful path.
        low, high = (float(end) for end in torch.aminmax(position.detach()))
        cell = position.detach().floor()
        if low >= 0.0 and high < self.num_nodes - 1:
            outside = torch.empty(0, dtype=torch.long, device=z.device)
        else:
            clamped = cell.clamp(0.0, self.num_nodes - 2.0)
            outside = (clamped != cell).nonzero().squeeze(1)  # NaN != NaN; z = upper exactly, harmlessly exact
            cell = clamped.index_fill(0, outside, 0.0)
        t = (position - cell).unsqueeze(-1)
        if outside.numel():
            t = t.index_fill(0, outside, 0.0)
        return cell, t, outside

    def coefficients(self, cell: Tensor, count: int = 7) -> tuple[Tensor, ...]:
        """The first ``count`` of the coefficients c0, c1, c2, c3, e1, e2, e3 of each particle's cell (long, (N,)),
        each (N, P): from ``columns`` with up to ``COLUMN_MAX_THREADS`` CPU threads, else from ``table``."""
        if self.columns is not None and cell.device.type == "cpu" and torch.get_num_threads() <= COLUMN_MAX_THREADS:
            return self.columns[:count].index_select(1, cell).unsqueeze(-1).unbind(0)
        return self.table.index_select(0, cell).view(-1, 7, self.output_dim)[:, :count].unbind(1)

    def value(self, cell: Tensor, t: Tensor) -> Tensor:
        """p(z) (N, P) alone from ``locate``'s cell (long) and t, differentiable in t."""
        c0, c1, c2, c3 = self.coefficients(cell, 4)
        return torch.addcmul(c0, t, torch.addcmul(c1, t, torch.addcmul(c2, t, c3)))

    def cubic(self, cell: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(p(z) (N, P), p'(z) (N, P)) from ``locate``'s cell and t, differentiable in t."""
        c0, c1, c2, c3, e1, e2, e3 = self.coefficients(cell.long())
        u = torch.addcmul(c0, t, torch.addcmul(c1, t, torch.addcmul(c2, t, c3)))
        slope = torch.addcmul(e1, t, torch.addcmul(e2, t, e3))
        return u, slope


class TabulatedTarget(HermiteTable, Target):
    """log p(x, z) and its z-gradient with h and h' from a cubic Hermite table, for a one-dimensional latent.

    Args:
        model: the ``LatentVariableModel``; latent_dim 1, its likelihood has ``value_and_grad_u``.
        x: (R, D) the batch's rows.
        lower, upper: the grid's ends, lower < upper (``around`` picks them from the chains).
        num_nodes: G >= 2 grid nodes, spacing Δ = (upper − lower) / (G − 1).
        units: (R,) each row's unit 0..B-1 (the chains are per unit, ``model.units``); None: row i is unit i.
    """

    def __init__(self, model, x: Tensor, lower: float, upper: float, num_nodes: int, units: Tensor | None = None):
        self.model = model
        self.decoder = model.decoder
        self.likelihood = model.likelihood
        self.x = x
        self.units = units
        parameter = next(self.decoder.parameters())
        nodes = torch.linspace(float(lower), float(upper), int(num_nodes), dtype=torch.float64, device=parameter.device)
        # Nodes in float64, so the table's own rounding is float32's alone once cast.
        values, slopes = decoder_value_and_slope(self.decoder, nodes.unsqueeze(-1), torch.float64)
        super().__init__(lower, upper, num_nodes, values, slopes, parameter.dtype)

    @classmethod
    def around(
        cls,
        model,
        x: Tensor,
        z: Tensor,
        step_size: float,
        num_steps: int,
        num_nodes: int,
        drift_bound: float = DRIFT_BOUND,
        units: Tensor | None = None,
    ) -> TabulatedTarget:
        """The target with its grid over the finite range of the chains ``z`` (B, C, 1), widened by
        NUM_SD·sqrt(2 s K) + s K · drift_bound: where the chains can get in ``num_steps`` steps of size
        ``step_size``. One host synchronisation (the range), once per update."""
        low, high = (float(end) for end in torch.aminmax(z))
        if not (math.isfinite(low) and math.isfinite(high)):  # a diverged chain: the range of the others
            finite = z[torch.isfinite(z)]
            low, high = (float(end) for end in torch.aminmax(finite)) if finite.numel() else (-1.0, 1.0)
        margin = NUM_SD * math.sqrt(2.0 * step_size * num_steps) + step_size * num_steps * drift_bound
        return cls(model, x, low - margin, high + margin, num_nodes, units)

    def interpolate(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(u ≈ h(z) (N, P), p'(z) ≈ h'(z) (N, P), outside (M,)) for z (N,): the table inside the grid, the exact
        decoder at the M particles outside it or not finite, whose indices are ``outside``. Differentiable in z."""
        cell, t, outside = self.locate(z)
        u, slope = self.cubic(cell, t)
        if outside.numel():
            exact_u, exact_slope = decoder_value_and_slope(self.decoder, z[outside].unsqueeze(-1))
            if torch.is_grad_enabled() and z.requires_grad:
                exact_u = self.decoder(z[outside].unsqueeze(-1))  # differentiable for __call__
            u = u.index_put((outside,), exact_u)
            slope = slope.index_put((outside,), exact_slope)
        return u, slope, outside

    def __call__(self, z: Tensor) -> Tensor:
        """The interpolated log p(x, z) (B, C) for z (B, C, 1), differentiable in z (its gradient is
        ``value_and_grad``'s)."""
        batch, chains, _ = z.shape
        u, _, _ = self.interpolate(z.reshape(batch * chains))
        log_lik = unit_log_prob(self.likelihood, self.x, u.view(batch, chains, -1), self.units)
        return log_lik - 0.5 * (z.squeeze(-1).square() + LOG_2PI)

    def value_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(log p(x, z) (B, C), ∇_z log p(x, z) (B, C, 1)) for z (B, C, 1), with h and h' interpolated."""
        batch, chains, latent_dim = z.shape
        if latent_dim != 1:
            raise ValueError(f"the tabulated target is for latent_dim 1, got z of shape {tuple(z.shape)}")
        with torch.no_grad():
            u, slope, _ = self.interpolate(z.reshape(batch * chains))
            u = u.view(batch, chains, -1)
            if self.units is None:
                log_lik, grad_u = self.likelihood.value_and_grad_u(self.x, u)
            else:  # each row reads its unit's u; values and ∂/∂u summed back onto the units
                log_lik, grad_u = self.likelihood.value_and_grad_u(self.x, u.index_select(0, self.units))
                log_lik, grad_u = sum_over_rows(log_lik, self.units, batch), sum_over_rows(grad_u, self.units, batch)
            grad_u = grad_u.reshape(batch, chains, -1)
            slope = slope.view(batch, chains, -1)
            if self.output_dim == 1:
                grad = grad_u * slope
            else:
                grad = (grad_u * slope).sum(-1, keepdim=True)
            grad = grad.sub_(z)
            log_joint = log_lik - 0.5 * (z.view(batch, chains).square() + LOG_2PI)
        return log_joint, grad


def unit_log_prob(likelihood, x: Tensor, u: Tensor, units: Tensor | None) -> Tensor:
    """log f per unit: x (R, D), u (B, N, P) per unit, units (R,) or None (row i is unit i). Returns (B, N)."""
    if units is None:
        return likelihood.log_prob(x, u)
    return sum_over_rows(likelihood.log_prob(x, u.index_select(0, units)), units, u.shape[0])


def tabulated_loss(model, table: TabulatedTarget, x: Tensor, particles: Tensor, units: Tensor | None = None) -> Tensor:
    """The ALMOND loss −mean log f(x | h(z)) over ``particles`` with h read from ``table``'s cubic Hermite
    interpolant p, as a scalar whose backward gives the parameter gradient through the table's nodes.

    Value: −mean over (B, N) of log f(x | p(z)), the likelihood exact, p the table's (the exact decoder at
    particles outside the grid or not finite). Gradient, the same as the exact loss's up to the Hermite error
    (module docstring):

    - likelihood parameters θ: through log f(x | u; θ) at the particles' u, held fixed (no network);
    - decoder parameters β: p(z) = Σ_j [H_j(t) h(z_j) + Δ S_j(t) h'(z_j)] over the two end nodes j of z's cell
      (H, S the Hermite value and slope basis), so Σ_p g_p · ∇_β p(z_p) = Σ_j [a_j · ∇_β h(z_j) + b_j · ∇_β h'(z_j)]
      with g_p = ∂log f/∂u at particle p, a_j = Σ_p g_p H_j(t_p), b_j = Σ_p g_p Δ S_j(t_p): the particles are
      summed onto the G nodes, and only the G nodes run through the network (h' by double backward);
    - particles outside the grid: through the exact decoder, as in the exact loss.

    Args:
        model: the ``LatentVariableModel`` the table was built from (its parameters unchanged since).
        table: the ``TabulatedTarget`` the particles were drawn under; its grid is reused.
        x: (R, D) the batch's rows.
        particles: (B, N, 1) kept states of all chains per unit.
        units: (R,) each row's unit 0..B-1; None: row i is unit i.

    Returns:
        The scalar loss (per unit and particle; a unit's log f is the sum over its rows).
    """
    batch, count, latent_dim = particles.shape
    if latent_dim != 1:
        raise ValueError(f"the tabulated loss is for latent_dim 1, got particles of shape {tuple(particles.shape)}")
    decoder, outputs, spacing = model.decoder, table.output_dim, table.spacing
    z = particles.detach().reshape(batch * count)
    with torch.no_grad():
        cell, t, outside = table.locate(z)
        cell = cell.long()
        u = table.value(cell, t)
    # A leaf for the particles' u, so ∂log f/∂u comes from the loss's own graph; the particles outside the grid
    # replace their rows with the exact decoder's (its graph kept), and their g_p reads 0 on the leaf.
    interpolated = u.requires_grad_(True)
    if outside.numel():
        u = interpolated.index_put((outside,), decoder(z[outside].unsqueeze(-1)))
    log_lik = unit_log_prob(model.likelihood, x, u.view(batch, count, outputs), units)
    (grad_u,) = torch.autograd.grad(log_lik.sum(), interpolated, retain_graph=True)
    with torch.no_grad():
        # Hermite basis in t: value weights 1 − r and r (r = 3t² − 2t³) for the left and right node, slope
        # weights Δ·t(1 − t)² and −Δ·t²(1 − t).
        square = t * t
        right = square * (3.0 - 2.0 * t)
        weights = torch.cat(
            [
                grad_u * (1.0 - right),
                grad_u * right,
                grad_u * (spacing * t * (1.0 - t).square()),
                grad_u * (spacing * square * (t - 1.0)),
            ],
            dim=1,
        )  # (N, 4P)
        sums = weights.new_zeros(table.num_nodes - 1, 4 * outputs).index_add_(0, cell, weights)
        left_value, right_value, left_slope, right_slope = sums.view(-1, 4, outputs).unbind(1)
        pad_end, pad_start = (0, 0, 0, 1), (0, 0, 1, 0)
        value_weight = nn.functional.pad(left_value, pad_end) + nn.functional.pad(right_value, pad_start)  # a (G, P)
        slope_weight = nn.functional.pad(left_slope, pad_end) + nn.functional.pad(right_slope, pad_start)  # b (G, P)
    parameter = next(decoder.parameters())
    nodes = torch.linspace(table.lower, table.upper, table.num_nodes, dtype=torch.float64, device=parameter.device)
    nodes = nodes.to(parameter.dtype).unsqueeze(-1).requires_grad_(True)
    values = decoder(nodes)
    # Σ_j b_j · h'(z_j) is the z-gradient of Σ_j b_j · h(z_j), summed: one double-backward pass for any P.
    (slope_term,) = torch.autograd.grad(values, nodes, grad_outputs=slope_weight.to(values.dtype), create_graph=True)
    node_term = (value_weight.to(values.dtype) * values).sum() + slope_term.sum()
    scale = 1.0 / (batch * count)
    # Value: the interpolated loss; gradient: θ and the outside particles through log_lik, β through node_term.
    return -log_lik.mean() - scale * (node_term - node_term.detach())


def laws_apply(model) -> bool:
    """Whether ``sampler.tabulate`` (``auto`` or ``on``) tabulates a mixed model's laws (``TabulatedLaws``): each
    factor's law a smooth MLP of one random term (``model/mixed.py``'s ``MixedMLPDecoder``; a linear law costs a
    product, nothing to save)."""
    decoder = model.decoder
    if not isinstance(decoder, MixedMLPDecoder) or any(block.size != 1 for block in decoder.layout.blocks):
        return False
    return all(isinstance(module, (nn.Linear, *SMOOTH_ACTIVATIONS)) for net in decoder.nets for module in net)


class TabulatedLaws:
    """A mixed model's decoder for one update, each factor's law u = h_f(z) of one random term read from a cubic
    Hermite table instead of its network: the decoder of ``MixedModel.log_joint_blocks``, differentiable in z (the
    gradient is the cubic's own, p'), with the same (B, C, d) -> (B, C, d) as the decoder. The chains of every level
    of a factor share its table, so an update runs the networks once over G nodes per factor, not over
    levels × chains at every step (grouseticks: 181 levels × 30 chains × 11 evaluations). A particle outside its
    factor's grid, or not finite, reads the exact network. The parameter step stays exact (``model.log_lik``).

    Args:
        decoder: the ``MixedMLPDecoder`` (``laws_apply``), its parameters frozen for the update.
        ranges: per factor (lower, upper), lower < upper.
        num_nodes: G nodes per factor's grid.
    """

    def __init__(self, decoder, ranges: list[tuple[float, float]], num_nodes: int):
        self.decoder = decoder
        self.layout = decoder.layout
        parameter = next(decoder.parameters())
        self.tables = []
        for index, (lower, upper) in enumerate(ranges):
            # in the parameters' dtype: the table's rounding is then the network's own (a float64 copy of the
            # network per update cost more than the sampling it saves)
            nodes = torch.linspace(lower, upper, num_nodes, dtype=parameter.dtype, device=parameter.device)
            values, slopes = decoder_value_and_slope(
                lambda z, i=index: decoder.block_forward(i, z), nodes.unsqueeze(-1)
            )
            self.tables.append(HermiteTable(lower, upper, num_nodes, values, slopes, parameter.dtype))

    @classmethod
    def around(cls, decoder, z: Tensor, step_size: float, num_steps: int, num_nodes: int) -> TabulatedLaws:
        """The laws tabulated over each factor's range of the chains ``z`` (B, C, d), widened as
        ``TabulatedTarget.around`` widens its grid (the chains may move in whitened coordinates, ``z = m + sd · w``
        with sd < 1 a level's posterior spread in the prior's units: the margin is then wider than needed)."""
        margin = NUM_SD * math.sqrt(2.0 * step_size * num_steps) + step_size * num_steps * DRIFT_BOUND
        ranges = []
        for part in decoder.layout.split(z.detach()):
            finite = part[torch.isfinite(part)]
            low, high = (float(end) for end in torch.aminmax(finite)) if finite.numel() else (-1.0, 1.0)
            ranges.append((low - margin, high + margin))
        return cls(decoder, ranges, num_nodes)

    def __call__(self, z: Tensor) -> Tensor:
        """u (B, C, d) for z (B, C, d): each factor's table at its levels' z, the network outside its grid."""
        effects = []
        for index, (table, part) in enumerate(zip(self.tables, self.layout.split(z))):
            flat = part.reshape(-1)
            cell, t, outside = table.locate(flat)
            u = table.value(cell.long(), t)
            if outside.numel():
                u = u.index_put((outside,), self.decoder.block_forward(index, flat[outside].unsqueeze(-1)))
            effects.append(u.view(part.shape))
        return self.layout.join(effects)
