"""The checks of what ALMOND relies on: the persistent chains mix over their trajectory, and follow each data point's
exact posterior (d = 1, and d = 2 on a grid)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import compose_config, read_metrics, run_almond

from almond_cli.langevin.chains import PersistentChains
from almond_cli.langevin.diagnostics import KOLMOGOROV_MEAN, posterior_ks, posterior_marginal_ks, trajectory_convergence
from almond_cli.model.likelihoods import Gaussian
from almond_cli.model.model import LatentVariableModel
from almond_cli.model.networks import LinearDecoder
from almond_cli.tasks.registry import build_dataset
from almond_cli.training.build import build_model
from almond_cli.training.chain_checks import RHAT_ALARM, ChainTrajectory, trajectory_check


def exact_posterior_draws(model, x, count, generator):
    """Draws from p(z | x) by inverting its CDF on a fine grid (independent of the check's own quadrature)."""
    grid = torch.linspace(-8.5, 8.5, 40_001, dtype=torch.float64)
    with torch.no_grad():
        log_joint = model.log_joint(x, grid.float().view(1, -1, 1).expand(x.shape[0], -1, -1)).double()
    cdf = torch.cumsum((log_joint - log_joint.max(1, keepdim=True).values).exp(), 1)
    cdf = cdf / cdf[:, -1:]
    uniform = torch.rand(x.shape[0], count, generator=generator, dtype=torch.float64)
    return grid[torch.searchsorted(cdf, uniform).clamp(max=grid.numel() - 1)].float().unsqueeze(-1)


def test_exact_draws_pass_and_displaced_chains_do_not():
    """64 points × 100 exact draws: the mean KS is the Kolmogorov mean 0.869 / sqrt(100) within 15 % (the mean over
    64 points of a statistic with sd ≈ 0.26 / 10 has sd ≈ 0.003, 4 % of it). Chains shifted by 0.5 posterior-scale
    units, or squeezed to half their spread, are far off it."""
    cfg = compose_config(["debug=tiny"])
    dataset = build_dataset(cfg.data, 0)
    torch.manual_seed(0)
    model = build_model(cfg, dataset)
    x = dataset.x[:64]
    draws = exact_posterior_draws(model, x, 100, torch.Generator().manual_seed(1))
    reference = KOLMOGOROV_MEAN / math.sqrt(100)
    assert abs(float(posterior_ks(model, x, draws).mean()) / reference - 1) < 0.15
    spread = draws.std(dim=1, keepdim=True)
    assert float(posterior_ks(model, x, draws + 0.5 * spread).mean()) > 1.5 * reference
    centre = draws.mean(dim=1, keepdim=True)
    assert float(posterior_ks(model, x, centre + 0.5 * (draws - centre)).mean()) > 1.5 * reference


SHORT = [
    "experiment=mnn_exponential_fast",
    "threads=1",
    "progress=plain",
    "schedule.vae_epochs=200",
    "schedule.almond_epochs=20",
    "schedule.warmup_epochs=20",
]


def test_training_reports_the_checks_and_warns_when_the_chains_are_wrong(tmp_path):
    """The paper's step size keeps the chains on the posterior and moving; a constant ULA step of 0.8 (80 times it)
    biases them (measured: mean KS 1.8–2.1 times the reference), and a constant step of 1e-5 freezes them where the
    encoder started them (trajectory R-hat median measured 6.7 over 50 epochs, against 1.4–2.0 on healthy runs):
    each warning reaches the screen and train.log."""
    healthy = tmp_path / "healthy"
    run_almond(["train", *SHORT, f"hydra.run.dir={healthy}"], cwd=tmp_path, check=True)
    checks = [r for r in read_metrics(healthy) if "posterior_ks_mean" in r]
    assert [r["epoch"] for r in checks] == [10, 20]
    assert all(r["posterior_ks_mean"] < 1.5 * r["posterior_ks_reference"] for r in checks)
    assert [r["trajectory_epochs"] for r in checks] == [10, 20]
    assert all(1 <= r["rhat_median"] <= r["rhat_max"] and r["rhat_median"] < RHAT_ALARM for r in checks)
    assert all(0 < r["ess_bulk_min"] <= r["ess_bulk_median"] for r in checks)
    log = (healthy / "train.log").read_text()
    assert "do not follow the exact posterior" not in log and "have not mixed" not in log
    biased = tmp_path / "biased"
    process = run_almond(
        ["train", *SHORT, "sampler.step_size=0.8", "sampler.step_size_decay=constant", f"hydra.run.dir={biased}"],
        cwd=tmp_path,
        check=True,
    )
    assert "do not follow the exact posterior" in (biased / "train.log").read_text()
    assert "do not follow the exact posterior" in process.stderr + process.stdout
    frozen = tmp_path / "frozen"
    process = run_almond(
        ["train", *SHORT, "sampler.step_size=1e-5", "sampler.step_size_decay=constant", f"hydra.run.dir={frozen}"],
        cwd=tmp_path,
        check=True,
    )
    assert [r["rhat_median"] > RHAT_ALARM for r in read_metrics(frozen) if "rhat_median" in r] == [True, True]
    assert "have not mixed" in (frozen / "train.log").read_text()
    assert "have not mixed" in process.stderr + process.stdout


def linear_gaussian_model(sigma: float):
    """u = A z + b, x | u ~ N(u, sigma² I), z ~ N(0, I_2): the posterior of z is normal with precision
    I + AᵀA / sigma² and mean Σ Aᵀ(x − b) / sigma², so exact draws need no quadrature."""
    decoder = LinearDecoder(latent_dim=2, output_dim=2)
    with torch.no_grad():
        decoder.linear.weight.copy_(torch.tensor([[1.0, 0.6], [-0.4, 1.5]]))
        decoder.linear.bias.copy_(torch.tensor([0.3, -0.2]))
    return LatentVariableModel(torch.nn.Identity(), decoder, Gaussian(sigma=sigma))


def exact_linear_gaussian_draws(model, x, count, generator):
    weight = model.decoder.linear.weight.detach().double()
    bias = model.decoder.linear.bias.detach().double()
    sigma = model.likelihood.sigma
    covariance = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + weight.T @ weight / sigma**2)
    means = (x.double() - bias) @ weight / sigma**2 @ covariance  # (B, 2)
    noise = torch.randn(x.shape[0], count, 2, generator=generator, dtype=torch.float64)
    return (means[:, None, :] + noise @ torch.linalg.cholesky(covariance).T).float()


def test_two_dimensional_check_against_a_known_posterior():
    """d = 2 on a grid: exact draws of a normal posterior give per-coordinate KS at the Kolmogorov reference
    0.869 / sqrt(100) within 15 % (mean of 32 × 2 statistics of relative sd ~30 %: its sd is ~4 %); chains shifted by
    half a posterior sd, or squeezed to half their spread, are far above it. With sigma = 0.02 the posterior sd
    (~0.015 in z) is a tenth of the first grid's spacing: only the refined second grid resolves it."""
    for sigma in (0.5, 0.02):
        model = linear_gaussian_model(sigma)
        x = torch.randn(32, 2, generator=torch.Generator().manual_seed(3)) * 1.5
        draws = exact_linear_gaussian_draws(model, x, 100, torch.Generator().manual_seed(4))
        reference = KOLMOGOROV_MEAN / math.sqrt(100)
        ks = posterior_marginal_ks(model, x, draws)
        assert ks.shape == (32, 2)
        assert abs(float(ks.mean()) / reference - 1) < 0.15, (sigma, float(ks.mean()) / reference)
        spread = draws.std(dim=1, keepdim=True)
        assert float(posterior_marginal_ks(model, x, draws + 0.5 * spread).mean()) > 1.5 * reference
        centre = draws.mean(dim=1, keepdim=True)
        assert float(posterior_marginal_ks(model, x, centre + 0.5 * (draws - centre)).mean()) > 1.5 * reference


def stuck_and_moving_chains(moving: bool, points=8, chains=20, epochs=50, seed=0):
    """(points, C, N, 1) trajectories whose stationary law is N(0, 1): AR(1) with phi = 0.5 (moving) or
    phi = 0.9999 (chains that barely leave their starting points), every chain started from that law."""
    generator = np.random.default_rng(seed)
    phi = 0.5 if moving else 0.9999
    draws = np.empty((points, chains, epochs, 1))
    draws[:, :, 0, 0] = generator.standard_normal((points, chains))
    for t in range(1, epochs):
        draws[:, :, t, 0] = phi * draws[:, :, t - 1, 0] + math.sqrt(1 - phi**2) * generator.standard_normal(
            (points, chains)
        )
    return draws


def test_trajectory_convergence_tells_moving_from_stuck_chains():
    """Chains that cross their law over the window: R-hat near 1 (20 chains × 200 draws with autocorrelation time 3:
    the median over 8 points of a statistic with sd ~0.01) and ESS near C · N · (1 − phi) / (1 + phi) = 1333 (within
    20 %: the estimate's relative sd is ~8 % at this size; seeds 0-3 give 1386-1442, as 25-draw half-chains truncate
    Geyer's sums early). Chains that stay where they started: R-hat far above the alarm, and an ESS of about one
    draw per chain."""
    moving = trajectory_convergence(stuck_and_moving_chains(True, epochs=200))
    assert moving["rhat_median"] < 1.05
    assert abs(moving["ess_bulk_median"] / 1333 - 1) < 0.2
    stuck = trajectory_convergence(stuck_and_moving_chains(False))
    assert stuck["rhat_median"] > 2 * RHAT_ALARM
    assert stuck["ess_bulk_median"] < 30
    with pytest.raises(ValueError):
        trajectory_convergence(stuck_and_moving_chains(True, epochs=3))


def test_chain_trajectory_keeps_the_last_window_and_survives_a_checkpoint():
    trajectory = ChainTrajectory(points=3, window=4)
    positions = torch.zeros(5, 2, 1)
    chains = PersistentChains(positions)
    for epoch in range(6):
        positions.fill_(float(epoch))
        trajectory.record(chains)
    draws = trajectory.draws()
    assert draws.shape == (3, 2, 4, 1)
    assert draws[0, 0, :, 0].tolist() == [2.0, 3.0, 4.0, 5.0]  # copies, in epoch order, oldest dropped
    restored = ChainTrajectory.from_state_dict(trajectory.state_dict(), points=3, window=4)
    assert torch.equal(restored.draws(), draws)
    assert ChainTrajectory.from_state_dict(trajectory.state_dict(), points=3, window=2).draws().shape[2] == 2
    assert ChainTrajectory.from_state_dict(None, points=3, window=4).states == []  # an older checkpoint


def test_a_table_of_levels_is_judged_per_level():
    """A mixed model's one unit holds a coordinate per level: with 40 levels whose chains cross their law and 3 that
    stay put, the worst coordinate is far above the alarm (the per-unit reading, which warned on every check of a
    healthy grouseticks fit), while the median over levels is near 1 and the worst is still reported as rhat_max."""
    moving = stuck_and_moving_chains(True, points=40, epochs=50)  # (levels, C, N, 1)
    stuck = stuck_and_moving_chains(False, points=3, epochs=50)
    levels = np.concatenate([moving, stuck])[..., 0].transpose(1, 2, 0)  # (C, N, 43): one unit's coordinates
    trajectory = ChainTrajectory(points=1, window=50)
    for epoch in range(50):
        trajectory.record(PersistentChains(torch.from_numpy(levels[:, epoch]).float().unsqueeze(0)))
    per_unit = trajectory_check(trajectory, 50)
    assert per_unit["rhat_median"] > RHAT_ALARM
    per_level = trajectory_check(trajectory, 50, per_coordinate=True)
    assert per_level["rhat_median"] < 1.2 and per_level["rhat_max"] > RHAT_ALARM
