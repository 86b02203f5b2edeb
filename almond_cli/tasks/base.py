"""What a data set is scored on: each data set names a task that knows its metrics, baselines and figures.

A task is an object with four methods (see ``Task``); ``task_for(dataset)`` picks it by ``dataset.name``.
The trainer calls them at the VAE/ALMOND boundary and at the end of the run, and knows nothing else of them.
"""

from __future__ import annotations

from pathlib import Path

from ..data.dataset import Dataset


class Task:
    """Scoring of a fitted model. The default scores nothing and draws nothing (data with no truth).

    Attributes:
        run_dir: the run folder, set by the trainer before any method is called; a task that fits its
            baselines by training (for example the Gaussian GLMM) keeps their run folders under it.
    """

    run_dir: Path | None = None

    def score(self, model, dataset: Dataset, cfg, device) -> dict[str, float]:
        """Metrics of a fitted model, {name: float}."""
        return {}

    def baselines(self, dataset: Dataset, cfg, device) -> dict[str, dict[str, float]]:
        """Metrics of the classical baselines, {baseline name: {metric: float}}."""
        return {}

    def snapshot(self, model, dataset: Dataset, cfg, device) -> dict | None:
        """Small tensors kept in the checkpoint at the end of the VAE phase, for the final figures."""
        return None

    def figures(self, run_dir: Path, model, dataset: Dataset, cfg, device, summary: dict,
                vae_snapshot: dict | None) -> None:
        """Writes the task's figures into ``run_dir / "figures"``."""


def task_for(dataset: Dataset) -> Task:
    """The task of a data set, by its ``name``."""
    if dataset.name == "normal_means":
        from .normal_means import NormalMeansTask

        return NormalMeansTask()
    if dataset.name == "file":
        from .file import FileTask

        return FileTask()
    if dataset.name == "mnist":
        from .images import ImageTask

        return ImageTask()
    if dataset.name in ("glmm", "glmm_file"):
        from .glmm import GLMMTask

        return GLMMTask()
    return Task()
