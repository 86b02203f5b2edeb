"""Training by unit (``Dataset.unit_index``): an explicit one-row-per-unit map trains bitwise as the default (no
map), and with units of several rows every batch is a set of whole units, ``schedule.batch_size`` counts units,
and the chains are one set per unit."""

from __future__ import annotations

import json

import torch
from conftest import assert_same_final_state, compose_config

from almond_cli.tasks.registry import build_dataset
from almond_cli.training import phases, trainer
from almond_cli.training.distributed import DataParallel
from almond_cli.training.runtime import seed_streams
from almond_cli.training.trainer import train

# 200 points in batches of 64: 4 updates per epoch.
SMALL = [
    "debug=tiny",
    "progress=silent",
    "threads=1",
    "schedule.batch_size=64",
    "schedule.vae_epochs=2",
    "schedule.almond_epochs=3",
    "checkpoint.every_minutes=0",
    "diagnostics.rhat_every_epochs=0",
]


def with_units(monkeypatch, unit_index_of):
    """Makes the trainer's data set carry the map ``unit_index_of(num_rows)``."""

    def build(data_cfg, seed):
        dataset = build_dataset(data_cfg, seed)
        dataset.unit_index = unit_index_of(dataset.num_points)
        dataset.__post_init__()
        return dataset

    monkeypatch.setattr(trainer, "build_dataset", build)


def summary_without_timing(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("timing")
    return summary


def test_one_row_per_unit_trains_bitwise_as_no_map(monkeypatch, tmp_path):
    cfg = compose_config(SMALL)
    train(cfg, tmp_path / "plain")
    with_units(monkeypatch, torch.arange)
    train(cfg, tmp_path / "units")
    assert_same_final_state(tmp_path / "plain", tmp_path / "units")
    assert summary_without_timing(tmp_path / "plain") == summary_without_timing(tmp_path / "units")


def test_batches_are_whole_units_and_chains_are_per_unit(monkeypatch, tmp_path):
    """200 rows in 50 units of 4 rows (unit = row mod 50): batches of 16 units (64 rows), 4 updates per epoch."""
    cfg = compose_config([*[o for o in SMALL if not o.startswith("schedule.batch_size")], "schedule.batch_size=16"])
    with_units(monkeypatch, lambda n: torch.arange(n) % 50)
    seen = []
    original_vae, original_almond = phases.vae_update, phases.almond_update

    def vae_update(model, optimiser, x, *args, units=None, **kwargs):
        seen.append(("vae", x.clone(), units))
        return original_vae(model, optimiser, x, *args, units=units, **kwargs)

    def almond_update(model, optimiser, chains, indices, x, *args, units=None, **kwargs):
        assert chains.positions.shape[0] == 50  # one set of chains per unit
        seen.append(("almond", x.clone(), units, indices.clone()))
        return original_almond(model, optimiser, chains, indices, x, *args, units=units, **kwargs)

    monkeypatch.setattr(phases, "vae_update", vae_update)
    monkeypatch.setattr(phases, "almond_update", almond_update)
    summary = train(cfg, tmp_path / "run")
    full = build_dataset(cfg.data, seed_streams(cfg.seed)["data"])
    assert len(seen) == 4 * (2 + 3) and "train_nll" in summary["almond"]
    rows_seen_in_epoch = []
    for record in seen:
        x, units = record[1], record[2]
        assert units is not None and x.shape[0] == 4 * (int(units.max()) + 1)
        assert torch.bincount(units).tolist() == [4] * (int(units.max()) + 1)  # every unit with its 4 rows
        rows_seen_in_epoch.append(x)
        if record[0] == "almond":
            assert record[3].shape[0] == int(units.max()) + 1
    first_epoch = torch.cat(rows_seen_in_epoch[:4])  # the VAE's first epoch: every row exactly once
    assert torch.equal(first_epoch.flatten().sort().values, full.x.flatten().sort().values)


def test_a_single_process_shard_keeps_the_map():
    x, index = torch.arange(6.0).unsqueeze(1), torch.tensor([0, 1, 0, 2, 1, 2])
    got_x, got_index = DataParallel().shard_units(x, index)
    assert got_x is x and got_index is index
    plain_x, plain_index = DataParallel().shard_units(x, None)
    assert plain_x is x and plain_index is None


def test_shards_are_contiguous_units_with_all_their_rows():
    parallel = DataParallel()
    parallel.active, parallel.world_size = True, 2
    x, index = torch.arange(8.0).unsqueeze(1), torch.tensor([0, 3, 1, 2, 0, 3, 2, 1])
    parallel.rank = 1
    got_x, got_index = parallel.shard_units(x, index)
    assert got_x.squeeze(1).tolist() == [1.0, 3.0, 5.0, 6.0] and got_index.tolist() == [1, 0, 1, 0]
    parallel.rank = 0
    got_x, got_index = parallel.shard_units(x, index)
    assert got_x.squeeze(1).tolist() == [0.0, 2.0, 4.0, 7.0] and got_index.tolist() == [0, 1, 0, 1]
