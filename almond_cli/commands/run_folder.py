"""Reading a finished (or stopped) run back: its config, last checkpoint, model and data, for ``almond evaluate``
and ``almond sample``. Nothing in the run folder is changed."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf

from ..config import saved_config
from ..data.dataset import Dataset, check_same_data
from ..errors import UsageError
from ..model.model import LatentVariableModel
from ..tasks.registry import build_dataset
from ..training.build import load_model_state
from ..training.checkpoint import CheckpointError, load_checkpoint
from ..training.runtime import configure_process, pick_device, seed_streams


@dataclass
class LoadedRun:
    """A run folder read back.

    Attributes:
        run_dir: the run folder.
        checkpoint_path: the checkpoint the model came from.
        payload: the checkpoint's contents.
        cfg: the run's resolved config.
        dataset: the data it was trained on, rebuilt (simulations from the seed, files read again).
        model: the fitted model on ``device``, in eval mode.
        device: where the model lives.
    """

    run_dir: Path
    checkpoint_path: Path
    payload: dict
    cfg: Any
    dataset: Dataset
    model: LatentVariableModel
    device: torch.device


def _resolve_data_paths(cfg, run_dir: Path) -> None:
    """Relative data paths were relative to where ``almond train`` ran; Hydra kept that folder."""
    if cfg.data.get("name") != "file":
        return
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    train_cwd = None
    if hydra_file.is_file():
        train_cwd = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd")
    for key in ("path", "truth_path"):
        value = cfg.data.get(key)
        if value and not Path(value).expanduser().is_absolute() and train_cwd:
            candidate = Path(train_cwd) / value
            if not Path(value).exists() and candidate.exists():
                cfg.data[key] = str(candidate)


def load_run(command: str, run_dir: Path, device: str = "auto", threads: int | None = None) -> LoadedRun:
    """Loads ``run_dir``'s ``checkpoints/last.pt``, its config, data and model; refuses a folder that is not a run."""
    if not run_dir.exists():
        raise UsageError(f"{command}: {run_dir} does not exist; give a run folder made by almond train (outputs/DATE/TIME)")
    if not run_dir.is_dir():
        raise UsageError(f"{command}: {run_dir} is a file, not a run folder; give the folder that holds checkpoints/")
    checkpoint_path = run_dir / "checkpoints" / "last.pt"
    if not checkpoint_path.is_file():
        raise UsageError(f"{command}: {run_dir} is not an almond run folder: it has no checkpoints/last.pt "
                         "(a run writes it after its first checkpoint); give the folder almond train printed")
    try:
        payload = load_checkpoint(checkpoint_path)
    except CheckpointError as error:
        raise UsageError(f"{command}: {error}") from None
    configure_process(threads)
    cfg = saved_config(payload["config_yaml"])
    _resolve_data_paths(cfg, run_dir)
    dataset = build_dataset(cfg.data, seed_streams(cfg.seed)["data"])
    check_same_data(payload.get("data"), dataset, command)
    chains = payload.get("chains")
    if chains is not None and chains["positions"].shape[0] != dataset.num_units:  # one set per unit
        raise UsageError(f"{command}: the data now has {dataset.num_units} rows but the run was trained on "
                         f"{chains['positions'].shape[0]} ({cfg.data.get('path', cfg.data.name)}); the data file "
                         "changed since training, so this run cannot be evaluated or sampled on it")
    target = pick_device(device)
    try:
        model = load_model_state(cfg, dataset, payload["model"], target)
    except RuntimeError as error:
        raise UsageError(f"{command}: the checkpoint's model does not fit the data it was trained on "
                         f"({str(error).splitlines()[0][:200]}); was the data file changed?") from None
    return LoadedRun(run_dir.resolve(), checkpoint_path, payload, cfg, dataset, model, target)


def new_output_folder(parent: Path) -> Path:
    """A fresh ``parent/<timestamp>`` folder (``-2``, ``-3``... if the second is taken), created empty."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        folder = parent / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise UsageError(f"cannot create a new folder in {parent}")  # pragma: no cover
