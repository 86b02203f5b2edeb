"""The one table of data sets: each ``data`` option's builder and the task that scores a model fitted to it.

Adding a data set = its builder in ``data/``, its task in ``tasks/`` (or an existing one), a row here and a YAML
file in ``configs/data/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..data.dataset import Dataset, build_normal_means, hold_out
from ..data.files import build_file_dataset
from ..data.glmm import build_glmm_file, build_glmm_simulation
from ..data.mnist import build_mnist
from .base import Task
from .file import FileTask
from .glmm import GLMMTask
from .images import ImageTask
from .normal_means import NormalMeansTask


@dataclass(frozen=True)
class DataOption:
    """A ``data`` option: ``build(data_cfg, generator) -> Dataset`` (simulations draw from ``generator``) and
    the ``Task`` class that scores fits to it."""

    build: Callable[[Any, torch.Generator], Dataset]
    task: type[Task]


DATA_SETS: dict[str, DataOption] = {
    "normal_means": DataOption(build_normal_means, NormalMeansTask),
    "file": DataOption(build_file_dataset, FileTask),
    "mnist": DataOption(build_mnist, ImageTask),
    "glmm": DataOption(build_glmm_simulation, GLMMTask),
    "glmm_file": DataOption(build_glmm_file, GLMMTask),
}


def _option(name: str) -> DataOption:
    if name not in DATA_SETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATA_SETS)}")
    return DATA_SETS[name]


def build_dataset(data_cfg, seed: int) -> Dataset:
    """Builds the data set that ``data_cfg`` names; simulations draw from a generator seeded by ``seed``. With
    ``data.holdout_fraction`` > 0 it holds the training rows and ``heldout`` the rest (``data.dataset.hold_out``):
    training, resume, ``almond evaluate``, ``sample`` and ``prior`` all build their data here, so all see one split."""
    dataset = _option(data_cfg.name).build(data_cfg, torch.Generator().manual_seed(seed))
    return hold_out(dataset, float(data_cfg.get("holdout_fraction", 0.0)), seed)  # a run saved before the key: 0


def task_for(dataset: Dataset) -> Task:
    """A fresh task for ``dataset``, by its ``name``."""
    return _option(dataset.name).task()
