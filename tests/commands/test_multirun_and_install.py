"""A two-job sweep writes two run folders; the command works from an installed wheel, outside the tree."""

import json
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import REPO_ROOT, read_metrics, run_almond


def test_two_job_multirun_writes_two_run_folders(tmp_path):
    sweep = tmp_path / "sweep"
    process = run_almond(
        ["train", "--multirun", "debug=tiny", "threads=1", "seed=1,2", f"hydra.sweep.dir={sweep}"], cwd=tmp_path
    )
    assert process.returncode == 0, process.stderr
    summaries = [json.loads((sweep / job / "summary.json").read_text()) for job in ("0", "1")]
    assert summaries[0]["almond"] != summaries[1]["almond"]  # each seed draws its own data
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.pt").is_file()
        assert len(read_metrics(sweep / job)) == 40
    overrides = (sweep / "1" / ".hydra" / "overrides.yaml").read_text()
    assert "seed=2" in overrides


def test_a_bad_value_inside_a_sweep_is_refused_before_any_job_runs(tmp_path):
    process = run_almond(
        ["train", "--multirun", "debug=tiny", "sampler.num_chains=4,0", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path,
    )
    assert process.returncode == 2 and "sampler.num_chains" in process.stderr
    assert not (tmp_path / "sweep").exists()


def test_default_run_folder_is_timestamped_under_outputs(tmp_path):
    process = run_almond(
        ["train", "debug=tiny", "threads=1", "schedule.vae_epochs=2", "schedule.almond_epochs=2"], cwd=tmp_path
    )
    assert process.returncode == 0, process.stderr
    (day,) = (tmp_path / "outputs").iterdir()
    (clock,) = day.iterdir()
    assert len(day.name) == 10 and day.name[4] == "-" and len(clock.name) == 8 and clock.name[2] == "-"
    assert (clock / "summary.json").is_file()


@pytest.mark.slow
def test_installed_wheel_finds_its_configs_outside_the_source_tree(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(REPO_ROOT)],
        check=True,
        cwd=tmp_path,
    )
    shutil.rmtree(REPO_ROOT / "build", ignore_errors=True)  # setuptools builds in the source tree
    (wheel,) = wheel_dir.glob("almond-*.whl")
    env_dir = tmp_path / "env"
    # The running interpreter's site-packages provide torch, Hydra and the rest, wherever they live (a venv's,
    # the system's); almond itself comes only from the wheel. A .pth line adds a folder without running the .pth
    # files inside it, so an editable install of the source tree there stays invisible.
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "running_interpreter.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, cwd=tmp_path)
    where = subprocess.run(
        [str(python), "-c", "import almond_cli.configs as c; print(list(c.__path__)[0])"],
        check=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    process = subprocess.run(
        [
            str(env_dir / "bin" / "almond"),
            "train",
            "debug=tiny",
            "threads=1",
            "experiment=mnn_mixture",
            "schedule.vae_epochs=2",
            "schedule.almond_epochs=2",
            "hydra.run.dir=run",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr
    assert json.loads((workdir / "run" / "summary.json").read_text())["almond"]["ks"] > 0


def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    import datetime

    from almond_cli.commands import cli

    class FrozenClock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 24, 10, 31, 7)

    monkeypatch.setattr(cli.datetime, "datetime", FrozenClock)
    monkeypatch.chdir(tmp_path)
    first = cli.fresh_output_dir(["seed=1"], multirun=False)
    second = cli.fresh_output_dir(["seed=1"], multirun=False)
    assert first == ["hydra.run.dir=outputs/2026-11-24/10-31-07"]
    assert second == ["hydra.run.dir=outputs/2026-11-24/10-31-07-1"]
    assert cli.fresh_output_dir(["hydra.run.dir=mine"], multirun=False) == []
    assert cli.fresh_output_dir([], multirun=True) == ["hydra.sweep.dir=outputs/multirun/2026-11-24/10-31-07"]
