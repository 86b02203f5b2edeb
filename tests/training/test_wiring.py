"""Wiring that a one-line edit could break without any statistics test noticing: which chain state is kept,
whether the chains persist across epochs, and which schedule drives the step size and learning rate."""

from __future__ import annotations

import math

import torch
from conftest import compose_config, read_metrics

from almond_cli.langevin import sampler
from almond_cli.langevin.chains import PersistentChains
from almond_cli.langevin.settings import SamplerSettings
from almond_cli.langevin.targets import target_for
from almond_cli.model.model import evaluation_mode
from almond_cli.tasks.registry import build_dataset
from almond_cli.training import phases
from almond_cli.training.build import build_model
from almond_cli.training.trainer import train

# 200 points in batches of 64: 4 updates per epoch, so the global step and the epoch differ.
SMALL = [
    "debug=tiny",
    "progress=silent",
    "threads=1",
    "schedule.batch_size=64",
    "schedule.vae_epochs=3",
    "schedule.almond_epochs=6",
    "schedule.warmup_epochs=2",
    "checkpoint.every_minutes=0",
    "diagnostics.rhat_every_epochs=0",
]


def test_an_update_stores_the_last_kept_state_of_each_chain():
    """With burn_in < num_steps - 1 several states are kept; the chains must continue from the last one."""
    cfg = compose_config(["debug=tiny", "sampler.num_steps=5", "sampler.burn_in=1"])
    dataset = build_dataset(cfg.data, 0)
    torch.manual_seed(0)
    model = build_model(cfg, dataset)
    x = dataset.x[:8]
    indices = torch.arange(8)
    start = torch.randn(8, 3, 1, generator=torch.Generator().manual_seed(1))
    chains = PersistentChains(start.clone())
    with evaluation_mode(model), model.frozen():
        kept, _ = sampler.run(start.clone(), target_for(model, x), 0.05, 5, 1, torch.Generator().manual_seed(2))
    assert kept.shape[0] == 4 and not torch.equal(kept[0], kept[-1])
    optimiser = torch.optim.SGD(model.generative_parameters, lr=0.0)
    phases.almond_update(
        model,
        optimiser,
        chains,
        indices,
        x,
        0.05,
        SamplerSettings(num_steps=5, burn_in=1),
        torch.Generator().manual_seed(2),
    )
    torch.testing.assert_close(chains.gather(indices), kept[-1], rtol=0, atol=0)


def test_chains_persist_from_one_update_to_the_next(monkeypatch, tmp_path):
    """Every update starts where the previous update of the same rows left the chains, and the encoder starts
    them once, at the start of the ALMOND phase."""
    cfg = compose_config([o for o in SMALL if not o.startswith("schedule.batch_size")])  # full batch: same rows
    starts, ends, initialisations = [], [], []
    original_update, original_initial = phases.almond_update, phases.initial_chains

    def update(model, optimiser, chains, indices, *args, **kwargs):
        starts.append(chains.positions.clone())  # by data index: the batch order changes every epoch
        result = original_update(model, optimiser, chains, indices, *args, **kwargs)
        ends.append(chains.positions.clone())
        return result

    def initial(*args, **kwargs):
        initialisations.append(1)
        return original_initial(*args, **kwargs)

    monkeypatch.setattr(phases, "almond_update", update)
    monkeypatch.setattr(phases, "initial_chains", initial)
    train(cfg, tmp_path / "run")
    assert len(initialisations) == 1 and len(starts) == cfg.schedule.almond_epochs
    for previous_end, start in zip(ends, starts[1:]):
        assert torch.equal(previous_end, start)
    assert not torch.equal(starts[0], ends[0])  # the chains do move


def test_metrics_follow_the_epoch_schedules(tmp_path):
    """step_size and lr of every epoch are the paper's schedules of the epoch (not of the global step):
    Langevin max(s/10, s/sqrt(e + 1)); Adam at adam_lr for warmup_epochs, then SGD at sgd_lr/sqrt(e − warmup + 1)."""
    cfg = compose_config(SMALL)
    train(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    vae = [r for r in records if r["phase"] == "vae"]
    almond = [r for r in records if r["phase"] == "almond"]
    assert [r["lr"] for r in vae] == [cfg.schedule.vae_lr] * 3
    assert [r["epoch"] for r in almond] == list(range(1, 7))
    s, warmup = cfg.sampler.step_size, cfg.schedule.warmup_epochs
    for record in almond:
        e = record["epoch"] - 1  # 0-based within the phase
        assert record["step_size"] == max(s * cfg.sampler.min_step_size_fraction, s / math.sqrt(e + 1))
        expected_lr = cfg.schedule.adam_lr if e < warmup else cfg.schedule.sgd_lr / math.sqrt(e - warmup + 1)
        assert record["lr"] == expected_lr
    assert almond[3]["lr"] != almond[1]["lr"]  # the schedule does move within the run
