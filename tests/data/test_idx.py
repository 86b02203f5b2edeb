"""The IDX reader and ``data=mnist`` on small generated folders: formats, options and every error case."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from almond_cli.config import MnistDataConfig
from almond_cli.data.idx import IMAGES_MAGIC, LABELS_MAGIC, IdxError, load_split, read_idx, write_idx
from almond_cli.data.mnist import build_mnist
from almond_cli.errors import UsageError


def make_split(root: Path, split: str, count: int, seed: int, gz: bool = True, rows: int = 28, cols: int = 28):
    """Writes ``count`` random images and labels of one split; returns them as arrays."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, rows, cols), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images)
    write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


def data_cfg(root: Path, **overrides):
    cfg = OmegaConf.structured(MnistDataConfig)
    cfg.root = str(root)
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gzip_and_raw_files_exactly(tmp_path, gz):
    images, labels = make_split(tmp_path, "train", 7, seed=1, gz=gz, rows=5, cols=4)
    got_images, got_labels = load_split(tmp_path, "train")
    assert got_images.dtype == torch.uint8 and tuple(got_images.shape) == (7, 5, 4)
    assert np.array_equal(got_images.numpy(), images)
    assert np.array_equal(got_labels.numpy(), labels.astype(np.int64))


def test_header_is_big_endian_with_the_mnist_magic_numbers(tmp_path):
    write_idx(tmp_path / "a", np.zeros((3, 2, 2), dtype=np.uint8))
    header = (tmp_path / "a").read_bytes()[:16]
    assert struct.unpack(">IIII", header) == (0x00000803, 3, 2, 2) and IMAGES_MAGIC == 0x803 and LABELS_MAGIC == 0x801


def test_missing_folder(tmp_path):
    with pytest.raises(IdxError, match="data.root: .*not a folder"):
        load_split(tmp_path / "nowhere", "train")
    with pytest.raises(IdxError, match="data.root: .*not a folder"):
        build_mnist(data_cfg(tmp_path / "nowhere"))


def test_missing_root_setting_says_what_to_set():
    cfg = OmegaConf.structured(MnistDataConfig)
    with pytest.raises(UsageError, match="data.root: data=mnist needs the folder"):
        build_mnist(cfg)


def test_missing_files_name_them_and_the_splits_present(tmp_path):
    make_split(tmp_path, "t10k", 4, seed=2)
    with pytest.raises(IdxError, match=r"data.splits: split 'train' is not in .*present: \['t10k'\]"):
        build_mnist(data_cfg(tmp_path, splits=["train"]))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(IdxError, match=r"no t10k-labels-idx1-ubyte\[.gz\]"):
        load_split(tmp_path, "t10k")


def test_truncated_raw_file(tmp_path):
    make_split(tmp_path, "train", 5, seed=3, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IdxError, match="truncated: its header promises shape \\(5, 28, 28\\)"):
        read_idx(path, IMAGES_MAGIC)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(IdxError, match="too short for an IDX header"):
        read_idx(path, IMAGES_MAGIC)


def test_truncated_gzip_file(tmp_path):
    make_split(tmp_path, "train", 5, seed=3)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])  # a download cut off mid-stream
    with pytest.raises(IdxError, match="damaged or truncated"):
        load_split(tmp_path, "train")


def test_gzip_holding_too_few_bytes_for_its_header(tmp_path):
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">IIII", IMAGES_MAGIC, 10, 28, 28) + bytes(28 * 28 * 3))
    with pytest.raises(IdxError, match="truncated"):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz", IMAGES_MAGIC)


def test_wrong_magic(tmp_path):
    make_split(tmp_path, "train", 3, seed=4)
    # Labels where images belong: the magic number says idx1, not idx3.
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(IdxError, match="magic number 0x00000801, not 0x00000803"):
        load_split(tmp_path, "train")
    (tmp_path / "x").write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(IdxError, match="not an MNIST-format file"):
        read_idx(tmp_path / "x", LABELS_MAGIC)


def test_image_and_label_counts_must_match(tmp_path):
    make_split(tmp_path, "train", 6, seed=5)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(IdxError, match="holds 6 images but train-labels-idx1-ubyte.gz holds 5 labels"):
        load_split(tmp_path, "train")


def test_only_the_test_split_present_is_enough(tmp_path):
    images, labels = make_split(tmp_path, "t10k", 50, seed=6)
    dataset = build_mnist(data_cfg(tmp_path, splits=["t10k"], held_out_fraction=0.2))
    assert dataset.name == "mnist" and tuple(dataset.x.shape) == (40, 784)
    test_x = dataset.test_x
    assert tuple(test_x.shape) == (10, 784) and dataset.image_shape == (1, 28, 28)
    # Train and held-out rows are a partition of the images, with their labels kept beside them.
    all_rows = {tuple(row) for row in (images.reshape(50, -1) / 255.0).astype(np.float32).tolist()}
    train_rows = {tuple(row) for row in dataset.x.numpy().tolist()}
    test_rows = {tuple(row) for row in test_x.numpy().tolist()}
    assert train_rows | test_rows == all_rows and not train_rows & test_rows
    lookup = {
        tuple(row): int(label)
        for row, label in zip((images.reshape(50, -1) / 255.0).astype(np.float32).tolist(), labels)
    }
    assert [lookup[tuple(r)] for r in test_x.numpy().tolist()] == dataset.test_labels.tolist()
    assert [lookup[tuple(r)] for r in dataset.x.numpy().tolist()] == dataset.train_labels.tolist()
    assert dataset.transform is None and 0.0 <= float(dataset.x.min()) and float(dataset.x.max()) <= 1.0


def test_held_out_choice_is_seeded_and_subset_limits_training(tmp_path):
    make_split(tmp_path, "train", 60, seed=7)
    make_split(tmp_path, "t10k", 20, seed=8)
    first = build_mnist(data_cfg(tmp_path, split_seed=3))
    again = build_mnist(data_cfg(tmp_path, split_seed=3))
    other = build_mnist(data_cfg(tmp_path, split_seed=4))
    assert torch.equal(first.test_x, again.test_x)
    assert not torch.equal(first.test_x, other.test_x)
    both = build_mnist(data_cfg(tmp_path, splits=["train", "t10k"], subset=25))
    assert tuple(both.x.shape) == (25, 784) and tuple(both.test_x.shape) == (8, 784)
    whole = build_mnist(data_cfg(tmp_path, held_out_split="t10k"))
    assert tuple(whole.x.shape) == (60, 784) and tuple(whole.test_x.shape) == (20, 784)


def test_pixel_modes(tmp_path):
    make_split(tmp_path, "train", 30, seed=9)
    continuous = build_mnist(data_cfg(tmp_path))
    threshold = build_mnist(data_cfg(tmp_path, pixels="threshold", threshold=0.3))
    assert torch.equal(threshold.x, (continuous.x > 0.3).float())
    dynamic = build_mnist(data_cfg(tmp_path, pixels="dynamic"))
    assert torch.equal(dynamic.x, continuous.x)  # intensities stored, pixels drawn per batch
    test_x = dynamic.test_x
    assert set(test_x.unique().tolist()) <= {0.0, 1.0}  # held-out images binarised once
    assert torch.equal(test_x, build_mnist(data_cfg(tmp_path, pixels="dynamic")).test_x)
    # Fresh draws each call, the same draws from the same generator state: reproducible runs.
    first = dynamic.transform(dynamic.x, torch.Generator().manual_seed(5))
    second = dynamic.transform(dynamic.x, torch.Generator().manual_seed(5))
    third = dynamic.transform(dynamic.x, torch.Generator().manual_seed(6))
    assert torch.equal(first, second) and not torch.equal(first, third)
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    # Bernoulli(p) draws: the mean over 30 images × 784 pixels tracks the mean intensity (sd ≈ 0.003).
    assert abs(float(first.mean()) - float(dynamic.x.mean())) < 0.02


def test_held_out_fraction_that_leaves_nothing(tmp_path):
    make_split(tmp_path, "train", 5, seed=10)
    with pytest.raises(UsageError, match="data.held_out_fraction"):
        build_mnist(data_cfg(tmp_path, held_out_fraction=0.05))
