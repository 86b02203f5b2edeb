"""Checkpoints: one dict holding everything needed to continue a run exactly, saved atomically and
loaded with ``torch.load(weights_only=True)`` so a file from elsewhere cannot run code.

Layout of a run folder's ``checkpoints/``: ``last.pt`` (newest), ``vae.pt`` (end of the VAE warm start),
and up to ``checkpoint.keep`` older ones named ``epoch-<phase>-<epoch>-<step>.pt``.
"""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path

import torch

from ..atomic import write_atomic
from ..errors import UsageError

FORMAT = "almond-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(UsageError):
    """A checkpoint cannot be used; the message says why in words."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Saves ``state`` (plain containers and tensors only) atomically, stamped with the format version."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    write_atomic(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path) -> dict:
    """Loads and checks a checkpoint; raises ``CheckpointError`` with a plain explanation on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): it was probably cut off while being written")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds objects that only arbitrary unpickling could rebuild, which almond refuses "
            f"because such a file can run code on load ({str(error).splitlines()[0][:200]})"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path} is damaged or not a PyTorch file ({type(error).__name__}: {str(error)[:200] or 'no detail'})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not an almond checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {payload.get('format_version')}, "
            f"this almond reads version {FORMAT_VERSION}"
        )
    return payload


def publish_as_last(named: Path, checkpoint_dir: Path) -> None:
    """Makes ``last.pt`` the same file as ``named`` by an atomic rename of a fresh hard link (or copy)."""
    temporary = checkpoint_dir / f".last.pt.tmp-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    try:
        os.link(named, temporary)
    except OSError:
        shutil.copyfile(named, temporary)
    os.replace(temporary, checkpoint_dir / "last.pt")


def numbered_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """The ``step-*.pt`` checkpoints of a folder, oldest first."""
    return sorted(checkpoint_dir.glob("step-*.pt"))


def prune(checkpoint_dir: Path, keep: int) -> None:
    """Deletes numbered checkpoints beyond the newest ``keep + 1`` (the newest is ``last.pt``'s twin)."""
    for old in numbered_checkpoints(checkpoint_dir)[: -(keep + 1)]:
        old.unlink(missing_ok=True)
