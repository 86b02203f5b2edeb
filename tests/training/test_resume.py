"""Exact resume: a run interrupted anywhere and resumed ends bitwise equal to the run left alone (CPU)."""

import json
import math
import os
import random
import signal
import subprocess
import time

import pytest
import torch
from conftest import almond_executable, assert_same_final_state, compose_config, read_metrics, run_almond

from almond_cli.langevin.chains import PersistentChains
from almond_cli.training.checkpoint import CheckpointError, load_checkpoint
from almond_cli.training.trainer import Interrupted, TrainingRun, train

# 200 points in batches of 64: 4 updates per epoch, so an interruption can fall mid-epoch.
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


def interrupt_at(monkeypatch, global_step: int) -> None:
    """Makes the run behave as if SIGTERM arrived during update number ``global_step``."""
    original = TrainingRun._update

    def update(self):
        result = original(self)
        if self.position.global_step + 1 == global_step:
            self.stop_signal = signal.SIGTERM
        return result

    monkeypatch.setattr(TrainingRun, "_update", update)


@pytest.mark.parametrize(
    "stop_step",
    [
        10,  # VAE phase, mid-epoch (epoch 3, update 2 of 4)
        31,  # ALMOND phase, mid-epoch (ALMOND epoch 2, update 3 of 4)
        32,  # exactly at a checkpoint boundary (end of ALMOND epoch 2, checkpoint.every_epochs=2)
        38,  # SGD phase (ALMOND epoch 4 of 6, after warmup_epochs=2), mid-epoch: SGD's momentum buffers must resume
    ],
)
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, stop_step):
    cfg = compose_config(SMALL)
    train(cfg, tmp_path / "straight")
    with monkeypatch.context() as patch:
        interrupt_at(patch, stop_step)
        with pytest.raises(Interrupted):
            train(cfg, tmp_path / "resumed")
    checkpoint = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert checkpoint["position"]["global_step"] == stop_step
    train(cfg, tmp_path / "resumed", checkpoint=checkpoint)
    assert_same_final_state(tmp_path / "straight", tmp_path / "resumed")


def test_resume_from_the_vae_checkpoint_replays_the_almond_phase(tmp_path):
    cfg = compose_config(SMALL)
    train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "again", checkpoint=load_checkpoint(tmp_path / "straight" / "checkpoints" / "vae.pt"))
    first = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    second = load_checkpoint(tmp_path / "again" / "checkpoints" / "last.pt")
    assert all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"])


def test_a_checkpoint_holds_everything_needed_to_continue(tmp_path):
    cfg = compose_config(SMALL)
    train(cfg, tmp_path / "run")
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert {
        "model",
        "vae_optimiser",
        "almond_optimisers",
        "chains",
        "order",
        "rng",
        "position",
        "config_yaml",
        "format_version",
    } <= set(checkpoint)
    assert {"noise", "order", "torch"} <= set(checkpoint["rng"])
    assert checkpoint["chains"]["positions"].shape == (200, 4, 1)
    assert checkpoint["position"]["phase"] == "done"


def test_sigterm_writes_a_checkpoint_and_the_printed_command_resumes(tmp_path):
    args = [
        "train",
        "debug=tiny",
        "threads=1",
        "schedule.almond_epochs=4000",
        "checkpoint.every_epochs=0",
        "checkpoint.every_minutes=0",
        "progress=plain",
    ]
    process = subprocess.Popen(
        [almond_executable(), *args, "hydra.run.dir=run"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = tmp_path / "run"
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoints" / "vae.pt").exists():
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    command = next(line.strip() for line in stderr.splitlines() if "almond train resume=" in line)
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]
    assert stopped["phase"] == "almond" and stopped["global_step"] > 20
    resume_args = command.split()[1:] + ["schedule.almond_epochs=4000"]
    resumed = run_almond(
        resume_args[:1] + resume_args[1:] + ["schedule.almond_epochs=" + str(stopped["epoch"] + 3)], cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    records = read_metrics(run_dir)
    almond_epochs = [r["epoch"] for r in records if r["phase"] == "almond"]
    assert almond_epochs == list(range(1, stopped["epoch"] + 4))


def test_truncated_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    run_dir = tmp_path / "run"
    done = run_almond(["train", *SMALL, "threads=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    last = run_dir / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.unlink()  # last.pt is a hard link of the newest numbered checkpoint: damage both copies
    newest = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]
    newest.write_bytes(data[: len(data) // 2])
    last.write_bytes(data[: len(data) // 2])
    resumed = run_almond(["train", f"resume={run_dir}", "schedule.almond_epochs=8"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "warning" in resumed.stderr and "damaged" in resumed.stderr
    assert [r["epoch"] for r in read_metrics(run_dir) if r["phase"] == "almond"] == list(range(1, 9))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_changes(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    evil = run_dir / "checkpoints" / "last.pt"
    torch.save({"format": "almond-checkpoint", "payload": _RunsCode()}, evil)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    process = run_almond(["train", f"resume={run_dir}"], cwd=tmp_path)
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert "refuses" in process.stderr or "unpickling" in process.stderr
    assert not (tmp_path / "pwned.txt").exists()
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"", "empty"),
        (b"not a zip file at all", "damaged"),
    ],
)
def test_damaged_or_foreign_files_are_refused_in_words(tmp_path, content, needle):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(path)


def test_foreign_and_future_checkpoints_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an almond checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format": "almond-checkpoint", "format_version": 999}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 999"):
        load_checkpoint(tmp_path / "future.pt")


def test_resume_refuses_overrides_that_change_the_model(tmp_path):
    run_dir = tmp_path / "run"
    assert run_almond(["train", *SMALL, "threads=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path).returncode == 0
    before = (run_dir / "metrics.jsonl").read_text()
    process = run_almond(
        ["train", f"resume={run_dir}", "sampler.step_size=0.5", "decoder.hidden_sizes=[3]"], cwd=tmp_path
    )
    assert process.returncode == 2
    assert "sampler.step_size" in process.stderr and "decoder.hidden_sizes" in process.stderr
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_divergence_stops_cleanly_and_leaves_the_checkpoint_resumable(tmp_path):
    run_dir = tmp_path / "run"
    process = run_almond(
        ["train", "debug=tiny", "threads=1", "sampler.step_size=1e6", f"hydra.run.dir={run_dir}"], cwd=tmp_path
    )
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert "diverged" in process.stderr and "almond epoch 1" in process.stderr and "step size" in process.stderr
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["position"]["phase"] == "almond" and checkpoint["position"]["global_step"] == 20
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())


def test_chains_that_escape_the_prior_stop_the_run_while_the_loss_is_still_finite(tmp_path):
    # At step 30 the tiny model's chains reach |z| > 1e4 in the first ALMOND epoch with a finite loss (~1e8);
    # without the escape check they run on, finite and meaningless, until an overflow at epoch 5.
    run_dir = tmp_path / "run"
    process = run_almond(
        ["train", "debug=tiny", "threads=1", "sampler.step_size=30", f"hydra.run.dir={run_dir}"], cwd=tmp_path
    )
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert "diverged in almond epoch 1:" in process.stderr and "|z| = 10000" in process.stderr
    reported_loss = float(process.stderr.split("while the loss (")[1].split(")")[0])
    assert math.isfinite(reported_loss)  # so the chain check, not the loss check, stopped it
    assert "sampler.method=mala" in process.stderr
    assert [row for row in read_metrics(run_dir) if row["phase"] == "almond"] == []


def test_a_save_between_epoch_ends_never_makes_a_diverged_state_the_last_checkpoint(tmp_path):
    # Four updates an epoch and a time-based save after every update: the chains escape within ALMOND epoch 1, before
    # its end-of-epoch check. Without the check before each save, last.pt held NaN chains while the message called it
    # "the last good checkpoint".
    run_dir = tmp_path / "run"
    process = run_almond(
        [
            "train",
            "debug=tiny",
            "threads=1",
            "sampler.step_size=30",
            "schedule.batch_size=50",
            "checkpoint.every_minutes=1e-9",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert process.returncode == 1 and "diverged in almond epoch 1:" in process.stderr
    for path in (run_dir / "checkpoints").glob("*.pt"):
        chains = load_checkpoint(path)["chains"]
        assert chains is None or PersistentChains.from_state_dict(chains).healthy(), path.name
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]["global_step"] == 80  # the VAE's end


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_reaches_the_same_parameters(tmp_path):
    args = [
        "train",
        "debug=tiny",
        "threads=1",
        "schedule.vae_epochs=100",
        "schedule.almond_epochs=600",
        "checkpoint.every_epochs=7",
        "checkpoint.every_minutes=0",
    ]
    straight = run_almond([*args, "hydra.run.dir=straight"], cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    process = subprocess.Popen(
        [almond_executable(), *args, "hydra.run.dir=killed"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # The kill falls in the ALMOND phase: after vae.pt (its first update) and well before its 600 epochs end.
    while not (tmp_path / "killed" / "checkpoints" / "vae.pt").exists():
        time.sleep(0.02)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 1.0))
    process.kill()
    process.wait()
    assert not (tmp_path / "killed" / "summary.json").exists(), "the kill came after the run had finished"
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["position"]["phase"] == "almond"
    resumed = run_almond(["train", f"resume={tmp_path / 'killed'}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_final_state(tmp_path / "straight", tmp_path / "killed")


def test_a_second_writer_of_a_run_folder_is_refused(tmp_path):
    from almond_cli.errors import UsageError
    from almond_cli.training.run_lock import RunFolderLock

    with RunFolderLock(tmp_path):
        with pytest.raises(UsageError, match="being written by almond pid"):
            with RunFolderLock(tmp_path):
                pass
        process = run_almond(["train", "debug=tiny", f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
        assert process.returncode == 2 and "being written" in process.stderr
        assert not (tmp_path / "metrics.jsonl").exists()
    with RunFolderLock(tmp_path):  # released on exit
        pass


def test_truncate_metrics_keeps_each_finished_epoch_once(tmp_path):
    from almond_cli.training.trainer import Position, truncate_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [
        {"phase": "vae", "epoch": 1, "step": 4},
        {"phase": "vae", "epoch": 2, "step": 8},
        {"phase": "almond", "epoch": 1, "step": 12},
        {"phase": "almond", "epoch": 2, "step": 16},
        {"phase": "almond", "epoch": 2, "step": 16, "again": True},
        {"phase": "almond", "epoch": 3, "step": 20},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"phase": "alm')
    truncate_metrics(path, Position(phase="almond", epoch=2, batch=1, global_step=17))
    kept = read_metrics(tmp_path)
    assert [r["step"] for r in kept] == [4, 8, 12, 16] and kept[-1].get("again")


def test_an_existing_run_is_never_trained_over_and_resume_auto_continues_it(tmp_path):
    run_dir = tmp_path / "run"
    short = [
        "train",
        "debug=tiny",
        "threads=1",
        "schedule.vae_epochs=4",
        "schedule.almond_epochs=4",
        f"hydra.run.dir={run_dir}",
    ]
    first = run_almond([*short, "resume=auto"], cwd=tmp_path)  # nothing there yet: a fresh run
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    again = run_almond(short, cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before
    extended = run_almond(
        [*short[:-2], "schedule.almond_epochs=6", f"hydra.run.dir={run_dir}", "resume=auto"], cwd=tmp_path
    )
    assert extended.returncode == 0, extended.stderr
    assert [r["epoch"] for r in read_metrics(run_dir) if r["phase"] == "almond"] == list(range(1, 7))


def test_a_run_saved_before_newer_config_keys_resumes_with_their_defaults(tmp_path):
    """A checkpoint written by an earlier almond lacks sections added since (``diagnostics``) and keys of the
    model groups (``encoder.init``); resuming it must fill those in, not fail on a missing key."""
    from omegaconf import OmegaConf

    from almond_cli.training.checkpoint import save_checkpoint

    args = ["debug=tiny", "threads=1", "progress=quiet", "schedule.almond_epochs=2"]
    first = run_almond(["train", *args, "hydra.run.dir=run"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    payload = load_checkpoint(last)
    older = OmegaConf.create(payload["config_yaml"])
    del older["diagnostics"]
    del older.encoder["init"], older.decoder["init"]
    payload["config_yaml"] = OmegaConf.to_yaml(older)
    save_checkpoint({k: v for k, v in payload.items() if k not in ("format", "format_version")}, last)
    resumed = run_almond(
        ["train", "resume=run", "threads=1", "progress=quiet", "schedule.almond_epochs=4"], cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert [r["epoch"] for r in read_metrics(tmp_path / "run") if r["phase"] == "almond"] == [1, 2, 3, 4]


def test_current_defaults_fill_only_what_a_saved_config_lacks():
    from omegaconf import OmegaConf

    from almond_cli.config import with_current_defaults

    saved = OmegaConf.create(
        {
            "seed": 3,
            "retired_key": 5,
            "sampler": {"step_size": 0.02, "num_chains": 7},
            "encoder": {"_target_": "almond_cli.model.networks.MLPEncoder", "hidden_sizes": [4]},
        }
    )
    merged = with_current_defaults(saved)
    assert merged.seed == 3 and merged.sampler.step_size == 0.02 and merged.sampler.num_chains == 7
    assert merged.retired_key == 5  # kept as saved
    assert merged.diagnostics.rhat_every_epochs == 10 and merged.sampler.method == "ula"  # filled in
    assert "init" not in merged.encoder  # model groups keep their own (class) defaults
