"""What the user sees while a run goes: a rich progress display on a terminal, plain periodic log lines
otherwise (no control codes in batch logs), and the final summary as a table."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .run_folder import RunFolder

log = logging.getLogger("almond")


def resolve_mode(mode: str) -> str:
    """``auto`` becomes ``rich`` on a terminal and ``plain`` otherwise."""
    if mode == "auto":
        return "rich" if sys.stdout.isatty() else "plain"
    return mode


class ProgressReporter:
    """Reports epochs of a phase: a rich bar with loss, throughput and time left, or a log line every ~10%.

    Args:
        mode: auto, rich, plain, or quiet / silent (no progress at all).
        updates_per_epoch: parameter updates in one epoch, for the throughput in updates per second.
    """

    def __init__(self, mode: str, updates_per_epoch: int = 1):
        self.mode = resolve_mode(mode)
        self.updates_per_epoch = updates_per_epoch
        self._rate = Throughput()
        self._progress: Progress | None = None
        self._task = None
        self._phase = ""
        self._total = 0
        self._last_line = 0.0

    def start_phase(self, phase: str, total_epochs: int, done_epochs: int) -> None:
        self._phase, self._total = phase, total_epochs
        self._rate = Throughput()
        if self.mode == "rich":
            if self._progress is None:
                self._progress = Progress(
                    TextColumn("[bold]{task.fields[phase]}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"),
                    TextColumn("{task.fields[rate]} upd/s"),
                    TimeElapsedColumn(),
                    TextColumn("left"),
                    TimeRemainingColumn(),
                    transient=False,
                )
                self._progress.start()
            self._task = self._progress.add_task(
                phase, total=total_epochs, completed=done_epochs, phase=phase, loss="-", rate="-"
            )
        elif self.mode == "plain":
            log.info("%s phase: epochs %d to %d", phase, done_epochs + 1, total_epochs)

    def end_epoch(self, epoch: int, loss: float) -> None:
        """Called after epoch index ``epoch`` (0-based) finished with mean loss ``loss``."""
        rate = self._rate.tick(self.updates_per_epoch)
        if self.mode == "rich" and self._progress is not None:
            self._progress.update(self._task, completed=epoch + 1, loss=f"{loss:.4f}", rate=_rate_text(rate))
        elif self.mode == "plain":
            every = max(1, self._total // 10)
            now = time.monotonic()
            if (epoch + 1) % every == 0 or epoch + 1 == self._total or now - self._last_line > 60:
                self._last_line = now
                log.info(
                    "%s epoch %d/%d loss %.5f, %s updates/s",
                    self._phase,
                    epoch + 1,
                    self._total,
                    loss,
                    _rate_text(rate),
                )

    def note(self, message: str) -> None:
        """A line for ``train.log`` that the screen shows only with progress (``plain``, ``rich``): with ``quiet``
        or ``silent`` it goes to the log file alone."""
        if self.mode in ("plain", "rich"):
            log.info(message)
            return
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None)
        for handler in [*log.handlers, *logging.getLogger().handlers]:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class Throughput:
    """Updates per second, smoothed over the last ~30 epochs' wall time (0 before the second tick)."""

    def __init__(self, window: int = 30):
        self.window = window
        self._ticks: list[tuple[float, int]] = []

    def tick(self, updates: int, now: float | None = None) -> float:
        """Records ``updates`` done since the last tick at time ``now`` (monotonic seconds); returns the rate."""
        now = time.monotonic() if now is None else now
        self._ticks = (self._ticks + [(now, updates)])[-(self.window + 1) :]
        if len(self._ticks) < 2 or now <= self._ticks[0][0]:
            return 0.0
        return sum(count for _, count in self._ticks[1:]) / (now - self._ticks[0][0])


def _rate_text(rate: float) -> str:
    return "-" if rate <= 0 else f"{rate:.3g}"


# The held-out rows' scores (data.holdout_fraction) are printed in the lines beneath the table, not as columns of
# it: the table stays readable; summary.json has them all.
HELDOUT_METRICS = (
    "heldout_nll",
    "heldout_nll_se",
    "heldout_mse_posterior_mean",
    "almond_heldout_gain",
    "almond_heldout_gain_se",
    "heldout_log_lik",
    "heldout_log_lik_se",
)


def print_summary(summary: dict, run_dir) -> None:
    """Prints the summary metrics as a table (one row per method, one column per metric), then ALMOND's paired
    log-likelihood gains and the held-out rows' −log p(x) where rows were held out."""
    rows = [("vae", summary.get("vae", {})), ("almond", summary.get("almond", {}))]
    rows += [(name, metrics) for name, metrics in summary.get("baselines", {}).items()]
    # console width: off a terminal (a log, a pipe) tables keep their natural width instead of 80 columns
    console = Console(force_terminal=False, width=200) if not sys.stdout.isatty() else Console()
    if any("fixed_effects" in metrics for _, metrics in rows):
        print_mixed_summary(console, rows, run_dir)
    metric_names: list[str] = []
    for _, metrics in rows:
        metric_names += [
            name
            for name, value in metrics.items()
            if name not in metric_names and name not in HELDOUT_METRICS and not isinstance(value, dict)
        ]
    table = Table(title=f"almond summary ({run_dir})")
    table.add_column("method")
    for name in metric_names:
        table.add_column(name, justify="right")
    for method, metrics in rows:
        table.add_row(method, *[_format(metrics.get(name)) for name in metric_names])
    timing = summary.get("timing", {})
    console.print(table)
    heldout = [
        f"{method} {metrics['heldout_nll']:.4f} ± {metrics['heldout_nll_se']:.4f}"
        for method, metrics in rows
        if "heldout_nll" in metrics
    ]
    if heldout:
        console.print(f"held-out rows, −log p(x) per data point: {', '.join(heldout)} (nats, ± one standard error)")
    for name, metrics in summary.get("baselines", {}).items():
        if "almond_gain" in metrics:
            per = (
                f"nats per independent group ({metrics['almond_gain_groups']} groups, paired, ± one standard error)"
                if "almond_gain_groups" in metrics
                else "nats per data point (paired over rows, ± one standard error)"
            )
            line = f"log-likelihood, ALMOND − {name}: {metrics['almond_gain']:+.4f} ± {metrics['almond_gain_se']:.4f} {per}"
            if "almond_heldout_gain" in metrics:
                which = "groups" if "almond_gain_groups" in metrics else "rows"  # a mixed model's: per group
                line += (
                    f"; held-out {which} {metrics['almond_heldout_gain']:+.4f} ± "
                    f"{metrics['almond_heldout_gain_se']:.4f}"
                )
            console.print(line)
    console.print(
        "time: VAE {:.1f} s, ALMOND {:.1f} s".format(timing.get("vae_seconds", 0.0), timing.get("almond_seconds", 0.0))
    )


def print_mixed_summary(console, rows: list, run_dir) -> None:
    """A mixed model's fits as lme4 prints them: per method, the fixed effects (estimate, SE, z, p) and each
    factor's random-effect sd and skewness."""
    for method, metrics in rows:
        effects = metrics.get("fixed_effects")
        if not effects:
            continue
        table = Table(title=f"{method}: fixed effects ({run_dir})")
        for name in ("term", "Estimate", "Std. Error", "z value", "Pr(>|z|)"):
            table.add_column(name, justify="left" if name == "term" else "right")
        for term, row in effects.items():
            table.add_row(term, *(f"{row[key]:.4g}" for key in ("estimate", "se", "z", "p")))
        console.print(table)
        laws = []
        for factor, law in metrics.get("random_effects", {}).items():
            if "sd" in law:
                laws.append(f"{factor}: sd {law['sd']:.4f}, skewness {law['skewness']:+.3f}")
            else:
                laws += [
                    f"{factor} {term}: sd {values['sd']:.4f}, skewness {values['skewness']:+.3f}"
                    for term, values in law.items()
                    if isinstance(values, dict)
                ]
        heldout = (
            f"; held-out groups {metrics['heldout_log_lik']:.2f} ± {metrics['heldout_log_lik_se']:.2f}"
            if "heldout_log_lik" in metrics
            else ""
        )
        console.print(
            f"{method}: random effects: {'; '.join(laws)}; log-likelihood {metrics['log_lik']:.2f} ± "
            f"{metrics['log_lik_se']:.2f} ({metrics.get('log_lik_method', '')}){heldout}"
        )


def report_end(mode: str, summary: dict, run_dir: Path) -> None:
    """The end of a run on screen: the summary table, or with ``progress=quiet`` one line saying where the run is;
    ``progress=silent`` prints nothing."""
    if mode == "silent":
        return
    if mode == "quiet":
        print(f"almond: run folder {run_dir}; summary {RunFolder(run_dir).summary}")
        return
    print_summary(summary, run_dir)


def _format(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
