"""The fitted prior as numbers: the exact one-dimensional push-forward against known laws, and the draw-based
summaries of several coordinates."""

from __future__ import annotations

import math

import torch
from conftest import run_almond
from torch import nn

from almond_cli.tasks.prior_summary import QUANTILE_LEVELS, summarise_prior


class Map(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, z):
        return self.function(z)


def _grid(result, coordinate=0):
    rows = [row for row in result["grid"] if row[0] == coordinate]
    return (
        torch.tensor([r[1] for r in rows], dtype=torch.float64),
        torch.tensor([r[2] for r in rows], dtype=torch.float64),
        torch.tensor([r[3] for r in rows], dtype=torch.float64),
    )


def test_exp_of_a_normal_is_log_normal():
    """h(z) = exp(z): u is log-normal. The change of variables is exact for piecewise-linear h; a float32 decoder on
    a grid of spacing 8.5e-4 leaves relative errors of order 1e-3 in the density (float32's 6e-8 relative rounding
    divided by the grid step in the slope), so the density is compared to 1e-2 and the CDF, moments and quantiles
    (integrals) to 1e-4 relative."""
    result = summarise_prior(Map(torch.exp), 1, torch.exp(torch.randn(100, 1)), grid_size=801)
    u, density, cdf = _grid(result)
    inner = (u > 0.05) & (u < 20)
    law = torch.distributions.LogNormal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(density[inner], law.log_prob(u[inner]).exp(), rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(cdf[inner], law.cdf(u[inner]), rtol=0, atol=1e-4)
    summary = result["summary"][0]
    assert summary["method"].startswith("exact")
    assert abs(summary["mean"] - math.exp(0.5)) < 1e-4 * math.exp(0.5)
    assert abs(summary["sd"] - math.sqrt((math.e - 1) * math.e)) < 1e-3
    for level in QUANTILE_LEVELS:
        z = float(torch.special.ndtri(torch.tensor(level, dtype=torch.float64)))
        assert abs(summary[f"q{round(100 * level)}"] - math.exp(z)) < 1e-3 * math.exp(z) + 1e-6


def test_a_non_monotone_map_sums_its_branches():
    """h(z) = z²: u is chi-square with one degree of freedom; its density at t gets φ(√t)/(2√t) from each of the
    two branches z = ±√t (a single branch would give half). Mean 1, sd √2, skewness √8."""
    result = summarise_prior(Map(torch.square), 1, torch.randn(100, 1).square(), grid_size=801)
    u, density, cdf = _grid(result)
    inner = (u > 0.05) & (u < 30)
    law = torch.distributions.Chi2(torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(density[inner], law.log_prob(u[inner]).exp(), rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(cdf[inner], law.cdf(u[inner]), rtol=0, atol=1e-4)
    summary = result["summary"][0]
    assert abs(summary["mean"] - 1.0) < 1e-4 and abs(summary["sd"] - math.sqrt(2)) < 1e-3
    assert abs(summary["skewness"] - math.sqrt(8)) < 1e-2


def test_several_coordinates_are_summarised_from_draws_with_their_dependence():
    """d = 2, u = (z1, z1 + z2): correlation 1/√2 and Kendall's tau (2/π) arcsin(1/√2) = 0.5; 10,000 draws give the
    correlation to ±0.02 and tau (from its first 2,000 draws) to about ±0.03 (4 standard errors)."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(10_000, 2, generator=generator)
    decoder = Map(lambda latent: torch.stack([latent[..., 0], latent[..., 0] + latent[..., 1]], dim=-1))
    result = summarise_prior(decoder, 2, decoder(z), grid_size=201)
    assert all(row["method"].startswith("draws") for row in result["summary"])
    assert abs(result["summary"][1]["sd"] - math.sqrt(2)) < 0.05
    (pair,) = result["dependence"]
    assert abs(pair["pearson"] - 1 / math.sqrt(2)) < 0.02
    assert abs(pair["kendall_tau"] - 0.5) < 4 * pair["kendall_tau_se"] + 0.005
    u, density, cdf = _grid(result, 1)
    assert bool((cdf[1:] >= cdf[:-1]).all()) and float(cdf[-1]) == 1.0


def test_almond_prior_writes_the_numbers_and_the_figure(tmp_path):
    run_dir = tmp_path / "run"
    run_almond(
        ["train", "debug=tiny", "threads=1", "progress=silent", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=True
    )
    process = run_almond(["prior", str(run_dir), "threads=1", "grid=101"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    (folder,) = (run_dir / "prior").iterdir()
    lines = (folder / "prior.csv").read_text().splitlines()
    assert lines[0] == "coordinate,u,density,cdf" and len(lines) == 102
    header, row = (folder / "prior_summary.csv").read_text().splitlines()
    assert header.split(",")[:5] == ["coordinate", "method", "mean", "sd", "skewness"] and "exact" in row
    assert (folder / "figures" / "prior.png").read_bytes()[:4] == b"\x89PNG"
    assert "median" in process.stdout
