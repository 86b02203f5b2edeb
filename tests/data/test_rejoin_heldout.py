"""``rejoin_heldout``: the training and held-out parts of a split put back together, for ``almond sample``."""

import torch

from almond_cli.data.dataset import Dataset, hold_out, rejoin_heldout


def test_rows_come_back_in_the_order_read_with_their_part_marked():
    x = torch.arange(10, dtype=torch.float32).view(10, 1)
    everything = Dataset(
        x=x, name="file", truth=x + 0.5, ids=[f"r{i}" for i in range(10)], row_labels=list(range(2, 12))
    )
    split = hold_out(everything, 0.3, seed=4)
    joined, source = rejoin_heldout(split)
    assert torch.equal(joined.x, x) and torch.equal(joined.truth, x + 0.5)
    assert joined.rows() == list(range(2, 12)) and joined.ids == everything.ids and joined.heldout is None
    held = source >= split.num_points
    assert [label for label, flag in zip(joined.rows(), held.tolist()) if flag] == split.heldout.rows()
    assert int(held.sum()) == 3
    # source indexes the training rows followed by the held-out ones: the order the chains' starts are built in
    parts = torch.cat([split.x, split.heldout.x])
    assert torch.equal(parts[source], joined.x)


def test_grouped_rows_come_back_training_units_first_with_their_labels():
    x = torch.arange(12, dtype=torch.float32).view(12, 1)
    unit_index = torch.arange(12) % 4  # 4 units of 3 rows
    everything = Dataset(x=x, name="glmm", unit_index=unit_index, unit_labels=["a", "b", "c", "d"])
    split = hold_out(everything, 0.5, seed=1)
    joined, source = rejoin_heldout(split)
    assert joined.num_units == 4 and sorted(joined.units()) == ["a", "b", "c", "d"]
    assert joined.units() == split.units() + split.heldout.units()
    assert torch.equal(source, torch.arange(4))
    label_of = dict(enumerate(["a", "b", "c", "d"]))
    for unit, label in enumerate(joined.units()):  # each unit holds the rows it had
        rows = joined.x[joined.unit_index == unit, 0]
        original = x[unit_index == [k for k, v in label_of.items() if v == label][0], 0]
        assert torch.equal(rows.sort().values, original)


def test_without_held_out_rows_the_data_set_is_returned_as_it_is():
    dataset = Dataset(x=torch.zeros(3, 1), name="file")
    joined, source = rejoin_heldout(dataset)
    assert joined is dataset and torch.equal(source, torch.arange(3))
