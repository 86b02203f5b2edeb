"""almond evaluate and almond sample on a finished tiny run trained on a CSV file."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import numpy as np
import pytest
from conftest import run_almond

TINY = ["debug=tiny", "progress=plain", "threads=1"]


def fingerprint(run_dir):
    """Hashes of every file of the run as training left it (eval/ and samples/ are the commands' own)."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.relative_to(run_dir).parts[0] not in ("eval", "samples")
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("userdata")
    rng = np.random.default_rng(0)
    mu = rng.exponential(2.0, 120)
    x = mu + rng.normal(size=120)
    (folder / "m.csv").write_text("id,x\n" + "".join(f"{i},{v:.6f}\n" for i, v in enumerate(x)))
    (folder / "truth.csv").write_text("mu\n" + "".join(f"{v:.6f}\n" for v in mu))
    run_dir = folder / "run"
    # Relative data paths, resolved later from another working directory through .hydra/hydra.yaml.
    run_almond(
        [
            "train",
            *TINY,
            "data=file",
            "data.path=m.csv",
            "data.columns=[x]",
            "data.truth_path=truth.csv",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=folder,
        check=True,
    )
    return folder, run_dir


def test_evaluate_writes_beside_the_run_without_touching_it(finished_run, tmp_path):
    folder, run_dir = finished_run
    before = fingerprint(run_dir)
    process = run_almond(["evaluate", str(run_dir), "k=20", "n_samples=500", "threads=1"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert fingerprint(run_dir) == before
    (out,) = (run_dir / "eval").iterdir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluation"]["k"] == 20 and summary["evaluation"]["n_samples"] == 500
    for method in ("vae", "almond"):
        assert 0 < summary[method]["ks"] < 1 and summary[method]["w1"] > 0
        # −log p(x) per point of x = mu + N(0,1) data is at least the noise entropy 0.5 log(2 pi e) ≈ 1.42 nats
        assert summary[method]["train_nll"] > 1.4 and summary[method]["train_nll_se"] > 0
    assert (out / "figures" / "latent_density.png").read_bytes()[:4] == b"\x89PNG"
    # the run's own summary used 1000 draws; this one used 500, so the ALMOND ks is recomputed, not copied
    original = json.loads((run_dir / "summary.json").read_text())
    assert summary["almond"]["ks"] != original["almond"]["ks"]


def test_evaluate_with_the_run_settings_reproduces_its_summary_key_for_key(finished_run, tmp_path):
    """Training and ``almond evaluate`` build the summary with one function (``training/scoring.py``): with the run's
    own settings the evaluation is the run's ``summary.json``, every key and every value (the VAE row scored again
    from ``vae.pt``, the timing read from the checkpoint), plus its own ``evaluation`` key."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[1], run_dir, ignore=shutil.ignore_patterns("eval", "samples"))
    process = run_almond(["evaluate", str(run_dir), "threads=1"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    (out,) = (run_dir / "eval").iterdir()
    evaluated = json.loads((out / "summary.json").read_text())
    trained = json.loads((run_dir / "summary.json").read_text())
    assert evaluated.pop("evaluation")["checkpoint"].endswith("last.pt")
    assert list(evaluated) == list(trained) == ["vae", "almond", "baselines", "timing", "precision"]
    for key in trained:
        assert evaluated[key] == trained[key], key


def test_sample_prior_and_posterior(finished_run, tmp_path):
    folder, run_dir = finished_run
    process = run_almond(["sample", str(run_dir), "what=prior", "n=3000", "out=prior.npy", "threads=1"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    draws = np.load(tmp_path / "prior.npy")
    assert draws.shape == (3000, 1) and np.isfinite(draws).all() and draws.std() > 0
    # They are u = h(z) of the run's final decoder for z from a CPU generator seeded by seed= (default 0).
    import torch

    from almond_cli.model.model import prior_draws
    from almond_cli.training.run_folder import load_run

    run = load_run("test", run_dir, "cpu")
    expected = prior_draws(run.model.decoder, 1, 3000, torch.Generator().manual_seed(0), "cpu").numpy()
    assert np.array_equal(draws, expected)
    process = run_almond(
        [
            "sample",
            str(run_dir),
            "what=posterior",
            "out=post.csv",
            "num_chains=8",
            "num_draws=20",
            "burn_in=50",
            "threads=1",
        ],
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr
    rows = list(csv.DictReader((tmp_path / "post.csv").open()))
    assert len(rows) == 120
    assert list(rows[0]) == ["row", "x", "truth", "post_mean", "post_sd", "q5", "q95", "rhat", "ess_bulk"]
    assert [int(r["row"]) for r in rows[:3]] == [2, 3, 4]  # line numbers of the data file
    for r in rows:
        assert float(r["q5"]) <= float(r["post_mean"]) <= float(r["q95"]) and float(r["post_sd"]) > 0
    for phrase in ("posterior means (almond)", "raw x", "normal empirical Bayes", "coverage"):
        assert phrase in process.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["what=prior"], "not an almond run folder"),
        (["what=maybe"], "must be prior or posterior"),
        (["n=0", "what=prior"], "n must be >= 1"),
        (["what=prior", "bogus=1"], "unknown argument 'bogus'"),
        (["what=prior", "out=prior.txt"], "must end in .npy or .csv"),
        ([], "what= is required"),
    ],
)
def test_sample_refuses_bad_arguments(finished_run, tmp_path, args, fragment, capsys):
    from almond_cli.commands import cli

    folder, run_dir = finished_run
    target = folder if fragment == "not an almond run folder" else run_dir
    with pytest.raises(SystemExit) as stopped:
        cli.main(["sample", str(target), *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_evaluate_refuses_a_missing_folder_and_bad_k(tmp_path, capsys):
    from almond_cli.commands import cli

    for args, fragment in ([str(tmp_path / "nowhere")], "does not exist"), ([str(tmp_path), "k=0"], "k must be >= 1"):
        with pytest.raises(SystemExit) as stopped:
            cli.main(["evaluate", *args])
        assert stopped.value.code == 2 and fragment in capsys.readouterr().err


def test_posterior_sampling_reports_its_effective_sample_size_and_warns_on_stuck_chains(finished_run, tmp_path):
    """Chains that barely move (a step size of 1e-6, no burn-in, thin 1) give a few effective draws per row and
    disagreeing chains: both warnings appear. Chains that mix (step 0.2, burn-in 100, thin 10; measured on this
    run: bulk ESS 851 to 1,052 of 1,000 draws per row, R-hat at most 1.012 over its 120 rows) raise neither."""
    _, run_dir = finished_run
    stuck = run_almond(
        [
            "sample",
            str(run_dir),
            "what=posterior",
            "out=stuck.csv",
            "num_chains=8",
            "num_draws=10",
            "thin=1",
            "burn_in=0",
            "step_size=1e-6",
            "threads=1",
        ],
        cwd=tmp_path,
    )
    assert stuck.returncode == 0, stuck.stderr
    assert "fewer than 100 effective draws" in stuck.stdout and "chains of some rows disagree" in stuck.stdout
    mixing = run_almond(
        [
            "sample",
            str(run_dir),
            "what=posterior",
            "out=mixing.csv",
            "num_chains=20",
            "num_draws=50",
            "thin=10",
            "burn_in=100",
            "step_size=0.2",
            "threads=1",
        ],
        cwd=tmp_path,
    )
    assert mixing.returncode == 0, mixing.stderr
    assert "effective sample size per row" in mixing.stdout and "warning" not in mixing.stdout


def test_posterior_sampling_refuses_chains_that_escaped_even_when_finite(finished_run, tmp_path):
    # At step 3 this run's chains escape to |z| ~ 1e6 without overflowing; unchecked, sample wrote posterior means
    # of order 1e5 for data near 1 and exited 0.
    _, run_dir = finished_run
    process = run_almond(
        [
            "sample",
            str(run_dir),
            "what=posterior",
            "out=escaped.csv",
            "num_chains=4",
            "num_draws=10",
            "thin=1",
            "burn_in=0",
            "step_size=3",
            "threads=1",
        ],
        cwd=tmp_path,
    )
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert "diverged with step_size=3" in process.stderr and "|z| = 10000" in process.stderr
    assert not (tmp_path / "escaped.csv").exists()
