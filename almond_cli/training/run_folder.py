"""The run folder: its layout, which checkpoint a run is continued or read back from, and reading a run back.

This is the one module that spells the names of a run folder's files (``tests/test_run_folder_names.py`` fails
on a copy elsewhere in the package); training, resume, ``warm_start=``, the baselines and every command open a
run through ``RunFolder``, and ``evaluate``, ``sample``, ``prior`` and ``compare`` read one back with ``load_run``.

    <run>/.hydra/config.yaml     the composed config (Hydra's; a resume's is in .hydra/resume-<stamp>/)
    <run>/train.log              the log (Hydra's job log: ``hydra.job.name: train`` in configs/train.yaml)
    <run>/metrics.jsonl          one JSON line per finished epoch
    <run>/summary.json           the finished run's scores (``training/scoring.py``)
    <run>/checkpoints/last.pt    the newest checkpoint: a hard link (or copy) of the newest numbered one
    <run>/checkpoints/vae.pt     the end of the VAE warm start (``warm_start=`` and evaluate's VAE row read it)
    <run>/checkpoints/step-<update, 9 digits>-<phase>.pt   the numbered checkpoints, the newest
                                 ``checkpoint.keep`` + 1 kept
    <run>/eval/<stamp>/, samples/<stamp>/, prior/<stamp>/   what almond evaluate, sample and prior write
    <run>/baselines/<name>/      a baseline fitted by training, itself a run folder
    <run>/.lock                  which process holds the run's lock (``run_lock.py``)

A run is continued or read back from its newest loadable checkpoint: ``last.pt``, else the newest numbered
checkpoint that loads, with a warning naming the checkpoint used (``RunFolder.newest_checkpoint``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ..config import saved_config
from ..data.dataset import Dataset, check_same_data
from ..errors import UsageError
from ..model.model import LatentVariableModel
from ..tasks.registry import build_dataset, resolve_data_paths
from .build import load_model_state
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .position import Phase, Position
from .runtime import configure_process, describe_threads, pick_device, seed_streams
from .scoring import precision_record, summarise


class WriteError(UsageError):
    """A file of a run could not be written (a full disk, a quota, a read-only mount); the message names the file
    and the last good checkpoint, which a resume continues from (``resumable``: there is one)."""

    def __init__(self, message: str, resumable: bool):
        super().__init__(message)
        self.resumable = resumable


def _is_write_failure(error: BaseException) -> bool:
    """An ``OSError`` (ENOSPC, EDQUOT, EROFS, ...) or torch's own report of a failed write while saving
    (``RuntimeError: [enforce fail at inline_container.cc:...] ... file write failed`` from its zip writer)."""
    if isinstance(error, OSError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text)


class RunFolder:
    """The paths of one run folder (nothing is created or read by making one).

    The class attributes are the names relative to the folder, for messages; the instance attributes the paths.
    """

    CONFIG = ".hydra/config.yaml"
    HYDRA = ".hydra/hydra.yaml"
    OVERRIDES = ".hydra/overrides.yaml"
    LOG = "train.log"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"
    CHECKPOINTS = "checkpoints"
    LAST = "checkpoints/last.pt"
    VAE = "checkpoints/vae.pt"
    EVAL, SAMPLES, PRIOR, BASELINES = "eval", "samples", "prior", "baselines"
    LOCK = ".lock"
    CONFIG_NAME = "config.yaml"  # the config file's name in .hydra/, .hydra/resume-<stamp>/ and eval/<stamp>/

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config, self.hydra, self.overrides = (
            self.path / name for name in (self.CONFIG, self.HYDRA, self.OVERRIDES)
        )
        self.log, self.metrics, self.summary = (self.path / name for name in (self.LOG, self.METRICS, self.SUMMARY))
        self.checkpoints, self.last, self.vae = (self.path / name for name in (self.CHECKPOINTS, self.LAST, self.VAE))
        self.lock_file = self.path / self.LOCK

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder:
        """The run folder of a checkpoint file: the folder above its ``checkpoints/``, else the file's folder."""
        parent = Path(checkpoint).expanduser().parent
        return cls(parent.parent if parent.name == cls.CHECKPOINTS else parent)

    @classmethod
    def of_target(cls, target: str | Path) -> RunFolder:
        """The run a ``resume=`` / ``warm_start=`` target names: the folder itself, or the run of a checkpoint file."""
        target = Path(target).expanduser()
        return cls.of_checkpoint(target) if target.is_file() else cls(target)

    @staticmethod
    def is_in_checkpoints(path: str | Path) -> bool:
        """Whether ``path`` lies in a run folder's ``checkpoints/`` (so its run's other files are beside it)."""
        return Path(path).parent.name == RunFolder.CHECKPOINTS

    @staticmethod
    def resume_config_dir(stamp: str) -> str:
        """Where (relative to the run) the config of a resume started at ``stamp`` goes: Hydra's output_subdir."""
        return f"{Path(RunFolder.CONFIG).parent}/resume-{stamp}"

    def config_in(self, subdir: str | Path) -> Path:
        """The config file Hydra wrote into ``subdir`` (its output_subdir) of this run."""
        return self.path / subdir / self.CONFIG_NAME

    def baseline(self, name: str) -> RunFolder:
        """The run folder of the baseline ``name`` fitted by this run."""
        return RunFolder(self.path / self.BASELINES / name)

    @property
    def samples(self) -> Path:
        return self.path / self.SAMPLES

    def new_output_folder(self, kind: str) -> Path:
        """A fresh ``<run>/<kind>/<timestamp>`` (``-2``, ``-3``... if the second is taken), created empty; ``kind``
        is ``RunFolder.EVAL``, ``SAMPLES`` or ``PRIOR``."""
        parent = self.path / kind
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

    # ----- checkpoints ---------------------------------------------------------------------------------------------
    def numbered(self, global_step: int, phase: Phase) -> Path:
        """The numbered checkpoint written after update ``global_step`` in ``phase``."""
        return self.checkpoints / f"step-{global_step:09d}-{phase}.pt"

    def numbered_checkpoints(self) -> list[Path]:
        """The numbered checkpoints, oldest first."""
        return sorted(self.checkpoints.glob("step-*.pt"))

    def holds_a_run(self) -> bool:
        """Whether the folder already has checkpoints (so training into it would overwrite a run)."""
        return self.last.exists() or bool(self.numbered_checkpoints())

    def save(self, state: dict, global_step: int, phase: Phase, keep: int, vae: bool = False) -> None:
        """Writes ``state`` as the numbered checkpoint of (``global_step``, ``phase``), makes it ``last.pt`` (and, with
        ``vae``, ``vae.pt``), and deletes numbered checkpoints beyond the newest ``keep`` + 1 (the newest is
        ``last.pt``'s twin). A write that fails (a full disk) raises ``WriteError``; ``last.pt`` is then still the
        previous checkpoint, whole (every write is atomic)."""
        named = self.numbered(global_step, phase)
        with self.writing(named):
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            save_checkpoint(state, named)
        with self.writing(self.last):
            self._publish_as_last(named)
        if vae:
            with self.writing(self.vae):
                save_checkpoint(state, self.vae)
        for old in self.numbered_checkpoints()[: -(keep + 1)]:
            old.unlink(missing_ok=True)

    @contextlib.contextmanager
    def writing(self, path: Path):
        """Turns a failed write of ``path`` (``_is_write_failure``) into a ``WriteError`` naming it and the last
        good checkpoint."""
        try:
            yield
        except (OSError, RuntimeError) as error:
            if not _is_write_failure(error):
                raise
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
            if self.last.is_file():
                kept = f"the last good checkpoint is {self.last}, whole, and a resume continues from it"
            else:
                kept = f"the run has no checkpoint yet ({self.checkpoints} holds none), so a resume cannot continue it"
            raise WriteError(f"could not write {path} ({reason}); {kept}", self.last.is_file()) from None

    def _publish_as_last(self, named: Path) -> None:
        """Makes ``last.pt`` the same file as ``named`` by an atomic rename of a fresh hard link (or copy)."""
        temporary = self.checkpoints / f".{self.last.name}.tmp-{os.getpid()}"
        temporary.unlink(missing_ok=True)
        try:
            os.link(named, temporary)
        except OSError:
            shutil.copyfile(named, temporary)
        os.replace(temporary, self.last)

    def newest_checkpoint(self, command: str) -> tuple[Path, dict]:
        """The newest loadable checkpoint and its contents: ``last.pt``, else the newest numbered checkpoint that
        loads, with a warning on stderr naming the checkpoint used and why the newer ones were skipped.

        Args:
            command: what reads it (``resume``, ``evaluate``...), the start of every message.

        Raises:
            UsageError: the folder holds no checkpoint, or none loads; the message says which and why.
        """
        candidates = [path for path in [self.last, *reversed(self.numbered_checkpoints())] if path.is_file()]
        if not candidates:
            if self.log.is_file():
                raise UsageError(
                    f"{command}: {self.path} holds no checkpoint: that run stopped before writing its "
                    f"first one (its {self.LOG} says why), so there is nothing to continue or read "
                    "back; start a new run"
                )
            raise UsageError(
                f"{command}: {self.path} is not an almond run folder: it has no {self.LAST} (a run "
                "writes it after its first checkpoint); give the folder almond train printed "
                "(outputs/DATE/TIME)"
            )
        problems = []
        for path in candidates:
            try:
                payload = load_checkpoint(path)
            except CheckpointError as error:
                problems.append(str(error))
                continue
            if problems:
                print(
                    f"almond: warning: skipped unusable checkpoint(s): {'; '.join(problems)}; {command} uses {path}",
                    file=sys.stderr,
                )
            return path, payload
        raise UsageError(f"{command}: no checkpoint in {self.checkpoints} can be loaded: {'; '.join(problems)}")


# ----- reading a run back --------------------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    """A run folder read back (nothing in it is changed).

    Attributes:
        run_dir: the run folder.
        checkpoint_path: the checkpoint the model came from (the newest loadable one).
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

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    @property
    def position(self) -> Position:
        """Where the run stood when its checkpoint was written."""
        return Position.from_state(self.payload["position"])

    def vae_model(self) -> LatentVariableModel | None:
        """The model at the end of the VAE warm start (``vae.pt``); None, with a warning, if it cannot be read."""
        if not self.folder.vae.is_file():
            return None
        try:
            return load_model_state(self.cfg, self.dataset, load_checkpoint(self.folder.vae)["model"], self.device)
        except CheckpointError as error:
            print(f"almond: warning: the VAE row is left out: {error}")
            return None

    def fitted_baselines(self, task) -> dict:
        """{name: fitted model} of the baselines the run fitted (``Task.trained_baselines``), each from the newest
        loadable checkpoint of its own run folder; one that is missing or unreadable is left out with a warning."""
        fitted = {}
        for name in task.trained_baselines(self.dataset, self.cfg):
            try:
                _, payload = self.folder.baseline(name).newest_checkpoint(name)
            except UsageError as error:
                print(f"almond: warning: the {name} baseline is left out: {error}")
                continue
            fitted[name] = load_model_state(
                saved_config(payload["config_yaml"], f"the {name} baseline"),
                self.dataset,
                payload["model"],
                self.device,
            )
        return fitted

    def summary(self, task, vae: LatentVariableModel | None) -> dict:
        """The run's ``summary.json`` computed again from its checkpoints with ``cfg.evaluation`` (``scoring.py``):
        with the run's own settings, the one training wrote (its timing is the checkpoint's).

        Args:
            task: ``task_for(self.dataset)`` (the figures drawn afterwards reuse what it computed).
            vae: ``vae_model()``, or None to leave the VAE row out.
        """
        return summarise(
            task,
            self.dataset,
            self.cfg,
            self.device,
            almond=self.model,
            vae=vae,
            fitted_baselines=self.fitted_baselines(task),
            position=self.position,
            precision=precision_record(self.model, self.cfg, self.device),
        )


def _resolve_data_paths(cfg, run_dir: Path) -> None:
    """Relative data paths were relative to where ``almond train`` ran; Hydra kept that folder."""
    hydra_file = RunFolder(run_dir).hydra
    train_cwd = None
    if hydra_file.is_file():
        train_cwd = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd")
    resolve_data_paths(cfg, train_cwd)


def load_run(command: str, run_dir: Path, device: str = "auto", threads: int | None = None) -> LoadedRun:
    """Reads ``run_dir`` back from its newest loadable checkpoint: its config, data and model; refuses a folder
    that is not a run, and data that are not the run's."""
    if not run_dir.exists():
        raise UsageError(
            f"{command}: {run_dir} does not exist; give a run folder made by almond train (outputs/DATE/TIME)"
        )
    if not run_dir.is_dir():
        raise UsageError(
            f"{command}: {run_dir} is a file, not a run folder; give the folder that holds {RunFolder.CHECKPOINTS}/"
        )
    checkpoint_path, payload = RunFolder(run_dir).newest_checkpoint(command)
    describe_threads(configure_process(threads))
    cfg = saved_config(payload["config_yaml"], command)
    _resolve_data_paths(cfg, run_dir)
    dataset = build_dataset(cfg.data, seed_streams(cfg.seed)["data"])
    check_same_data(payload.get("data"), dataset, command)
    chains = payload.get("chains")
    if chains is not None and chains["positions"].shape[0] != dataset.num_units:  # one set per unit
        raise UsageError(
            f"{command}: the data now has {dataset.num_units} rows but the run was trained on "
            f"{chains['positions'].shape[0]} ({cfg.data.get('path', cfg.data.name)}); the data file "
            "changed since training, so this run cannot be evaluated or sampled on it"
        )
    target = pick_device(device)
    try:
        model = load_model_state(cfg, dataset, payload["model"], target)
    except RuntimeError as error:
        raise UsageError(
            f"{command}: the checkpoint's model does not fit the data it was trained on "
            f"({str(error).splitlines()[0][:200]}); was the data file changed?"
        ) from None
    return LoadedRun(run_dir.resolve(), checkpoint_path, payload, cfg, dataset, model, target)
