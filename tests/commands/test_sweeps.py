"""Sweeps through Hydra's own plugins (joblib launcher, Optuna sweeper), the missing-extra message, and
``almond compare``. Tests that need the ``sweep`` extra skip when it is not installed."""

import csv
import json
import math

import pytest
import yaml
from conftest import run_almond

from almond_cli.commands import cli, extras
from almond_cli.commands.compare import collect, compare

TINY = ["debug=tiny", "threads=1", "progress=quiet"]


def _write_job(folder, overrides, summary=None):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def test_missing_extra_names_the_extra(monkeypatch):
    monkeypatch.setattr(extras, "_installed", lambda module: False)
    with pytest.raises(extras.MissingExtraError, match=r"\.\[sweep\]"):
        extras.check_extras(["seed=2", "hydra/launcher=joblib"])
    with pytest.raises(extras.MissingExtraError, match=r"hparams_search=sampler_optuna.*\.\[sweep\]"):
        extras.check_extras(["hparams_search=sampler_optuna"])
    with pytest.raises(extras.MissingExtraError, match=r"\.\[tensorboard\]"):
        extras.check_extras(["logger=tensorboard"])
    extras.check_extras(["hydra/launcher=basic", "logger=null", "hparams_search=null"])  # built in: no extra


def test_missing_extra_is_exit_2_from_the_command(tmp_path):
    # A sitecustomize that hides the plugin package simulates an install without the extra.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith('hydra_plugins.hydra_joblib_launcher'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    process = run_almond(
        ["train", "--multirun", "hydra/launcher=joblib", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(hide)},
    )
    assert process.returncode == 2, process.stderr
    assert "pip install" in process.stderr and "[sweep]" in process.stderr
    assert not (tmp_path / "sweep").exists()


def test_compare_sorts_by_objective_and_writes_csv(tmp_path):
    sweep = tmp_path / "sweep"
    _write_job(sweep / "0", ["sampler.step_size=0.01"], {"almond": {"w1": 0.5, "ks": 0.2}, "vae": {"w1": 0.9}})
    _write_job(sweep / "1", ["sampler.step_size=0.1"])  # failed: no summary
    _write_job(sweep / "2", ["sampler.step_size=0.03"], {"almond": {"w1": 0.25, "ks": 0.1}, "vae": {"w1": 0.9}})
    _write_job(sweep / "3", ["sampler.step_size=0.003"], {"almond": {"test_nll": 1.5}})  # no truth: NLL
    rows = collect(sweep)
    assert [row.name for row in rows] == ["2", "0", "3", "1"]
    assert [row.objective for row in rows][:3] == [0.25, 0.5, 1.5] and math.isinf(rows[3].objective)
    assert rows[3].status == "incomplete"
    compare(sweep)
    with open(sweep / "compare.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["sampler.step_size"] for r in table] == ["0.03", "0.01", "0.003", "0.1"]
    assert float(table[0]["almond.w1"]) == 0.25 and table[3]["status"] == "incomplete"


def test_compare_refuses_a_folder_without_jobs(tmp_path, almond_refuses):
    assert "no Hydra job folders" in almond_refuses(["compare", str(tmp_path)], cwd=tmp_path)


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_and_survives_a_failed_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    # step_size=1e6 diverges in the first ALMOND epoch: that job fails, the other must still complete.
    process = run_almond(
        [
            "train",
            "--multirun",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            *TINY,
            "sampler.step_size=0.01,1e6",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert process.returncode == 1, process.stderr  # Hydra reports the failed job at the end
    assert "Joblib" in process.stdout + process.stderr
    assert json.loads((sweep / "0" / "summary.json").read_text())["almond"]["w1"] > 0
    assert not (sweep / "1" / "summary.json").exists()
    assert "diverged" in process.stderr
    rows = collect(sweep)
    assert [(row.name, row.status) for row in rows] == [("0", "done"), ("1", "incomplete")]


@pytest.mark.slow
def test_optuna_search_writes_results_and_compare_ranks_trials(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "search"
    process = run_almond(
        [
            "train",
            "--multirun",
            "hparams_search=sampler_optuna",
            "hydra.sweeper.n_trials=3",
            *TINY,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {
        "sampler.step_size",
        "sampler.num_steps",
        "sampler.burn_in",
        "sampler.num_chains",
    }
    assert 0.001 <= results["best_params"]["sampler.step_size"] <= 0.1
    w1s = [json.loads((sweep / str(job) / "summary.json").read_text())["almond"]["w1"] for job in range(3)]
    assert results["best_value"] == pytest.approx(min(w1s))  # the objective is ALMOND's w1 (truth known)
    compared = run_almond(["compare", str(sweep)], cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    with open(sweep / "compare.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [float(r["objective"]) for r in table] == sorted(w1s)
    assert float(table[0]["sampler.step_size"]) == pytest.approx(results["best_params"]["sampler.step_size"])
    assert "Optuna best" in compared.stdout


def test_compare_takes_key_value_arguments_like_the_other_commands(tmp_path, almond_refuses):
    sweep = tmp_path / "sweep"
    job = sweep / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (job / "summary.json").write_text(json.dumps({"almond": {"w1": 0.25}}))
    table = tmp_path / "elsewhere.csv"
    process = run_almond(["compare", str(sweep), f"csv={table}"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert table.read_text().splitlines()[1].startswith("0,done,0.25")
    assert "unknown argument 'cvs'; it takes csv" in almond_refuses(["compare", str(sweep), "cvs=x.csv"], cwd=tmp_path)


@pytest.mark.parametrize(
    "command, keys",
    [
        ("compare", ["csv"]),
        ("prior", ["n", "grid", "seed", "device", "threads"]),
        ("evaluate", ["k", "n_samples", "seed", "device", "threads"]),
        ("sample", ["what", "n", "out", "num_chains", "step_size", "level", "device", "threads"]),
    ],
)
def test_every_subcommand_lists_its_keys_with_defaults(command, keys, capsys):
    try:  # in-process: the help text is cli.main's, no start-up to pay
        cli.main([command, "--help"])
    except SystemExit as stopped:
        assert stopped.code in (0, None)
    stdout = capsys.readouterr().out
    assert stdout.startswith(f"usage: almond {command} <")
    listed = {line.split()[0]: line for line in stdout.splitlines() if line.startswith("  ")}
    for key in keys:
        assert key in listed and "(default: " in listed[key], key


def test_compare_shows_what_varies_and_the_band_of_the_fitted_priors(tmp_path):
    sweep = tmp_path / "sweep"
    process = run_almond(["train", "--multirun", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    compared = run_almond(["compare", str(sweep)], cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    header = next(line for line in compared.stdout.splitlines() if "objective" in line and "status" in line)
    assert "seed" in header and "debug" not in header and "threads" not in header  # only what varies
    assert "almond.w1" in header and "vae.w1" not in header  # the VAE's columns stay in the CSV
    assert "vae.w1" in (sweep / "compare.csv").read_text().splitlines()[0]
    with open(sweep / "compare_prior.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 401 and set(rows[0]) == {"coordinate", "u", "median", "lower", "upper", "job_0", "job_1"}
    for row in rows:
        jobs = [float(row["job_0"]), float(row["job_1"])]
        assert float(row["lower"]) == min(jobs) and float(row["upper"]) == max(jobs)
        assert float(row["lower"]) <= float(row["median"]) <= float(row["upper"])
    cdf = [float(row["job_0"]) for row in rows]
    assert all(b >= a for a, b in zip(cdf, cdf[1:])) and cdf[-1] > 0.99
    assert (sweep / "compare_prior.png").read_bytes()[:4] == b"\x89PNG"
