"""``almond compare RUN RUN ...`` and ``almond prior RUN`` at a glance: runs labelled and ranked by held-out −log p,
paired differences with standard errors, and the empirical-Bayes fits overlaid on the fitted prior."""

from __future__ import annotations

import csv
import math
import warnings

import pytest
import torch
from conftest import run_almond

from almond_cli.commands import compare as compare_module
from almond_cli.commands import prior as prior_module
from almond_cli.commands.app import objective
from almond_cli.commands.compare import ranking
from almond_cli.data.priors import DiscretePrior, NormalPrior
from almond_cli.model.marginal import estimate_with
from almond_cli.tasks import figures
from almond_cli.tasks.normal_means import baseline_priors
from almond_cli.training.run_folder import load_run

TINY = ["debug=tiny", "threads=1", "progress=silent", "data.holdout_fraction=0.25"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs on the same rows (seed 0, 50 of 200 held out) that differ in their step size, and a third on
    other rows (seed 2)."""
    root = tmp_path_factory.mktemp("runs")
    folders = {}
    for name, overrides in (
        ("coarse", ["sampler.step_size=0.03"]),
        ("fine", ["sampler.step_size=0.01"]),
        ("other_rows", ["seed=2"]),
    ):
        folders[name] = root / name
        run_almond(["train", *TINY, *overrides, f"hydra.run.dir={folders[name]}"], cwd=root, check=True)
    return folders


@pytest.fixture
def kept_figures(monkeypatch):
    """Figures the code under test finishes, kept open instead of written: {file name: figure}."""
    kept = {}
    monkeypatch.setattr(figures, "save_figure", lambda figure, path: kept.__setitem__(path.name, figure))
    monkeypatch.setattr(prior_module, "save_figure", lambda figure, path: kept.__setitem__(path.name, figure))
    yield kept
    for figure in kept.values():
        figures.plt.close(figure)


def _heldout_nll_per_row(folder) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out rows (n, D), −log p per row (n,)) of a run, computed here from its model and settings."""
    run = load_run("test", folder, "cpu")
    rows = run.dataset.heldout
    return rows.x, -estimate_with(run.cfg.evaluation, run.model, rows.x).log_marginal.double()


def test_ranking_prefers_heldout_likelihood_and_never_gives_inf_where_a_likelihood_exists():
    assert ranking({"almond": {"w1": 0.3, "heldout_nll": 1.2, "train_nll": 1.1}}) == ("heldout_nll", 1.2)
    assert ranking({"almond": {"w1": 0.3, "train_nll": 1.1}}) == ("w1", 0.3)
    assert ranking({"almond": {"u_mean": 0.5, "train_nll": -1.1}}) == ("train_nll", -1.1)  # data=file, none held out
    assert ranking({"almond": {"test_nll": 90.0}}) == ("test_nll", 90.0)
    name, value = ranking({"almond": {}})
    assert name == "" and math.isinf(value)
    # The sweeper's objective keeps w1 first, and falls back to the likelihoods instead of +inf on a user's file.
    assert objective({"almond": {"w1": 0.3, "heldout_nll": 1.2}}) == 0.3
    assert objective({"almond": {"heldout_nll": 1.2, "train_nll": 1.1}}) == 1.2
    assert objective({"almond": {"u_mean": 0.5, "train_nll": -1.1}}) == -1.1


def test_compare_labels_ranks_and_pairs_two_runs(runs, tmp_path):
    process = run_almond(["compare", str(runs["fine"]), str(runs["coarse"]), f"csv={tmp_path / 'c.csv'}"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    with open(tmp_path / "c.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    # Ranked by ALMOND's held-out −log p, lowest first; the objective column is that number, never inf.
    heldout = [float(row["almond.heldout_nll"]) for row in table]
    assert heldout == sorted(heldout) and {row["job"] for row in table} == {"fine", "coarse"}
    assert all(float(row["objective"]) == float(row["almond.heldout_nll"]) for row in table)
    assert all(row["ranked_by"] == "heldout_nll" for row in table) and "inf" not in process.stdout
    # The table labels each run by its folder name and the override that differs; the legend line says so too.
    header = next(line for line in process.stdout.splitlines() if "objective" in line and "status" in line)
    assert "sampler.step_size" in header and "debug" not in header
    best, worse = table[0]["job"], table[1]["job"]
    step = {"coarse": "0.03", "fine": "0.01"}
    assert f"{worse}: sampler.step_size={step[worse]}: +" in process.stdout
    # The paired difference: the mean and standard error of the per-row differences, computed here independently.
    x_best, nll_best = _heldout_nll_per_row(runs[best])
    x_worse, nll_worse = _heldout_nll_per_row(runs[worse])
    assert torch.equal(x_best, x_worse) and x_best.shape[0] == 50
    difference = (nll_worse - nll_best).numpy()
    mean, se = difference.mean(), difference.std(ddof=1) / math.sqrt(50)
    # Same estimator, seed and thread count: the same numbers up to the summation order of a mean (1e-12).
    assert abs(float(table[1]["paired_nll_diff"]) - mean) < 1e-12
    assert abs(float(table[1]["paired_nll_diff_se"]) - se) < 1e-12 and se > 0
    assert float(table[0]["paired_nll_diff"]) == 0.0
    # ... and it is the difference of the two runs' summary heldout_nll (the same rows scored the same way).
    assert abs(mean - (heldout[1] - heldout[0])) < 1e-9
    assert "50 held-out rows" in process.stdout


def test_compare_band_says_which_run_is_which(runs, tmp_path, kept_figures):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = compare_module.compare([runs["coarse"], runs["fine"]], tmp_path / "c.csv")
    labels = {row.label for row in rows}
    assert labels == {"coarse: sampler.step_size=0.03", "fine: sampler.step_size=0.01"}
    (axis,) = kept_figures["compare_prior.png"].axes
    legend = {text.get_text() for text in axis.get_legend().get_texts()}
    assert labels <= legend and "pointwise median" in legend
    header = (runs["coarse"].parent / "compare_prior.csv").read_text().splitlines()[0]
    assert "job_coarse" in header and "job_fine" in header


def test_compare_pairs_nothing_across_different_rows(runs, tmp_path):
    process = run_almond(["compare", str(runs["coarse"]), str(runs["other_rows"])], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert "fitted to different rows" in process.stdout and "minus that of the best run" not in process.stdout
    refused = run_almond(["compare"], cwd=tmp_path)
    assert refused.returncode == 2 and "give one or more run or sweep folder" in refused.stderr


def test_prior_overlays_the_empirical_bayes_fits_and_the_data(runs, kept_figures, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior_module.prior(runs["coarse"], grid=101, threads=1, device="cpu")
    run = load_run("test", runs["coarse"], "cpu")
    fits = baseline_priors(run.model.likelihood, run.dataset)  # fitted to the 150 training rows alone
    assert "NPMLE: mean" in capsys.readouterr().out
    density_axis, cdf_axis = kept_figures["prior.png"].axes[:2]
    legend = {text.get_text() for text in density_axis.get_legend().get_texts()}
    assert legend == {"data x (n = 150)", "fitted", "truth", "normal EB (ML)", "NPMLE"}
    # The CDF panel draws each fit's own CDF: the NPMLE's steps and the normal prior's curve, on one grid.
    lines = {line.get_label(): line for line in cdf_axis.get_lines()}
    grid = torch.as_tensor(lines["NPMLE"].get_xdata(), dtype=torch.float64)
    assert isinstance(fits["npmle"], DiscretePrior) and isinstance(fits["normal_eb"], NormalPrior)
    torch.testing.assert_close(torch.as_tensor(lines["NPMLE"].get_ydata()), fits["npmle"].cdf(grid))
    torch.testing.assert_close(torch.as_tensor(lines["normal EB (ML)"].get_ydata()), fits["normal_eb"].cdf(grid))
    data = torch.as_tensor(lines["data x"].get_xdata())
    torch.testing.assert_close(data, run.dataset.x[:, 0].double().sort().values)


def test_prior_figure_draws_a_point_mass_normal_fit_without_warnings(tmp_path, kept_figures):
    """tau = 0 (the data no more spread than their noise): a vertical line and a step, not a NaN density."""
    u = torch.linspace(-3, 3, 11, dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    result = {
        "grid": [(0, float(t), float(normal.log_prob(t).exp()), float(normal.cdf(t))) for t in u],
        "summary": [{"method": "exact (change of variables, d = 1)"}],
    }
    baselines = {"normal_eb": NormalPrior(mean=0.5, variance=0.0), "npmle": DiscretePrior([0.0, 1.0], [0.3, 0.7])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior_module.prior_figure(result, None, tmp_path / "prior.png", baselines, torch.randn(40))
    cdf_axis = kept_figures["prior.png"].axes[1]
    (step,) = [line for line in cdf_axis.get_lines() if line.get_label() == "normal EB (ML)"]
    assert set(step.get_ydata().tolist()) == {0.0, 1.0}
