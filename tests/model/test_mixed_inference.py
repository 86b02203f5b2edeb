"""Inference for a fitted mixed model (``model/mixed_inference.py``) on a simulated Poisson random-intercept model
whose exact marginal likelihood the test computes itself (non-adaptive Gauss-Hermite with 300 nodes per group).

300 nodes, not 80: non-adaptive nodes spread over the prior (sd 0.65) while each group's posterior is about a
quarter as wide, and 80 of them are off by 8.5e-4 nats on these data (40: 2.0e-3); 150 and 300 agree with a
200,001-point trapezoid on [-10, 10] to 2e-9 and 1e-10 nats (checked once when the test was written)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from almond_cli.model import mixed_inference as mi
from almond_cli.model.likelihoods import Poisson
from almond_cli.model.mixed import MixedLayout, MixedLikelihood, MixedLinearDecoder, MixedModel, MixedTableEncoder

G, M = 40, 6  # groups, rows per group
N = G * M


def _data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    group = torch.arange(G).repeat_interleave(M)
    covariate = torch.randn(N, generator=gen)
    effect = 0.7 * torch.randn(G, generator=gen)
    y = torch.poisson((0.5 + 0.3 * covariate + effect[group]).exp(), generator=gen)
    rows = torch.stack([y, torch.zeros(N), torch.ones(N), covariate, torch.ones(N), group.float()], 1)
    return rows, group


ROWS, GROUP = _data()


def exact_log_lik(params: torch.Tensor, nodes: int = 300) -> torch.Tensor:
    """log p(y) for params = (b0, b1, log sd) (float64): per group ∫ Π_i Poisson(y_i; exp(eta_i + u)) N(u; 0, sd²) du
    by non-adaptive Gauss-Hermite, u = sqrt(2) sd t."""
    t, w = np.polynomial.hermite.hermgauss(nodes)
    t, w = torch.tensor(t, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)
    y, covariate = ROWS[:, 0].double(), ROWS[:, 3].double()
    u = math.sqrt(2.0) * t * params[2].exp()
    eta = (params[0] + params[1] * covariate).unsqueeze(0) + u.unsqueeze(1)  # (nodes, N)
    per_row = y * eta - eta.exp() - torch.lgamma(y + 1.0)
    per_group = per_row.new_zeros(nodes, G).index_add(1, GROUP, per_row)
    return (torch.logsumexp(per_group + w.log().unsqueeze(1), 0) - 0.5 * math.log(math.pi)).sum()


def _model(params) -> MixedModel:
    layout = MixedLayout.of([("g", ("(Intercept)",), G)], 2, 1)
    decoder = MixedLinearDecoder(layout.plain())
    model = MixedModel(MixedTableEncoder(layout.latent_dim), decoder, MixedLikelihood(Poisson(), layout))
    with torch.no_grad():
        model.likelihood.beta.copy_(torch.as_tensor(params[:2]))
        decoder.factors[0].copy_(torch.as_tensor(params[2]).exp().reshape(1, 1))
    return model


def _float32_params(params) -> torch.Tensor:
    """The parameters as the (float32) model holds them, back in float64 with the log sd."""
    model = _model(params)
    return torch.cat([model.likelihood.beta.detach(), model.decoder.factors[0].detach().reshape(1).log()]).double()


def _posterior_draws(params: torch.Tensor, count: int = 4000, seed: int = 0) -> torch.Tensor:
    """(count, G) draws of z from a normal with each group's exact posterior mean and sd (on a fine grid): all
    the rules ask of draws is where each group's posterior lies and how wide it is."""
    grid = torch.linspace(-8.0, 8.0, 8001, dtype=torch.float64)
    y, covariate = ROWS[:, 0].double(), ROWS[:, 3].double()
    eta = (params[0] + params[1] * covariate).unsqueeze(0) + params[2].exp() * grid.unsqueeze(1)
    per_row = y * eta - eta.exp()
    log_post = per_row.new_zeros(grid.shape[0], G).index_add(1, GROUP, per_row) - 0.5 * grid.square().unsqueeze(1)
    weights = torch.softmax(log_post, 0)  # (grid, G)
    mean = (weights * grid.unsqueeze(1)).sum(0)
    sd = (weights * (grid.unsqueeze(1) - mean).square()).sum(0).sqrt()
    noise = torch.randn(count, G, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return mean + sd * noise


PARAMS = _float32_params(torch.tensor([0.45, 0.28, math.log(0.65)], dtype=torch.float64))


def test_quadrature_log_lik_equals_an_independent_gauss_hermite():
    model = _model(PARAMS)
    stats = mi.mixed_fit_statistics(model, ROWS, _posterior_draws(PARAMS))
    assert stats["method"] == "quadrature"
    expected = float(exact_log_lik(PARAMS))
    # Both are quadratures accurate to far below 1e-6 nats (300 fixed nodes; 40 adaptive ones, 3e-8 off when
    # the test was written); the data are float32 integers and covariates used in float64 by both.
    assert abs(stats["log_lik"] - expected) < 1e-6, (stats["log_lik"], expected)
    assert stats["per_component"].shape == (G,)
    assert 0 <= stats["log_lik_se"] < 1e-4  # the change from half the nodes: tiny where the rule is accurate
    # a wrong parameter is seen: the estimate is not just anything near the right number
    assert abs(float(exact_log_lik(PARAMS + torch.tensor([0.05, 0.0, 0.0], dtype=torch.float64))) - expected) > 0.1


def test_importance_sampling_agrees_with_the_quadrature_within_its_se():
    model = mi.in_float64(_model(PARAMS))
    x = ROWS.double()
    row_component, parts = mi.components(model, x)
    assert len(parts) == G
    rule = mi._importance_rule(_posterior_draws(PARAMS, seed=1), parts, 4000, seed=3)
    estimate, log_f = mi._rule_estimate(model, x, rule, row_component, len(parts))
    theta, _ = mi._parameter_vector(model)
    with torch.no_grad():
        terms = log_f(theta) + rule.log_weights  # (M, K)
        per_component = torch.logsumexp(terms, 0) + rule.const
        weights = (terms - terms.max(0).values).exp()
        se = float((weights.std(0) / (math.sqrt(weights.shape[0]) * weights.mean(0))).square().sum().sqrt())
    torch.testing.assert_close(per_component, estimate(theta).detach())
    expected = float(exact_log_lik(PARAMS))
    assert 0 < se < 0.5
    assert abs(float(per_component.sum()) - expected) < 4 * se, (float(per_component.sum()), expected, se)


def test_mixed_fit_statistics_importance_path_reports_its_se(monkeypatch):
    monkeypatch.setattr(mi, "can_integrate_exactly", lambda model: False)
    stats = mi.mixed_fit_statistics(_model(PARAMS), ROWS, _posterior_draws(PARAMS, seed=2), num_samples=4000, seed=5)
    assert stats["method"] == "importance_sampling"
    expected = float(exact_log_lik(PARAMS))
    # 4 SEs: a correct estimator fails this about once in 16,000 runs (with the proposal this close to the
    # posterior the delta-method SE is reliable).
    assert 0 < stats["log_lik_se"] < 0.5 and abs(stats["log_lik"] - expected) < 4 * stats["log_lik_se"]


def _mle() -> torch.Tensor:
    """(b0, b1, log sd) maximising the exact log-likelihood (float64, L-BFGS)."""
    params = torch.tensor([0.4, 0.3, math.log(0.7)], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = -exact_log_lik(params)
        loss.backward()
        return loss

    optimiser.step(closure)
    return params.detach()


def test_standard_errors_match_the_hessian_of_the_exact_log_likelihood():
    mle = _float32_params(_mle())
    hessian = torch.autograd.functional.hessian(exact_log_lik, mle)
    expected = torch.linalg.inv(-hessian).diagonal().sqrt()[:2]  # beta's SEs, the sd profiled in as lme4 does
    stats = mi.mixed_fit_statistics(_model(mle), ROWS, _posterior_draws(mle))
    assert stats["information_ok"] and stats["se_basis"] == "joint"
    torch.testing.assert_close(stats["beta"], mle[:2])
    # 0.1 % (1e-5 measured): both are the same observed information, the quadrature exact to 1e-7 nats, and the
    # Gaussian law's scale spreads its effects around its exact mean 0. (A Monte Carlo mean m ~0.005 there mixed the
    # intercept with the log sd by m · sd(log sd) / SE ≈ 0.4 %.) A looser bound (10 %) would miss SEs that ignore
    # the sd's uncertainty (the beta block of the information alone: 1.9 % smaller for the intercept here).
    ratio = stats["se"] / expected
    assert torch.all((ratio - 1).abs() < 0.001), (stats["se"], expected)
    beta_block_only = torch.linalg.inv(-hessian[:2, :2]).diagonal().sqrt()
    assert beta_block_only[0] < 0.985 * expected[0]  # the data do make that difference visible


def test_where_the_joint_information_is_not_positive_definite_the_fixed_effects_block_gives_the_ses():
    """Far below the fitted sd (0.05 where the data say 0.7) the log-likelihood is convex in the log sd, so the joint
    information is indefinite; the SEs then come from the fixed effects' block alone, the spread held fixed."""
    params = _float32_params(torch.tensor([0.45, 0.28, math.log(0.05)], dtype=torch.float64))
    information = -torch.autograd.functional.hessian(exact_log_lik, params)
    assert torch.linalg.eigvalsh(information).min() < 0  # the premise, from the exact log-likelihood
    stats = mi.mixed_fit_statistics(_model(params), ROWS, _posterior_draws(params))
    assert stats["se_basis"] == "fixed_effects_only" and stats["information_ok"]
    expected = torch.linalg.inv(information[:2, :2]).diagonal().sqrt()
    # 1 %: the same Hessian block up to quadrature error (0.0 % when written)
    torch.testing.assert_close(stats["se"], expected, rtol=0.01, atol=0)


def _layout_model(blocks) -> MixedModel:
    layout = MixedLayout.of(blocks, 1, 1)
    return MixedModel(
        MixedTableEncoder(layout.latent_dim), MixedLinearDecoder(layout.plain()), MixedLikelihood(Poisson(), layout)
    )


def _group_rows(level_a, level_b) -> torch.Tensor:
    n = len(level_a)
    ones = torch.ones(n)
    return torch.stack(
        [ones, torch.zeros(n), ones, ones, ones, torch.tensor(level_a).float(), torch.tensor(level_b).float()], 1
    )


def test_components_of_a_nested_design_are_the_levels_of_the_outer_factor():
    # b has 6 levels, 2 inside each of the 3 levels of a; two rows per b level
    level_b = [b for b in range(6) for _ in range(2)]
    level_a = [b // 2 for b in level_b]
    model = _layout_model([("a", ("(Intercept)",), 3), ("b", ("(Intercept)",), 6)])
    row_component, coordinates = mi.components(model, _group_rows(level_a, level_b))
    assert len(coordinates) == 3
    # rows share a component exactly when they share a level of a
    a = torch.tensor(level_a)
    assert torch.equal(row_component.unsqueeze(0) == row_component.unsqueeze(1), a.unsqueeze(0) == a.unsqueeze(1))
    for k in range(3):
        level = int(a[row_component == k][0])
        # the component holds that level of a (latent coordinate `level`) and its two b levels (3 + 2 level + j)
        assert sorted(coordinates[k].tolist()) == [level, 3 + 2 * level, 4 + 2 * level]


def test_components_of_a_crossed_design_are_one():
    level_a = [a for a in range(3) for _ in range(4)]
    level_b = [b for _ in range(3) for b in range(4)]
    model = _layout_model([("a", ("(Intercept)",), 3), ("b", ("(Intercept)",), 4)])
    row_component, coordinates = mi.components(model, _group_rows(level_a, level_b))
    assert len(coordinates) == 1 and torch.all(row_component == 0)
    assert sorted(coordinates[0].tolist()) == list(range(7))


def test_a_nested_pair_is_found_in_either_order_and_crossed_factors_are_not_one():
    """Nested factors (each b level inside one a level) are integrated by nested grids, whichever the formula names
    first; crossed ones (a b level in every a level) are not, nor factors with a random slope."""
    level_b = [b for b in range(6) for _ in range(2)]
    level_a = [b // 2 for b in level_b]
    nested = _layout_model([("a", ("(Intercept)",), 3), ("b", ("(Intercept)",), 6)])
    assert mi.nested_pair(nested, _group_rows(level_a, level_b)) == (0, 1)
    inner_first = _layout_model([("b", ("(Intercept)",), 6), ("a", ("(Intercept)",), 3)])
    assert mi.nested_pair(inner_first, _group_rows(level_b, level_a)) == (1, 0)
    assert not mi.needs_draws(nested, _group_rows(level_a, level_b))
    crossed = _layout_model([("a", ("(Intercept)",), 3), ("b", ("(Intercept)",), 4)])
    rows = _group_rows([a for a in range(3) for _ in range(4)], [b for _ in range(3) for b in range(4)])
    assert mi.nested_pair(crossed, rows) is None and mi.needs_draws(crossed, rows)
    slopes = _layout_model([("a", ("(Intercept)", "x"), 3), ("b", ("(Intercept)",), 6)])
    assert mi.nested_pair(slopes, _group_rows(level_a, level_b)) is None


def test_random_effect_laws_of_the_linear_decoder():
    layout = MixedLayout.of([("g", ("(Intercept)",), 5), ("h", ("(Intercept)", "x"), 4)], 1, 1)
    decoder = MixedLinearDecoder(layout.plain())
    scale = torch.tensor([[0.8, 0.0], [0.3, 0.5]])
    with torch.no_grad():
        decoder.factors[0].fill_(-0.6)  # a negative L: the sd is |L|
        decoder.factors[1].copy_(scale)
    model = MixedModel(MixedTableEncoder(layout.latent_dim), decoder, MixedLikelihood(Poisson(), layout))
    laws = mi.random_effect_laws(model, num_draws=100_000)
    assert [law["factor"] for law in laws] == ["g", "h"]
    # 100k draws: an sd's relative MC error is 1/sqrt(2n) ≈ 0.0022 (1 % is 4.5 of it), a skewness's sqrt(6/n)
    # ≈ 0.008 (0.04 is 5 of it), a mean's sd/sqrt(n) <= 0.003
    torch.testing.assert_close(laws[0]["sd"], torch.tensor([0.6], dtype=torch.float64), rtol=0.01, atol=0)
    expected_sd = (scale @ scale.T).diagonal().sqrt().double()  # (0.8, sqrt(0.3² + 0.5²))
    torch.testing.assert_close(laws[1]["sd"], expected_sd, rtol=0.01, atol=0)
    for law in laws:
        assert law["skewness"].abs().max() < 0.04 and law["mean"].abs().max() < 0.015
    correlation = 0.3 * 0.8 / (0.8 * float(expected_sd[1]))
    assert abs(float(laws[1]["correlation"][0, 1]) - correlation) < 0.01
    # quantiles of a centred normal: q(0.975) = 1.96 sd, q(0.5) = 0
    assert abs(float(laws[0]["quantiles"][0.975][0]) - 1.959964 * 0.6) < 0.02
    assert abs(float(laws[0]["quantiles"][0.5][0])) < 0.01


@pytest.mark.parametrize("seed", [0])
def test_quadrature_does_not_depend_on_where_the_draws_centre_it(seed):
    """The draws only centre and scale the adaptive rule: other (still sensible) draws give the same number."""
    model = _model(PARAMS)
    draws = _posterior_draws(PARAMS, seed=seed)
    shifted = draws + 0.2 * draws.std(0)  # a rule centred a fifth of a posterior sd off
    first = mi.mixed_fit_statistics(model, ROWS, draws)["log_lik"]
    second = mi.mixed_fit_statistics(model, ROWS, shifted)["log_lik"]
    assert abs(first - second) < 1e-6


def _bent_law_model() -> MixedModel:
    """A learned law of the kind ALMOND fits: u = 0.1 z + tanh(3 z), nearly a two-point mixture at ±1."""
    from almond_cli.model.mixed import MixedMLPDecoder

    layout = MixedLayout.of([("g", ("(Intercept)",), G)], 2, 1)
    decoder = MixedMLPDecoder(layout.plain(), hidden_sizes=[8])
    with torch.no_grad():
        decoder.factors[0].fill_(0.1)
        first, last = decoder.nets[0][0], decoder.nets[0][-1]
        first.weight.zero_()
        first.bias.zero_()
        first.weight[0, 0] = 3.0
        last.weight.zero_()
        last.weight[0, 0] = 1.0
    likelihood = MixedLikelihood(Poisson(), layout, torch.tensor([0.45, 0.28]))
    return MixedModel(MixedTableEncoder(layout.latent_dim), decoder, likelihood)


def _grid_log_lik_and_draws(model: MixedModel, count: int = 4000):
    """log p(y) of a one-factor, one-term model by a 16,001-point rule on z in [-8, 8] per group (the integrand
    is smooth and the prior's mass beyond 8 is e^-32), and draws from normals with each group's exact posterior
    mean and sd in z (the best centring the adaptive rule can get)."""
    model = mi.in_float64(model)
    grid = torch.linspace(-8.0, 8.0, 16001, dtype=torch.float64).unsqueeze(1)
    x = ROWS.double()
    with torch.no_grad():
        u = model.decoder.block_forward(0, grid)[:, 0]
        eta = (x[:, 2:4] @ model.likelihood.beta).unsqueeze(0) + u.unsqueeze(1)
        per_row = x[:, 0] * eta - eta.exp() - torch.lgamma(x[:, 0] + 1.0)
        log_joint = per_row.new_zeros(grid.shape[0], G).index_add(1, GROUP, per_row)
        log_joint = log_joint - 0.5 * grid.square() - 0.5 * math.log(2.0 * math.pi)
    exact = float((torch.logsumexp(log_joint, 0) + math.log(16.0 / 16000)).sum())
    weights = torch.softmax(log_joint, 0)
    mean = (weights * grid).sum(0)
    sd = (weights * (grid - mean).square()).sum(0).sqrt()
    noise = torch.randn(count, G, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return exact, mean + sd * noise


def test_the_grid_check_itself_agrees_with_gauss_hermite_for_a_gaussian_law():
    """The brute-force rule of the next test, on lme4's law, equals the exact Gauss-Hermite value."""
    exact, _ = _grid_log_lik_and_draws(_model(PARAMS))
    assert abs(exact - float(exact_log_lik(PARAMS))) < 1e-6


def test_quadrature_is_exact_for_a_learned_law():
    model = _bent_law_model()
    exact, draws = _grid_log_lik_and_draws(model)
    stats = mi.mixed_fit_statistics(model, ROWS, draws)
    assert stats["method"] == "quadrature"
    assert abs(stats["log_lik"] - exact) < 0.01, (stats["log_lik"], exact, stats["log_lik_se"])


def test_polishing_moves_a_fit_that_ended_near_the_maximum_onto_it():
    """A fit left 0.15 off in each coefficient and with its sd 40 % too small (where stochastic training might stop)
    is moved, in place, to the exact maximum likelihood: the grid rule is exact for a one-term factor, so what is left
    is float32 storage and L-BFGS's tolerance (1e-4 here: the MLE's SEs are ~0.1)."""
    start = _float32_params(torch.tensor([0.3, 0.45, math.log(0.4)], dtype=torch.float64))
    model = _model(start)
    found = mi.polish_parameters(model, ROWS, torch.zeros(0, G, dtype=torch.float64))
    assert found["applied"] and found["log_lik_after"] > found["log_lik_before"] + 1.0
    polished = torch.cat([model.likelihood.beta.detach(), model.decoder.factors[0].detach().reshape(1).log()]).double()
    torch.testing.assert_close(polished, _mle(), atol=1e-4, rtol=0)
    assert abs(found["log_lik_after"] - float(exact_log_lik(polished))) < 1e-4
    again = mi.polish_parameters(model, ROWS, torch.zeros(0, G, dtype=torch.float64))  # already there: kept
    assert abs(again["log_lik_after"] - found["log_lik_after"]) < 1e-4


def test_spreading_a_learned_law_is_exact():
    """The MLP law's effects spread around a given mean by a given factor, exactly, through its parameters."""
    from almond_cli.model.mixed import MixedMLPDecoder

    layout = MixedLayout.of([("g", ("(Intercept)", "x"), 5)], 2, 1)
    decoder = MixedMLPDecoder(layout.plain(), hidden_sizes=[8])
    torch.nn.init.normal_(decoder.nets[0][-1].weight)  # a bent law, not the Gaussian it starts as
    z = torch.randn(100, 2)
    before = decoder.block_forward(0, z).detach()
    scale, mean = torch.tensor([1.7, 0.6]), torch.tensor([0.3, -0.2])
    decoder.spread_block(0, scale, mean)
    torch.testing.assert_close(decoder.block_forward(0, z).detach(), mean + scale * (before - mean))


def test_independent_components_are_blocks_of_the_langevin_target():
    """Nested levels split into one block per level of a (its b levels with it), whose log-joints sum to the
    model's; the Langevin target then tests each block alone. Crossed factors are one block: the plain target."""
    from almond_cli.langevin.targets import AutogradTarget, BlockTarget, target_for

    level_b = [b for b in range(6) for _ in range(2)]
    level_a = [b // 2 for b in level_b]
    nested, rows = (
        _layout_model([("a", ("(Intercept)",), 3), ("b", ("(Intercept)",), 6)]),
        _group_rows(level_a, level_b),
    )
    assert nested.latent_blocks(rows).tolist() == [0, 1, 2, 0, 0, 1, 1, 2, 2]
    z = torch.randn(2, 4, nested.layout.latent_dim)
    units = torch.tensor([0] * 6 + [1] * 6)  # two units of rows, as a batch of tables would be
    per_block = nested.log_joint_blocks(rows, z, units)
    assert per_block.shape == (2, 4, 3)
    torch.testing.assert_close(per_block.sum(-1), nested.log_joint(rows, z, units))
    assert isinstance(target_for(nested, rows), BlockTarget)
    crossed = _layout_model([("a", ("(Intercept)",), 3), ("b", ("(Intercept)",), 4)])
    crossed_rows = _group_rows([a for a in range(3) for _ in range(4)], [b for _ in range(3) for b in range(4)])
    assert crossed.latent_blocks(crossed_rows) is None
    assert type(target_for(crossed, crossed_rows)) is AutogradTarget


def _nested_table(family: str, slope: bool, seed: int = 3):
    """A nested design (12 broods inside 5 locations, 1-4 rows a brood) of the family's responses, laid out by the
    formula machinery; with ``slope`` the inner factor's one term is a slope in x (its z column is x, not 1)."""
    import pandas as pd

    from almond_cli.data.formula import build_design
    from almond_cli.data.mixed import mixed_dataset

    rng = np.random.default_rng(seed)
    brood = np.repeat(np.arange(12), rng.integers(1, 5, 12))
    location = brood % 5
    x = rng.normal(size=brood.size).round(3)
    eta = 0.3 + 0.4 * x + rng.normal(0, 0.6, 5)[location] + rng.normal(0, 0.5, 12)[brood]
    y = rng.poisson(np.exp(eta)) if family == "poisson" else eta + rng.normal(0, 0.8, brood.size)
    frame = pd.DataFrame({"y": y, "x": x, "b": [f"B{k}" for k in brood], "a": [f"A{k}" for k in location]})
    inner = "(0 + x|b)" if slope else "(1|b)"
    return mixed_dataset(build_design(f"y ~ x + (1|a) + {inner}", frame))


@pytest.mark.parametrize("family,slope", [("poisson", False), ("gaussian", False), ("poisson", True)])
def test_nested_grids_sum_a_separable_familys_rows_per_level_without_changing_value_gradient_or_hessian(
    family, slope, monkeypatch
):
    """The Poisson's and the Gaussian's random-intercept rows are summed per inner level before the node pairs
    (``_separable_sums``); value, gradient and Hessian in θ equal the row-by-row grids' to rounding, for a learned
    (bent) law. A slope's rows are not summed (its z varies by row): both routes agree there too."""
    from almond_cli.model.likelihoods import Gaussian
    from almond_cli.model.mixed import MixedMLPDecoder

    dataset = _nested_table(family, slope)
    layout = dataset.layout
    torch.manual_seed(0)
    decoder = MixedMLPDecoder(layout.plain(), init_scale=0.6)
    with torch.no_grad():
        for net in decoder.nets:
            net[-1].weight.normal_(0.0, 0.4)
    family_module = Poisson() if family == "poisson" else Gaussian()
    likelihood = MixedLikelihood(family_module, layout, torch.tensor([0.2, 0.3]), 0.9)
    model = mi.in_float64(MixedModel(MixedTableEncoder(layout.latent_dim), decoder, likelihood))
    x = dataset.x.double()
    pair = mi.nested_pair(model, x)
    row_component, parts = mi.components(model, x)
    theta, _ = mi._parameter_vector(model)
    theta = theta + 0.05  # off the fit: every entry of θ moves the value

    def value_gradient_hessian(estimate):
        value = float(estimate(theta).sum())
        gradient = torch.autograd.functional.jacobian(lambda t: estimate(t).sum(), theta)
        hessian = torch.autograd.functional.hessian(lambda t: estimate(t).sum(), theta)
        return value, gradient, hessian

    used, separable_sums = [], mi._separable_sums

    def recorded(*args):
        sums = separable_sums(*args)
        return None if sums is None else lambda *rows: used.append(True) or sums(*rows)

    monkeypatch.setattr(mi, "_separable_sums", recorded)
    summed = value_gradient_hessian(mi._nested_estimate(model, x, pair, row_component, len(parts), 61))
    assert bool(used) == (not slope)  # the route under test is taken where it applies, and only there
    monkeypatch.setattr(mi, "_separable_sums", lambda *args: None)
    by_row = value_gradient_hessian(mi._nested_estimate(model, x, pair, row_component, len(parts), 61))
    assert abs(summed[0] - by_row[0]) < 1e-9 * abs(by_row[0]), (summed[0], by_row[0])
    torch.testing.assert_close(summed[1], by_row[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(summed[2], by_row[2], rtol=1e-8, atol=1e-8)


def _two_mode_fit(groups: int = 150, rows: int = 20, seed: int = 5):
    """A Gaussian-family model whose learned law is two modes, u = 0.05 z + tanh(5 z) (near ±1, weights 1/2), at
    the truth, with data from it: y = 0.3 + u_g + N(0, 0.5²), ``rows`` rows per group."""
    from almond_cli.model.likelihoods import Gaussian
    from almond_cli.model.mixed import MixedMLPDecoder

    layout = MixedLayout.of([("g", ("(Intercept)",), groups)], 1, 1)
    decoder = MixedMLPDecoder(layout.plain(), hidden_sizes=[1], activation="tanh", init_scale=0.05)
    with torch.no_grad():
        first, last = decoder.nets[0][0], decoder.nets[0][-1]
        first.weight.fill_(5.0), first.bias.zero_(), last.weight.fill_(1.0), last.bias.zero_()
    likelihood = MixedLikelihood(Gaussian(), layout, torch.tensor([0.3]), 0.5)
    model = MixedModel(MixedTableEncoder(layout.latent_dim), decoder, likelihood)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        u = decoder.block_forward(0, torch.randn(groups, 1, generator=generator))[:, 0]
    group = torch.arange(groups).repeat_interleave(rows)
    y = 0.3 + u[group] + 0.5 * torch.randn(group.numel(), generator=generator)
    ones = torch.ones_like(y)
    x = torch.stack([y, torch.zeros_like(y), ones, ones, group.float()], 1)
    return model, x, u


@pytest.mark.slow
def test_a_learned_laws_intercept_se_frees_its_mass_between_modes():
    """Each group's effect is nearly known (20 rows, residual sd 0.5), so the intercept (the law's mean absorbed) is
    known as well as a mean of 150 effects: SE ≈ sqrt((var u + 0.5²/20) / 150) ≈ 0.08. Held at the fit, a two-mode
    law's modes pin its location to their own narrow spread and the SE comes out ~5x smaller; with the law free to
    move mass between its modes (``LawShape``'s tilt) it is the mean's. 25 %: one sample's observed information at
    the true parameters, not its expectation (seeds 5, 6, 7: 1.09, 0.77 and 1.15 of the formula; held: 0.2)."""
    model, x, u = _two_mode_fit()
    expected = math.sqrt((float(u.var()) + 0.25 / 20) / 150)
    free = mi.mixed_fit_statistics(model, x, torch.zeros(0, 150))
    assert free["se_basis"] == "joint" and free["method"] == "quadrature" and free["se_law_shape"] == "tilt"
    assert abs(float(free["se"][0]) / expected - 1) < 0.25, (float(free["se"][0]), expected)
    held = mi._law_shapes
    try:
        mi._law_shapes = lambda model, x: [None]
        fixed = mi.mixed_fit_statistics(model, x, torch.zeros(0, 150))
    finally:
        mi._law_shapes = held
    assert float(fixed["se"][0]) < 0.5 * expected, float(fixed["se"][0]) / expected  # what the held shape misses
    assert fixed["se_law_shape"] == "held"
    assert free["log_lik"] == fixed["log_lik"]  # the tilt τ = 0 is the fit itself


def test_a_tilted_law_keeps_its_mean_and_sd_and_moves_its_shape():
    """``LawShape.tilt``: the tilted law re-centred and re-scaled has the fit's mean and sd (location and spread stay
    β's and the log scale's), a different skewness; τ = 0 changes nothing."""
    model, _, _ = _two_mode_fit()
    model = mi.in_float64(model)
    shape = mi.LawShape.of(model, 0, mi._law_means(model)[0])
    log_mass, shift, ratio = shape.tilt(torch.zeros(mi.SHAPE_DIRECTIONS, dtype=torch.float64))
    assert float(log_mass) == 0.0 and float(shift) == 0.0 and float(ratio) == 1.0
    tau = torch.full((mi.SHAPE_DIRECTIONS,), 0.4, dtype=torch.float64)
    log_mass, shift, ratio = shape.tilt(tau)
    weights = torch.softmax(shape.log_weights + shape.basis(shape.centred) @ tau, 0)
    effects = ratio * (shape.centred - shift)  # the tilted law's effects, around the fit's mean
    baseline = torch.softmax(shape.log_weights, 0)

    def moments(w, e):
        mean = (w * e).sum()
        sd = ((w * (e - mean).square()).sum()).sqrt()
        return mean, sd, (w * ((e - mean) / sd) ** 3).sum()

    mean, sd, skew = moments(weights, effects)
    mean0, sd0, skew0 = moments(baseline, shape.centred)
    assert abs(float(mean - mean0)) < 1e-12 and abs(float(sd - sd0)) < 1e-12
    assert abs(float(skew - skew0)) > 0.1
