"""The check of what ALMOND relies on: the persistent chains follow each data point's exact posterior (d = 1)."""

from __future__ import annotations

import math

import torch

from almond_cli.langevin.diagnostics import KOLMOGOROV_MEAN, posterior_ks
from almond_cli.tasks.registry import build_dataset
from almond_cli.training.build import build_model
from conftest import compose_config, read_metrics, run_almond


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


SHORT = ["experiment=mnn_exponential_fast", "threads=1", "progress=plain", "schedule.vae_epochs=200",
         "schedule.almond_epochs=20", "schedule.warmup_epochs=20"]


def test_training_reports_the_check_and_warns_when_the_chains_are_wrong(tmp_path):
    """The paper's step size keeps the chains on the posterior; a constant ULA step of 0.8 (80 times it) biases
    them (measured: mean KS 1.8–2.1 times the reference) and the warning reaches the screen and train.log."""
    healthy = tmp_path / "healthy"
    run_almond(["train", *SHORT, f"hydra.run.dir={healthy}"], cwd=tmp_path, check=True)
    checks = [r for r in read_metrics(healthy) if "posterior_ks_mean" in r]
    assert [r["epoch"] for r in checks] == [10, 20]
    assert all(r["posterior_ks_mean"] < 1.5 * r["posterior_ks_reference"] for r in checks)
    assert "do not follow the exact posterior" not in (healthy / "train.log").read_text()
    biased = tmp_path / "biased"
    process = run_almond(["train", *SHORT, "sampler.step_size=0.8", "sampler.step_size_decay=constant",
                          f"hydra.run.dir={biased}"], cwd=tmp_path, check=True)
    assert "do not follow the exact posterior" in (biased / "train.log").read_text()
    assert "do not follow the exact posterior" in process.stderr + process.stdout
