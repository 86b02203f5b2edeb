"""Loggers people already read, written beside ``metrics.jsonl`` (which stays the record of a run).

``logger=tensorboard`` writes TensorBoard events into ``<run folder>/tensorboard``: per epoch the loss,
learning rate, Langevin step size, chain diagnostics (mean log-joint, gradient norm, non-finite fraction,
split-R-hat when checked) and time; at the end the summary metrics and the run's PNG figures. With no
logger configured (the default) the trainer gets a ``NullLogger`` and nothing else happens.
"""

from __future__ import annotations

import math
from pathlib import Path

CHAIN_FIELDS = (
    "mean_log_joint",
    "grad_norm",
    "nonfinite_fraction",
    "rhat_max",
    "rhat_median",
    "ess_bulk_min",
    "ess_bulk_median",
    "ess_tail_min",
    "posterior_ks_mean",
    "posterior_ks_max",
)
SKIPPED_FIELDS = ("phase", "epoch", "step", "elapsed")


class NullLogger:
    """Logs nothing: the trainer's logger when ``logger`` is null, and on every rank but 0."""

    def log_epoch(self, record: dict) -> None:
        pass

    def log_summary(self, summary: dict, run_dir: Path, step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def scalar_tag(phase: str, name: str) -> str:
    """TensorBoard tag of a metrics record field: chain diagnostics under ``chains/``, the rest per phase."""
    if name in CHAIN_FIELDS:
        return f"chains/{name}"
    if name == "step_size":
        return "almond/langevin_step_size"
    return f"{phase}/{name}"


class TensorBoardLogger(NullLogger):
    """Writes a run's curves, metrics and figures as TensorBoard events.

    Args:
        log_dir: the events folder (inside the run folder).
        flush_seconds: how often pending events reach the disk.
        figures: whether the run's ``figures/*.png`` are logged as images at the end.
        purge_step: on resume, the step the run continues from: events at or after it (written before the
            interruption, and about to be written again) are hidden, as ``metrics.jsonl`` is cut back.
    """

    def __init__(self, log_dir: Path, flush_seconds: float, figures: bool, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.figures = figures
        self.writer = SummaryWriter(
            log_dir=str(log_dir), flush_secs=max(1, int(flush_seconds)), purge_step=purge_step or None
        )

    def log_epoch(self, record: dict) -> None:
        """One ``metrics.jsonl`` record: every finite numeric field becomes a scalar at ``record["step"]``."""
        step, phase = int(record["step"]), record["phase"]
        for name, value in record.items():
            if name in SKIPPED_FIELDS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(scalar_tag(phase, name), float(value), global_step=step)

    def log_summary(self, summary: dict, run_dir: Path, step: int) -> None:
        """Final metrics as ``metrics/<method>/<name>`` and the figures as ``figures/<name>`` images."""
        methods = {
            "vae": summary.get("vae", {}),
            "almond": summary.get("almond", {}),
            **(summary.get("baselines") or {}),
        }
        for method, metrics in methods.items():
            for name, value in (metrics or {}).items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"metrics/{method}/{name}", float(value), global_step=step)
        if self.figures:
            import matplotlib.pyplot as plt

            for path in sorted((Path(run_dir) / "figures").glob("*.png")):
                image = plt.imread(path)  # (H, W, 3 or 4) floats in [0, 1]
                self.writer.add_image(f"figures/{path.stem}", image[..., :3], global_step=step, dataformats="HWC")
        self.writer.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def build_logger(cfg, run_dir: Path, start_step: int, enabled: bool = True) -> NullLogger:
    """The logger ``cfg.logger`` names (``NullLogger`` when none, or when ``enabled`` is False)."""
    logger_cfg = cfg.get("logger")
    if not enabled or logger_cfg is None:
        return NullLogger()
    if logger_cfg.name == "tensorboard":
        return TensorBoardLogger(
            Path(run_dir) / logger_cfg.subdir, logger_cfg.flush_seconds, logger_cfg.figures, purge_step=start_step
        )
    raise ValueError(f"unknown logger {logger_cfg.name!r}")
