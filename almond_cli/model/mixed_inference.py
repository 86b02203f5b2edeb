"""Inference for a fitted mixed model (``model/mixed.py``): what lme4's summary reports, from posterior draws.

- ``random_effect_laws``: each factor's random-effect law u = h_f(z), z ~ N(0, I), from prior draws: its mean (which
  a learned law may carry and the matching fixed effect absorbs), sd, skewness and quantiles of the centred effects.
- ``fixed_effects_table``: estimates with standard errors from the observed information by Louis' identity,
  I = E[−∇²_θ log f(y | z)] − Cov[∇_θ log f(y | z)] under the posterior of z given y, over θ = (beta, one log scale
  per random term (the spread of its law, whose shape is held at the fit), the family's dispersion). The fixed
  effects' SEs are the beta block of I⁻¹: they carry the uncertainty of the random effects' spread, as lme4's do.
- ``marginal_log_lik``: log p(y) = log ∫ f(y | z) N(z; 0, I) dz, exact by adaptive Gauss-Hermite quadrature when
  there is one grouping factor whose levels have 1 or 2 random terms (the groups are then independent: a sum of
  one small integral per level), else by importance sampling from a Gaussian fitted to posterior draws, with the
  estimator's standard error.

All in float64 (sums over thousands of rows, differences between fits of a fraction of a nat).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import Tensor

from .mixed import MixedModel
from .model import evaluation_mode

LOG_2PI = math.log(2.0 * math.pi)
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
    model: MixedModel, x: Tensor, effects: list[Tensor], means: list[Tensor], row_component: Tensor, count: int
):
    """theta (P,) -> (N, K) log f(y_k | eta(theta, z_n)) per component k for the draws behind ``effects``: the
    function Louis' identity differentiates. A term's log scale s spreads its centred effects:
    u' = mean + exp(s) (u − mean)."""
    likelihood = model.likelihood
    layout = likelihood.layout
    x = x.double().cpu()
    fixed_x = x[:, layout.fixed_columns]
    offset = x[:, layout.offset_column]
    family_rows = x[:, : layout.family_width]
    per_block = []
    for index, part in enumerate(effects):
        groups = x[:, layout.group_column(index)].long()
        per_block.append((part[:, groups, :], x[:, layout.z_columns(index)]))  # (N, R, q), (R, q)
    p = layout.num_fixed
    family = likelihood.family
    sigma_index = p + sum(block.size for block in layout.blocks)

    def log_lik(theta: Tensor) -> Tensor:
        eta = (offset + fixed_x @ theta[:p]).unsqueeze(0)
        at = p
        for (rows_effects, z), mean in zip(per_block, means):
            q = z.shape[1]
            scale = theta[at : at + q].exp()
            spread = mean + scale * (rows_effects - mean)
            eta = eta + (spread * z).sum(-1)
            at += q
        if likelihood.learns_sigma:
            log_sigma = theta[sigma_index]
            residual = (family_rows[:, 0] - eta) / log_sigma.exp()
            per_row = -0.5 * residual.square() - log_sigma - 0.5 * LOG_2PI
        elif hasattr(family, "log_dispersion"):
            log_r = theta[sigma_index]
            counts = family_rows[:, 0]
            t = eta - log_r
            r = log_r.exp()
            normaliser = torch.lgamma(counts + r) - torch.lgamma(r) - torch.lgamma(counts + 1.0)
            per_row = normaliser + counts * t - (counts + r) * torch.nn.functional.softplus(t)
        else:
            per_row = family.log_prob(family_rows, eta.T.unsqueeze(-1)).T  # (N, R)
        return per_row.new_zeros(per_row.shape[0], count).index_add(1, row_component, per_row)

    return log_lik


def components(model: MixedModel, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The independent parts of the posterior: rows linked through a shared level of any factor (a brood and the
    location it lies in) form one component, and components' latents are independent given y.

    Returns:
        (component (R,) of each row, 0..K-1; the latent coordinates of each component, a list of K index tensors).
    """
    layout = model.layout
    starts = layout.latent_starts()
    # every (factor, level) is a node; a row joins the nodes it touches
    node_of = [
        x[:, layout.group_column(i)].long().cpu().numpy() + sum(b.num_groups for b in layout.blocks[:i])
        for i in range(len(layout.blocks))
    ]
    parent = np.arange(sum(b.num_groups for b in layout.blocks))

    def root(node):
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for row in range(x.shape[0]):
        first = root(node_of[0][row])
        for nodes in node_of[1:]:
            other = root(nodes[row])
            if other != first:
                parent[other] = first
    roots = np.array([root(node) for node in range(parent.shape[0])])
    labels, component_of_node = np.unique(roots, return_inverse=True)
    row_component = torch.from_numpy(component_of_node[node_of[0]]).long()
    coordinates: list[list[int]] = [[] for _ in labels]
    node = 0
    for block, start in zip(layout.blocks, starts):
        for level in range(block.num_groups):
            first = start + level * block.size
            coordinates[component_of_node[node]].extend(range(first, first + block.size))
            node += 1
    return row_component, [torch.tensor(c, dtype=torch.long) for c in coordinates]


def fixed_effects_table(model: MixedModel, x: Tensor, draws: Tensor) -> dict:
    """Estimates and standard errors of the fixed effects by Louis' identity over posterior draws.

    Args:
        x: (n, D) the rows the model was fitted to.
        draws: (N, d) posterior draws of the whole latent (every level of every factor) given all rows.

    Returns:
        {"beta": (p,), "se": (p,), "covariance": (p, p), "information_ok": bool}: beta as the model holds it (the
        caller moves a learned law's mean into the matching fixed effect); ``information_ok`` False when the
        observed information was not positive definite (its SEs are then NaN).
    """
    model = in_float64(model)
    effects = _effects(model, draws)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # each law's own mean (0 for lme4's Gaussian law): what a term's scale spreads around
        laws_mean = [
            model.decoder.block_forward(i, torch.randn(20_000, b.size, generator=generator, dtype=torch.float64)).mean(0)
            for i, b in enumerate(model.layout.blocks)
        ]
    theta, _names = _parameter_vector(model)
    row_component, parts = components(model, x)
    function = _log_lik_of_theta(model, x, effects, laws_mean, row_component, len(parts))
    scores = torch.func.jacfwd(function)(theta)  # (N, K, P): each component's score per draw
    hessian = torch.func.hessian(lambda t: function(t).sum(1).mean())(theta)  # (P, P)
    # Cov of the total score = Σ over independent components of each one's covariance: the cross terms are 0 under
    # the posterior, and leaving out their sample noise is what makes the SEs usable from a few thousand draws.
    centred = scores - scores.mean(0)
    covariance_of_score = torch.einsum("nkp,nkq->pq", centred, centred) / max(scores.shape[0] - 1, 1)
    information = -hessian - covariance_of_score
    p = model.layout.num_fixed
    beta = theta[:p]
    try:
        covariance = torch.linalg.inv(information)
        ok = bool(torch.all(torch.linalg.eigvalsh(0.5 * (information + information.T)) > 0))
    except RuntimeError:
        covariance, ok = torch.full_like(information, float("nan")), False
    covariance = covariance[:p, :p]
    se = covariance.diagonal().clamp_min(0).sqrt() if ok else torch.full((p,), float("nan"), dtype=torch.float64)
    return {"beta": beta, "se": se, "covariance": covariance, "information_ok": ok}


def _group_log_lik(model: MixedModel, x: Tensor, z_levels: Tensor) -> Tensor:
    """log f(y_g | z_g) summed over each level's rows, one factor: z_levels (K, G, q) -> (K, G) for K nodes."""
    likelihood = model.likelihood
    layout = likelihood.layout
    with torch.no_grad():
        u = model.decoder.block_forward(0, z_levels)
        groups = x[:, layout.group_column(0)].long()
        fixed = x[:, layout.offset_column] + x[:, layout.fixed_columns] @ likelihood.beta
        eta = fixed.unsqueeze(0) + (u[:, groups, :] * x[:, layout.z_columns(0)]).sum(-1)  # (K, R)
        per_row = likelihood.log_prob_eta(x, eta.T).T  # (K, R)
    out = torch.zeros(z_levels.shape[0], z_levels.shape[1], dtype=torch.float64)
    return out.index_add_(1, groups, per_row)


def _quadrature_levels(model: MixedModel, x: Tensor, draws: Tensor, nodes: int) -> Tensor:
    """log p(y_g) per level g of the one factor by adaptive Gauss-Hermite quadrature centred and scaled at the
    posterior draws' mean and sd of z_g (a product rule for q = 2): (G,)."""
    block = model.layout.blocks[0]
    z = draws.double().reshape(draws.shape[0], block.num_groups, block.size)
    centre = z.mean(0)  # (G, q)
    scale = z.std(0).clamp_min(1e-3) * 1.2  # a little wider than the posterior: the tails weigh in
    t, w = np.polynomial.hermite.hermgauss(nodes)
    t, w = torch.tensor(t, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)
    if block.size == 1:
        grid, log_weight = t.unsqueeze(1), w.log() + t.square()
    else:
        grid = torch.cartesian_prod(t, t)
        log_weight = (torch.cartesian_prod(w, w).log() + grid.square()).sum(1)
    # z = centre + sqrt(2) scale t: ∫ g(z) dz = Σ w exp(t²) g(z(t)) · Π sqrt(2) scale
    points = centre.unsqueeze(0) + math.sqrt(2.0) * scale.unsqueeze(0) * grid.unsqueeze(1)  # (K, G, q)
    log_prior = -0.5 * (points.square().sum(-1) + block.size * LOG_2PI)
    log_f = _group_log_lik(model, x, points)
    log_jacobian = (math.sqrt(2.0) * scale).log().sum(-1)  # (G,)
    terms = log_weight.reshape(-1, 1) + log_f + log_prior
    return torch.logsumexp(terms, 0) + log_jacobian


def _importance_sampling(model: MixedModel, x: Tensor, draws: Tensor, num_samples: int, seed: int):
    """log p(y) by importance sampling, one independent component (``components``) at a time, each from a
    Student-t (10 degrees of freedom) fitted to its posterior draws; with the delta-method standard error:
    (estimate, se) summed over components."""
    row_component, parts = components(model, x)
    generator = torch.Generator().manual_seed(seed)
    total, variance = 0.0, 0.0
    for index, coordinates in enumerate(parts):
        rows = x[row_component == index]
        estimate, se = _component_is(model, rows, draws, coordinates, num_samples, generator)
        total += estimate
        variance += se**2
    return total, math.sqrt(variance)


def _component_is(model, rows: Tensor, draws: Tensor, coordinates: Tensor, num_samples: int, generator):
    """log p(y_k) of one component's ``rows`` whose latents are ``coordinates`` of the full latent: (estimate, se)."""
    sub = draws[:, coordinates]
    d = sub.shape[1]
    mean = sub.mean(0)
    centred = sub - mean
    covariance = centred.T @ centred / max(sub.shape[0] - 1, 1)
    # Shrink towards the diagonal: a covariance of d coordinates from a few thousand draws is noisy off the diagonal.
    shrink = min(1.0, d / max(sub.shape[0], 1))
    covariance = (1 - shrink) * covariance + shrink * torch.diag(covariance.diagonal())
    covariance = covariance * 1.2 + 1e-9 * torch.eye(d, dtype=torch.float64)
    chol = torch.linalg.cholesky(covariance)
    dof = 10.0
    log_weights = []
    for start in range(0, num_samples, 2000):
        count = min(2000, num_samples - start)
        normal = torch.randn(count, d, generator=generator, dtype=torch.float64)
        step = normal * (dof / _chi2(count, dof, generator)).sqrt().unsqueeze(1)
        z = mean + step @ chol.T
        maha = torch.linalg.solve_triangular(chol, (z - mean).T, upper=False).T.square().sum(1)
        log_q = (
            math.lgamma((dof + d) / 2)
            - math.lgamma(dof / 2)
            - 0.5 * d * math.log(dof * math.pi)
            - chol.diagonal().log().sum()
            - 0.5 * (dof + d) * torch.log1p(maha / dof)
        )
        full = draws.new_zeros(count, draws.shape[1])
        full[:, coordinates] = z
        with torch.no_grad():
            log_f = model.log_lik(rows, full.unsqueeze(0)).squeeze(0)
        log_prior = -0.5 * (z.square().sum(1) + d * LOG_2PI)
        log_weights.append(log_f + log_prior - log_q)
    log_w = torch.cat(log_weights)
    top = log_w.max()
    w = (log_w - top).exp()
    return float(top + w.mean().log()), float(w.std() / (math.sqrt(w.shape[0]) * w.mean()))


def _chi2(count: int, dof: float, generator: torch.Generator) -> Tensor:
    """Chi-squared(dof) draws from ``generator`` (a sum of squared normals for an integer dof)."""
    return torch.randn(count, int(dof), generator=generator, dtype=torch.float64).square().sum(1)


def can_integrate_exactly(model: MixedModel) -> bool:
    """Whether ``marginal_log_lik`` integrates exactly: one factor whose levels have 1 or 2 random terms."""
    blocks = model.layout.blocks
    return len(blocks) == 1 and blocks[0].size <= 2


def marginal_log_lik(model: MixedModel, x: Tensor, draws: Tensor, num_samples: int = 20_000, seed: int = 0) -> dict:
    """log p(y) of the rows ``x`` (the total over them, nats) with its standard error.

    Args:
        draws: (N, d) posterior draws of the latent given ``x``: they centre the quadrature or fit the importance
            proposal; the estimate does not depend on them beyond that.

    Returns:
        {"log_lik", "log_lik_se", "method" ("quadrature" or "importance_sampling"), "per_group" ((G,) per level
        of the one factor, quadrature only, else None)}. The quadrature's SE is its change from half the nodes.
    """
    model, x, draws = in_float64(model), x.double().cpu(), draws.double().cpu()
    if can_integrate_exactly(model):
        nodes = 40 if model.layout.blocks[0].size == 1 else 24
        per_group = _quadrature_levels(model, x, draws, nodes)
        coarse = _quadrature_levels(model, x, draws, nodes // 2)
        total = float(per_group.sum())
        return {
            "log_lik": total,
            "log_lik_se": abs(total - float(coarse.sum())),
            "method": "quadrature",
            "per_group": per_group,
        }
    estimate, se = _importance_sampling(model, x, draws, num_samples, seed)
    return {"log_lik": estimate, "log_lik_se": se, "method": "importance_sampling", "per_group": None}
