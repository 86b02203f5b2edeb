"""A data set whose rows are grouped in units (``Dataset.unit_index``): selecting and holding out keep a unit's rows
together, the fingerprint includes the map (and is unchanged without one), and a bad map is refused."""

from __future__ import annotations

import pytest
import torch

from almond_cli.data.dataset import Dataset, hold_out

# 12 rows of 5 units (of 3, 2, 4, 1 and 2 rows), the rows of a unit not next to each other.
UNIT_INDEX = torch.tensor([0, 1, 2, 0, 2, 3, 1, 2, 4, 0, 2, 4])


def grouped(**extra) -> Dataset:
    x = torch.arange(24, dtype=torch.float32).reshape(12, 2)
    return Dataset(
        x=x,
        name="file",
        truth=x[:, :1] * 10,
        unit_index=UNIT_INDEX.clone(),
        unit_labels=["a", "b", "c", "d", "e"],
        **extra,
    )


def test_units_count_and_label():
    dataset = grouped()
    assert dataset.num_points == 12 and dataset.num_units == 5 and dataset.units() == list("abcde")
    plain = Dataset(x=torch.zeros(4, 1), name="file", row_labels=[3, 4, 5, 6])
    assert plain.num_units == 4 and plain.units() == [3, 4, 5, 6]  # every row its own unit: the rows' labels


def test_selecting_units_takes_all_their_rows_in_the_order_read():
    dataset = grouped()
    part = dataset.select_units(torch.tensor([2, 0]))
    assert part.row_labels == [0, 2, 3, 4, 7, 9, 10]
    assert part.unit_index.tolist() == [0, 1, 0, 1, 1, 0, 1]  # units renumbered in order: a -> 0, c -> 1
    assert part.units() == ["a", "c"] and part.num_units == 2
    assert torch.equal(part.x, dataset.x[part.row_labels]) and torch.equal(part.truth, dataset.truth[part.row_labels])


def test_hold_out_keeps_whole_units_out():
    dataset = grouped()
    split = hold_out(dataset, 0.4, 3)
    heldout = split.heldout
    assert heldout.num_units == 2 and split.num_units == 3  # round(0.4 · 5) units, not rows
    assert set(split.units()).isdisjoint(heldout.units()) and sorted(split.units() + heldout.units()) == list("abcde")
    for part in (split, heldout):
        for row, unit in zip(part.row_labels, part.unit_index.tolist()):
            assert "abcde"[int(UNIT_INDEX[row])] == part.units()[unit]  # each row stays with its own unit
        # every row of every unit of the part is in it
        expected = sorted(row for row in range(12) if "abcde"[int(UNIT_INDEX[row])] in part.units())
        assert part.row_labels == expected
    assert split.fingerprint() == dataset.fingerprint()
    with pytest.raises(Exception, match="units"):
        hold_out(dataset, 0.95, 0)  # all 5 units out: none left to train on


def test_the_fingerprint_includes_the_map_and_is_unchanged_without_one():
    dataset = grouped()
    plain = Dataset(x=dataset.x, name="file", truth=dataset.truth)
    assert "unit_index" in dataset.fingerprint()["shapes"] and "unit_index" not in plain.fingerprint()["shapes"]
    assert dataset.fingerprint()["sha256"] != plain.fingerprint()["sha256"]
    other = Dataset(x=dataset.x, name="file", truth=dataset.truth, unit_index=UNIT_INDEX.flip(0))
    assert other.fingerprint()["sha256"] != dataset.fingerprint()["sha256"]
    # The same as before units existed: only x and truth are hashed (SHA-256 of "x:(2, 1):torch.float32;" + bytes).
    import hashlib

    x = torch.tensor([[1.0], [2.0]])
    digest = hashlib.sha256(b"x:(2, 1):torch.float32;" + x.numpy().tobytes()).hexdigest()
    assert Dataset(x=x, name="file").fingerprint()["sha256"] == digest


def test_a_map_with_an_empty_unit_or_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="unit_index"):
        Dataset(x=torch.zeros(3, 1), name="file", unit_index=torch.tensor([0, 2, 2]))
    with pytest.raises(ValueError, match="unit_index"):
        Dataset(x=torch.zeros(3, 1), name="file", unit_index=torch.tensor([0, 1]))
