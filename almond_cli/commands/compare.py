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
    jobs = [p for p in candidates if (p / ".hydra" / "overrides.yaml").is_file()]
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
    raw = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8")) or []
    overrides = {}
    for item in raw:
        key, _, value = str(item).partition("=")
        if not key.lstrip("+~").startswith("hydra"):
            overrides[key.lstrip("+~")] = value
    summary_path = job_dir / "summary.json"
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
        raise UsageError(f"compare: {sweep_dir} holds no Hydra job folders (no */.hydra/overrides.yaml); "
                         "give the folder a `almond train --multirun` printed as its sweep output")
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
        writer.writerow([row.name, row.status, repr(row.objective) if math.isfinite(row.objective) else "inf",
                         *[row.overrides.get(k, "") for k in keys], *[repr(row.metrics[m]) if m in row.metrics else ""
                                                                     for m in metrics]])
    write_text_atomic(path, buffer.getvalue())


def render(rows: list[JobRow], sweep_dir: Path) -> Table:
    keys, metrics = columns(rows)
    table = Table(title=f"almond compare ({sweep_dir}): {len(rows)} jobs, best objective first")
    for name in ("job", "status", "objective", *keys, *metrics):
        # fold rather than cut: a truncated metric name or number would be worse than a taller table
        table.add_column(name, justify="left" if name in ("job", "status", *keys) else "right", overflow="fold")
    for row in rows:
        table.add_row(row.name, row.status, _cell(row.objective), *[row.overrides.get(k, "") for k in keys],
                      *[_cell(row.metrics.get(m)) for m in metrics])
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
    return rows


COMMAND = Command("compare", "sweep folder", "outputs/multirun/DATE/TIME",
                  "One row per job of a sweep, best objective first (ALMOND's w1 where the truth is known, else its "
                  "test_nll), as a table and as CSV.",
                  {"csv": Argument(optional_str, None, help="where the CSV goes; null: <sweep folder>/compare.csv")},
                  lambda sweep_dir, csv: compare(sweep_dir, csv))
