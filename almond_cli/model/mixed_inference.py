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

from .mixed import MixedModel
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
    z = torch.linspace(-limit, limit, points, dtype=torch.float64)
    spacing = float(z[1] - z[0])
    log_w = torch.full((points,), math.log(spacing), dtype=torch.float64)
    log_w[0] = log_w[-1] = math.log(spacing / 2)
    log_prior = -0.5 * (z.square() + LOG_2PI)
    grid = z.reshape(points, 1, 1).expand(points, block.num_groups, 1)
    weights = (log_w + log_prior).unsqueeze(1).expand(points, block.num_groups)
    return IntegrationRule(
        grid.reshape(points, -1), weights, torch.zeros(block.num_groups, dtype=torch.float64), "quadrature"
    )


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


def needs_draws(model: MixedModel) -> bool:
    """Whether the integration rule is centred by posterior draws: all but the dense grid of one factor of one random
    term, whose points do not depend on where the posterior lies."""
    return not (can_integrate_exactly(model) and model.layout.blocks[0].size == 1)


def _rule_estimate(model: MixedModel, x: Tensor, rule: IntegrationRule, row_component: Tensor, count: int):
    """theta -> (K,) log p̂(y_k) under ``rule``, and the per-(m, k) log terms at the fitted theta (for the SE)."""
    effects = _effects(model, rule.points)
    with torch.no_grad():  # each law's own mean (0 for lme4's Gaussian law): what a term's scale spreads around
        generator = torch.Generator().manual_seed(0)
        means = [
            model.decoder.block_forward(i, torch.randn(20_000, b.size, generator=generator, dtype=torch.float64)).mean(
                0
            )
            for i, b in enumerate(model.layout.blocks)
        ]
    log_f = _log_lik_of_theta(model, x, effects, means, row_component, count)

    def estimate(theta: Tensor) -> Tensor:
        return torch.logsumexp(log_f(theta) + rule.log_weights, 0) + rule.const

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
        or "unavailable")}. The observed information is the Hessian of
        the estimated log-likelihood in theta = (beta, one log scale per random term (the spread of its law, its
        shape held at the fit), the family's dispersion); the fixed effects' SEs are the beta block of its inverse,
        so they carry the uncertainty of the random effects' spread, as lme4's do. The quadrature's SE is its change
        from half the nodes; importance sampling's is the delta-method SE of each component's mean weight.
    """
    model, x, draws = in_float64(model), x.double().cpu(), draws.double().cpu()
    estimate, theta, per_component, se, method = _integrate(model, x, draws, num_samples, seed)
    information = -torch.func.hessian(lambda t: estimate(t).sum())(theta)
    p = model.layout.num_fixed
    # The joint information where it is positive definite; else (a learned law not at a maximum of its spread, or
    # too few samples for it) the fixed effects' block alone, SEs that hold every law's spread at its fit.
    basis, covariance = "unavailable", torch.full((p, p), float("nan"), dtype=torch.float64)
    for name, block in (("joint", information), ("fixed_effects_only", information[:p, :p])):
        if bool(torch.all(torch.linalg.eigvalsh(0.5 * (block + block.T)) > 0)):
            basis, covariance = name, torch.linalg.inv(block)[:p, :p]
            break
    ok = basis != "unavailable"
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
    }


def _integrate(model: MixedModel, x: Tensor, draws: Tensor, num_samples: int, seed: int):
    """The integration rule of ``mixed_fit_statistics`` and ``integrated_log_lik`` (``model`` in float64, ``x`` and
    ``draws`` float64 on the CPU): (theta -> (K,) estimate, theta at the fit, (K,) per component at the fit, its SE,
    the method's name)."""
    row_component, parts = components(model, x)
    theta, _names = _parameter_vector(model)
    if can_integrate_exactly(model):
        if model.layout.blocks[0].size == 1:  # a dense grid: exact for any law; its SE from half the points
            rule, coarse = _grid_rule(model, GRID_POINTS), _grid_rule(model, GRID_POINTS // 2 + 1)
        else:
            rule, coarse = _quadrature_rule(model, draws, 24), _quadrature_rule(model, draws, 12)
        estimate, _ = _rule_estimate(model, x, rule, row_component, len(parts))
        coarse_estimate, _ = _rule_estimate(model, x, coarse, row_component, len(parts))
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
