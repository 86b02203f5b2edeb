"""The checkpoint file format: one dict holding everything needed to continue a run exactly, saved atomically and
loaded with ``torch.load(weights_only=True)`` so a file from elsewhere cannot run code.

Where a run's checkpoints go, what they are named and which one a run continues from is ``run_folder.py``'s.
"""

from __future__ import annotations

import pickle
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
    with open(path, "rb") as handle:
        head = handle.read(4)
    # torch.save writes a zip archive (PK..), older torch a pickle (protocol 2+: 0x80); anything else (a CSV, a
    # YAML file, a run's log) is not a checkpoint at all, and unpickling it would only give a misleading error.
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise CheckpointError(
            f"{path} is not a PyTorch file (it starts with {head!r}): it is damaged, or not a checkpoint at all; "
            f"give a run folder (almond picks its newest checkpoint) or one of the .pt files almond wrote there"
        )
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
