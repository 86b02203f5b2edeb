"""``data=mixed`` with ``data.holdout_fraction`` end to end at a seconds-long size: the held-out groups' log-likelihood
for every fit, their posteriors marked ``split=heldout``, a new table's groups through ``almond sample data=``, and
the refusals (exit 2, one ``almond: error:`` line, nothing written)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import assert_one_error_line, run_almond

from almond_cli.commands import cli

FORMULA = 'data.formula="y ~ x + (1|g)"'
SMALL = [
    "experiment=mixed",
    "likelihood=poisson",
    FORMULA,
    "schedule.vae_epochs=20",
    "schedule.almond_epochs=30",
    "sampler.num_chains=5",
    "threads=1",
    "progress=plain",
]


def _table(groups: int = 24, per_group: int = 4, seed: int = 0, prefix: str = "g") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per_group)
    x = rng.normal(size=g.size).round(3)
    effect = rng.normal(0.0, 0.6, groups)
    return pd.DataFrame({"y": rng.poisson(np.exp(0.5 + 0.4 * x + effect[g])), "x": x, "g": [f"{prefix}{k}" for k in g]})


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["data.holdout_fraction=0.99"], ["data.holdout_fraction", "leaves no group to train on"]),
        (["data.holdout_fraction=0.01"], ["data.holdout_fraction", "holds out none"]),
        (["data.holdout_fraction=0.25", "data.holdout_by=herd"], ["data.holdout_by", "'herd'"]),
        (["data.holdout_by=herd"], ["data.holdout_by", "'herd'"]),  # a typo is refused even with nothing held out
    ],
)
def test_a_hold_out_that_cannot_be_made_is_refused_before_the_run_folder_exists(overrides, fragments, tmp_path, capsys):
    path = tmp_path / "t.csv"
    _table().to_csv(path, index=False)
    args = ["train", "experiment=mixed", "threads=1", f"data.path={path}", FORMULA, *overrides]
    with pytest.raises(SystemExit) as stopped:
        cli.main([*args, f"hydra.run.dir={tmp_path / 'run'}"])
    assert stopped.value.code == 2
    assert_one_error_line(capsys.readouterr().err, fragments)
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


@pytest.fixture(scope="module")
def heldout_run(tmp_path_factory):
    """One small fit with 6 of 24 groups held out (about 20 s on one core)."""
    folder = tmp_path_factory.mktemp("mixed_holdout")
    path = folder / "t.csv"
    _table().to_csv(path, index=False)
    run_dir = folder / "run"
    args = ["train", *SMALL, f"data.path={path}", "data.holdout_fraction=0.25", f"hydra.run.dir={run_dir}"]
    process = run_almond(args, cwd=folder, timeout=300)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return folder, run_dir, json.loads((run_dir / "summary.json").read_text()), process


@pytest.mark.slow
def test_every_fit_reports_the_held_out_groups_log_likelihood(heldout_run):
    _, _, summary, process = heldout_run
    fits = {"almond": summary["almond"], "vae": summary["vae"], "gaussian": summary["baselines"]["gaussian"]}
    for name, fit in fits.items():
        assert math.isfinite(fit["heldout_log_lik"]) and fit["heldout_log_lik"] < 0, (name, fit)
        assert 0 <= fit["heldout_log_lik_se"] < 1e-3, (name, fit)  # one factor, one term: the exact grid
    gaussian = summary["baselines"]["gaussian"]
    # the paired gain over the 6 held-out groups (each its own component): mean of the per-group differences
    difference = summary["almond"]["heldout_log_lik"] - gaussian["heldout_log_lik"]
    assert gaussian["almond_heldout_gain"] * 6 == pytest.approx(difference, rel=1e-9, abs=1e-9)
    assert gaussian["almond_heldout_gain_se"] > 0
    assert "held-out groups" in process.stdout


@pytest.mark.slow
def test_sample_marks_the_held_out_groups_and_draws_a_new_tables_groups(heldout_run, capsys):
    """In process (``cli.main``): the sample command's own work, without three more interpreter start-ups."""
    folder, run_dir, _, _ = heldout_run
    out = folder / "posterior.csv"
    cli.main(["sample", str(run_dir), "what=posterior", f"out={out}", "threads=1"])
    posterior = pd.read_csv(out)
    assert list(posterior.columns)[-1] == "split" and len(posterior) == 24
    held, trained = posterior[posterior["split"] == "heldout"], posterior[posterior["split"] == "train"]
    assert len(held) == 6 and len(trained) == 18 and not set(held["group"]) & set(trained["group"])
    assert (posterior["post_sd"] > 0).all() and posterior["rhat"].notna().all()

    new_path = folder / "new.csv"
    _table(groups=5, seed=9, prefix="new").to_csv(new_path, index=False)
    new_out = folder / "new_posterior.csv"
    cli.main(["sample", str(run_dir), "what=posterior", f"data={new_path}", f"out={new_out}", "threads=1"])
    new = pd.read_csv(new_out)
    assert list(new["group"]) == [f"new{k}" for k in range(5)] and "split" not in new.columns
    capsys.readouterr()

    bad = folder / "bad.csv"
    _table(groups=3).drop(columns=["x"]).to_csv(bad, index=False)
    bad_out = folder / "bad_posterior.csv"
    with pytest.raises(SystemExit) as stopped:
        cli.main(["sample", str(run_dir), "what=posterior", f"data={bad}", f"out={bad_out}", "threads=1"])
    assert stopped.value.code == 2
    assert_one_error_line(capsys.readouterr().err, [f"data={bad}", "no column 'x'"])
    assert not bad_out.exists()
