"""``data=mnist``: MNIST-format images (MNIST, Fashion-MNIST, KMNIST) as rows x (n, 784) for the trainer.

Qiu & Wang (2019, Section 5.3) fit MNIST with a Bernoulli likelihood on pixel intensities in [0, 1]. The
images are flattened into rows so the trainer sees data of shape (n, D) like any other data set; the
convolutional networks (``conv_networks.py``) reshape them to (1, 28, 28) inside.

Options (``configs/data/mnist.yaml``): the splits to read, a held-out part for ``test_nll`` (a seeded
fraction of the images read, or a whole split such as ``t10k``), a subset of the training images for quick
runs, and pixel handling:

- ``continuous``: intensities / 255 in [0, 1], as the paper (the Bernoulli "likelihood" is then a
  cross-entropy, the usual practice, not a probability of the pixels);
- ``threshold``: pixels > ``threshold`` become 1, others 0, once;
- ``dynamic``: every time a training image is used, its pixels are drawn afresh as Bernoulli(intensity)
  from the run's seeded noise generator (``Dataset.transform``), so runs stay reproducible and resumable.
  Held-out images are binarised once, with ``split_seed``, so every run scores the same binary images.

Labels are kept (``ImageDataset.train_labels``, ``test_labels``) for the latent map only; training never sees them.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
from torch import Tensor

from ..errors import UsageError, require
from .dataset import ImageDataset
from .idx import IMAGES_MAGIC, SPLITS, IdxError, available_splits, load_split, split_file

PIXEL_MODES = ("continuous", "threshold", "dynamic")


@dataclass
class MnistDataConfig:
    """``data=mnist``: MNIST-format IDX files in ``root`` (see ``build_mnist``)."""

    name: str = "mnist"
    root: Optional[str] = None
    splits: List[str] = field(default_factory=lambda: ["train"])
    held_out_split: Optional[str] = None
    held_out_fraction: float = 0.1
    split_seed: int = 0
    subset: Optional[int] = None
    pixels: str = "continuous"
    threshold: float = 0.5


PATH_KEYS = ("root",)
"""The key of ``data=mnist`` that names a folder, relative to where ``almond train`` ran."""


def validate_mnist_config(cfg) -> None:
    """Range checks of ``data=mnist`` and of the held-out likelihood's image count."""
    data, evaluation = cfg.data, cfg.evaluation
    require(
        len(data.splits) >= 1 and all(s in SPLITS for s in data.splits),
        "data.splits",
        f"must list one or both of {list(SPLITS)}, got {list(data.splits)}",
    )
    require(
        data.held_out_split is None or data.held_out_split in SPLITS,
        "data.held_out_split",
        f"must be null or one of {list(SPLITS)}, got {data.held_out_split!r}",
    )
    require(
        data.held_out_split is None or data.held_out_split not in data.splits,
        "data.held_out_split",
        f"{data.held_out_split!r} is also in data.splits; held-out images must not be trained on",
    )
    require(
        0 < data.held_out_fraction < 1 or data.held_out_split is not None,
        "data.held_out_fraction",
        f"must be in (0, 1) (or set data.held_out_split), got {data.held_out_fraction}",
    )
    require(data.subset is None or data.subset >= 1, "data.subset", f"must be >= 1 or null, got {data.subset}")
    require(data.pixels in PIXEL_MODES, "data.pixels", f"must be one of {list(PIXEL_MODES)}, got {data.pixels!r}")
    require(0 < data.threshold < 1, "data.threshold", f"must be in (0, 1), got {data.threshold}")
    require(
        evaluation.nll_images is None or evaluation.nll_images >= 2,
        "evaluation.nll_images",
        f"must be >= 2 (a standard error needs two images) or null, got {evaluation.nll_images}",
    )


def check_mnist_files(cfg, generator: torch.Generator | None = None) -> None:
    """Refuses a missing ``data.root`` or split, and a ``data.held_out_fraction`` that leaves no image on one side,
    before any run folder exists, from the files' headers alone (training reads the images once, and checks them
    whole); returns None: the hold-out of images is their own (``data.held_out_*``)."""
    data = cfg.data
    root = _image_root(data)
    counts = [_image_count(root, str(split)) for split in data.splits]
    if data.held_out_split in (None, "") and None not in counts:
        _held_out_count(data.held_out_fraction, sum(counts))


def _image_count(root: Path, split: str) -> int | None:
    """The number of images the header of ``split``'s image file promises; None if the header cannot be read as
    one (reading the file refuses it then, in the words of ``idx.read_idx``)."""
    path = split_file(root, split, "images")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(8)
    except (EOFError, OSError, zlib.error):
        return None
    if len(head) < 8 or struct.unpack(">I", head[:4])[0] != IMAGES_MAGIC:
        return None
    return struct.unpack(">I", head[4:8])[0]


def _held_out_count(fraction: float, count: int) -> int:
    """round(fraction · count) images held out; refused unless both sides keep at least one image."""
    num_test = int(round(float(fraction) * count))
    if num_test < 1 or num_test >= count:
        raise UsageError(
            f"data.held_out_fraction: {fraction} of {count} images leaves {num_test} held out and "
            f"{count - num_test} for training; choose a fraction that leaves both at least one image, or set "
            f"data.held_out_split"
        )
    return num_test


def dynamic_binarise(x: Tensor, generator: torch.Generator) -> Tensor:
    """Draws binary pixels x' ~ Bernoulli(x) from ``generator``. Args: x (B, D) in [0, 1]. Returns (B, D)."""
    return torch.bernoulli(x, generator=generator)


def _pixels(images: Tensor, mode: str, threshold: float) -> Tensor:
    """uint8 images (n, rows, cols) to float rows (n, rows·cols) by the pixel mode (dynamic: intensities)."""
    x = images.reshape(images.shape[0], -1).float() / 255.0
    if mode == "threshold":
        x = (x > threshold).float()
    return x


def _image_root(data_cfg) -> Path:
    """``data.root`` as a folder that holds every split ``data_cfg`` reads; refuses it otherwise."""
    if data_cfg.root in (None, "", "???"):
        raise UsageError(
            "data.root: data=mnist needs the folder of the MNIST-format IDX files, e.g. "
            "data.root=/path/to/mnist (files train-images-idx3-ubyte.gz, ...); almond never downloads"
        )
    root = Path(str(data_cfg.root)).expanduser()
    splits = [str(s) for s in data_cfg.splits]
    held_out_split = None if data_cfg.held_out_split in (None, "") else str(data_cfg.held_out_split)
    if not root.is_dir():
        raise IdxError(
            f"data.root: {root} is not a folder; point data.root at the folder holding the MNIST-format "
            f"IDX files (train-images-idx3-ubyte.gz, t10k-images-idx3-ubyte.gz, ...)"
        )
    present = available_splits(root)
    for split in splits + ([held_out_split] if held_out_split else []):
        if split not in present:
            key = "data.held_out_split" if split == held_out_split and split not in splits else "data.splits"
            raise IdxError(
                f"{key}: split {split!r} is not in {root} (splits present: {present or 'none'}); "
                f"set {key} to one of those, or add {split}-images-idx3-ubyte.gz and its labels file"
            )
    return root


def build_mnist(data_cfg, generator: torch.Generator | None = None) -> ImageDataset:
    """Reads the splits ``data_cfg`` names and makes the training rows and the held-out images (``generator`` is
    unused: the held-out split and dynamic binarisation of held-out images draw from ``data.split_seed``).

    Returns:
        An ``ImageDataset`` with x (n_train, D), ``train_labels`` (n_train,), ``test_x`` (n_test, D),
        ``test_labels`` (n_test,), ``image_shape`` (channels, rows, cols) and ``pixels``.
    """
    root = _image_root(data_cfg)
    mode = str(data_cfg.pixels)
    splits = [str(s) for s in data_cfg.splits]
    held_out_split = None if data_cfg.held_out_split in (None, "") else str(data_cfg.held_out_split)
    parts = [load_split(root, split) for split in splits]
    images = torch.cat([images for images, _ in parts])
    labels = torch.cat([labels for _, labels in parts])
    image_shape = (1, int(images.shape[1]), int(images.shape[2]))
    x_all = _pixels(images, mode, float(data_cfg.threshold))
    split_generator = torch.Generator().manual_seed(int(data_cfg.split_seed))
    order = torch.randperm(x_all.shape[0], generator=split_generator)
    if held_out_split is not None:
        test_images, test_labels = load_split(root, held_out_split)
        test_x = _pixels(test_images, mode, float(data_cfg.threshold))
        train_index = order
    else:
        num_test = _held_out_count(data_cfg.held_out_fraction, x_all.shape[0])
        test_index, train_index = order[:num_test].sort().values, order[num_test:]
        test_x, test_labels = x_all[test_index], labels[test_index]
    if data_cfg.subset is not None:
        train_index = train_index[: int(data_cfg.subset)]
    train_index = train_index.sort().values
    if mode == "dynamic":
        # Held-out pixels are drawn once from the split seed: every run and phase scores the same binary images.
        test_x = dynamic_binarise(test_x, split_generator)
    return ImageDataset(
        x=x_all[train_index].contiguous(),
        name="mnist",
        source=str(root),
        transform=dynamic_binarise if mode == "dynamic" else None,
        image_shape=image_shape,
        pixels=mode,
        train_labels=labels[train_index],
        test_x=test_x.contiguous(),
        test_labels=test_labels,
    )
