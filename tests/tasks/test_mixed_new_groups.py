"""Groups a mixed model was not fitted to (held-out groups, a new table's): their random effects are new draws from
the fitted laws (``MixedModel.for_groups``, ``tasks/mixed.py``). Their log-likelihood against a direct quadrature
of the fitted (learned, non-Gaussian) law, and their posteriors against the closed form of a Gaussian model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from almond_cli.data.formula import build_design
from almond_cli.data.mixed import mixed_dataset
from almond_cli.model.likelihoods import Gaussian, Poisson
from almond_cli.model.mixed import (
    MixedLayout,
    MixedLikelihood,
    MixedLinearDecoder,
    MixedMLPDecoder,
    MixedModel,
    MixedTableEncoder,
)
from almond_cli.tasks.mixed import group_posteriors, groups_model, heldout_log_lik


def _fitted(decoder_class, family, layout: MixedLayout, beta, sigma: float = 1.0, scale: float = 0.7, seed: int = 0):
    """A model 'fitted' to 9 training groups: its law, fixed effects and residual sd set by hand."""
    torch.manual_seed(seed)
    decoder = decoder_class(layout.plain(), init_scale=scale)
    if isinstance(decoder, MixedMLPDecoder):  # bend the law away from a Gaussian
        with torch.no_grad():
            decoder.nets[0][-1].weight.normal_(0.0, 0.4)
    likelihood = MixedLikelihood(family, layout, torch.tensor(beta), sigma)
    return MixedModel(MixedTableEncoder(layout.latent_dim), decoder, likelihood)


def _poisson_table(groups: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, groups)
    g = np.repeat(np.arange(groups), sizes)
    x = rng.normal(size=g.size).round(3)
    effect = rng.normal(0.0, 0.7, groups)
    return pd.DataFrame({"y": rng.poisson(np.exp(0.4 + 0.3 * x + effect[g])), "x": x, "g": [f"new{k}" for k in g]})


def direct_log_lik(model: MixedModel, frame: pd.DataFrame, beta) -> float:
    """Σ_g log ∫ Π_i Poisson(y_i; exp(b0 + b1 x_i + h(z))) N(z; 0, 1) dz, h the model's own law, by the trapezoid
    rule on 40,001 points of [-10, 10] (spacing 5e-4; the rule under test uses 2,001 on [-8.5, 8.5])."""
    z = torch.linspace(-10.0, 10.0, 40_001, dtype=torch.float64)
    with torch.no_grad():
        law = copy.deepcopy(model.decoder).double().block_forward(0, z.unsqueeze(1))[:, 0]
    log_prior = -0.5 * (z.square() + math.log(2 * math.pi))
    total = 0.0
    for _, rows in frame.groupby("g"):
        y = torch.tensor(rows["y"].to_numpy(), dtype=torch.float64)
        eta = beta[0] + beta[1] * torch.tensor(rows["x"].to_numpy(), dtype=torch.float64)
        eta = eta.unsqueeze(0) + law.unsqueeze(1)  # (points, rows)
        log_f = (y * eta - eta.exp() - torch.lgamma(y + 1)).sum(1) + log_prior
        peak = log_f.max()
        values = (log_f - peak).exp()
        total += float(peak + torch.log(torch.trapezoid(values, z)))
    return total


def test_held_out_log_lik_is_the_direct_integral_under_the_fitted_learned_law():
    beta = [0.4, 0.3]
    layout = MixedLayout.of([("g", ("(Intercept)",), 9)], 2, 1)  # the training groups: 9 (none of the new ones)
    model = _fitted(MixedMLPDecoder, Poisson(), layout, beta)
    frame = _poisson_table(groups=12, seed=1)
    held = mixed_dataset(build_design("y ~ x + (1|g)", frame))
    result = heldout_log_lik(model, held)
    expected = direct_log_lik(model, frame, model.likelihood.beta.detach().double())
    assert result["method"] == "quadrature" and result["per_component"].shape == (12,)
    # Both are quadratures of the same smooth integrand, exact to far below 1e-6 nats (3e-8 apart when written).
    assert abs(result["log_lik"] - expected) < 1e-6, (result["log_lik"], expected)
    assert 0 <= result["log_lik_se"] < 1e-4
    # the learned law matters at this scale: its Gaussian part alone scores these groups otherwise
    with torch.no_grad():
        model.decoder.nets[0][-1].weight.zero_()
    gaussian_part = direct_log_lik(model, frame, torch.tensor(beta, dtype=torch.float64))
    assert abs(gaussian_part - expected) > 0.1


def test_the_progress_checks_score_held_out_groups_as_new_groups():
    """``MixedTask.check_log_lik`` (auto epochs, the still-improving warning) gets the training data set: with groups
    held out it scores them under the fitted laws, as ``heldout_log_lik`` does, never as the training groups whose
    latent indices the held-out table's renumbered levels would collide with; without, the training rows."""
    from omegaconf import OmegaConf

    from almond_cli.tasks.mixed import MixedTask

    beta = [0.4, 0.3]
    trained = mixed_dataset(build_design("y ~ x + (1|g)", _poisson_table(groups=9, seed=0)))
    model = _fitted(MixedMLPDecoder, Poisson(), trained.layout, beta)
    cfg = OmegaConf.create({"seed": 0})
    training_rows, variance = MixedTask().check_log_lik(model, trained, cfg, "cpu", 100)
    assert training_rows.shape == (9,) and torch.equal(variance, torch.zeros(9, dtype=torch.float64))
    trained.heldout = mixed_dataset(build_design("y ~ x + (1|g)", _poisson_table(groups=12, seed=1)))
    held_out, _ = MixedTask().check_log_lik(model, trained, cfg, "cpu", 100)
    assert torch.equal(held_out, heldout_log_lik(model, trained.heldout)["per_component"])


def test_for_groups_keeps_the_law_and_refuses_other_factors():
    layout = MixedLayout.of([("g", ("(Intercept)",), 9)], 2, 1)
    model = _fitted(MixedMLPDecoder, Poisson(), layout, [0.4, 0.3])
    other = model.for_groups(MixedLayout.of([("g", ("(Intercept)",), 4)], 2, 1))
    assert other.layout.latent_dim == 4 and other.decoder.latent_dim == 4 and other.encoder.latent_dim == 4
    z = torch.randn(50, 1)
    with torch.no_grad():
        torch.testing.assert_close(other.decoder.block_forward(0, z), model.decoder.block_forward(0, z))
        model.decoder.nets[0][-1].bias.add_(1.0)  # a copy: the fitted model is not touched through it
        assert not torch.allclose(other.decoder.block_forward(0, z), model.decoder.block_forward(0, z))
    with pytest.raises(ValueError):
        model.for_groups(MixedLayout.of([("h", ("(Intercept)",), 4)], 2, 1))


def test_new_groups_posteriors_are_the_gaussian_closed_form():
    """y_ij = b0 + u_g + e_ij, u ~ N(0, s²), e ~ N(0, σ²): u_g | y ~ N(v Σ_j (y_ij − b0) / σ², v), v = 1 / (1/s² +
    n_g/σ²)."""
    b0, s, sigma = 1.0, 0.8, 0.5
    layout = MixedLayout.of([("g", ("(Intercept)",), 9)], 1, 1)
    model = _fitted(MixedLinearDecoder, Gaussian(), layout, [b0], sigma=sigma, scale=s)
    sizes = [1, 2, 4, 8, 16]
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(len(sizes)), sizes)
    shifts = np.array([1.5, -1.2, 0.9, -0.6, 1.1])
    frame = pd.DataFrame({"y": (b0 + shifts[g] + sigma * rng.normal(size=g.size)).round(4), "g": [f"G{k}" for k in g]})
    new = mixed_dataset(build_design("y ~ 1 + (1|g)", frame))
    table = group_posteriors(groups_model(model, new), new, num_chains=20, seed=0)
    assert [row[1] for row in table["rows"]] == [f"G{k}" for k in range(len(sizes))]  # the new table's ids
    for (factor, group, term, mean, sd, q5, q95, rhat, ess), size in zip(table["rows"], sizes):
        y = frame.loc[frame["g"] == group, "y"].to_numpy()
        variance = 1.0 / (1.0 / s**2 + size / sigma**2)
        exact = variance * float((y - b0).sum()) / sigma**2
        # MC error of the mean: sd / sqrt(ESS) (4 of them), plus the centring by the law's mean from 20,000 prior
        # draws (sd 0.8 / sqrt(20000) = 0.006; 0.025 is 4 of those); the sd within 10 % (its MC error ~3 %)
        assert abs(mean - exact) < 4 * math.sqrt(variance / ess) + 0.025, (group, mean, exact, ess)
        assert abs(sd / math.sqrt(variance) - 1) < 0.1, (group, sd, math.sqrt(variance))
        assert (factor, term) == ("g", "(Intercept)") and rhat < 1.05 and q5 < mean < q95
        # power: unshrunk (the group's mean residual) is farther off than the bound, most for a one-row group
        if size == 1:
            assert abs(float((y - b0).mean()) - exact) > 0.3


def _nested_case():
    """A fitted Gaussian (1|a/b) law, 4 held-out levels of a with 2 of b:a in each, and log p(y) of those rows by a
    direct nested trapezoid rule (spacing 0.02: smooth integrands, exact to far below 1e-6 nats)."""
    beta, scale_a, scale_b = [0.3], 0.5, 0.4
    layout = MixedLayout.of([("a", ("(Intercept)",), 6), ("b:a", ("(Intercept)",), 12)], 1, 1)
    model = _fitted(MixedLinearDecoder, Poisson(), layout, beta)
    with torch.no_grad():
        model.decoder.factors[0].fill_(scale_a)
        model.decoder.factors[1].fill_(scale_b)
    rng = np.random.default_rng(4)
    a = np.repeat(np.arange(4), 6)
    b = np.repeat(np.arange(8), 3)
    u = rng.normal(0, scale_a, 4)[a] + rng.normal(0, scale_b, 8)[b]
    frame = pd.DataFrame({"y": rng.poisson(np.exp(beta[0] + u)), "a": [f"A{k}" for k in a], "b": [f"B{k}" for k in b]})
    held = mixed_dataset(build_design("y ~ 1 + (1|a/b)", frame))
    z = torch.linspace(-8.0, 8.0, 801, dtype=torch.float64)
    log_prior = -0.5 * (z.square() + math.log(2 * math.pi))
    expected = 0.0
    for _, level in frame.groupby("a"):
        outer = log_prior.clone()  # log N(z_a) + Σ_b log ∫ N(z_b) Π_rows f dz_b, per z_a
        for _, rows in level.groupby("b"):
            y = torch.tensor(rows["y"].to_numpy(), dtype=torch.float64)
            eta = beta[0] + scale_a * z[:, None, None] + scale_b * z[None, :, None]  # (z_a, z_b, 1)
            log_f = (y * eta - eta.exp() - torch.lgamma(y + 1)).sum(-1) + log_prior[None, :]
            peak = log_f.max(1, keepdim=True).values
            outer = outer + (peak[:, 0] + torch.log(torch.trapezoid((log_f - peak).exp(), z, dim=1)))
        peak = outer.max()
        expected += float(peak + torch.log(torch.trapezoid((outer - peak).exp(), z)))
    return model, held, expected


def test_held_out_nested_groups_are_integrated_exactly_by_nested_grids():
    """Two nested factors of one term each: a z-grid per factor, the inner integral once per outer node, no posterior
    draws; the direct nested quadrature's value to 1e-6 nats (1e-9 apart when written)."""
    model, held, expected = _nested_case()
    result = heldout_log_lik(model, held)
    assert result["method"] == "quadrature" and result["per_component"].shape == (4,)
    assert abs(result["log_lik"] - expected) < 1e-6, (result["log_lik"], expected)
    assert 0 <= result["log_lik_se"] < 1e-3


@pytest.mark.slow
def test_held_out_groups_without_a_grid_are_integrated_by_importance_sampling_within_its_se(monkeypatch):
    """The same rows by the rule crossed factors get (the nested grid switched off): q fitted to the held-out rows,
    MALA draws, a Student-t proposal per level of a, against the direct quadrature (about 5 s)."""
    from almond_cli.model import mixed_inference

    monkeypatch.setattr(mixed_inference, "nested_pair", lambda model, x: None)
    model, held, expected = _nested_case()
    result = heldout_log_lik(model, held)
    assert result["method"] == "importance_sampling" and result["per_component"].shape == (4,)
    # 4 SEs: a correct estimator fails about once in 16,000 runs
    assert 0 < result["log_lik_se"] < 0.05
    assert abs(result["log_lik"] - expected) < 4 * result["log_lik_se"], (result["log_lik"], expected)


def test_the_baseline_its_child_run_scored_is_not_scored_again(monkeypatch):
    """The Gaussian child run scores its fit with the parent's task at its end; the parent's summary reuses those
    scores (seconds of posterior draws and a Hessian each) while the fit's parameters are unchanged, and scores it
    anew once they change."""
    from omegaconf import OmegaConf

    from almond_cli.tasks.mixed import MixedTask

    dataset = mixed_dataset(build_design("y ~ x + (1|g)", _poisson_table(groups=12, seed=1)))
    task, cfg = MixedTask(), OmegaConf.create({"seed": 0})
    gaussian = _fitted(MixedLinearDecoder, Poisson(), dataset.layout, [0.4, 0.3])
    almond = _fitted(MixedMLPDecoder, Poisson(), dataset.layout, [0.4, 0.3])
    child_scores = task.score(gaussian, dataset, cfg, "cpu")  # as the child run does at its end
    scored, original = [], task._score
    monkeypatch.setattr(task, "_score", lambda model, *rest: scored.append(model) or original(model, *rest))
    task.score(almond, dataset, cfg, "cpu")
    result = task.baselines(almond, dataset, cfg, "cpu", {"gaussian": gaussian})["gaussian"]
    assert scored == [almond]
    assert result["fixed_effects"] == child_scores["fixed_effects"] and result["log_lik"] == child_scores["log_lik"]
    assert result["almond_gain_groups"] == 12 and "almond_gain" not in child_scores  # the cache hands out copies
    with torch.no_grad():
        gaussian.likelihood.beta += 0.1
    moved = task.baselines(almond, dataset, cfg, "cpu", {"gaussian": gaussian})["gaussian"]
    assert scored == [almond, gaussian] and moved["log_lik"] != child_scores["log_lik"]
