"""A run folder written by almond 0.1.0, before the package moved into subpackages (``tests/fixtures/run_v0_1_0``,
a ``debug=tiny`` run): its checkpoints and ``.hydra/config.yaml`` name the classes by their old import paths
(``almond_cli.likelihoods.Gaussian``). Resume, ``almond evaluate`` and ``almond sample`` must still work on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import read_metrics, run_almond

OLD_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "run_v0_1_0"


@pytest.fixture
def old_run(tmp_path) -> Path:
    copy = tmp_path / "old_run"
    shutil.copytree(OLD_RUN, copy)
    (copy / ".lock").unlink(missing_ok=True)
    return copy


def test_the_fixture_names_the_old_module_paths():
    assert "_target_: almond_cli.likelihoods.Gaussian" in (OLD_RUN / ".hydra" / "config.yaml").read_text()
    assert b"almond_cli.networks.MLPDecoder" in (OLD_RUN / "checkpoints" / "last.pt").read_bytes()


def test_evaluate_an_old_run_reproduces_its_scores(old_run, tmp_path):
    process = run_almond(["evaluate", str(old_run), "threads=1"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    (folder,) = (old_run / "eval").iterdir()
    evaluated = json.loads((folder / "summary.json").read_text())
    saved = json.loads((old_run / "summary.json").read_text())
    for method in ("vae", "almond"):  # the same draws of u = h(z): the very same distances
        for metric, value in saved[method].items():
            assert evaluated[method][metric] == value, (method, metric)
    # Today's evaluate adds metrics and baselines and changes none, but for normal_eb, since 0.2 the maximum-likelihood
    # normal prior instead of the moment fit (issue 26): its metrics are recomputed, the NPMLE's are not.
    for name, metrics in saved["baselines"].items():
        if name == "normal_eb":
            continue
        for metric, value in metrics.items():
            assert evaluated["baselines"][name][metric] == value, (name, metric)
    assert set(saved["baselines"]["normal_eb"]) <= set(evaluated["baselines"]["normal_eb"])


def test_evaluate_and_sample_read_the_newest_loadable_checkpoint_as_resume_does(old_run, tmp_path):
    """``last.pt`` and its numbered twin cut off by a kill: ``evaluate`` and ``sample`` read the run back from the
    newest numbered checkpoint that loads (the rule resume follows) and say which, instead of refusing the run."""
    checkpoints = old_run / "checkpoints"
    for name in ("last.pt", "step-000000040-done.pt"):
        data = (checkpoints / name).read_bytes()
        (checkpoints / name).write_bytes(data[: len(data) // 2])
    process = run_almond(["evaluate", str(old_run), "threads=1"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert "warning" in process.stderr and "damaged" in process.stderr
    assert "evaluate uses " in process.stderr and "step-000000030-almond.pt" in process.stderr
    (folder,) = (old_run / "eval").iterdir()
    evaluation = json.loads((folder / "summary.json").read_text())["evaluation"]
    assert evaluation["checkpoint"].endswith("step-000000030-almond.pt") and evaluation["phase"] == "almond"
    out = tmp_path / "prior.csv"
    process = run_almond(["sample", str(old_run), "what=prior", "n=10", f"out={out}", "threads=1"], cwd=tmp_path)
    assert process.returncode == 0 and "sample uses " in process.stderr and "step-000000030" in process.stderr


def test_sample_an_old_run(old_run, tmp_path):
    out = tmp_path / "prior.csv"
    process = run_almond(["sample", str(old_run), "what=prior", "n=200", f"out={out}", "threads=1"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "u" and len(lines) == 201
    posterior = tmp_path / "posterior.csv"
    process = run_almond(
        ["sample", str(old_run), "what=posterior", "num_draws=5", "burn_in=5", f"out={posterior}", "threads=1"],
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr
    assert len(posterior.read_text().splitlines()) == 201  # a header and the 200 rows of debug=tiny


def test_resume_extends_an_old_run(old_run, tmp_path):
    before = read_metrics(old_run)
    process = run_almond(["train", f"resume={old_run}", "schedule.almond_epochs=25", "threads=1"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    after = read_metrics(old_run)
    assert after[: len(before)] == before
    assert [r["epoch"] for r in after[len(before) :]] == [21, 22, 23, 24, 25]
    assert all(r["phase"] == "almond" for r in after[len(before) :])
