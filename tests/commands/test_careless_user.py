"""What a hostile or careless user tried (issue 27, sections 2-6), one test per case: a run folder belongs to one
run, a refusal leaves no run folder (and writes nothing into an existing one), every refusal is one
``almond: error:`` line with exit code 2, and a stop signal at any instant leaves a checkpoint and the resume line.

Everything runs in-process through ``cli.main`` (the refusals come before Hydra starts; the few runs that must
train are seconds long), as ``test_prerun_refusals.py`` does; the installed command is exercised there.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import read_metrics

from almond_cli.commands import cli
from almond_cli.config import usable_cores
from almond_cli.data.idx import write_idx
from almond_cli.training import run_folder, trainer
from almond_cli.training.checkpoint import load_checkpoint
from almond_cli.training.run_lock import RunFolderLock, live_holder

TINY = ["debug=tiny", "threads=1", "progress=quiet"]
# A run of a second or two: 2 VAE and 3 ALMOND epochs, a checkpoint after every epoch.
SHORT = [*TINY, "schedule.vae_epochs=2", "schedule.almond_epochs=3", "schedule.warmup_epochs=1"]
SHORT += ["checkpoint.every_epochs=1", "diagnostics.rhat_every_epochs=0"]


@pytest.fixture(autouse=True)
def _restore_process_state(monkeypatch):
    """``cli.main`` sets ``sys.argv`` and, once a run goes ahead, the stop-signal handlers: put both back."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    trainer.pending_stop_signal()  # a signal a test left pending is not the next test's


def refused(args: list[str], capsys) -> str:
    """Runs ``almond *args`` in-process, expects exit code 2 and one error line, and returns that line."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(args)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("almond: error: ") and "Traceback" not in err, err
    return lines[0]


def snapshot(folder) -> dict:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# ----- 1. a run folder belongs to one run -------------------------------------------------------------------------
def test_a_run_refused_by_the_lock_leaves_the_folder_byte_identical(tmp_path, capsys):
    """A second fresh run into a folder another process writes is refused before Hydra writes ``.hydra/`` or
    ``train.log`` there; the refusal names the holder and does not talk of resuming."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "train.log"):
        (run / name).write_text(f"the first run's {name}\n")
    with RunFolderLock(run):  # the first run, training
        before = snapshot(run)
        line = refused(["train", *TINY, f"hydra.run.dir={run}"], capsys)
        assert snapshot(run) == before
    assert f"being written by almond pid {os.getpid()} on host " in line and ", started 20" in line
    assert "resum" not in line and "train into another folder" in line


def test_a_refused_resume_is_told_to_wait_before_resuming(tmp_path):
    with RunFolderLock(tmp_path):
        with pytest.raises(Exception, match="before resuming it"):
            with RunFolderLock(tmp_path, resuming=True):
                pass


def test_the_lock_names_a_live_holder_or_none(tmp_path):
    """A ``.lock`` record left by a process that has died never names it; its lock died with it and is taken over
    (the record then names the new holder)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(
        json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "2026-01-01T00:00:00+00:00"})
    )
    assert str(dead.pid) not in live_holder(tmp_path) and "another almond process" in live_holder(tmp_path)
    with RunFolderLock(tmp_path):  # taken over: the dead process holds nothing
        assert f"pid {os.getpid()}" in live_holder(tmp_path)
    (tmp_path / ".lock").write_text("almond pid 1\n")  # the format before the holder's host and start time
    assert "pid 1" not in live_holder(tmp_path)


def test_default_run_folders_never_collide(tmp_path, monkeypatch):
    """Two runs started in the same second get distinct folders, each named by the timestamp (what scripts
    glob for) with a suffix on the second."""
    import datetime

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 2, 4, 5, 6)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.datetime, "datetime", Frozen)
    first, second = cli.fresh_output_dir([], False), cli.fresh_output_dir([], False)
    assert first == ["hydra.run.dir=outputs/2026-12-02/04-05-06"]
    assert second == ["hydra.run.dir=outputs/2026-12-02/04-05-06-1"]
    assert sorted(p.name for p in (tmp_path / "outputs/2026-12-02").glob("04-05-06*")) == ["04-05-06", "04-05-06-1"]


# ----- 2. no run folder on any refusal ----------------------------------------------------------------------------
def test_a_signal_while_the_run_starts_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    """SIGTERM after Hydra made the folder but before training began: exit 143, and the folder is gone."""
    started = trainer.configure_process

    def signalled(threads, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return started(threads, **kwargs)

    monkeypatch.setattr(trainer, "configure_process", signalled)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train", *TINY, f"hydra.run.dir={tmp_path / 'run'}"])
    assert stopped.value.code == 128 + signal.SIGTERM
    assert "while the run was starting; nothing was trained" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_glmm_covariate_the_linear_predictor_cannot_hold_is_refused_before_the_run(tmp_path, capsys):
    """1e30 is within float32 but exp(cap)·x² (the rate's slope times the covariate, ``covariate_bound``) is not."""
    (tmp_path / "g.csv").write_text("y,x,z\n1,0.1,0.2\n2,0.3,1e30\n0,0.2,0.5\n")
    line = refused(
        [
            "train",
            *TINY,
            "data=glmm_file",
            "likelihood=poisson_glmm",
            "decoder=linear",
            "data.response=y",
            "data.fixed_effects=[x]",
            "data.random_effects=[z]",
            f"data.path={tmp_path / 'g.csv'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capsys,
    )
    assert "data.random_effects" in line and "row 3" in line and "column 'z'" in line and "5.6e+12" in line
    assert not (tmp_path / "run").exists()


def test_an_image_hold_out_that_leaves_nothing_is_refused_before_the_run(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_idx(data / "t10k-images-idx3-ubyte.gz", np.zeros((20, 28, 28), dtype=np.uint8))
    write_idx(data / "t10k-labels-idx1-ubyte.gz", np.zeros(20, dtype=np.uint8))
    args = ["train", "experiment=mnist_cpu", f"data.root={data}", "threads=1", f"hydra.run.dir={tmp_path / 'run'}"]
    line = refused([*args, "data.held_out_fraction=0.99"], capsys)
    assert "data.held_out_fraction: 0.99 of 20 images leaves 20 held out and 0 for training" in line
    assert not (tmp_path / "run").exists()


# ----- 3. one clear line and exit 2 -------------------------------------------------------------------------------
def test_resume_from_a_csv_says_it_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "table.csv").write_text("x,y\n1,2\n")
    line = refused(["train", f"resume={tmp_path / 'table.csv'}"], capsys)
    assert "table.csv is not a PyTorch file" in line and "give a run folder" in line


@pytest.mark.parametrize("failure", ["enospc", "torch_writer"])
def test_a_full_disk_names_the_file_and_the_checkpoint_a_resume_continues_from(failure, tmp_path, capsys, monkeypatch):
    """The third checkpoint cannot be written: the message names it, and ``last.pt`` (still the second, whole)."""
    saves = []
    write = run_folder.save_checkpoint

    def full_disk(state, path):
        saves.append(path)
        if len(saves) == 3:
            if failure == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")
        write(state, path)

    monkeypatch.setattr(run_folder, "save_checkpoint", full_disk)
    run = tmp_path / "run"
    line = refused(["train", *SHORT, f"hydra.run.dir={run}"], capsys)
    assert f"could not write {saves[2]}" in line
    assert f"the last good checkpoint is {run / 'checkpoints/last.pt'}" in line
    assert f"almond train resume={run}" in line
    assert load_checkpoint(run / "checkpoints/last.pt")["position"]["global_step"] == 2  # the second epoch's


@pytest.mark.parametrize("separator,name", [(";", "semicolons"), ("\t", "tabs")])
def test_a_csv_separated_otherwise_names_the_delimiter_found(separator, name, tmp_path, capsys):
    (tmp_path / "m.csv").write_text(f"x{separator}y\n1{separator}2\n3{separator}4\n")
    line = refused(["train", *TINY, "data=file", f"data.path={tmp_path / 'm.csv'}"], capsys)
    assert f"is read as comma-separated, but line 1 is separated by {name}" in line


def test_options_that_do_not_combine_are_named(capsys):
    line = refused(["train", "debug=tiny", "experiment=mnist_cpu"], capsys)
    assert "debug=tiny does not combine with experiment=mnist_cpu" in line and "data.n" in line


def test_a_batch_larger_than_the_data_is_refused_with_the_numbers(tmp_path, capsys):
    line = refused(["train", *TINY, "schedule.batch_size=500", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert "schedule.batch_size: 500 is more than the 200 data points" in line
    assert not (tmp_path / "run").exists()


def test_more_threads_than_cores_is_refused_with_the_core_count(tmp_path, capsys):
    cores = usable_cores()
    line = refused(["train", "debug=tiny", f"threads={cores + 997}", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert f"threads: {cores + 997} is more than the {cores} CPU cores" in line


def test_resuming_a_run_trained_with_more_threads_than_cores_asks_for_fewer(tmp_path, capsys):
    """A run trained on a bigger machine: its saved threads are refused before anything is written, naming the
    run-length override that resumes it here."""
    run = tmp_path / "run"
    cli.main(["train", *SHORT, f"hydra.run.dir={run}"])
    last = run / "checkpoints/last.pt"
    payload = torch.load(last, weights_only=True)
    payload["config_yaml"] = payload["config_yaml"].replace("threads: 1\n", f"threads: {usable_cores() + 5}\n")
    torch.save(payload, last)
    capsys.readouterr()
    before = snapshot(run)
    line = refused(["train", f"resume={run}"], capsys)
    assert f"was trained with threads={usable_cores() + 5}" in line and f"resume with threads={usable_cores()}" in line
    assert snapshot(run) == before


def test_a_sweep_listing_a_value_twice_is_refused(tmp_path, capsys):
    line = refused(["train", "--multirun", *TINY, "seed=3,1,3", f"hydra.sweep.dir={tmp_path / 'sweep'}"], capsys)
    assert "seed: the sweep lists seed=3 2 times" in line
    assert not (tmp_path / "sweep").exists()


# ----- 4. signals at phase ends -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "stage,sig", [("save", signal.SIGTERM), ("fit_baselines", signal.SIGTERM), ("summarise", signal.SIGINT)]
)
def test_a_signal_after_the_last_epoch_checkpoints_and_the_resume_finishes(stage, sig, tmp_path, capsys, monkeypatch):
    """A signal while the finished run writes its final checkpoint or is scored (baselines, summary) stops it at
    that checkpoint with the resume line, with no further work (a signal during the save fits no baseline); the
    resume scores it, and ``metrics.jsonl`` never holds an epoch beyond the checkpoint."""
    module = run_folder if stage == "save" else trainer
    name = "save_checkpoint" if stage == "save" else stage
    original, fitted = getattr(module, name), []

    def signalled(*args, **kwargs):
        if stage != "save" or "-done" in args[1].name:  # the final checkpoint's save
            os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, signalled)
    if stage == "save":
        fit = trainer.fit_baselines
        monkeypatch.setattr(trainer, "fit_baselines", lambda *args: fitted.append(1) or fit(*args))
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train", *SHORT, f"hydra.run.dir={run}"])
    assert stopped.value.code == 128 + sig and not fitted
    assert f"Resume with:\n  almond train resume={run}" in capsys.readouterr().err
    step = load_checkpoint(run / "checkpoints/last.pt")["position"]["global_step"]
    assert step == 5 and max(record["step"] for record in read_metrics(run)) == step
    assert not (run / "summary.json").exists()

    monkeypatch.setattr(module, name, original)
    with open(run / "metrics.jsonl", "a") as handle:  # what a kill -9 between a metrics line and its save leaves
        handle.write(json.dumps({"phase": "almond", "epoch": 4, "step": 6, "loss": 0.0}) + "\n")
    cli.main(["train", f"resume={run}"])
    steps = [record["step"] for record in read_metrics(run)]
    assert steps == [1, 2, 3, 4, 5]
    assert json.loads((run / "summary.json").read_text())["almond"]


def test_a_resume_signalled_while_starting_stops_at_its_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    cli.main(["train", *SHORT, f"hydra.run.dir={run}"])
    before = load_checkpoint(run / "checkpoints/last.pt")["position"]
    started = trainer.configure_process

    def signalled(threads, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return started(threads, **kwargs)

    monkeypatch.setattr(trainer, "configure_process", signalled)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train", f"resume={run}", "schedule.almond_epochs=5"])
    assert stopped.value.code == 128 + signal.SIGTERM
    assert f"almond train resume={run}" in capsys.readouterr().err
    assert load_checkpoint(run / "checkpoints/last.pt")["position"] == before
    assert torch.tensor([r["step"] for r in read_metrics(run)]).max().item() == before["global_step"]
