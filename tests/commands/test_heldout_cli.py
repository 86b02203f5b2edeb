"""``data.holdout_fraction`` end to end: training scores the held-out rows for every method, ``almond evaluate``
scores them alike, and a resume may not change the split."""

from __future__ import annotations

import json

import torch
from conftest import run_almond

from almond_cli.training.checkpoint import load_checkpoint
from almond_cli.training.run_folder import load_run

HELDOUT = {"heldout_nll", "heldout_nll_se"}


def train_and_evaluate(args: list[str], tmp_path):
    run_dir = tmp_path / "run"
    process = run_almond(
        ["train", *args, "threads=1", "progress=plain", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=True
    )
    trained = json.loads((run_dir / "summary.json").read_text())
    run_almond(["evaluate", str(run_dir), "threads=1"], cwd=tmp_path, check=True)
    (folder,) = (run_dir / "eval").iterdir()
    return run_dir, process, trained, json.loads((folder / "summary.json").read_text())


def test_every_method_is_scored_on_the_held_out_rows_and_evaluate_agrees(tmp_path):
    run_dir, process, trained, evaluated = train_and_evaluate(["debug=tiny", "data.holdout_fraction=0.2"], tmp_path)
    for method in (trained["vae"], trained["almond"], *trained["baselines"].values()):
        assert HELDOUT <= set(method) and method["heldout_nll"] > 1.4 and method["heldout_nll_se"] > 0
        assert method["heldout_nll"] != method["train_nll"]
    assert set(trained["baselines"]) == {"normal_eb", "npmle"}
    for baseline in trained["baselines"].values():
        assert (
            abs(baseline["almond_heldout_gain"] - (baseline["heldout_nll"] - trained["almond"]["heldout_nll"])) < 1e-9
        )
    for method in ("vae", "almond", "baselines"):
        assert evaluated[method] == trained[method], method
    assert "held-out rows, −log p(x) per data point: vae" in process.stdout
    # The run trained on 160 of the 200 rows: its chains are those rows', and evaluate rebuilt the same split.
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["chains"]["positions"].shape[0] == 160
    run = load_run("test", run_dir, "cpu")
    assert (run.dataset.num_points, run.dataset.heldout.num_points) == (160, 40)
    # A resume may not move rows between training and held out.
    before = (run_dir / "metrics.jsonl").read_text()
    refused = run_almond(
        ["train", f"resume={run_dir}", "data.holdout_fraction=0.3", "schedule.almond_epochs=25"], cwd=tmp_path
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "data.holdout_fraction (checkpoint: 0.2, command line: 0.3)" in refused.stderr
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_the_gaussian_glmm_baseline_is_fitted_on_the_training_rows_and_scored_on_the_held_out_ones(tmp_path):
    args = [
        "experiment=glmm_cpu",
        "seed=2",
        "data.n=300",
        "data.holdout_fraction=0.2",
        "encoder.hidden_sizes=[8]",
        "decoder.hidden_sizes=[8]",
        "sampler.num_chains=2",
        "sampler.num_steps=2",
        "sampler.burn_in=1",
        "schedule.batch_size=120",
        "schedule.vae_epochs=2",
        "schedule.almond_epochs=2",
        "schedule.warmup_epochs=1",
        "evaluation.num_draws=500",
    ]
    run_dir, _, trained, evaluated = train_and_evaluate(args, tmp_path)
    for method in (trained["vae"], trained["almond"], trained["baselines"]["gaussian_glmm"]):
        assert HELDOUT | {"heldout_mse_posterior_mean"} <= set(method)
    assert evaluated["baselines"] == trained["baselines"] and evaluated["almond"] == trained["almond"]
    # The baseline is a child run of its own: it trained on the parent's 240 training rows, the very same ones.
    child_dir = run_dir / "baselines" / "gaussian_glmm"
    assert load_checkpoint(child_dir / "checkpoints" / "last.pt")["chains"]["positions"].shape[0] == 240
    child, parent = load_run("test", child_dir, "cpu").dataset, load_run("test", run_dir, "cpu").dataset
    assert child.rows() == parent.rows() and torch.equal(child.x, parent.x)
    assert child.heldout.rows() == parent.heldout.rows() and len(parent.heldout.rows()) == 60
