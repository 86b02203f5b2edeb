"""``almond compare <run or sweep folder> [<run or sweep folder> ...] [csv=...]``: runs side by side, best first.

Each folder is a run (a folder with ``.hydra/overrides.yaml``: Hydra writes it before the run starts) or a sweep
holding such job folders. A run's row holds the overrides it was launched with and the summary metrics of its
``summary.json``; a run without one failed or has not finished and sorts last. A finished run is ranked by ALMOND's
held-out −log p per row (``heldout_nll``) where it held rows out, else by the sweep's objective (``w1`` where the
truth is known, ``test_nll`` of images), else by its training rows' ``train_nll``; the ``ranked_by`` column says
which. The table goes to the terminal (rich) and to a CSV file.

With two or more finished runs fitted to the same rows, every run's per-row −log p (recomputed from its model by
the estimator and settings its ``summary.json`` used) is paired row by row with the best run's: the mean
difference and its standard error over rows say whether the gap is more than noise. Their fitted prior CDFs are
drawn together, each labelled by its run, with the pointwise band across runs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from ..atomic import write_text_atomic
from ..errors import UsageError
from ..training.run_folder import RunFolder
from .app import objective
from .arguments import Argument, Command, optional_str

SUMMARY_SECTIONS = ("almond", "vae")
MAX_LABELLED_RUNS = 10


# What a finished run is ranked by, first found first: held-out −log p where rows were held out, then the sweep's
# objective (app.objective: w1 where the truth is known, test_nll of images), then the training rows' −log p.
HELDOUT_RANKING = "heldout_nll"
LAST_RANKING = "train_nll"


@dataclass
class JobRow:
    """One run (a sweep's job or a run folder): where it ran, what it overrode, what it scored; ``label`` names it
    in figures (its name and the overrides that differ between the rows compared)."""

    name: str
    path: Path
    status: str
    objective: float
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    ranked_by: str = ""
    label: str = ""
    paired: tuple[float, float, int] | None = None  # (mean, standard error, rows) of −log p minus the best run's


def _job_sort_key(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders under ``sweep_dir`` (itself a job if it holds ``.hydra/overrides.yaml``), up to 2 levels."""
    candidates = [sweep_dir] + [p for p in sweep_dir.iterdir() if p.is_dir()]
    candidates += [q for p in candidates[1:] for q in p.iterdir() if q.is_dir() and not q.name.startswith(".")]
    jobs = [p for p in candidates if RunFolder(p).overrides.is_file()]
    return sorted(jobs, key=lambda p: _job_sort_key(str(p.relative_to(sweep_dir)) or "."))


def _flatten(summary: dict) -> dict[str, float]:
    flat = {}
    for section in SUMMARY_SECTIONS:
        for name, value in (summary.get(section) or {}).items():
            if isinstance(value, (int, float)):
                flat[f"{section}.{name}"] = float(value)
    for name, value in (summary.get("timing") or {}).items():
        if isinstance(value, (int, float)):
            flat[f"timing.{name}"] = float(value)
    return flat


def ranking(summary: dict) -> tuple[str, float]:
    """(metric name, value) a finished run is ranked by, lower is better: ALMOND's ``heldout_nll``, else the sweep's
    objective, else ``train_nll``; ("", inf) when none is finite."""
    almond = summary.get("almond") or {}
    value = almond.get(HELDOUT_RANKING)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return HELDOUT_RANKING, float(value)
    value = objective(summary)  # w1, test_nll, then train_nll
    if math.isfinite(value):
        return next(key for key in ("w1", "test_nll", LAST_RANKING) if almond.get(key) == value), value
    return "", math.inf


def read_job(sweep_dir: Path, job_dir: Path) -> JobRow:
    """The row of one job folder, named by its path below ``sweep_dir``."""
    raw = yaml.safe_load(RunFolder(job_dir).overrides.read_text(encoding="utf-8")) or []
    overrides = {}
    for item in raw:
        key, _, value = str(item).partition("=")
        if not key.lstrip("+~").startswith("hydra"):
            overrides[key.lstrip("+~")] = value
    summary_path = RunFolder(job_dir).summary
    name = str(job_dir.relative_to(sweep_dir)) if job_dir != sweep_dir else "."
    if not summary_path.is_file():
        # Without summary.json the job failed, was stopped or still runs; its own train.log says which.
        status = "incomplete"
        return JobRow(name, job_dir, status, math.inf, overrides)
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return JobRow(name, job_dir, "bad summary", math.inf, overrides)
    ranked_by, value = ranking(summary)
    return JobRow(name, job_dir, "done", value, overrides, _flatten(summary), ranked_by)


def _as_folders(folders) -> list[Path]:
    return [Path(folder).expanduser() for folder in ([folders] if isinstance(folders, (str, Path)) else folders)]


def output_folder(folders) -> Path:
    """Where the comparison's files go: the one folder given, else the folder that holds all of them."""
    folders = _as_folders(folders)
    if len(folders) == 1:
        return folders[0]
    return Path(os.path.commonpath([str(folder.resolve()) for folder in folders]))


def collect(folders) -> list[JobRow]:
    """Every run of the folders given (each a run or a sweep), best first (failed and unfinished runs last, by
    job number), each labelled by its name and the overrides that differ between the runs."""
    folders = _as_folders(folders)
    jobs: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise UsageError(
                f"compare: {folder} is not a folder; give run folders (outputs/DATE/TIME) or a sweep folder "
                "(outputs/multirun/DATE/TIME)"
            )
        found = find_jobs(folder)
        if not found:
            raise UsageError(
                f"compare: {folder} holds no Hydra job folders (no */{RunFolder.OVERRIDES}); "
                "give run folders almond train wrote, or the folder a `almond train --multirun` printed as its "
                "sweep output"
            )
        jobs += [job for job in found if job.resolve() not in {known.resolve() for known in jobs}]
    # One folder: names below it, as a sweep's job numbers; several: names below the folder that holds them all.
    base = folders[0] if len(folders) == 1 else Path(os.path.commonpath([str(job.resolve()) for job in jobs]))
    rows = [read_job(base, job.resolve() if len(folders) > 1 else job) for job in jobs]
    if len(folders) > 1 and any(row.name == "." for row in rows):
        for row in rows:
            row.name = row.path.name if row.name == "." else row.name
    keys = varying(rows, columns(rows)[0]) if len(rows) > 1 else []
    for row in rows:
        differing = " ".join(f"{key}={row.overrides[key]}" for key in keys if key in row.overrides)
        row.label = f"{row.name}: {differing}" if differing else row.name
    return sorted(rows, key=lambda row: (not math.isfinite(row.objective), row.objective))


def columns(rows: list[JobRow]) -> tuple[list[str], list[str]]:
    """(override keys, metric names) present in any row, in first-seen order."""
    keys, metrics = [], []
    for row in rows:
        keys += [k for k in row.overrides if k not in keys]
        metrics += [m for m in row.metrics if m not in metrics]
    return keys, metrics


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _paired_cells(row: JobRow) -> list[str]:
    return ["", ""] if row.paired is None else [repr(row.paired[0]), repr(row.paired[1])]


def write_csv(rows: list[JobRow], path: Path) -> None:
    """The table as CSV: job, status, objective, what it ranks by, one column per override key, one per metric, and
    the paired difference in −log p per row against the best run with its standard error (where computed)."""
    keys, metrics = columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["job", "status", "objective", *keys, *metrics, "ranked_by", "paired_nll_diff", "paired_nll_diff_se"]
    )
    for row in rows:
        writer.writerow(
            [
                row.name,
                row.status,
                repr(row.objective) if math.isfinite(row.objective) else "inf",
                *[row.overrides.get(k, "") for k in keys],
                *[repr(row.metrics[m]) if m in row.metrics else "" for m in metrics],
                row.ranked_by,
                *_paired_cells(row),
            ]
        )
    write_text_atomic(path, buffer.getvalue())


def varying(rows: list[JobRow], keys: list[str]) -> list[str]:
    """The override keys whose value differs between jobs (those set alike in every job say nothing here)."""
    return [k for k in keys if len({row.overrides.get(k) for row in rows}) > 1] if len(rows) > 1 else keys


def _ranked_by_text(rows: list[JobRow]) -> str:
    kinds = {row.ranked_by for row in rows if row.ranked_by}
    return f"best almond.{kinds.pop()} first" if len(kinds) == 1 else "best objective first (see ranked_by)"


def render(rows: list[JobRow], sweep_dir: Path) -> Table:
    keys, metrics = columns(rows)
    keys = varying(rows, keys)  # the CSV keeps every key and metric; the terminal the varying keys and ALMOND's
    metrics = [m for m in metrics if m.startswith("almond.")] or metrics
    mixed = len({row.ranked_by for row in rows if row.ranked_by}) > 1
    paired = any(row.paired is not None for row in rows)
    table = Table(title=f"almond compare ({sweep_dir}): {len(rows)} runs, {_ranked_by_text(rows)}")
    names = ("job", "status", "objective", *(["ranked_by"] if mixed else []), *keys, *metrics)
    for name in (*names, *(["paired Δ(−log p) ± se"] if paired else [])):
        # fold rather than cut: a truncated metric name or number would be worse than a taller table
        left = name in ("job", "status", "ranked_by", *keys)
        table.add_column(name, justify="left" if left else "right", overflow="fold")
    for row in rows:
        cells = [
            row.name,
            row.status,
            _cell(row.objective),
            *([row.ranked_by] if mixed else []),
            *[row.overrides.get(k, "") for k in keys],
            *[_cell(row.metrics.get(m)) for m in metrics],
        ]
        if paired:
            best = row is next(r for r in rows if r.paired is not None)  # rows are sorted best first
            cells.append(
                "" if row.paired is None else "best" if best else f"{row.paired[0]:+.4f} ± {row.paired[1]:.4f}"
            )
        table.add_row(*cells)
    return table


def compare(folders, csv_path: str | Path | None = None) -> list[JobRow]:
    """Prints the comparison of the runs of ``folders`` (one folder or a list; each a run or a sweep) and writes it as
    CSV (default ``compare.csv`` in the one folder given, else in the folder holding them all)."""
    out_dir = output_folder(folders)
    rows = collect(folders)
    csv_path = Path(csv_path) if csv_path else out_dir / "compare.csv"
    runs = load_finished(rows)
    pairing = paired_differences(rows, runs)
    write_csv(rows, csv_path)
    # off a terminal (a log file, a pipe) the table keeps its natural width instead of 80 columns
    console = Console() if Console().is_terminal else Console(width=400)
    console.print(render(rows, out_dir))
    if pairing is not None:
        which, best, count = pairing
        console.print(
            f"paired differences: each run's −log p per row minus that of the best run ({best}) on the same {count} "
            f"{which} rows, mean ± one standard error over rows (nats; > 0: worse than {best})"
        )
        for row in rows:
            if row.paired is not None and row.name != best:
                console.print(f"  {row.label}: {row.paired[0]:+.4f} ± {row.paired[1]:.4f}")
    optimisation = out_dir / "optimization_results.yaml"
    if optimisation.is_file():
        best = yaml.safe_load(optimisation.read_text(encoding="utf-8")) or {}
        console.print(f"Optuna best: {best.get('best_params')} -> {best.get('best_value')}")
    console.print(f"written {csv_path}")
    band = fitted_prior_band(rows, out_dir, runs)
    if band is not None:
        console.print(
            f"written {band} and {band.with_suffix('.png')}: the fitted CDFs of the finished runs, each labelled, "
            "and their pointwise band"
        )
    return rows


def load_finished(rows: list[JobRow]) -> dict:
    """{run name: its ``LoadedRun`` on the CPU} for every finished run with checkpoints; a run that cannot be read
    back is left out with a warning, a tampered one refused (``UsageError``)."""
    from ..config import SavedConfigRefused
    from ..training.run_folder import load_run

    runs = {}
    for row in rows:
        if row.status != "done" or not RunFolder(row.path).holds_a_run():
            continue
        try:
            runs[row.name] = load_run("compare", row.path, "cpu")
        except SavedConfigRefused as error:  # a tampered run is refused, never left out with a warning
            raise UsageError(f"{error} (job {row.name}: {row.path})") from None
        except UsageError as error:
            print(f"almond: warning: job {row.name} left out of the prior band and the paired differences: {error}")
    return runs


def row_nll(run, heldout: bool):
    """(the rows' data (n, D), −log p of each row (n,) float64) of a run's held-out rows (``heldout``) or training
    rows, by the estimator and ``evaluation`` settings its ``summary.json`` used (per unit where rows form units)."""
    from ..model.marginal import estimate_with

    dataset = run.dataset.heldout if heldout else run.dataset
    estimate = estimate_with(run.cfg.evaluation, run.model, dataset.x.to(run.device), unit_index=dataset.unit_index)
    return dataset.x, -estimate.log_marginal.double().cpu()


def paired_differences(rows: list[JobRow], runs: dict) -> tuple[str, str, int] | None:
    """Sets ``row.paired`` of every loaded run: the mean over rows of its −log p minus the best run's on the same rows,
    with the standard error of that mean (the spread of the per-row differences / sqrt(n)). Held-out rows where every
    run held some out, else the training rows. Returns (which rows, the best run's name, how many rows), or None where
    fewer than two runs were loaded or their rows differ (nothing paired)."""
    import torch

    finished = [row for row in rows if row.name in runs]
    if len(finished) < 2:
        return None
    # held-out rows scored per row (heldout_nll); a mixed model's held-out groups are scored per group instead
    heldout = all(
        runs[row.name].dataset.heldout is not None and f"almond.{HELDOUT_RANKING}" in row.metrics for row in finished
    )
    if not heldout and not all(f"almond.{LAST_RANKING}" in row.metrics for row in finished):
        return None  # images score held-out images alone (test_nll): no per-row training likelihood to pair
    scores = {row.name: row_nll(runs[row.name], heldout) for row in finished}
    best = finished[0].name  # rows are sorted best first
    x_best, nll_best = scores[best]
    if any(x.shape != x_best.shape or not torch.equal(x, x_best) for x, _ in scores.values()):
        print("almond: note: no paired differences: the runs were fitted to different rows")
        return None
    for row in finished:
        difference = scores[row.name][1] - nll_best
        count = difference.numel()
        se = float(difference.std()) / math.sqrt(count) if count > 1 else float("nan")
        row.paired = (float(difference.mean()), se, count)
    return ("held-out" if heldout else "training"), best, x_best.shape[0]


def fitted_prior_band(
    rows: list[JobRow], sweep_dir: Path, runs: dict | None = None, grid_size: int = 401
) -> Path | None:
    """The fitted prior CDF of every finished run on one grid, with the pointwise median and min–max band across
    runs (``compare_prior.csv``, ``compare_prior.png``, each run's curve labelled in the legend): how much the fit
    moves between seeds or settings.

    Needs at least two finished runs with the same number of coordinates; exact CDFs for a one-dimensional latent,
    empirical ones from 10,000 draws otherwise (``tasks/prior_summary.py``).
    """
    import torch

    from ..model.model import prior_draws
    from ..tasks.figures import plt, save_figure
    from ..tasks.prior_summary import exact_cdf_and_density, exact_quantiles, pushforward_grid

    runs = load_finished(rows) if runs is None else runs
    labels = {row.name: row.label or row.name for row in rows}
    curves = {}  # job -> [(z, u) per coordinate] or draws (n, P)
    for name, run in runs.items():
        if int(run.cfg.latent_dim) == 1:
            z, u = pushforward_grid(run.model.decoder)
            curves[name] = ("exact", z, u)
        else:
            draws = prior_draws(
                run.model.decoder, int(run.cfg.latent_dim), 10_000, torch.Generator().manual_seed(0), "cpu"
            ).double()
            curves[name] = ("draws", None, draws)
    widths = {curve[2].shape[1] for curve in curves.values()}
    if len(curves) < 2 or len(widths) != 1:
        return None
    lines, figure_rows = ["coordinate,u,median,lower,upper," + ",".join(f"job_{name}" for name in curves)], []
    for p in range(widths.pop()):
        lows, highs = [], []
        for kind, z, u in curves.values():
            if kind == "exact":
                edges = exact_quantiles(z, u[:, p], [0.001, 0.999])
                lows.append(float(edges[0])), highs.append(float(edges[1]))
            else:
                lows.append(float(u[:, p].quantile(0.001))), highs.append(float(u[:, p].quantile(0.999)))
        grid = torch.linspace(min(lows), max(highs), grid_size, dtype=torch.float64)
        cdfs = []
        for kind, z, u in curves.values():
            if kind == "exact":
                cdfs.append(exact_cdf_and_density(z, u[:, p], grid)[0])
            else:
                cdfs.append((u[:, p][None, :] <= grid[:, None]).double().mean(1))
        stacked = torch.stack(cdfs)  # (jobs, grid)
        median, lower, upper = stacked.median(0).values, stacked.min(0).values, stacked.max(0).values
        for i in range(grid_size):
            lines.append(
                ",".join(
                    [
                        str(p),
                        f"{float(grid[i]):.8g}",
                        f"{float(median[i]):.8g}",
                        f"{float(lower[i]):.8g}",
                        f"{float(upper[i]):.8g}",
                        *[f"{float(c[i]):.8g}" for c in cdfs],
                    ]
                )
            )
        figure_rows.append((p, grid, median, lower, upper, cdfs))
    path = sweep_dir / "compare_prior.csv"
    write_text_atomic(path, "\n".join(lines) + "\n")
    figure, axes = plt.subplots(1, len(figure_rows), figsize=(4.6 * len(figure_rows), 3.6), squeeze=False)
    for axis, (p, grid, median, lower, upper, cdfs) in zip(axes[0], figure_rows):
        axis.fill_between(
            grid.numpy(),
            lower.numpy(),
            upper.numpy(),
            color="tab:blue",
            alpha=0.2,
            label=f"min–max of {len(cdfs)} runs",
        )
        named = len(cdfs) <= MAX_LABELLED_RUNS  # beyond that the band alone: a legend of 50 runs reads as noise
        for index, (name, cdf) in enumerate(zip(curves, cdfs)):
            axis.plot(
                grid.numpy(),
                cdf.numpy(),
                color=f"C{index % 10}" if named else "tab:blue",
                lw=1.0 if named else 0.6,
                alpha=0.9 if named else 0.6,
                label=labels.get(name, name) if named else None,
            )
        axis.plot(grid.numpy(), median.numpy(), color="black", lw=1.4, ls=":", label="pointwise median")
        axis.set_xlabel(f"u{p}")
        axis.set_ylabel("fitted CDF")
    axes[0][0].legend(fontsize=7, frameon=False)
    figure.suptitle(f"fitted priors of the runs in {sweep_dir.name}")
    save_figure(figure, path.with_suffix(".png"))
    return path


COMMAND = Command(
    "compare",
    "run or sweep folder",
    "outputs/DATE/TIME or outputs/multirun/DATE/TIME",
    "One row per run (run folders, or the jobs of a sweep), best first: by ALMOND's held-out -log p per row "
    "(heldout_nll) where rows were held out, else ALMOND's w1 where the truth is known, else test_nll, else "
    "train_nll; as a table (the keys that vary between runs) and as CSV (every key). With two or more finished "
    "runs fitted to the same rows, each run's paired difference in -log p per row against the best run, with its "
    "standard error over rows, and their fitted prior CDFs, each labelled, with the pointwise band "
    "(compare_prior.csv and .png).",
    {"csv": Argument(optional_str, None, help="where the CSV goes; null: compare.csv in the (common) folder")},
    lambda folders, csv: compare(folders, csv),
    several_folders=True,
)
