"""Inference for a fitted mixed model (``model/mixed.py``): what lme4's summary reports, from posterior draws.

- ``random_effect_laws``: each factor's random-effect law u = h_f(z), z ~ N(0, I), from prior draws: its mean (which
  a learned law may carry and the matching fixed effect absorbs), sd, skewness and quantiles of the centred effects.
- ``components``: the independent parts of the posterior (rows linked through shared levels of any factor).
- ``mixed_fit_statistics``: log p(y) = log ∫ f(y | z) N(z; 0, I) dz with its SE, by adaptive Gauss-Hermite
  quadrature where there is one grouping factor of 1 or 2 random terms (a sum of one small integral per level),
  else by importance sampling one component at a time; and the fixed effects' SEs from the observed information,
  the Hessian of that estimate in the parameters (its integration rule held fixed, the estimate is smooth in them).
  Louis' identity over posterior draws gives the same in principle, but where most of the information is missing
  (an intercept confounded with the groups' effects) it is a small difference of two large noisy terms; the
  Hessian of the integrated likelihood is not.

All in float64 (sums over thousands of rows, differences between fits of a fraction of a nat).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .likelihoods import Poisson
from .mixed import MixedMLPDecoder, MixedModel, components
from .model import evaluation_mode

LOG_2PI = math.log(2.0 * math.pi)
GRID_POINTS = 2001  # z-grid of a one-term factor's levels: spacing 0.0085, < 1/20 of any posterior sd we meet
QUANTILE_LEVELS = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)


@torch.no_grad()
def random_effect_laws(model: MixedModel, num_draws: int = 100_000, seed: int = 0) -> list[dict]:
    """Each block's law from ``num_draws`` prior draws, one dict per block: ``factor``, ``terms``, ``mean`` (q,),
    ``sd`` (q,), ``skewness`` (q,), ``quantiles`` {level: (q,)} of the centred effects and ``correlation`` (q, q)."""
    generator = torch.Generator().manual_seed(seed)
    model = in_float64(model)
    decoder = model.decoder
    laws = []
    with evaluation_mode(model):
        for index, block in enumerate(model.layout.blocks):
            z = torch.randn(num_draws, block.size, generator=generator, dtype=torch.float64)
            u = decoder.block_forward(index, z)
            mean = u.mean(0)
            centred = u - mean
            sd = centred.square().mean(0).sqrt()
            skewness = centred.pow(3).mean(0) / sd.clamp_min(1e-300).pow(3)
            levels = torch.tensor(QUANTILE_LEVELS, dtype=torch.float64)
            quantiles = torch.quantile(centred, levels, dim=0) if num_draws <= 16_000_000 else None
            correlation = torch.corrcoef(centred.T) if block.size > 1 else torch.ones(1, 1, dtype=torch.float64)
            laws.append(
                {
                    "factor": block.factor,
                    "terms": block.terms,
                    "mean": mean,
                    "sd": sd,
                    "skewness": skewness,
                    "quantiles": {float(level): quantiles[i] for i, level in enumerate(QUANTILE_LEVELS)},
                    "correlation": correlation,
                }
            )
    return laws


def in_float64(model: MixedModel) -> MixedModel:
    """A float64 copy of ``model`` on the CPU, in eval mode (the fitted model is left as it is)."""
    return copy.deepcopy(model).cpu().double().eval()


def _effects(model: MixedModel, draws: Tensor) -> list[Tensor]:
    """u = h(z) of each block for draws (N, d) (``model`` in float64): a list of (N, G_f, q_f), no gradient."""
    with torch.no_grad():
        u = model.decoder(draws.double().cpu())
    return model.layout.split(u)


def _parameter_vector(model: MixedModel) -> tuple[Tensor, list[str]]:
    """θ at the fit: beta, one log scale per random term (0: the fitted law itself) and the family's dispersion."""
    likelihood = model.likelihood
    values = [likelihood.beta.detach().double().cpu()]
    names = [f"beta{j}" for j in range(likelihood.layout.num_fixed)]
    for block in likelihood.layout.blocks:
        values.append(torch.zeros(block.size, dtype=torch.float64))
        names += [f"log_scale[{block.factor}|{term}]" for term in block.terms]
    if likelihood.learns_sigma:
        values.append(likelihood.log_sigma.detach().double().cpu().reshape(1))
        names.append("log_sigma")
    elif hasattr(likelihood.family, "log_dispersion"):
        values.append(likelihood.family.log_dispersion.detach().double().cpu().reshape(1))
        names.append("log_dispersion")
    return torch.cat(values), names


def _log_lik_of_theta(
    model: MixedModel,
    x: Tensor,
    effects: list[Tensor],
    means: list[Tensor],
    row_component: Tensor,
    count: int,
    shapes: list | None = None,
    base: int = 0,
):
    """theta (P,) -> (N, K) log f(y_k | eta(theta, z_n)) per component k for the draws behind ``effects``: the
    function Louis' identity differentiates. A term's log scale s spreads its centred effects:
    u' = mean + exp(s) (u − mean); with ``shapes`` (``_law_shapes``) and a θ longer than ``base``, a shaped law's
    tilt τ re-centres and re-scales them too (``LawShape.tilt``)."""
    likelihood = model.likelihood
    layout = likelihood.layout
    x = x.double().cpu()
    fixed_x = x[:, layout.fixed_columns]
    offset = x[:, layout.offset_column]
    per_block = []
    for index, part in enumerate(effects):
        groups = x[:, layout.group_column(index)].long()
        per_block.append((part[:, groups, :], x[:, layout.z_columns(index)]))  # (N, R, q), (R, q)
    p = layout.num_fixed
    family_log_prob = _family_log_prob(likelihood, p + sum(block.size for block in layout.blocks))

    shapes = shapes if shapes is not None else [None] * len(per_block)

    def log_lik(theta: Tensor) -> Tensor:
        eta = (offset + fixed_x @ theta[:p]).unsqueeze(0)
        at = p
        for (rows_effects, z), mean, shape, tau in zip(
            per_block, means, shapes, _shape_parameters(shapes, theta, base)
        ):
            q = z.shape[1]
            scale = theta[at : at + q].exp()
            if tau is None:
                spread = mean + scale * (rows_effects - mean)
            else:
                _, shift, ratio = shape.tilt(tau)
                spread = mean + scale * ratio * (rows_effects - mean - shift)
            eta = eta + (spread * z).sum(-1)
            at += q
        per_row = family_log_prob(x, eta, theta)
        return per_row.new_zeros(per_row.shape[0], count).index_add(1, row_component, per_row)

    return log_lik


def _family_log_prob(likelihood, dispersion_index: int):
    """(rows x (R, D), eta (N, R), θ) -> (N, R) log f(y_i | eta), the family's dispersion (a Gaussian's log residual
    sd, a negative binomial's log r) read from θ[dispersion_index]."""
    layout = likelihood.layout
    family = likelihood.family

    def log_prob(x: Tensor, eta: Tensor, theta: Tensor) -> Tensor:
        family_rows = x[:, : layout.family_width]
        if likelihood.learns_sigma:
            log_sigma = theta[dispersion_index]
            residual = (family_rows[:, 0] - eta) / log_sigma.exp()
            return -0.5 * residual.square() - log_sigma - 0.5 * LOG_2PI
        if hasattr(family, "log_dispersion"):
            log_r = theta[dispersion_index]
            counts = family_rows[:, 0]
            t = eta - log_r
            r = log_r.exp()
            normaliser = torch.lgamma(counts + r) - torch.lgamma(r) - torch.lgamma(counts + 1.0)
            return normaliser + counts * t - (counts + r) * torch.nn.functional.softplus(t)
        return family.log_prob(family_rows, eta.T.unsqueeze(-1)).T

    return log_prob


def _normal_grid(points: int, limit: float = 8.5) -> tuple[Tensor, Tensor]:
    """z (points,) uniform on [−limit, limit] and log(trapezoid weight × N(z; 0, 1)) there: the dense z-grids'
    rule (``_grid_rule``, ``_nested_estimate``, ``LawShape``)."""
    z = torch.linspace(-limit, limit, points, dtype=torch.float64)
    log_w = math.log(float(z[1] - z[0])) - 0.5 * (z.square() + LOG_2PI)
    log_w[0] -= math.log(2.0)
    log_w[-1] -= math.log(2.0)
    return z, log_w


# Shape directions per learned law of one random term (LawShape): the tilt by v alone. With v² and v³ as well the
# information was indefinite on grouseticks (a stochastic fit is not at a maximum of every shape direction: no SEs),
# and epil's SEs moved by under 1 % more.
SHAPE_DIRECTIONS = 1


@dataclass
class LawShape:
    """Directions in which a learned law of one random term u = h(z) may change its shape, for the standard errors
    (``mixed_fit_statistics``): the law of z tilted by exp(Σ_k τ_k v(z)^k), k = 1..``SHAPE_DIRECTIONS``, v the
    standardised centred effect, then re-centred and re-scaled so that its mean and sd stay the fit's (location and
    spread are the intercept's and the log scale's). τ = 0 is the fitted law. Tilting by v moves mass between a
    law's modes: the least favourable direction for its mean, so the intercept's SE carries how well the data know
    the law's shape there (held at the fit, a two-mode law's intercept SE was 0.4 of its error).

    Attributes:
        centred: (N,) h(z) − the law's mean on a dense z-grid; log_weights: (N,) log of trapezoid weight × N(z).
        sd: the law's sd on that grid; mean0, var0, log_mass0: the grid's mean, variance and log mass at τ = 0.
    """

    centred: Tensor
    log_weights: Tensor
    sd: float
    mean0: Tensor
    var0: Tensor
    log_mass0: Tensor

    @classmethod
    @torch.no_grad()
    def of(cls, model: MixedModel, index: int, mean: Tensor) -> LawShape:
        z, log_weights = _normal_grid(GRID_POINTS)
        centred = model.decoder.block_forward(index, z.unsqueeze(1))[:, 0] - mean[0]
        probability = torch.softmax(log_weights, 0)
        mean0 = (probability * centred).sum()
        var0 = (probability * centred.square()).sum() - mean0.square()
        return cls(centred, log_weights, float(var0.sqrt()), mean0, var0, torch.logsumexp(log_weights, 0))

    def basis(self, centred: Tensor) -> Tensor:
        """(..., K) the powers v, v², ... of the standardised effects ``centred`` (...)."""
        v = centred / self.sd
        return torch.stack([v**k for k in range(1, SHAPE_DIRECTIONS + 1)], -1)

    def tilt(self, tau: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(the change of the law's log mass, of its mean, the ratio of its sd at τ = 0 to its sd at τ): a node's
        log weight gains basis · τ − the first; effects move as mean + ratio · (ũ − shift)."""
        tilted = self.log_weights + self.basis(self.centred) @ tau
        probability = torch.softmax(tilted, 0)
        mean = (probability * self.centred).sum()
        var = (probability * self.centred.square()).sum() - mean.square()
        ratio = (self.var0 / var).sqrt()
        # ratio · (ũ − shift) = mean0 + ratio · (ũ − mean): the tilted law's mean is the fit's, its sd too
        return torch.logsumexp(tilted, 0) - self.log_mass0, mean - self.mean0 / ratio, ratio


def _law_shapes(model: MixedModel, x: Tensor) -> list:
    """A ``LawShape`` per block whose law is learned and of one random term, where the log-likelihood is integrated
    on grids of z (one factor's dense grid, a nested pair's), else None per block (those rules' SEs hold the shape)."""
    blocks = model.layout.blocks
    on_grids = (can_integrate_exactly(model) and blocks[0].size == 1) or nested_pair(model, x) is not None
    if not on_grids or not isinstance(model.decoder, MixedMLPDecoder):
        return [None] * len(blocks)
    means = _law_means(model)
    return [LawShape.of(model, i, means[i]) if block.size == 1 else None for i, block in enumerate(blocks)]


def _shape_parameters(shapes: list, theta: Tensor, base: int) -> list:
    """Each block's τ (K,) read from θ after its first ``base`` entries, or None (no shape, or a θ without τ)."""
    if theta.numel() <= base:
        return [None] * len(shapes)
    found, at = [], base
    for shape in shapes:
        found.append(None if shape is None else theta[at : at + SHAPE_DIRECTIONS])
        at += 0 if shape is None else SHAPE_DIRECTIONS
    return found


def _separable_sums(likelihood, dispersion_index: int):
    """For random intercepts (eta_i = eta0_i + s, one s per node pair), Σ_{i in b} log f(y_i | eta0_i + s) per inner
    level b from a few sums over its rows, where the family allows: the Poisson's
    Y_b s − e^s Σ e^{eta0_i} + Σ (y_i eta0_i − log y_i!), the Gaussian's quadratic in s. Each node pair then costs a
    level, not each of its rows, and no exp per row (grouseticks: 403 rows, 118 broods; the nested grids ~4x
    faster). Returns (rows, inner_index (R,), B) -> ((eta0 (R,), c (v,), d (w,), θ) -> (v, w, B)), or None for
    the other families (their log f(y | eta0 + s) does not separate)."""
    family = likelihood.family
    if likelihood.learns_sigma:

        def gaussian(rows: Tensor, inner_index: Tensor, levels: int):
            y = rows[:, 0]
            n = y.new_zeros(levels).index_add(0, inner_index, torch.ones_like(y))

            def per_inner(eta0: Tensor, c: Tensor, d: Tensor, theta: Tensor) -> Tensor:
                residual = y - eta0
                first = residual.new_zeros(levels).index_add(0, inner_index, residual)
                second = residual.new_zeros(levels).index_add(0, inner_index, residual.square())
                s = (c.view(-1, 1) + d.view(1, -1)).unsqueeze(-1)  # (v, w, 1)
                log_sigma = theta[dispersion_index]
                squares = second - 2.0 * s * first + n * s.square()  # Σ (y_i − eta0_i − s)²
                return -0.5 * squares / (2.0 * log_sigma).exp() - n * (log_sigma + 0.5 * LOG_2PI)

            return per_inner

        return gaussian
    if type(family) is not Poisson:
        return None

    def poisson(rows: Tensor, inner_index: Tensor, levels: int):
        y = rows[:, 0]
        total = y.new_zeros(levels).index_add(0, inner_index, y)
        log_factorials = y.new_zeros(levels).index_add(0, inner_index, torch.lgamma(y + 1.0))

        def per_inner(eta0: Tensor, c: Tensor, d: Tensor, theta: Tensor) -> Tensor:
            linear = eta0.new_zeros(levels).index_add(0, inner_index, y * eta0) - log_factorials
            rate = eta0.new_zeros(levels).index_add(0, inner_index, eta0.exp())
            s = (c.view(-1, 1) + d.view(1, -1)).unsqueeze(-1)  # (v, w, 1)
            return linear + total * s - rate * s.exp()

        return per_inner

    return poisson


@dataclass
class IntegrationRule:
    """How the latents are integrated out: log p(y_k) ≈ logsumexp_m [log f(y_k | z_m) + log_weights[m, k]] + const[k]
    for each independent component k (``components``), at the points z_m (M, d) (every latent of every component).

    Adaptive Gauss-Hermite quadrature (one factor of 1 or 2 random terms: each level is a component, the nodes are
    centred and scaled at its posterior) or importance sampling (each component from a Student-t fitted to its
    posterior draws). Either way the rule is fixed once built, so the estimate is a smooth function of the
    parameters, and its Hessian is the observed information (``mixed_fit_statistics``)."""

    points: Tensor
    log_weights: Tensor
    const: Tensor
    method: str


def _quadrature_rule(model: MixedModel, draws: Tensor, nodes: int) -> IntegrationRule:
    block = model.layout.blocks[0]
    z = draws.reshape(draws.shape[0], block.num_groups, block.size)
    centre = z.mean(0)  # (G, q)
    scale = z.std(0).clamp_min(1e-3) * 1.2  # a little wider than the posterior: the tails weigh in
    t, w = np.polynomial.hermite.hermgauss(nodes)
    t, w = torch.tensor(t, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)
    if block.size == 1:
        grid, log_w = t.unsqueeze(1), w.log() + t.square()
    else:
        grid = torch.cartesian_prod(t, t)
        log_w = (torch.cartesian_prod(w, w).log() + grid.square()).sum(1)
    # z = centre + sqrt(2) scale t: ∫ g(z) dz = Σ_m w_m exp(t_m²) g(z(t_m)) · Π sqrt(2) scale
    points = centre.unsqueeze(0) + math.sqrt(2.0) * scale.unsqueeze(0) * grid.unsqueeze(1)  # (M, G, q)
    log_prior = -0.5 * (points.square().sum(-1) + block.size * LOG_2PI)  # (M, G)
    return IntegrationRule(
        points.reshape(points.shape[0], -1),
        log_w.unsqueeze(1) + log_prior,
        (math.sqrt(2.0) * scale).log().sum(-1),
        "quadrature",
    )


def _grid_rule(model: MixedModel, points: int, limit: float = 8.5) -> IntegrationRule:
    """One factor of one random term: the trapezoid rule on a dense grid of z over [−limit, limit], shared by every
    level. A learned law u = h(z) may bend (even turn back), which no rule centred on a Gaussian follows; on a grid
    fine against the posterior's width the trapezoid rule of a smooth integrand is exact to far below a nat."""
    block = model.layout.blocks[0]
    z, log_w = _normal_grid(points, limit)
    grid = z.reshape(points, 1, 1).expand(points, block.num_groups, 1)
    weights = log_w.unsqueeze(1).expand(points, block.num_groups)
    return IntegrationRule(
        grid.reshape(points, -1), weights, torch.zeros(block.num_groups, dtype=torch.float64), "quadrature"
    )


NESTED_NODES = 121  # z-grid points per factor of a nested pair: spacing 0.14 on [-8.5, 8.5]; doubled while coarse
NESTED_MAX_NODES = 961
# nats, total: a grid is used where twice its nodes change the value by at most this (which is then its SE), else
# the finer one is tried. The trapezoid rule converges geometrically on these smooth integrands (grouseticks'
# learned laws: 121 nodes 0.008 from 241, 241 within 4e-5 of 481), so the finer grid's value is the yardstick.
NESTED_TOLERANCE = 0.01
# Elements (nodes² × rows) of one part's (nodes, nodes, rows) tensors: their autograd graphs, a Hessian's included,
# stay within a few hundred MB (121 nodes: 64 rows a part; 961: one outer level a part)
NESTED_PART_ELEMENTS = 121 * 121 * 64


@dataclass
class NestedEstimate:
    """θ -> (K,) log p̂(y_k) of a nested pair by a dense z-grid of each factor (the trapezoid rule, as ``_grid_rule``):
    per outer level, log ∫ N(v) Π_b [∫ N(w) Π_{i in b} f(y_i | eta_i(v, w)) dw] dv, the inner integral once per outer
    node. Summed over ``parts`` (sets of outer levels, a few dozen rows each), each a function of θ alone, so a
    Hessian or a gradient is taken part by part and no autograd graph holds every row at every pair of nodes."""

    parts: list
    count: int

    def __call__(self, theta: Tensor) -> Tensor:
        return sum(part(theta) for part in self.parts)


def _nested_estimate(
    model: MixedModel,
    x: Tensor,
    pair: tuple[int, int],
    row_component: Tensor,
    count: int,
    nodes: int,
    shapes: list | None = None,
    base: int = 0,
) -> NestedEstimate:
    """The ``NestedEstimate`` of the rows ``x`` (float64) for ``nested_pair``'s (outer, inner) blocks on ``nodes``
    z-nodes per factor; ``row_component`` (R,) and ``count`` as ``components`` gives them. With ``shapes``, θ may
    carry the laws' tilts after its first ``base`` entries (``LawShape``)."""
    likelihood = model.likelihood
    layout = likelihood.layout
    outer, inner = pair
    p = layout.num_fixed
    z, log_w = _normal_grid(nodes)
    with torch.no_grad():
        law = [model.decoder.block_forward(i, z.unsqueeze(1))[:, 0] for i in range(2)]  # u = h_f(z) at the nodes
    means = _law_means(model)
    family_log_prob = _family_log_prob(likelihood, p + 2)
    outer_level = x[:, layout.group_column(outer)].long()
    inner_level = x[:, layout.group_column(inner)].long()
    zo, zi = x[:, layout.z_columns(outer)][:, 0], x[:, layout.z_columns(inner)][:, 0]

    separable = _separable_sums(likelihood, p + 2) if bool((zo == 1).all() and (zi == 1).all()) else None
    shapes = shapes if shapes is not None else [None, None]
    node_basis = [None if shape is None else shape.basis(law[i] - means[i][0]) for i, shape in enumerate(shapes)]

    def effects_and_weights(index: int, theta: Tensor, tau: Tensor | None) -> tuple[Tensor, Tensor]:
        """A factor's effects at the nodes (spread by its log scale, tilted by τ) and the nodes' log weights."""
        mean = means[index][0]
        scale = theta[p + index].exp()
        if tau is None:
            return mean + scale * (law[index] - mean), log_w
        log_mass, shift, ratio = shapes[index].tilt(tau)
        return mean + scale * ratio * (law[index] - mean - shift), log_w + node_basis[index] @ tau - log_mass

    def part_for(rows: Tensor):
        sub = x[rows]
        local_inner, inner_index = torch.unique(inner_level[rows], return_inverse=True)
        local_outer, outer_index = torch.unique(outer_level[rows], return_inverse=True)
        outer_of_inner = torch.zeros(local_inner.numel(), dtype=torch.long).index_copy(0, inner_index, outer_index)
        component_of_outer = torch.zeros(local_outer.numel(), dtype=torch.long).index_copy(
            0, outer_index, row_component[rows]
        )
        fixed = sub[:, layout.offset_column], sub[:, layout.fixed_columns]
        z_outer, z_inner = zo[rows], zi[rows]
        per_inner_of = separable(sub, inner_index, local_inner.numel()) if separable is not None else None

        def part(theta: Tensor) -> Tensor:
            eta0 = fixed[0] + fixed[1] @ theta[:p]  # (R,)
            taus = _shape_parameters(shapes, theta, base)
            c, outer_w = effects_and_weights(outer, theta, taus[outer])  # (nodes,) outer effects and log weights
            d, inner_w = effects_and_weights(inner, theta, taus[inner])
            if per_inner_of is not None:
                per_inner = per_inner_of(eta0, c, d, theta)
            else:
                eta = (
                    eta0.view(1, 1, -1)
                    + c.view(-1, 1, 1) * z_outer.view(1, 1, -1)
                    + d.view(1, -1, 1) * z_inner.view(1, 1, -1)
                )  # (v, w, R)
                per_row = family_log_prob(sub, eta.reshape(-1, eta.shape[-1]), theta).reshape(eta.shape)
                per_inner = per_row.new_zeros(nodes, nodes, local_inner.numel()).index_add(2, inner_index, per_row)
            inner_integral = torch.logsumexp(per_inner + inner_w.view(1, -1, 1), 1)  # (v, B)
            per_outer = inner_integral.new_zeros(nodes, local_outer.numel()).index_add(
                1, outer_of_inner, inner_integral
            )
            outer_integral = torch.logsumexp(per_outer + outer_w.view(-1, 1), 0)  # (L,)
            return outer_integral.new_zeros(count).index_add(0, component_of_outer, outer_integral)

        return part

    # parts of whole outer levels, each about NESTED_PART_ELEMENTS / nodes² of the last axis of its (v, w, ·) tensors:
    # rows, or inner levels where the family sums them
    units_per_part = max(1, NESTED_PART_ELEMENTS // (nodes * nodes))
    order = torch.argsort(outer_level * (int(inner_level.max()) + 1) + inner_level, stable=True)  # by outer, inner
    outer_sorted, inner_sorted = outer_level[order].tolist(), inner_level[order].tolist()
    parts, start = [], 0
    while start < len(order):
        stop, units = start, 0
        while stop < len(order) and (units < units_per_part or outer_sorted[stop] == outer_sorted[stop - 1]):
            units += separable is None or stop == start or inner_sorted[stop] != inner_sorted[stop - 1]
            stop += 1
        parts.append(part_for(order[start:stop]))
        start = stop
    return NestedEstimate(parts, count)


def _chi2(count: int, dof: float, generator: torch.Generator) -> Tensor:
    """Chi-squared(dof) draws from ``generator`` (a sum of squared normals for an integer dof)."""
    return torch.randn(count, int(dof), generator=generator, dtype=torch.float64).square().sum(1)


def _importance_rule(draws: Tensor, parts: list[Tensor], num_samples: int, seed: int) -> IntegrationRule:
    generator = torch.Generator().manual_seed(seed)
    points = draws.new_zeros(num_samples, draws.shape[1])
    log_weights = draws.new_zeros(num_samples, len(parts))
    dof = 10.0
    for index, coordinates in enumerate(parts):
        sub = draws[:, coordinates]
        d = sub.shape[1]
        mean = sub.mean(0)
        centred = sub - mean
        covariance = centred.T @ centred / max(sub.shape[0] - 1, 1)
        # Shrunk towards the diagonal (a covariance of d coordinates from a few thousand draws is noisy off it) and
        # widened: a proposal must not be narrower than the posterior in any direction.
        shrink = min(1.0, d / max(sub.shape[0], 1))
        covariance = (1 - shrink) * covariance + shrink * torch.diag(covariance.diagonal())
        covariance = covariance * 1.2 + 1e-9 * torch.eye(d, dtype=torch.float64)
        chol = torch.linalg.cholesky(covariance)
        normal = torch.randn(num_samples, d, generator=generator, dtype=torch.float64)
        step = normal * (dof / _chi2(num_samples, dof, generator)).sqrt().unsqueeze(1)
        z = mean + step @ chol.T
        maha = torch.linalg.solve_triangular(chol, (z - mean).T, upper=False).T.square().sum(1)
        log_q = (
            math.lgamma((dof + d) / 2)
            - math.lgamma(dof / 2)
            - 0.5 * d * math.log(dof * math.pi)
            - chol.diagonal().log().sum()
            - 0.5 * (dof + d) * torch.log1p(maha / dof)
        )
        points[:, coordinates] = z
        log_weights[:, index] = -0.5 * (z.square().sum(1) + d * LOG_2PI) - log_q
    const = torch.full((len(parts),), -math.log(num_samples), dtype=torch.float64)
    return IntegrationRule(points, log_weights, const, "importance_sampling")


def can_integrate_exactly(model: MixedModel) -> bool:
    """Whether the log-likelihood is integrated by quadrature: one factor whose levels have 1 or 2 random terms."""
    blocks = model.layout.blocks
    return len(blocks) == 1 and blocks[0].size <= 2


def needs_draws(model: MixedModel, x: Tensor) -> bool:
    """Whether the integration rule for the rows ``x`` is centred by posterior draws: all but the dense grids (one
    factor of one random term; two nested factors of one term each, ``nested_pair``), whose points do not depend on
    where the posterior lies. Reads ``model.layout`` alone: a ``MixedDataset`` answers for the models of its rows."""
    dense_grid = can_integrate_exactly(model) and model.layout.blocks[0].size == 1
    return not (dense_grid or nested_pair(model, x) is not None)


def nested_pair(model: MixedModel, x: Tensor) -> tuple[int, int] | None:
    """(outer, inner) block indices where ``model`` has two grouping factors of one random term each and, in the rows
    ``x``, every level of the inner one lies within one level of the outer (``(1|LOCATION/BROOD)``, or the same
    written ``(1|BROOD) + (1|LOCATION)`` with broods inside locations); None otherwise (crossed factors, slopes)."""
    layout = model.layout
    if len(layout.blocks) != 2 or any(block.size != 1 for block in layout.blocks):
        return None
    levels = [x[:, layout.group_column(i)].long().cpu() for i in range(2)]
    for outer, inner in ((1, 0), (0, 1)):
        pairs = torch.unique(torch.stack([levels[inner], levels[outer]], 1), dim=0)
        if pairs.shape[0] == torch.unique(levels[inner]).numel():
            return outer, inner
    return None


@torch.no_grad()
def _law_means(model: MixedModel) -> list[Tensor]:
    """Each block's law mean (q,): what a term's log scale in θ spreads the effects around (``_log_lik_of_theta``).
    Exactly 0 for lme4's Gaussian law (its decoder is linear: ``spread_block`` then has no mean to keep, and a Monte
    Carlo mean would leak (1 − scale) · mean into the intercept); a learned law's from 20,000 prior draws of a
    fixed seed."""
    if not isinstance(model.decoder, MixedMLPDecoder):
        return [torch.zeros(b.size, dtype=torch.float64) for b in model.layout.blocks]
    generator = torch.Generator().manual_seed(0)
    return [
        model.decoder.block_forward(i, torch.randn(20_000, b.size, generator=generator, dtype=torch.float64)).mean(0)
        for i, b in enumerate(model.layout.blocks)
    ]


def _rule_estimate(
    model: MixedModel,
    x: Tensor,
    rule: IntegrationRule,
    row_component: Tensor,
    count: int,
    shapes: list | None = None,
    base: int = 0,
):
    """theta -> (K,) log p̂(y_k) under ``rule``, and the per-(m, k) log terms at the fitted theta (for the SE). With
    ``shapes`` (one factor's dense grid: ``_grid_rule``, every level on the same nodes) θ may carry the law's tilt τ
    after its first ``base`` entries: each node's weight is tilted too."""
    effects = _effects(model, rule.points)
    means = _law_means(model)
    log_f = _log_lik_of_theta(model, x, effects, means, row_component, count, shapes, base)
    shape = shapes[0] if shapes is not None else None
    node_basis = shape.basis(effects[0][:, 0, 0] - means[0][0]) if shape is not None else None  # (M, K)

    def estimate(theta: Tensor) -> Tensor:
        weights = rule.log_weights
        tau = _shape_parameters(shapes, theta, base)[0] if shape is not None else None
        if tau is not None:
            log_mass, _, _ = shape.tilt(tau)
            weights = weights + (node_basis @ tau - log_mass).unsqueeze(1)
        return torch.logsumexp(log_f(theta) + weights, 0) + rule.const

    return estimate, log_f


def mixed_fit_statistics(model: MixedModel, x: Tensor, draws: Tensor, num_samples: int = 16_000, seed: int = 0) -> dict:
    """The fit's log-likelihood and the fixed effects' standard errors, from one integration rule.

    Args:
        x: (n, D) the rows the model was fitted to.
        draws: (N, d) posterior draws of the whole latent given ``x``: they centre the quadrature or fit the
            importance proposals; the estimates do not depend on them beyond that.
        num_samples: importance samples per component.

    Returns:
        {"log_lik", "log_lik_se" (nats, total over the rows), "method" ("quadrature" or "importance_sampling"),
        "per_component" ((K,) each independent component's log-likelihood, in a fixed order for given rows),
        "beta" (p,), "se" (p,), "covariance" (p, p), "information_ok", "se_basis" ("joint", "fixed_effects_only"
        or "unavailable"), "se_law_shape" ("tilt": the laws' tilts profiled out, ``LawShape``; "held": a learned
        law's shape held at the fit; "gaussian": lme4's law, nothing to hold)}. The observed information is the
        Hessian of the estimated log-likelihood in theta = (beta, one log scale per random term (the spread of its
        law, its shape held at the fit but for its tilt), the family's dispersion); the fixed effects' SEs are the
        beta block of its inverse, so they carry the uncertainty of the random effects' spread, as lme4's do. The
        quadrature's SE is its change from half the nodes; importance sampling's is the delta-method SE of each
        component's mean weight.
    """
    model, x, draws = in_float64(model), x.double().cpu(), draws.double().cpu()
    shapes = _law_shapes(model, x)
    estimate, theta, per_component, se, method = _integrate(model, x, draws, num_samples, seed, shapes=shapes)
    # one double-backward pass per parameter (torch.autograd.functional.hessian) runs about twice as fast here as
    # torch.func.hessian's vectorised forward-over-reverse (0.68 against 1.49 s on grouseticks' nested grid)
    shape_count = SHAPE_DIRECTIONS * sum(shape is not None for shape in shapes)
    point = torch.cat([theta, theta.new_zeros(shape_count)])  # the laws' tilts τ = 0: the fit itself
    information = -sum(torch.autograd.functional.hessian(lambda t, f=f: f(t).sum(), point) for f in _parts_of(estimate))
    if shape_count:  # the information left about θ once the laws' shapes are free: θ's block less what τ explains
        information = _shape_profiled(information, theta.numel())
    p = model.layout.num_fixed
    # The joint information where it is positive definite; else (a learned law not at a maximum of its spread, or
    # too few samples for it) the fixed effects' block alone, SEs that hold every law's spread at its fit.
    basis, covariance = "unavailable", torch.full((p, p), float("nan"), dtype=torch.float64)
    for name, block in (("joint", information), ("fixed_effects_only", information[:p, :p])):
        if bool(torch.all(torch.linalg.eigvalsh(0.5 * (block + block.T)) > 0)):
            basis, covariance = name, torch.linalg.inv(block)[:p, :p]
            break
    ok = basis != "unavailable"
    if not isinstance(model.decoder, MixedMLPDecoder):
        law_shape = "gaussian"  # lme4's law: nothing but its spread
    else:
        law_shape = "tilt" if shape_count else "held"
    standard_errors = covariance.diagonal().clamp_min(0).sqrt() if ok else torch.full((p,), float("nan"))
    return {
        "log_lik": float(per_component.sum()),
        "log_lik_se": se,
        "method": method,
        "per_component": per_component,
        "beta": theta[:p],
        "se": standard_errors.double(),
        "covariance": covariance,
        "information_ok": ok,
        "se_basis": basis,
        "se_law_shape": law_shape,
    }


def _shape_profiled(information: Tensor, count: int) -> Tensor:
    """The information about the first ``count`` parameters with the rest (the laws' tilts) free: the Schur
    complement A − B C⁺ Bᵀ, C⁺ over C's positive eigenvalues above 1e-10 of its largest (a tilt that leaves the
    law unchanged, as a Gaussian-shaped law's does, carries no information and takes none)."""
    a, b, c = information[:count, :count], information[:count, count:], information[count:, count:]
    values, vectors = torch.linalg.eigh(0.5 * (c + c.T))
    keep = values > 1e-10 * values.abs().max().clamp_min(1e-300)
    inverse = (vectors[:, keep] / values[keep]) @ vectors[:, keep].T
    return a - b @ inverse @ b.T


def _parts_of(estimate) -> list:
    """The terms an estimate is the sum of (a nested pair's parts), or the estimate itself."""
    return estimate.parts if isinstance(estimate, NestedEstimate) else [estimate]


def _integrate(
    model: MixedModel,
    x: Tensor,
    draws: Tensor,
    num_samples: int,
    seed: int,
    max_nodes: int = NESTED_MAX_NODES,
    shapes: list | None = None,
):
    """The integration rule of ``mixed_fit_statistics`` and ``integrated_log_lik`` (``model`` in float64, ``x`` and
    ``draws`` float64 on the CPU): (theta -> (K,) estimate, theta at the fit, (K,) per component at the fit, its SE,
    the method's name). A nested pair's grids are refined up to ``max_nodes`` per factor. With ``shapes``
    (``_law_shapes``) the estimate also takes the laws' tilts τ after theta's entries."""
    row_component, parts = components(model, x)
    theta, _names = _parameter_vector(model)
    base = theta.numel()  # where a θ of the estimate carries the laws' tilts
    pair = nested_pair(model, x)
    if pair is not None:  # dense grids of both factors, the first whose value twice the nodes confirm
        nodes = NESTED_NODES
        estimate = _nested_estimate(model, x, pair, row_component, len(parts), nodes, shapes, base)
        with torch.no_grad():
            per_component = estimate(theta)
        while True:
            finer_nodes = 2 * nodes - 1
            if finer_nodes > max_nodes:  # no finer grid allowed: the change from half the nodes
                coarse = _nested_estimate(model, x, pair, row_component, len(parts), nodes // 2 + 1, shapes, base)
                with torch.no_grad():
                    se = abs(float(per_component.sum()) - float(coarse(theta).sum()))
                return estimate, theta, per_component, se, "quadrature"
            finer = _nested_estimate(model, x, pair, row_component, len(parts), finer_nodes, shapes, base)
            with torch.no_grad():
                finer_component = finer(theta)
            se = abs(float(per_component.sum()) - float(finer_component.sum()))
            if se <= NESTED_TOLERANCE:  # the value of the coarser grid, its error the finer grid's verdict
                return estimate, theta, per_component, se, "quadrature"
            nodes, estimate, per_component = finer_nodes, finer, finer_component
    if can_integrate_exactly(model):
        if model.layout.blocks[0].size == 1:  # a dense grid: exact for any law; its SE from half the points
            rule, coarse = _grid_rule(model, GRID_POINTS), _grid_rule(model, GRID_POINTS // 2 + 1)
        else:
            rule, coarse = _quadrature_rule(model, draws, 24), _quadrature_rule(model, draws, 12)
        estimate, _ = _rule_estimate(model, x, rule, row_component, len(parts), shapes, base)
        coarse_estimate, _ = _rule_estimate(model, x, coarse, row_component, len(parts), shapes, base)
        with torch.no_grad():
            per_component = estimate(theta)
            se = abs(float(per_component.sum()) - float(coarse_estimate(theta).sum()))
    else:
        rule = _importance_rule(draws, parts, num_samples, seed)
        estimate, log_f = _rule_estimate(model, x, rule, row_component, len(parts))
        with torch.no_grad():
            terms = log_f(theta) + rule.log_weights  # (M, K)
            per_component = torch.logsumexp(terms, 0) + rule.const
            weights = (terms - terms.max(0).values).exp()
            relative = weights.std(0) / (math.sqrt(weights.shape[0]) * weights.mean(0))
            se = float(relative.square().sum().sqrt())
    return estimate, theta, per_component, se, rule.method


def polish_parameters(
    model: MixedModel, x: Tensor, draws: Tensor, num_samples: int = 16_000, seed: int = 0, max_iter: int = 50
) -> dict:
    """Moves θ (beta, one log scale per random term, the family's dispersion: ``_parameter_vector``) of ``model`` to
    the maximum of ``mixed_fit_statistics``'s log-likelihood estimate, each law's shape held as fitted, and writes it
    into ``model`` (in place) where it raises the estimate.

    Stochastic training ends near the maximum, not at it (ALMOND's gradient is a Monte Carlo estimate, and averaged
    parameters of a network are not the parameters of an average): on grouseticks the fit ended 0.16 of lme4's SE
    from lme4's estimates with a gradient of 5 nats per unit of a coefficient, and the observed information there
    was not positive definite, so no SE could be given. The estimate is a smooth deterministic function of θ (its
    rule is held fixed), so L-BFGS finds its maximum in a few dozen evaluations; there the information is a proper
    curvature, and lme4's model is fitted as lme4 fits it, by maximum likelihood.

    Args:
        x: (n, D) the training rows.
        draws: (N, d) posterior draws at the fit, which centre the rule (``rule_draws`` in tasks/mixed.py).

    Returns:
        {"log_lik_before", "log_lik_after" (nats, total), "names", "theta_before", "theta_after", "applied"}.
    """
    fitted = in_float64(model)
    # a nested pair's grids at their first size: the maximiser moves by far less than the parameters' SEs from what a
    # finer grid gives (its error is a smooth function of θ), at a quarter of the cost per evaluation or less
    estimate, theta, per_component, _se, _method = _integrate(
        fitted, x.double().cpu(), draws.double().cpu(), num_samples, seed, max_nodes=NESTED_NODES
    )
    before = float(per_component.sum())
    point = theta.clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS(
        [point], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe"
    )

    def closure():
        optimiser.zero_grad()
        loss = 0.0
        for part in _parts_of(estimate):  # gradients accumulate part by part
            value = -part(point).sum()
            value.backward()
            loss = loss + value.detach()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    point = point.detach()
    with torch.no_grad():
        after = float(estimate(point).sum())
    applied = bool(torch.isfinite(point).all()) and math.isfinite(after) and after > before
    if applied:
        _write_theta(model, point, _law_means(fitted))
    names = _parameter_vector(fitted)[1]
    return {
        "log_lik_before": before,
        "log_lik_after": after if applied else before,
        "names": names,
        "theta_before": theta,
        "theta_after": point if applied else theta,
        "applied": applied,
    }


@torch.no_grad()
def _write_theta(model: MixedModel, theta: Tensor, means: list[Tensor]) -> None:
    """θ into ``model``: beta, each block's effects spread by exp(its log scales) around its law's mean, and the
    dispersion."""
    likelihood = model.likelihood
    layout = likelihood.layout
    p = layout.num_fixed
    likelihood.beta.copy_(theta[:p].to(likelihood.beta))
    at = p
    for index, block in enumerate(layout.blocks):
        model.decoder.spread_block(index, theta[at : at + block.size].exp(), means[index])
        at += block.size
    if likelihood.learns_sigma:
        likelihood.log_sigma.copy_(theta[at].to(likelihood.log_sigma))
    elif hasattr(likelihood.family, "log_dispersion"):
        likelihood.family.log_dispersion.copy_(theta[at].to(likelihood.family.log_dispersion))


def integrated_log_lik(model: MixedModel, x: Tensor, draws: Tensor, num_samples: int = 16_000, seed: int = 0) -> dict:
    """log p(y) of the rows ``x`` under ``model`` with every random effect they touch integrated out under the fitted
    laws, by ``mixed_fit_statistics``'s rules (quadrature or importance sampling), without the observed information:
    the score of held-out or new groups (``model`` laid out for them: ``MixedModel.for_groups``).

    Args:
        x: (n, D) the rows, laid out as ``model.layout`` says.
        draws: (N, d) posterior draws of ``model``'s latents given ``x`` (they centre the rules; see
            ``mixed_fit_statistics``); none (N = 0) will do where ``needs_draws`` says so.

    Returns:
        {"log_lik", "log_lik_se" (nats, total over the rows), "method", "per_component" ((K,) each independent
        component's log-likelihood)}.
    """
    model, x, draws = in_float64(model), x.double().cpu(), draws.double().cpu()
    _estimate, _theta, per_component, se, method = _integrate(model, x, draws, num_samples, seed)
    return {"log_lik": float(per_component.sum()), "log_lik_se": se, "method": method, "per_component": per_component}
