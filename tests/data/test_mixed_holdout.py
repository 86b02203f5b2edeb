"""Hold-out by group for ``data=mixed`` (``data/mixed.py``: ``MixedDataset.holdout_split`` through
``data.dataset.hold_out``) and a new table's rows laid out by a run's formula (``read_new_groups``): whole groups
of one factor, reproducible, the fraction respected, and the refusals (one line naming the key)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from almond_cli.data.dataset import hold_out
from almond_cli.data.formula import build_design
from almond_cli.data.mixed import holdout_factor, mixed_dataset, read_new_groups
from almond_cli.errors import ConfigError, UsageError
from almond_cli.model.likelihoods import Poisson, target_of


def _frame(groups: int = 20, per_group: int = 3, seed: int = 0) -> pd.DataFrame:
    """``g`` (groups levels) nested in ``loc`` (2 g per location), crossed with ``h`` (4 levels); ``trt`` a fixed
    factor; Poisson counts."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per_group)
    return pd.DataFrame(
        {
            "y": rng.poisson(2.0, g.size),
            "x": rng.normal(size=g.size).round(3),
            "g": [f"g{k:02d}" for k in g],
            "loc": [f"L{k // 2}" for k in g],
            "h": rng.integers(0, 4, g.size),
            "trt": np.where(g % 2 == 0, "a", "b"),
        }
    )


def _dataset(formula: str = "y ~ x + (1|g)", holdout_by: str | None = None, frame=None):
    return mixed_dataset(build_design(formula, _frame() if frame is None else frame), "t.csv", holdout_by)


def _labels(dataset, factor: str) -> set[str]:
    block = next(b for b in dataset.design.random if b.factor == factor)
    return set(block.levels)


def test_whole_groups_are_held_out_with_every_row_and_the_fraction_is_respected():
    frame = _frame()
    dataset = _dataset(frame=frame)
    split = hold_out(dataset, 0.25, seed=7)
    held = split.heldout
    train_groups, held_groups = _labels(split, "g"), _labels(held, "g")
    assert len(held_groups) == 5 and len(train_groups) == 15  # round(0.25 x 20)
    assert not train_groups & held_groups
    # every row of a held-out group is held out, every other row trained on, each row once
    assert sorted(split.design.rows.tolist() + held.design.rows.tolist()) == list(range(len(frame)))
    held_rows = set(held.design.rows.tolist())
    assert held_rows == set(np.flatnonzero(frame["g"].isin(held_groups)).tolist())
    # each part numbers its own levels 0..G'-1, and a row's index points at its own label
    for part in (split, held):
        block = part.design.random[0]
        assert part.layout.blocks[0].num_groups == len(block.levels)
        group = part.x[:, part.layout.group_column(0)].long().numpy()
        assert sorted(set(group.tolist())) == list(range(len(block.levels)))
        assert [block.levels[k] for k in group] == list(frame["g"].iloc[part.design.rows])
        torch.testing.assert_close(part.x[:, 0], torch.tensor(frame["y"].iloc[part.design.rows].values).float())
    # the fingerprint is that of every row as read (resume and sample check the data against it)
    assert split.fingerprint() == dataset.fingerprint()


def test_the_split_is_reproducible_and_follows_the_seed():
    dataset = _dataset()
    first = _labels(hold_out(dataset, 0.3, seed=3).heldout, "g")
    assert first == _labels(hold_out(_dataset(), 0.3, seed=3).heldout, "g")
    assert first != _labels(hold_out(dataset, 0.3, seed=4).heldout, "g")  # the seed matters
    assert hold_out(dataset, 0.0, seed=3) is dataset  # no hold-out: the data set itself, bitwise


def test_the_default_factor_is_the_outermost_else_the_first():
    design = build_design("y ~ x + (1|g) + (1|loc)", _frame())
    assert holdout_factor(design) == "loc"  # g lies within loc: the outer factor
    assert holdout_factor(build_design("y ~ x + (1|loc/g)", _frame())) == "loc"  # loc and g:loc
    assert holdout_factor(build_design("y ~ x + (1|g) + (1|h)", _frame())) == "g"  # crossed: the first
    assert holdout_factor(design, "g") == "g"
    split = hold_out(_dataset("y ~ x + (1|g) + (1|loc)"), 0.2, seed=1)
    assert len(_labels(split.heldout, "loc")) == 2 and not _labels(split, "loc") & _labels(split.heldout, "loc")
    assert not _labels(split, "g") & _labels(split.heldout, "g")  # broods go with their location


def test_holdout_by_names_the_factor_and_other_factors_levels_may_be_shared():
    split = hold_out(_dataset("y ~ x + (1|g) + (1|h)", holdout_by="h"), 0.25, seed=0)
    assert len(_labels(split.heldout, "h")) == 1 and not _labels(split, "h") & _labels(split.heldout, "h")
    assert _labels(split, "g") & _labels(split.heldout, "g")  # crossed: g's levels appear on both sides


@pytest.mark.parametrize(
    ("fraction", "holdout_by", "key", "fragment"),
    [
        (0.01, None, "data.holdout_fraction", "holds out none"),
        (0.99, None, "data.holdout_fraction", "leaves no group to train on"),
        (0.25, "BROOD", "data.holdout_by", "'BROOD' is not a grouping factor"),
    ],
)
def test_a_split_that_cannot_be_made_is_refused_naming_the_key(fraction, holdout_by, key, fragment):
    with pytest.raises(ConfigError) as refused:
        hold_out(_dataset(holdout_by=holdout_by), fraction, seed=0)
    assert refused.value.key == key and fragment in str(refused.value) and "\n" not in str(refused.value)


def test_training_rows_that_lose_a_fixed_effect_level_are_refused():
    frame = _frame()
    frame["site"] = np.where(frame["g"] == "g00", "rare", "common")  # a level only in one group
    dataset = _dataset("y ~ site + (1|g)", frame=frame)
    refused = 0
    for seed in range(12):  # 3 of 20 groups held out: some seeds take g00 out, and with it every 'rare' row
        try:
            split = hold_out(dataset, 0.15, seed=seed)
        except ConfigError as error:
            assert error.key == "data.holdout_fraction" and "siterare" in str(error)
            refused += 1
        else:
            assert "g00" in _labels(split, "g")
    assert 0 < refused < 12


def _run_cfg():
    return OmegaConf.create({"data": {"header": True}, "likelihood": {"_target_": target_of(Poisson)}})


def test_a_new_table_is_laid_out_by_the_training_formula(tmp_path):
    trained = _dataset("y ~ x + trt + (1|g)")
    new = _frame(groups=4, seed=5)
    new["g"] = ["n" + label for label in new["g"]]
    path = tmp_path / "new.csv"
    new.to_csv(path, index=False)
    read = read_new_groups(_run_cfg(), str(path), trained, "sample")
    assert read.layout.blocks[0].num_groups == 4 and read.design.random[0].levels == ("ng00", "ng01", "ng02", "ng03")
    assert read.design.fixed_names == trained.design.fixed_names
    np.testing.assert_allclose(read.design.fixed[:, 2], (new["trt"] == "b").astype(float))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda frame: frame.drop(columns=["x"]), "has no column 'x'"),
        (lambda frame: frame.drop(columns=["g"]), "has no column 'g'"),
        (lambda frame: frame.assign(trt=["c"] * len(frame)), "the level 'c'"),
        (lambda frame: frame.assign(y=-1), "-1"),
    ],
)
def test_a_bad_new_table_is_refused_in_one_line_naming_it(tmp_path, change, fragment):
    trained = _dataset("y ~ x + trt + (1|g)")
    path = tmp_path / "new.csv"
    change(_frame(groups=4)).to_csv(path, index=False)
    with pytest.raises(UsageError) as refused:
        read_new_groups(_run_cfg(), str(path), trained, "sample")
    message = str(refused.value)
    assert message.startswith(f"sample: data={path}") and fragment in message and "\n" not in message, message
