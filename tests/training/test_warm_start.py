"""``warm_start=``: a new run's ALMOND phase from another run's finished VAE (training/warm_start.py)."""

import json
import signal

import pytest
import torch
from conftest import assert_same_final_state, compose_config, read_metrics, run_almond
from omegaconf import OmegaConf

from almond_cli.errors import UsageError
from almond_cli.training.checkpoint import load_checkpoint
from almond_cli.training.trainer import Interrupted, TrainingRun, train
from almond_cli.training.warm_start import load_warm_start, may_change, warm_start_config

# 200 points in batches of 64: 4 updates per epoch.
SMALL = [
    "debug=tiny",
    "progress=quiet",
    "schedule.batch_size=64",
    "schedule.vae_epochs=6",
    "schedule.almond_epochs=6",
    "schedule.warmup_epochs=2",
    "checkpoint.every_epochs=2",
    "checkpoint.every_minutes=0",
]


def warm_started(source, overrides: list[str]):
    """(config, warm) of ``almond train warm_start=<source> <overrides>``, composed in-process."""
    command_line = [f"warm_start={source}", *overrides]
    cfg, path, payload = warm_start_config(compose_config(command_line), command_line)
    return cfg, (path, payload)


def test_with_the_warm_starts_own_settings_the_almond_phase_is_the_same_bitwise(tmp_path):
    train(compose_config(SMALL), tmp_path / "source")
    # Nothing but the warm start on the command line: the config is the source's (not the default experiment's).
    cfg, warm = warm_started(tmp_path / "source", ["progress=quiet"])
    assert cfg.schedule.vae_epochs == 6 and cfg.data.n == 200
    summary = train(cfg, tmp_path / "branch", warm=warm)
    assert_same_final_state(tmp_path / "source", tmp_path / "branch")  # VAE lines of metrics.jsonl included
    source = json.loads((tmp_path / "source" / "summary.json").read_text())
    assert summary["vae"] == source["vae"] and summary["almond"] == source["almond"]
    assert summary["timing"]["vae_seconds"] == source["timing"]["vae_seconds"]  # the warm start's cost, carried


def test_almond_settings_change_and_the_vae_is_the_warm_starts(tmp_path):
    train(compose_config(SMALL), tmp_path / "source")
    cfg, warm = warm_started(
        tmp_path / "source", ["sampler.num_chains=3", "schedule.almond_epochs=2", "schedule.adam_lr=0.5"]
    )
    summary = train(cfg, tmp_path / "branch", warm=warm)
    own_vae = load_checkpoint(tmp_path / "branch" / "checkpoints" / "vae.pt")  # for almond evaluate's VAE row
    source_vae = load_checkpoint(tmp_path / "source" / "checkpoints" / "vae.pt")
    assert all(torch.equal(own_vae["model"][k], source_vae["model"][k]) for k in source_vae["model"])
    assert OmegaConf.create(own_vae["config_yaml"]).sampler.num_chains == 3
    final = load_checkpoint(tmp_path / "branch" / "checkpoints" / "last.pt")
    assert final["chains"]["positions"].shape == (200, 3, 1)
    assert final["position"]["vae_epochs_done"] == 6
    phases = [record["phase"] for record in read_metrics(tmp_path / "branch")]
    assert phases == ["vae"] * 6 + ["almond"] * 2
    assert [r["lr"] for r in read_metrics(tmp_path / "branch") if r["phase"] == "almond"] == [0.5, 0.5]
    source = json.loads((tmp_path / "source" / "summary.json").read_text())
    assert summary["vae"] == source["vae"] and summary["almond"] != source["almond"]


def test_a_warm_started_run_interrupted_and_resumed_equals_it_uninterrupted(tmp_path, monkeypatch):
    train(compose_config(SMALL), tmp_path / "source")
    cfg, warm = warm_started(tmp_path / "source", ["sampler.num_chains=3"])
    train(cfg, tmp_path / "straight", warm=warm)
    original = TrainingRun._update

    def update(self):  # SIGTERM during the third ALMOND update (the VAE ran 24)
        result = original(self)
        if self.position.global_step + 1 == 27:
            self.stop_signal = signal.SIGTERM
        return result

    with monkeypatch.context() as patch:
        patch.setattr(TrainingRun, "_update", update)
        with pytest.raises(Interrupted):
            train(cfg, tmp_path / "resumed", warm=warm)
    checkpoint = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert OmegaConf.create(checkpoint["config_yaml"]).sampler.num_chains == 3
    train(cfg, tmp_path / "resumed", checkpoint=checkpoint)
    assert_same_final_state(tmp_path / "straight", tmp_path / "resumed")


def test_only_almond_and_run_length_keys_may_differ_from_the_warm_start():
    for key in (
        "sampler.num_chains",
        "sampler",
        "schedule.almond_epochs",
        "schedule.adam_lr",
        "schedule.batch_size",
        "threads",
        "evaluation.num_draws",
        "checkpoint.every_epochs",
        "experiment_name",
        "warm_start",
    ):
        assert may_change(key), key
    for key in (
        "schedule.vae_epochs",
        "schedule.vae_lr",
        "schedule.vae_draws",
        "decoder.hidden_sizes",
        "encoder",
        "likelihood.sigma",
        "data.n",
        "seed",
        "latent_dim",
    ):
        assert not may_change(key), key


def test_the_command_refuses_a_changed_model_and_writes_nothing(tmp_path):
    source = tmp_path / "source"
    run_almond(["train", *SMALL, "threads=1", f"hydra.run.dir={source}"], cwd=tmp_path, check=True)
    branch = tmp_path / "branch"
    process = run_almond(
        [
            "train",
            f"warm_start={source}",
            "decoder.hidden_sizes=[3]",
            "schedule.vae_lr=0.5",
            "sampler.num_chains=2",
            f"hydra.run.dir={branch}",
        ],
        cwd=tmp_path,
    )
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert "decoder.hidden_sizes" in process.stderr and "schedule.vae_lr" in process.stderr
    assert "sampler.num_chains" not in process.stderr.split("A warm-started run")[0]
    assert not (branch / "checkpoints").exists()
    # Accepted: the run folder's .hydra/config.yaml is the config it ran (the source's, with the new sampler).
    run_almond(
        ["train", f"warm_start={source}", "sampler.num_chains=2", "threads=1", f"hydra.run.dir={branch}"],
        cwd=tmp_path,
        check=True,
    )
    recorded = OmegaConf.load(branch / ".hydra" / "config.yaml")
    assert recorded.sampler.num_chains == 2 and recorded.schedule.vae_epochs == 6 and recorded.data.n == 200


def test_only_the_end_of_a_vae_phase_is_a_warm_start(tmp_path):
    train(compose_config(SMALL), tmp_path / "source")
    assert load_warm_start(tmp_path / "source")[0].name == "vae.pt"
    with pytest.raises(UsageError, match="not the end of a VAE phase"):
        load_warm_start(tmp_path / "source" / "checkpoints" / "last.pt")
    with pytest.raises(UsageError, match="does not exist"):
        load_warm_start(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no checkpoints/vae.pt"):
        load_warm_start(tmp_path / "empty")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UsageError, match="warm_start: .*not an almond checkpoint"):
        load_warm_start(tmp_path / "foreign.pt")


def test_a_warm_start_from_another_number_of_processes_is_refused_in_words(tmp_path):
    train(compose_config(SMALL), tmp_path / "source")
    cfg, (path, payload) = warm_started(tmp_path / "source", [])
    payload = {**payload, "data_parallel": {"world_size": 2, "ranks": [{}, {}]}}
    with pytest.raises(UsageError, match=r"nproc_per_node=2 .* almond train warm_start="):
        TrainingRun(cfg, tmp_path / "branch").start_from_warm_start(path, payload)
    assert not (tmp_path / "branch" / "checkpoints").exists()
