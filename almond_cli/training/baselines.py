"""Baselines that must be fitted by training (the Gaussian GLMM): each one is a child run of its own.

A task names them (``Task.trained_baselines``: {name: config}); training fits each into its own run folder
(``RunFolder.baseline``: ``<run>/baselines/<name>/``) with its own metrics, checkpoints and summary, resuming a
child that a stopped parent left behind, and ``almond evaluate`` reloads the fitted children from their
checkpoints (``LoadedRun.fitted_baselines``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .run_folder import RunFolder

log = logging.getLogger("almond")


def fit_baselines(task, dataset, cfg, run_dir: Path, new_run) -> dict:
    """Trains (or finishes) every baseline ``task`` names; returns {name: fitted model}.

    Args:
        new_run: ``new_run(cfg, folder)`` makes the child's ``TrainingRun`` (passed in by the trainer, which
            imports this module).
    """
    fitted = {}
    for name, child_cfg in task.trained_baselines(dataset, cfg).items():
        folder = RunFolder(run_dir).baseline(name)
        folder.path.mkdir(parents=True, exist_ok=True)
        run = new_run(child_cfg, folder.path)
        if folder.holds_a_run():
            checkpoint, payload = folder.newest_checkpoint(f"the {name} baseline")
            log.info("resuming the %s baseline from %s", name, checkpoint)
            run.resume_from(payload)
        else:
            log.info("fitting the %s baseline in %s", name, folder.path)
        run.run()
        fitted[name] = run.model
    return fitted
