"""Baselines that must be fitted by training (the Gaussian GLMM): each one is a child run of its own.

A task names them (``Task.trained_baselines``: {name: config}); training fits each into
``<run>/baselines/<name>/`` with its own metrics, checkpoints and summary, resuming a child that a stopped parent
left behind, and ``almond evaluate`` reloads the fitted children from their checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import saved_config
from .build import load_model_state
from .checkpoint import CheckpointError, load_checkpoint

log = logging.getLogger("almond")


def baseline_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "baselines" / name


def fit_baselines(task, dataset, cfg, run_dir: Path, new_run) -> dict:
    """Trains (or finishes) every baseline ``task`` names; returns {name: fitted model}.

    Args:
        new_run: ``new_run(cfg, folder)`` makes the child's ``TrainingRun`` (passed in by the trainer, which
            imports this module).
    """
    fitted = {}
    for name, child_cfg in task.trained_baselines(dataset, cfg).items():
        folder = baseline_dir(run_dir, name)
        folder.mkdir(parents=True, exist_ok=True)
        run = new_run(child_cfg, folder)
        last = run.checkpoint_dir / "last.pt"
        if last.is_file():
            log.info("resuming the %s baseline from %s", name, last)
            run.resume_from(load_checkpoint(last))
        else:
            log.info("fitting the %s baseline in %s", name, folder)
        run.run()
        fitted[name] = run.model
    return fitted


def load_baselines(task, dataset, cfg, run_dir: Path, device) -> dict:
    """{name: fitted model} of the baselines a finished run fitted, read from their checkpoints; one that is
    missing or unreadable is left out with a warning."""
    fitted = {}
    for name in task.trained_baselines(dataset, cfg):
        path = baseline_dir(run_dir, name) / "checkpoints" / "last.pt"
        try:
            payload = load_checkpoint(path)
        except CheckpointError as error:
            print(f"almond: warning: the {name} baseline is left out: {error}")
            continue
        fitted[name] = load_model_state(saved_config(payload["config_yaml"]), dataset, payload["model"], device)
    return fitted
