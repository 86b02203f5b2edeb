"""``almond compare <sweep folder> [csv=...]``: one row per job of a multirun, sorted by the sweep's objective.

A job is a folder with ``.hydra/overrides.yaml`` (Hydra writes it before the job runs). Its row holds the
overrides it was launched with and the summary metrics from its ``summary.json``; a job without one failed
or has not finished and sorts last. The table goes to the terminal (rich) and to a CSV file.
"""

from __future__ import annotations

import csv
import io
import json
import math
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


@dataclass
class JobRow:
    """One job of a sweep: where it ran, what it overrode, what it scored."""

    name: str
    path: Path
    status: str
    objective: float
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


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


def read_job(sweep_dir: Path, job_dir: Path) -> JobRow:
    """The row of one job folder."""
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
    return JobRow(name, job_dir, "done", objective(summary), overrides, _flatten(summary))


def collect(sweep_dir: str | Path) -> list[JobRow]:
    """Every job of the sweep, best objective first (failed and unfinished jobs last, by job number)."""
    sweep_dir = Path(sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        raise UsageError(f"compare: {sweep_dir} is not a folder; give a sweep folder (outputs/multirun/DATE/TIME)")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise UsageError(
            f"compare: {sweep_dir} holds no Hydra job folders (no */{RunFolder.OVERRIDES}); "
            "give the folder a `almond train --multirun` printed as its sweep output"
        )
    rows = [read_job(sweep_dir, job) for job in jobs]
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


def write_csv(rows: list[JobRow], path: Path) -> None:
    """The table as CSV: job, status, objective, one column per override key, one per metric."""
    keys, metrics = columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["job", "status", "objective", *keys, *metrics])
    for row in rows:
        writer.writerow(
            [
                row.name,
                row.status,
                repr(row.objective) if math.isfinite(row.objective) else "inf",
                *[row.overrides.get(k, "") for k in keys],
                *[repr(row.metrics[m]) if m in row.metrics else "" for m in metrics],
            ]
        )
    write_text_atomic(path, buffer.getvalue())


def varying(rows: list[JobRow], keys: list[str]) -> list[str]:
    """The override keys whose value differs between jobs (those set alike in every job say nothing here)."""
    return [k for k in keys if len({row.overrides.get(k) for row in rows}) > 1] if len(rows) > 1 else keys


def render(rows: list[JobRow], sweep_dir: Path) -> Table:
    keys, metrics = columns(rows)
    keys = varying(rows, keys)  # the CSV keeps every key and metric; the terminal the varying keys and ALMOND's
    metrics = [m for m in metrics if m.startswith("almond.")] or metrics
    table = Table(title=f"almond compare ({sweep_dir}): {len(rows)} jobs, best objective first")
    for name in ("job", "status", "objective", *keys, *metrics):
        # fold rather than cut: a truncated metric name or number would be worse than a taller table
        table.add_column(name, justify="left" if name in ("job", "status", *keys) else "right", overflow="fold")
    for row in rows:
        table.add_row(
            row.name,
            row.status,
            _cell(row.objective),
            *[row.overrides.get(k, "") for k in keys],
            *[_cell(row.metrics.get(m)) for m in metrics],
        )
    return table


def compare(sweep_dir: str | Path, csv_path: str | Path | None = None) -> list[JobRow]:
    """Prints the comparison of a sweep's jobs and writes it as CSV (default ``<sweep>/compare.csv``)."""
    sweep_dir = Path(sweep_dir).expanduser()
    rows = collect(sweep_dir)
    csv_path = Path(csv_path) if csv_path else sweep_dir / "compare.csv"
    write_csv(rows, csv_path)
    # off a terminal (a log file, a pipe) the table keeps its natural width instead of 80 columns
    console = Console() if Console().is_terminal else Console(width=400)
    console.print(render(rows, sweep_dir))
    optimisation = sweep_dir / "optimization_results.yaml"
    if optimisation.is_file():
        best = yaml.safe_load(optimisation.read_text(encoding="utf-8")) or {}
        console.print(f"Optuna best: {best.get('best_params')} -> {best.get('best_value')}")
    console.print(f"written {csv_path}")
    band = fitted_prior_band(rows, sweep_dir)
    if band is not None:
        console.print(
            f"written {band} and {band.with_suffix('.png')}: the fitted CDFs of the finished jobs and "
            "their pointwise band"
        )
    return rows


def fitted_prior_band(rows: list[JobRow], sweep_dir: Path, grid_size: int = 401) -> Path | None:
    """The fitted prior CDF of every finished job on one grid, with the pointwise median and min–max band across
    jobs (``compare_prior.csv``, ``compare_prior.png``): how much the fit moves between seeds or settings.

    Needs at least two finished jobs with the same number of coordinates; exact CDFs for a one-dimensional latent,
    empirical ones from 10,000 draws otherwise (``tasks/prior_summary.py``).
    """
    import torch

    from ..config import SavedConfigRefused
    from ..model.model import prior_draws
    from ..tasks.figures import plt, save_figure
    from ..tasks.prior_summary import exact_cdf_and_density, exact_quantiles, pushforward_grid
    from ..training.run_folder import load_run

    finished = [row for row in rows if row.status == "done" and RunFolder(row.path).holds_a_run()]
    if len(finished) < 2:
        return None
    curves = {}  # job -> [(z, u) per coordinate] or draws (n, P)
    for row in finished:
        try:
            run = load_run("compare", row.path, "cpu")
        except SavedConfigRefused as error:  # a tampered run is refused, never left out with a warning
            raise UsageError(f"{error} (job {row.name}: {row.path})") from None
        except UsageError as error:
            print(f"almond: warning: job {row.name} left out of the prior band: {error}")
            continue
        if int(run.cfg.latent_dim) == 1:
            z, u = pushforward_grid(run.model.decoder)
            curves[row.name] = ("exact", z, u)
        else:
            draws = prior_draws(
                run.model.decoder, int(run.cfg.latent_dim), 10_000, torch.Generator().manual_seed(0), "cpu"
            ).double()
            curves[row.name] = ("draws", None, draws)
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
            label=f"min–max of {len(cdfs)} jobs",
        )
        for cdf in cdfs:
            axis.plot(grid.numpy(), cdf.numpy(), color="tab:blue", lw=0.6, alpha=0.6)
        axis.plot(grid.numpy(), median.numpy(), color="black", lw=1.4, label="pointwise median")
        axis.set_xlabel(f"u{p}")
        axis.set_ylabel("fitted CDF")
    axes[0][0].legend(fontsize=8, frameon=False)
    figure.suptitle(f"fitted priors of the sweep {sweep_dir.name}")
    save_figure(figure, path.with_suffix(".png"))
    return path


COMMAND = Command(
    "compare",
    "sweep folder",
    "outputs/multirun/DATE/TIME",
    "One row per job of a sweep, best objective first (ALMOND's w1 where the truth is known, else its "
    "test_nll), as a table (the keys that vary between jobs) and as CSV (every key); with two or more "
    "finished jobs also their fitted prior CDFs and pointwise band (compare_prior.csv and .png).",
    {"csv": Argument(optional_str, None, help="where the CSV goes; null: <sweep folder>/compare.csv")},
    lambda sweep_dir, csv: compare(sweep_dir, csv),
)
