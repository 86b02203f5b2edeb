"""Bad or awkward input ends as one paragraph naming the key, file, row or column and the fix, exit code 2, no
traceback, and nothing in any run folder changed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_almond

TINY = ["debug=tiny", "threads=1", "progress=plain"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of a folder, by content."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_refused(process, *fragments: str) -> None:
    assert process.returncode == 2, (process.returncode, process.stderr)
    assert "Traceback" not in process.stderr
    message = [line for line in process.stderr.splitlines() if line.startswith("almond: error:")]
    assert len(message) == 1, process.stderr
    for fragment in fragments:
        assert fragment in message[0], (fragment, message[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run on a CSV file (data/m.csv), with two numbered checkpoints kept."""
    folder = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    (folder / "m.csv").write_text(
        "x\n" + "".join(f"{v:.6f}\n" for v in rng.exponential(2.0, 200) + rng.normal(size=200))
    )
    run_almond(
        [
            "train",
            *TINY,
            "data=file",
            f"data.path={folder / 'm.csv'}",
            "checkpoint.keep=2",
            f"hydra.run.dir={folder / 'run'}",
        ],
        cwd=folder,
        check=True,
    )
    return folder


@pytest.fixture
def copy(trained, tmp_path) -> Path:
    """A private copy of the trained folder: the run in run/ and its data in m.csv (data.path is absolute, so
    the copy's run reads the original file; tests that change the data change the original's copy below)."""
    shutil.copytree(trained, tmp_path / "t")
    return tmp_path / "t"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["foo=1"], "foo"),
        (["schedule.almond_epoch=50"], "almond_epoch"),
        (["sampler=hmc"], "sampler"),
        (["data.path=other.csv"], "data"),
        (["data.holdout_fraction=0.2"], "data.holdout_fraction (checkpoint: 0.0, command line: 0.2)"),
    ],
)
def test_resume_with_a_bad_override_is_one_paragraph(copy, overrides, fragment, almond_refuses):
    run = copy / "run"
    before = snapshot(run)
    line = almond_refuses(["train", f"resume={run}", *overrides], cwd=copy)
    assert "resume:" in line and fragment in line, line
    assert fragment in almond_refuses(["train", "resume=auto", f"hydra.run.dir={run}", *overrides], cwd=copy)
    assert snapshot(run) == before


def test_changed_data_are_refused_by_resume_evaluate_and_sample(trained, tmp_path, almond_refuses):
    folder = tmp_path / "t"
    shutil.copytree(trained, folder)
    run, data = folder / "run", trained / "m.csv"
    original = data.read_text()
    before = snapshot(run)
    try:
        values = np.loadtxt(data, skiprows=1)
        data.write_text("x\n" + "".join(f"{100 * v:.6f}\n" for v in values))  # same rows, values x 100
        for command in (
            ["train", f"resume={run}", "schedule.almond_epochs=30"],
            ["evaluate", str(run)],
            ["sample", str(run), "what=prior", f"out={tmp_path / 'p.npy'}"],
        ):
            line = almond_refuses(command, cwd=tmp_path)
            for fragment in ("the data are not those this run was fitted to", str(data), "values differ", "new run"):
                assert fragment in line, (fragment, line)
        data.write_text("x\n" + "".join(f"{v:.6f}\n" for v in values[:5]))  # 5 rows
        assert "x has shape (5, 1), the run's had (200, 1)" in almond_refuses(["train", f"resume={run}"], cwd=tmp_path)
    finally:
        data.write_text(original)
    assert snapshot(run) == before and not (tmp_path / "p.npy").exists()


def test_a_second_resume_of_a_running_run_is_refused_and_writes_nothing(copy):
    from almond_cli.training.run_lock import RunFolderLock

    run = copy / "run"
    with RunFolderLock(run):  # a first process is training in it
        before = snapshot(run)
        assert_refused(
            run_almond(["train", f"resume={run}", "schedule.almond_epochs=30"], cwd=copy), "being written by almond pid"
        )
        assert snapshot(run) == before  # its train.log, metrics and checkpoints untouched


def test_a_resume_never_moves_a_run_backwards(copy, almond_refuses):
    run = copy / "run"
    older = sorted((run / "checkpoints").glob("step-*.pt"))[0]
    before = snapshot(run)
    line = almond_refuses(["train", f"resume={older}"], cwd=copy)
    assert "never moves a run backwards" in line and "copy the run folder" in line, line
    assert snapshot(run) == before


def test_sample_never_writes_over_data_a_run_folder_or_an_existing_file(copy, trained, almond_refuses):
    run = copy / "run"
    before, data = snapshot(run), (trained / "m.csv").read_bytes()
    overwrite_data = ["sample", str(run), "what=prior", f"out={trained / 'm.csv'}", "overwrite=true"]
    assert "data file of the run" in almond_refuses(overwrite_data, cwd=copy)
    inside = ["sample", str(run), "what=prior", f"out={run / 'prior.csv'}"]
    assert "inside the run folder" in almond_refuses(inside, cwd=copy)
    existing = copy / "mine.csv"
    existing.write_text("keep me\n")
    line = almond_refuses(["sample", str(run), "what=prior", f"out={existing}"], cwd=copy)
    assert "exists" in line and "overwrite=true" in line, line
    assert existing.read_text() == "keep me\n"
    replaced = run_almond(["sample", str(run), "what=prior", "n=10", f"out={existing}", "overwrite=true"], cwd=copy)
    assert replaced.returncode == 0 and existing.read_text().splitlines()[0] == "u"
    assert snapshot(run) == before and (trained / "m.csv").read_bytes() == data


def test_values_beyond_float32_are_refused_with_row_and_column(tmp_path, almond_refuses):
    (tmp_path / "big.csv").write_text("x\n1.0\n2.0\n1e39\n3.0\n")
    line = almond_refuses(["train", *TINY, "data=file", "data.path=big.csv", "hydra.run.dir=run"], cwd=tmp_path)
    assert "row 4 (line 4 of the file), column 'x'" in line and "float32" in line, line
    assert not (tmp_path / "run").exists()


def test_a_run_that_diverges_before_its_first_checkpoint_says_so(tmp_path):
    process = run_almond(["train", *TINY, "schedule.vae_lr=1e8", "hydra.run.dir=run"], cwd=tmp_path)
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert "diverged" in process.stderr and "holds no checkpoint and cannot be resumed" in process.stderr
    assert "intact and resumable" not in process.stderr
    assert_refused(run_almond(["train", "resume=run"], cwd=tmp_path), "stopped before writing its first one")


def test_an_unquoted_non_ascii_value_gets_the_quoting_hint(tmp_path, almond_refuses):
    line = almond_refuses(["train", "data=file", "data.path=dönnées.csv"], cwd=tmp_path)
    assert "data.path=\"'dönnées.csv'\"" in line, line
    (tmp_path / "dönnées.csv").write_text("x\n1\n2\n3\n")
    quoted = run_almond(
        [
            "train",
            *TINY,
            "data=file",
            "data.path='dönnées.csv'",
            "schedule.vae_epochs=1",
            "schedule.almond_epochs=1",
            "hydra.run.dir=run",
        ],
        cwd=tmp_path,
    )
    assert quoted.returncode == 0, quoted.stderr


def test_quiet_names_the_run_folder_and_silent_prints_nothing(tmp_path):
    short = ["debug=tiny", "threads=1", "schedule.vae_epochs=1", "schedule.almond_epochs=1"]
    quiet = run_almond(["train", *short, "progress=quiet", "hydra.run.dir=q"], cwd=tmp_path)
    assert quiet.returncode == 0
    run = tmp_path / "q"
    assert quiet.stdout.strip().splitlines()[-1] == f"almond: run folder {run}; summary {run / 'summary.json'}"
    silent = run_almond(["train", *short, "progress=silent", "hydra.run.dir=s"], cwd=tmp_path)
    assert silent.returncode == 0 and silent.stdout == "" and (tmp_path / "s" / "summary.json").is_file()
