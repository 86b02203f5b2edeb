"""The Langevin targets and the ALMOND update per unit (``model.units``): a unit of several rows against autograd
and against the exact posterior of a conjugate Gaussian unit, and an explicit one-row-per-unit map against
``units=None``, bitwise."""

from __future__ import annotations

import math

import pytest
import torch

from almond_cli.langevin import sampler, tabulated, targets
from almond_cli.langevin.chains import PersistentChains
from almond_cli.langevin.settings import SamplerSettings
from almond_cli.model.likelihoods import Gaussian, PoissonGLMM
from almond_cli.model.model import LatentVariableModel, evaluation_mode
from almond_cli.model.networks import MLPDecoder, MLPEncoder
from almond_cli.training import phases

UNITS = torch.tensor([0, 2, 0, 1, 2, 2, 0, 3, 4, 4])  # 5 units of 3, 1, 3, 1 and 2 rows, interleaved


@pytest.fixture
def one_thread():
    """Blocked sweeps run with one CPU thread only (``targets.BLOCK_MAX_THREADS``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(hidden, latent_dim, data_dim, seed=0):
    torch.manual_seed(seed)
    model = LatentVariableModel(
        MLPEncoder(data_dim, latent_dim, [5]), MLPDecoder(latent_dim, data_dim, hidden), Gaussian(0.7)
    )
    with torch.no_grad():  # as in test_targets: activations leave their linear range
        for parameter in model.decoder.parameters():
            parameter.mul_(2.0)
    return model


@pytest.mark.parametrize("hidden,latent_dim,data_dim", [([10], 1, 1), ([6, 5], 1, 1), ([8], 3, 4), ([], 2, 3)])
def test_a_units_fused_value_and_gradient_match_autograd(hidden, latent_dim, data_dim, monkeypatch, one_thread):
    model = make_model(hidden, latent_dim, data_dim)
    x = torch.randn(10, data_dim) * 2
    z = torch.randn(5, 9, latent_dim) * 2
    reference = sampler.initial_state(z, targets.AutogradTarget(lambda q: model.log_joint(x, q, UNITS)))
    fused_target = targets.target_for(model, x, units=UNITS)
    assert isinstance(fused_target, targets.MLPTarget)
    # The tolerance of test_targets.py (float32 sums in another order), for sums over at most three rows.
    fused = sampler.initial_state(z, fused_target)
    torch.testing.assert_close(fused.log_joint, reference.log_joint, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.grad, reference.grad, rtol=1e-5, atol=1e-5)
    # Swept in blocks of 2 units, each with all its rows.
    widest = max(weight.shape[0] for weight in fused_target.weights)
    monkeypatch.setattr(targets, "BLOCK_BYTES", 2 * 9 * widest * 4)
    blocked_target = targets.target_for(model, x, units=UNITS)
    assert blocked_target.rows_per_block(z) == 2
    blocked = sampler.initial_state(z, blocked_target)
    torch.testing.assert_close(blocked.log_joint, reference.log_joint, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blocked.grad, reference.grad, rtol=1e-5, atol=1e-5)


def test_a_units_glmm_rows_keep_their_own_covariates():
    torch.manual_seed(0)
    likelihood = PoissonGLMM(num_fixed=3, max_linear_predictor=1.5)
    model = LatentVariableModel(MLPEncoder(6, 2, [5]), MLPDecoder(2, 2, [6, 5]), likelihood)
    x = torch.cat([torch.poisson(torch.full((10, 1), 4.0)), torch.randn(10, 3), torch.randn(10, 2)], dim=1)
    z = torch.randn(5, 7, 2)
    reference = sampler.initial_state(z, targets.AutogradTarget(lambda q: model.log_joint(x, q, UNITS)))
    fused = sampler.initial_state(z, targets.target_for(model, x, units=UNITS))
    torch.testing.assert_close(fused.log_joint, reference.log_joint, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fused.grad, reference.grad, rtol=1e-5, atol=1e-4)


def test_a_units_tabulated_target_matches_the_exact_one():
    model = make_model([10], 1, 1)
    x = torch.randn(10, 1) * 2
    z = torch.randn(5, 9, 1)
    table = tabulated.TabulatedTarget.around(model, x, z, 0.01, 5, 2049, units=UNITS)
    exact = sampler.initial_state(z, targets.AutogradTarget(lambda q: model.log_joint(x, q, UNITS)))
    interpolated = sampler.initial_state(z, table)
    # The Hermite error is below 1e-6 at 2049 nodes (tabulated.py); float32 sums of three rows on top.
    torch.testing.assert_close(interpolated.log_joint, exact.log_joint, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(interpolated.grad, exact.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(table(z), interpolated.log_joint, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fast,tabulate", [(True, "off"), (False, "off"), (True, "on")])
def test_one_row_per_unit_gives_bitwise_the_unitless_chains_and_parameters(fast, tabulate, monkeypatch, one_thread):
    """Four ALMOND updates with ``units`` the identity map end where ``units=None`` does, bitwise: the gathers of
    the identity and sums of one term onto zeros are exact. Small blocks make the fused sweep block both ways."""
    monkeypatch.setattr(targets, "BLOCK_BYTES", 3 * 6 * 10 * 4)
    if not fast:  # the autograd target, as for a decoder or likelihood without the fused path
        monkeypatch.setattr(targets, "_fast_layers", lambda model: None)
    outcomes = []
    for units in (None, torch.arange(12)):
        model = make_model([10], 1, 1)
        x = torch.randn(30, 1, generator=torch.Generator().manual_seed(5)) + 2
        chains = PersistentChains(torch.randn(30, 6, 1, generator=torch.Generator().manual_seed(6)))
        optimiser = torch.optim.Adam(model.generative_parameters, lr=0.01)
        generator = torch.Generator().manual_seed(3)
        for update in range(4):
            indices = torch.randperm(30, generator=torch.Generator().manual_seed(update))[:12]
            phases.almond_update(
                model,
                optimiser,
                chains,
                indices,
                x[indices],
                0.01,
                SamplerSettings(num_steps=5, burn_in=3, tabulate=tabulate),
                generator,
                units=units,
            )
        outcomes.append((torch.cat([p.detach().flatten() for p in model.generative_parameters]), chains.positions))
    assert torch.equal(outcomes[0][0], outcomes[1][0])
    assert torch.equal(outcomes[0][1], outcomes[1][1])


def test_initial_chains_per_unit():
    model = make_model([10], 1, 1)
    x = torch.randn(10, 1)
    chains = phases.initial_chains(model, x, 4, torch.Generator().manual_seed(0), 2, UNITS)
    assert chains.positions.shape == (5, 4, 1)
    identity = phases.initial_chains(model, x, 4, torch.Generator().manual_seed(0), 3, torch.arange(10))
    assert torch.equal(
        identity.positions, phases.initial_chains(model, x, 4, torch.Generator().manual_seed(0), 3).positions
    )


# The conjugate Gaussian unit: x_r ~ N(a z + b, sigma²) for its k rows, z ~ N(0, 1), so z | x_1..k is Gaussian with
# precision lam = 1 + k a² / sigma² and mean a Σ_r (x_r − b) / sigma² / lam.
A, B, SIGMA = 1.5, 0.3, 0.8
ROWS_PER_UNIT = (1, 2, 4, 8)


def conjugate_unit_model():
    torch.manual_seed(0)
    decoder = MLPDecoder(1, 1, [])  # u = a z + b: one linear layer
    with torch.no_grad():
        decoder.net[0].weight.fill_(A)
        decoder.net[0].bias.fill_(B)
    return LatentVariableModel(MLPEncoder(1, 1, [4]), decoder, Gaussian(SIGMA))


@pytest.mark.parametrize("kind", ["autograd", "fused", "tabulated"])
def test_chains_of_a_several_row_unit_reach_its_exact_conjugate_posterior(kind):
    """ULA chains under each target against the closed-form posterior of units of 1, 2, 4 and 8 rows.

    Tolerance. The C chains run independently from N(0, 1) for K steps, and their final states are C independent
    draws. For a Gaussian target ULA's drift is linear, so its stationary law is Gaussian with the exact mean and
    variance 1 / (lam (1 − s lam / 2)) (solve v = (1 − s lam)² v + 2 s): the mean is unbiased, the variance
    biased upwards by the factor 1 / (1 − s lam / 2) ≤ 1.03 at s = 0.002, lam ≤ 29.1. Transients decay as
    (1 − s lam)^K ≤ (1 − 0.009)^2500 ≈ 2e-10. With C = 20,000: the sample mean's sd is sqrt(v / C) and the sample
    variance's relative sd sqrt(2 / (C − 1)) = 0.01, so 4.5 sd (a false failure ~1e-5 per check, 24 checks) on top
    of the exact bias. Counting only one row of a unit, or averaging instead of summing its rows, moves the
    posterior sd by a factor of 1.2 to 3 and the mean by many sd, and fails.
    """
    model = conjugate_unit_model()
    generator = torch.Generator().manual_seed(0)
    units = torch.cat([torch.full((k,), unit) for unit, k in enumerate(ROWS_PER_UNIT)])
    true_z = torch.tensor([-1.0, 0.5, 1.2, -0.3])
    x = (A * true_z[units] + B + SIGMA * torch.randn(units.shape[0], generator=generator)).unsqueeze(1)
    x, units = x.flip(0), units.flip(0)  # rows not sorted by unit
    chains, step_size, steps = 20_000, 0.002, 2500
    start = torch.randn(len(ROWS_PER_UNIT), chains, 1, generator=generator)
    with evaluation_mode(model), model.frozen():
        if kind == "tabulated":
            target = tabulated.TabulatedTarget.around(model, x, start, step_size, steps, 2049, units=units)
        else:
            target = (
                targets.target_for(model, x, units=units)
                if kind == "fused"
                else targets.AutogradTarget(lambda q: model.log_joint(x, q, units))
            )
            assert isinstance(target, targets.MLPTarget if kind == "fused" else targets.AutogradTarget)
        kept, _ = sampler.run(start, target, step_size, steps, steps - 1, generator)
    draws = kept[-1, :, :, 0].double()
    for unit, k in enumerate(ROWS_PER_UNIT):
        rows = x[units == unit, 0].double()
        lam = 1.0 + k * A**2 / SIGMA**2
        exact_mean, exact_var = float(A * (rows - B).sum() / SIGMA**2 / lam), 1.0 / lam
        bias = 1.0 / (1.0 - step_size * lam / 2.0)
        mean, var = float(draws[unit].mean()), float(draws[unit].var())
        assert abs(mean - exact_mean) < 4.5 * math.sqrt(exact_var * bias / chains), (unit, mean, exact_mean)
        ratio = var / exact_var
        spread = 4.5 * math.sqrt(2.0 / (chains - 1))
        assert 1.0 - spread < ratio < bias * (1.0 + spread), (unit, var, exact_var)
