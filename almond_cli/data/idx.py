"""Reading the IDX format of MNIST, Fashion-MNIST and KMNIST (gzip-compressed or raw); never downloads.

An IDX file is a big-endian header — two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions — followed by one 32-bit size per dimension and the data. Images are ``idx3`` (n, rows, cols),
labels ``idx1`` (n,). The three data sets share the file names

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

Every problem (missing folder or file, truncated file, wrong magic number, images and labels of different
counts) is an ``IdxError``, a ``UsageError`` whose message names the file and what to do.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError

SPLITS = ("train", "t10k")
UNSIGNED_BYTE = 0x08
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


class IdxError(UsageError):
    """An IDX data folder or file cannot be used; the message says which and why."""


def split_file(root: Path, split: str, kind: str) -> Path | None:
    """The file of ``split`` (train or t10k) and ``kind`` (images or labels) in ``root``, gzip preferred.

    Returns None when neither the ``.gz`` nor the raw file exists.
    """
    stem = f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def available_splits(root: Path) -> list[str]:
    """The splits whose image file is present in ``root``."""
    return [split for split in SPLITS if split_file(root, split, "images") is not None]


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as error:
        raise IdxError(
            f"data.root: {path} cannot be read as {'gzip' if path.name.endswith('.gz') else 'a file'} "
            f"({type(error).__name__}: {error or 'cut off'}); the file is damaged or truncated — download it again"
        ) from None


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Reads one IDX file of unsigned bytes and checks its header against the file size.

    Args:
        path: an IDX file, gzip-compressed if its name ends in ``.gz``.
        expected_magic: ``IMAGES_MAGIC`` or ``LABELS_MAGIC``.

    Returns:
        A uint8 array of the shape the header gives: (n, rows, cols) for images, (n,) for labels.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxError(
            f"data.root: {path} is only {len(data)} bytes long, too short for an IDX header; "
            f"the file is truncated — download it again"
        )
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        what = "an image (idx3-ubyte)" if expected_magic == IMAGES_MAGIC else "a label (idx1-ubyte)"
        raise IdxError(
            f"data.root: {path} starts with magic number 0x{magic:08x}, not 0x{expected_magic:08x} of "
            f"{what} file; it is not an MNIST-format file or is of the wrong kind for its name"
        )
    num_dims = magic & 0xFF
    header_size = 4 + 4 * num_dims
    if len(data) < header_size:
        raise IdxError(f"data.root: {path} is cut off inside its header ({len(data)} bytes); download it again")
    shape = struct.unpack(f">{num_dims}I", data[4:header_size])
    expected = header_size + int(np.prod(shape))
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise IdxError(
            f"data.root: {path} is {problem}: its header promises shape {tuple(shape)} "
            f"({expected} bytes) but it holds {len(data)} bytes; download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def load_split(root: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """Images and labels of one split.

    Args:
        root: the folder holding the IDX files.
        split: ``train`` or ``t10k``.

    Returns:
        (images (n, rows, cols) uint8, labels (n,) int64).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise IdxError(
            f"data.root: {root} is not a folder; point data.root at the folder holding "
            f"train-images-idx3-ubyte.gz and the other MNIST-format files (almond never downloads)"
        )
    if split not in SPLITS:
        raise IdxError(f"data.splits: unknown split {split!r}; choose from {list(SPLITS)}")
    images_path = split_file(root, split, "images")
    labels_path = split_file(root, split, "labels")
    missing = [
        f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte[.gz]"
        for kind, path in (("images", images_path), ("labels", labels_path))
        if path is None
    ]
    if missing:
        present = available_splits(root)
        raise IdxError(
            f"data.root: {root} has no {' and no '.join(missing)}; the splits present there are "
            f"{present or 'none'}. Set data.splits to those, or add the missing files"
        )
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise IdxError(
            f"data.root: {images_path.name} holds {images.shape[0]} images but {labels_path.name} "
            f"holds {labels.shape[0]} labels; the two files come from different sets — replace one"
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Writes ``array`` (uint8, 1 or 3 dimensions) as an IDX file, gzip-compressed if ``path`` ends in .gz.

    Used by the tests to build small data folders; the inverse of ``read_idx``.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", (UNSIGNED_BYTE << 8) | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    path = Path(path)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
