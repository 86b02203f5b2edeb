"""``almond sample what=posterior`` on data whose rows are grouped in units: one posterior and one CSV line per
unit, with its label; each unit's draws come from p(z | all its rows)."""

from __future__ import annotations

import csv
import math

import torch
from conftest import compose_config

from almond_cli.commands.sample import posterior_draws, sample
from almond_cli.model.likelihoods import Gaussian
from almond_cli.model.model import LatentVariableModel
from almond_cli.model.networks import MLPDecoder, MLPEncoder
from almond_cli.tasks.registry import build_dataset
from almond_cli.training import run_folder, trainer
from almond_cli.training.trainer import train


def test_posterior_draws_of_a_unit_use_all_its_rows():
    """u = z, x_r ~ N(u, 1): a unit of k rows has posterior variance 1 / (1 + k). 400 chains x 50 draws thinned by
    20 steps of s = 0.01 (ULA variance bias 1/(1 − s(1+k)/2) ≤ 1.04): the sample variance's relative error is about
    sqrt(2 / n_eff) < 0.1 even for n_eff ~ 400 chains alone; 0.25 leaves room for the bias and still tells 1/5 from
    1/2 (a factor 2.5)."""
    torch.manual_seed(0)
    decoder = MLPDecoder(1, 1, [])
    with torch.no_grad():
        decoder.net[0].weight.fill_(1.0)
        decoder.net[0].bias.fill_(0.0)
    model = LatentVariableModel(MLPEncoder(1, 1, [4]), decoder, Gaussian(1.0)).eval()
    unit_index = torch.tensor([1, 0, 1, 1, 1])  # unit 0 has one row, unit 1 four
    x = torch.tensor([[0.5], [2.0], [1.0], [0.0], [1.5]])
    draws = posterior_draws(model, x, 400, 50, 20, 300, 0.01, torch.Generator().manual_seed(0), unit_index=unit_index)
    assert draws.shape == (2, 50 * 400, 1)
    for unit, rows in ((0, [2.0]), (1, [0.5, 1.0, 0.0, 1.5])):
        k = len(rows)
        mean, var = float(draws[unit].mean()), float(draws[unit].var())
        assert abs(mean - sum(rows) / (1 + k)) < 0.05, (unit, mean)  # sd of the mean ~ sqrt(var / 400) < 0.04
        assert math.isclose(var, 1 / (1 + k), rel_tol=0.25), (unit, var)


def test_sample_writes_one_line_per_unit_with_its_label(monkeypatch, tmp_path):
    def build(data_cfg, seed):
        dataset = build_dataset(data_cfg, seed)
        dataset.unit_index = torch.arange(dataset.num_points) % 40
        dataset.unit_labels = [f"g{i}" for i in range(40)]
        dataset.__post_init__()
        return dataset

    monkeypatch.setattr(trainer, "build_dataset", build)
    monkeypatch.setattr(run_folder, "build_dataset", build)
    cfg = compose_config(
        [
            "debug=tiny",
            "progress=silent",
            "threads=1",
            "schedule.vae_epochs=1",
            "schedule.almond_epochs=1",
            "checkpoint.every_minutes=0",
            "diagnostics.rhat_every_epochs=0",
        ]
    )
    train(cfg, tmp_path / "run")
    out = tmp_path / "posterior.csv"
    result = sample(
        tmp_path / "run", what="posterior", out=str(out), num_chains=4, num_draws=5, thin=2, burn_in=5, threads=1
    )
    assert result["rows"] == 40
    lines = list(csv.DictReader(out.open()))
    assert [line["unit"] for line in lines] == [f"g{i}" for i in range(40)]
    assert {line["rows"] for line in lines} == {"5"}  # 200 rows, 5 per unit
    assert all(math.isfinite(float(line["post_mean"])) for line in lines)


def test_the_chains_of_some_units_move_on_alone_with_all_their_rows():
    """``PosteriorChains.draw(rows=...)`` (what the checking loop asks of failing units) moves only those units'
    chains, each under p(z | all its rows): unit 1 (four rows) drawn alone has the posterior N(sum / 5, 1 / 5);
    unit 0's chains stay where they were. Tuned MALA: no step-size bias, so 4 standard errors of 400 x 40 draws
    (thinned by 5 MALA steps at acceptance 0.8: nearly independent) bound mean and variance."""
    from almond_cli.commands.sample import PosteriorChains
    from almond_cli.langevin.settings import SamplerSettings

    torch.manual_seed(0)
    decoder = MLPDecoder(1, 1, [])
    with torch.no_grad():
        decoder.net[0].weight.fill_(1.0)
        decoder.net[0].bias.fill_(0.0)
    model = LatentVariableModel(MLPEncoder(1, 1, [4]), decoder, Gaussian(1.0)).eval()
    unit_index = torch.tensor([1, 0, 1, 1, 1, 2])
    x = torch.tensor([[0.5], [2.0], [1.0], [0.0], [1.5], [-1.0]])
    chains = PosteriorChains(
        model, x, 400, torch.Generator().manual_seed(0), settings=SamplerSettings(method="mala"), unit_index=unit_index
    )
    chains.tune(100, 0.01)
    before = [chunk.z.clone() for chunk in chains.chunks]
    draws = chains.draw(40, 5, rows=torch.tensor([1]))
    assert draws.shape == (1, 40 * 400, 1)
    (chunk,) = chains.chunks
    assert torch.equal(chunk.z[[0, 2]], before[0][[0, 2]]) and not torch.equal(chunk.z[1], before[0][1])
    mean, var = float(draws.mean()), float(draws.var())
    assert abs(mean - 3.0 / 5) < 4 * (0.2 / 16000) ** 0.5 * 2  # x2: the draws of one chain are a little correlated
    assert math.isclose(var, 0.2, rel_tol=4 * (2 / 16000) ** 0.5 * 2)
