"""``almond sample what=posterior`` on every row of a run's file: the training rows, the held-out rows
(``data.holdout_fraction``) and the rows of a new file (``data=``), each under the fitted prior, with the per-row
checks ``rhat`` and ``ess_bulk`` in the CSV. Every posterior mean is compared with the fitted model's exact posterior
mean by quadrature (a 1-d latent), so a held-out or new row sampled under the wrong target fails."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import compose_config, run_almond

from almond_cli.errors import UsageError
from almond_cli.tasks.registry import read_new_rows
from almond_cli.training.run_folder import load_run

COLUMNS = ["row", "id", "x", "post_mean", "post_sd", "q5", "q95", "rhat", "ess_bulk"]


@pytest.fixture(scope="module")
def heldout_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heldout")
    rng = np.random.default_rng(3)
    mu = np.where(rng.random(80) < 0.5, rng.normal(-2, 0.5, 80), rng.normal(2, 0.5, 80))
    x = mu + rng.normal(size=80)
    (folder / "m.csv").write_text("id,x\n" + "".join(f"r{i},{v:.5f}\n" for i, v in enumerate(x)))
    (folder / "new.csv").write_text("id,x\nn0,-3.5\nn1,0.1\nn2,2.75\n")
    run_dir = folder / "run"
    run_almond(
        [
            "train",
            "debug=tiny",
            "threads=1",
            "data=file",
            "data.path=m.csv",
            "data.columns=[x]",
            "data.id_column=id",
            "data.holdout_fraction=0.25",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=folder,
        check=True,
    )
    return folder, run_dir


def exact_posterior_means(run, values) -> torch.Tensor:
    """E[u | x] under the run's fitted model for observations ``values`` (n,), by the trapezoid rule on 4,001 z
    points of [-8.5, 8.5] (outside, the N(0, 1) prior has mass < 1e-16)."""
    grid = torch.linspace(-8.5, 8.5, 4001)
    x = torch.as_tensor(values, dtype=torch.float32).view(-1, 1)
    with torch.no_grad():
        log_joint = run.model.log_joint(x, grid.view(1, -1, 1).expand(len(x), -1, -1)).double()
        u = run.model.decoder(grid.view(-1, 1))[:, 0].double()
    weights = torch.softmax(log_joint, dim=1)
    return (weights * u).sum(1)


def check_against_quadrature(run, lines):
    """Each row's post_mean within 5 Monte Carlo standard errors (post_sd / sqrt(ess_bulk)) of the exact mean, plus
    the tabulated decoder's error (< 1e-5): for 80 rows the chance of a false alarm is below 1e-4."""
    exact = exact_posterior_means(run, [float(line["x"]) for line in lines])
    for line, truth in zip(lines, exact.tolist()):
        error = abs(float(line["post_mean"]) - truth)
        assert error < 5 * float(line["post_sd"]) / float(line["ess_bulk"]) ** 0.5 + 1e-5, (line, truth)


@pytest.mark.slow
def test_held_out_rows_get_their_posterior_in_file_order(heldout_run, tmp_path):
    _, run_dir = heldout_run
    process = run_almond(["sample", str(run_dir), "what=posterior", "out=post.csv", "threads=1"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    lines = list(csv.DictReader((tmp_path / "post.csv").open()))
    assert list(lines[0]) == [*COLUMNS, "split"]
    assert [int(line["row"]) for line in lines] == list(range(2, 82))  # every row of the file, in its order
    run = load_run("test", run_dir, "cpu")
    held = set(run.dataset.heldout.rows())
    assert [line["split"] for line in lines] == ["heldout" if int(line["row"]) in held else "train" for line in lines]
    assert sum(line["split"] == "heldout" for line in lines) == 20
    assert "checks passed: every row has R-hat <= 1.01 and bulk ESS >= 400" in process.stdout
    assert all(float(line["rhat"]) <= 1.01 and float(line["ess_bulk"]) >= 400 for line in lines)
    assert "(20 held out)" in process.stdout
    check_against_quadrature(run, lines)


@pytest.mark.slow
def test_rows_of_a_new_file_get_their_posterior_under_the_fitted_prior(heldout_run, tmp_path):
    folder, run_dir = heldout_run
    process = run_almond(
        ["sample", str(run_dir), "what=posterior", f"data={folder / 'new.csv'}", "out=new_post.csv", "threads=1"],
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr
    lines = list(csv.DictReader((tmp_path / "new_post.csv").open()))
    assert list(lines[0]) == COLUMNS  # no split: none of these rows was trained on or held out
    assert [line["id"] for line in lines] == ["n0", "n1", "n2"] and [line["row"] for line in lines] == ["2", "3", "4"]
    check_against_quadrature(load_run("test", run_dir, "cpu"), lines)
    # A file without the run's columns is refused, naming it, and nothing is written.
    (tmp_path / "bad.csv").write_text("id,y\na,1.0\n")
    refused = run_almond(
        ["sample", str(run_dir), "what=posterior", f"data={tmp_path / 'bad.csv'}", "out=bad_post.csv", "threads=1"],
        cwd=tmp_path,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and "bad.csv" in refused.stderr
    assert not (tmp_path / "bad_post.csv").exists()


@pytest.mark.slow
def test_a_fixed_number_of_draws_and_a_fixed_step_still_work_and_the_cap_warns(heldout_run, tmp_path):
    """num_draws=N keeps exactly N per chain; step_size=... runs the run's own method (ULA) at that step, untuned;
    a cap too small to pass the checks says so plainly."""
    _, run_dir = heldout_run
    fixed = run_almond(
        ["sample", str(run_dir), "what=posterior", "out=f.csv", "num_draws=30", "step_size=0.05", "threads=1"],
        cwd=tmp_path,
    )
    assert fixed.returncode == 0, fixed.stderr
    assert "20 chains x 30 draws per row (burn-in 200 steps, step size 0.05" in fixed.stdout
    assert "acceptance" not in fixed.stdout.split("->")[0]  # ULA: no acceptance rate
    capped = run_almond(
        ["sample", str(run_dir), "what=posterior", "out=c.csv", "num_chains=2", "max_draws=200", "threads=1"],
        cwd=tmp_path,
    )
    assert capped.returncode == 0, capped.stderr
    assert "almond: warning: max_draws=200 draws per chain stopped the sampling" in capped.stdout


def test_new_rows_need_a_run_trained_on_a_file():
    cfg = compose_config(["debug=tiny"])  # data=normal_means: a simulation
    with pytest.raises(UsageError, match="data=normal_means, not read from a file"):
        read_new_rows(cfg, "rows.csv", "sample")
