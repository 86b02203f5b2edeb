"""``data.holdout_fraction``: the rows kept out of training, split once in ``tasks.registry.build_dataset``."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from almond_cli.data.dataset import Dataset, GLMMDataset, hold_out
from almond_cli.errors import UsageError
from almond_cli.tasks.registry import build_dataset


def normal_means(n: int = 50, **extra):
    return OmegaConf.create({"name": "normal_means", "n": n, "prior": "exponential", "noise_sd": 1.0, **extra})


def test_the_split_is_seeded_disjoint_and_covers_every_row():
    full = build_dataset(normal_means(), 7)
    split = build_dataset(normal_means(holdout_fraction=0.2), 7)
    heldout = split.heldout
    assert heldout.num_points == 10 and split.num_points == 40  # round(0.2 · 50)
    assert set(split.rows()).isdisjoint(heldout.rows())
    assert sorted(split.rows() + heldout.rows()) == list(range(50))
    for part in (split, heldout):  # each row keeps its own observation and truth, in the order read
        assert part.rows() == sorted(part.rows())
        assert torch.equal(part.x, full.x[part.rows()]) and torch.equal(part.truth, full.truth[part.rows()])
        assert part.prior is split.prior  # the true prior stays whole
    assert heldout.heldout is None
    again = build_dataset(normal_means(holdout_fraction=0.2), 7)
    assert again.rows() == split.rows() and torch.equal(again.x, split.x)
    other = build_dataset(normal_means(holdout_fraction=0.2), 8)
    assert other.heldout.rows() != heldout.rows()
    # The fingerprint is that of the data as read: resume and evaluate rebuild the split from the saved config.
    assert split.fingerprint() == full.fingerprint()


def test_fraction_zero_leaves_the_data_set_as_it_was():
    before = build_dataset(normal_means(), 3)  # a config saved before the key existed
    after = build_dataset(normal_means(holdout_fraction=0.0), 3)
    assert after.heldout is None and after.row_labels is None and after.read_fingerprint is None
    assert torch.equal(before.x, after.x) and torch.equal(before.truth, after.truth)
    assert before.fingerprint() == after.fingerprint()


def test_per_row_labels_and_the_data_set_kind_follow_the_rows():
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    dataset = GLMMDataset(
        x=x,
        name="glmm_file",
        source="t.csv",
        row_labels=[2, 3, 4, 5, 6, 7],
        ids=list("abcdef"),
        num_fixed=1,
        fixed_names=["x1"],
    )
    split = hold_out(dataset, 0.5, 0)
    heldout = split.heldout
    assert isinstance(split, GLMMDataset) and isinstance(heldout, GLMMDataset)
    assert split.num_fixed == heldout.num_fixed == 1 and heldout.fixed_names == ["x1"]
    for part in (split, heldout):
        for label, identifier, row in zip(part.row_labels, part.ids, part.x):
            index = label - 2
            assert identifier == "abcdef"[index] and torch.equal(row, x[index])
    assert len(heldout.row_labels) == 3 and sorted(split.row_labels + heldout.row_labels) == list(range(2, 8))


def test_at_least_one_row_is_held_out_and_one_is_trained_on():
    dataset = Dataset(x=torch.zeros(10, 1), name="file")
    assert hold_out(dataset, 0.01, 0).heldout.num_points == 1  # round(0.1) = 0, raised to one
    assert hold_out(dataset, 0.9, 0).num_points == 1
    with pytest.raises(UsageError, match="data.holdout_fraction"):
        hold_out(Dataset(x=torch.zeros(2, 1), name="file"), 0.9, 0)  # round(1.8) = 2 rows: none left
