"""lme4 formulas on tables (data/formula.py): the real data sets' designs as lme4 builds them, the random-term
syntax, responses and offsets, missing values, new data and one test per refusal."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from almond_cli.data.formula import (
    FormulaError,
    build_design,
    design_on_new_data,
    parse_formula,
    read_frame,
)
from almond_cli.errors import UsageError


def _real_data() -> Path:
    """../shared/data/real from the repository, or from the folder holding its worktree (/work/wt/x)."""
    here = Path(__file__).resolve()
    for root in (here.parents[3], here.parents[4]):
        if (root / "shared" / "data" / "real" / "grouseticks.csv").is_file():
            return root / "shared" / "data" / "real"
    return here.parents[3] / "shared" / "data" / "real"


REAL = _real_data()
needs_real = pytest.mark.skipif(not (REAL / "grouseticks.csv").is_file(), reason=f"no real data at {REAL}")


def _frame(n: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "y": rng.poisson(3.0, n).astype(float) + 1.0,
            "x": rng.normal(size=n),
            "e": rng.uniform(0.5, 2.0, n),
            "f": np.array(["b", "a", "c"] * (n // 3), dtype=object),
            "g": np.array([10.0, 9.0, 2.0, 10.0] * (n // 4)),
            "h": np.array(["u", "v"] * (n // 2), dtype=object),
        }
    )


# ----- the real data sets ----------------------------------------------------------------------------------------
@needs_real
def test_grouseticks_design_is_lme4s():
    frame = read_frame(REAL / "grouseticks.csv")
    design = build_design("TICKS ~ YEAR + scale(HEIGHT) + (1|BROOD) + (1|LOCATION)", frame, factors=["YEAR"])
    assert design.fixed_names == ("(Intercept)", "YEAR96", "YEAR97", "scale(HEIGHT)")
    assert design.fixed.shape == (403, 4) and design.dropped == 0
    np.testing.assert_array_equal(design.rows, np.arange(403))
    np.testing.assert_array_equal(design.response, frame["TICKS"].to_numpy())
    assert design.trials is None and not design.offset.any()
    np.testing.assert_array_equal(design.fixed[:, 0], 1.0)
    np.testing.assert_array_equal(design.fixed[:, 1], frame["YEAR"] == 96)
    np.testing.assert_array_equal(design.fixed[:, 2], frame["YEAR"] == 97)
    # R's scale: centred, divided by the sample sd (n - 1); the data README's zH. Rounding error only.
    zh = design.fixed[:, 3]
    assert abs(zh.mean()) < 1e-12 and abs(zh.std(ddof=1) - 1.0) < 1e-12
    height = frame["HEIGHT"].to_numpy()
    np.testing.assert_allclose(zh, (height - height.mean()) / height.std(ddof=1), rtol=0, atol=1e-12)

    brood, location = design.random
    assert (brood.factor, brood.terms, len(brood.levels)) == ("BROOD", ("(Intercept)",), 118)
    assert (location.factor, location.terms, len(location.levels)) == ("LOCATION", ("(Intercept)",), 63)
    # levels sorted numerically, labelled as R prints the numbers; each row's index points at its own label
    assert list(brood.levels) == [str(int(v)) for v in sorted(frame["BROOD"].unique())]
    assert [brood.levels[k] for k in brood.group] == [str(int(v)) for v in frame["BROOD"]]
    assert brood.group.dtype == np.int64 and brood.columns.shape == (403, 1) and (brood.columns == 1.0).all()


@needs_real
def test_grouseticks_nested_term_gives_lme4s_two_factors():
    frame = read_frame(REAL / "grouseticks.csv")
    design = build_design("TICKS ~ YEAR + (1|LOCATION/BROOD)", frame, factors=["YEAR"])
    assert [block.factor for block in design.random] == ["LOCATION", "BROOD:LOCATION"]
    inner = design.random[1]
    assert len(inner.levels) == 118  # every brood lives in one location
    first = int(np.flatnonzero(inner.group == inner.group[0])[0])
    assert inner.levels[inner.group[0]] == f"{int(frame['BROOD'][first])}:{int(frame['LOCATION'][first])}"


@needs_real
def test_epil_interaction_names_and_values():
    frame = read_frame(REAL / "epil.csv")
    design = build_design("y ~ lbase*trt + lage + V4 + (1|subject)", frame)
    assert design.fixed_names == ("(Intercept)", "lbase", "trtprogabide", "lage", "V4", "lbase:trtprogabide")
    progabide = (frame["trt"] == "progabide").to_numpy(dtype=float)
    expected = np.column_stack(
        [np.ones(236), frame["lbase"], progabide, frame["lage"], frame["V4"], frame["lbase"] * progabide]
    )
    np.testing.assert_array_equal(design.fixed, expected)
    assert len(design.random[0].levels) == 59


@needs_real
def test_cbpp_cbind_gives_successes_and_trials():
    frame = read_frame(REAL / "cbpp.csv")
    design = build_design("cbind(incidence, size - incidence) ~ period + (1|herd)", frame, factors=["period"])
    assert design.response_name == "cbind(incidence, size - incidence)"
    np.testing.assert_array_equal(design.response, frame["incidence"])
    np.testing.assert_array_equal(design.trials, frame["size"])
    assert design.fixed_names == ("(Intercept)", "period2", "period3", "period4")
    for k in (2, 3, 4):
        np.testing.assert_array_equal(design.fixed[:, k - 1], frame["period"] == k)
    assert design.random[0].levels == tuple(str(k) for k in range(1, 16))  # numerically: 1, 2, ..., 10, not 1, 10


# ----- parsing ---------------------------------------------------------------------------------------------------
def test_parse_finds_bar_terms_by_brackets_not_by_pattern():
    parsed = parse_formula("log(y) ~ log(x + 1) + I((x - 1)^2) + offset(log(e)) + (1 + log(x) | g) + (1|a/b) - 1")
    assert parsed.lhs == "log(y)" and parsed.response_args == ("log(y)",)
    assert parsed.fixed == "log(x + 1) + I((x - 1)^2) - 1"
    assert parsed.offsets == ("log(e)",)
    assert [(bar.terms, bar.factor, bar.uncorrelated) for bar in parsed.bars] == [
        ("1 + log(x)", "g", False),
        ("1", "a/b", False),
    ]
    assert parsed.bars[1].groupings == (("a",), ("b", "a"))
    assert parse_formula("y ~ (x || g)").bars[0].uncorrelated
    assert parse_formula("y ~ 0 + (1|g)").fixed == "0"
    assert parse_formula("y ~ (1|g)").fixed == "1"
    assert parse_formula("y ~ -1 + x").fixed == "1 - 1 + x"


# ----- random terms ----------------------------------------------------------------------------------------------
def test_random_slope_block_and_numeric_level_order():
    frame = _frame()
    design = build_design("y ~ x + (1 + x | g)", frame)
    (block,) = design.random
    assert block.factor == "g" and block.terms == ("(Intercept)", "x")
    np.testing.assert_array_equal(block.columns, np.column_stack([np.ones(12), frame["x"]]))
    assert block.levels == ("2", "9", "10")  # numbers numerically, printed as R prints them
    assert [block.levels[k] for k in block.group] == [str(int(v)) for v in frame["g"]]
    # (x|g) implies the intercept
    assert build_design("y ~ x + (x | g)", frame).random[0].terms == ("(Intercept)", "x")


def test_uncorrelated_bars_split_into_blocks_of_one_factor():
    frame = _frame()
    blocks = build_design("y ~ x + (x || g)", frame).random
    assert [(b.factor, b.terms) for b in blocks] == [("g", ("(Intercept)",)), ("g", ("x",))]
    np.testing.assert_array_equal(blocks[1].columns[:, 0], frame["x"])
    np.testing.assert_array_equal(blocks[0].group, blocks[1].group)


@pytest.mark.parametrize("terms", ["0 + x", "-1 + x", "x - 1"])
def test_random_slope_without_intercept(terms):
    block = build_design(f"y ~ x + ({terms} | g)", _frame()).random[0]
    assert block.terms == ("x",) and block.columns.shape == (12, 1)


def test_interaction_of_labels_and_crossed_factors():
    frame = _frame()
    blocks = build_design("y ~ 1 + (1 | f:h) + (1 | h)", frame).random
    assert [b.factor for b in blocks] == ["f:h", "h"]
    # R's f:h levels: f's order slowest, then h's; only the pairs that occur
    pairs = sorted({(f, h) for f, h in zip(frame["f"], frame["h"])})
    assert blocks[0].levels == tuple(f"{f}:{h}" for f, h in pairs)
    assert [blocks[0].levels[k] for k in blocks[0].group] == [f"{f}:{h}" for f, h in zip(frame["f"], frame["h"])]
    assert blocks[1].levels == ("u", "v")


# ----- fixed part, response, offset ------------------------------------------------------------------------------
def test_string_factor_reference_is_first_sorted_level_and_no_intercept_gives_full_dummies():
    frame = _frame()
    design = build_design("y ~ f + x", frame)
    assert design.fixed_names == ("(Intercept)", "fb", "fc", "x")
    np.testing.assert_array_equal(design.fixed[:, 1], frame["f"] == "b")
    for formula in ("y ~ 0 + f + x", "y ~ f + x - 1"):
        design = build_design(formula, frame)
        assert design.fixed_names == ("fa", "fb", "fc", "x")
        np.testing.assert_array_equal(design.fixed[:, :3].sum(axis=1), 1.0)


def test_factor_of_a_numeric_column_is_named_as_lme4_names_it():
    frame = _frame()
    design = build_design("y ~ factor(g) + x", frame)
    assert design.fixed_names == ("(Intercept)", "factor(g)9", "factor(g)10", "x")
    np.testing.assert_array_equal(design.fixed[:, 2], frame["g"] == 10)
    assert design_on_new_data(design, frame).fixed_names == design.fixed_names


def test_r_names_with_dots_need_no_backticks():
    frame = _frame().rename(columns={"x": "Sepal.Length", "e": "e.1", "h": "h.id"})
    design = build_design("y ~ Sepal.Length + log(e.1) + (1 | h.id)", frame)
    assert design.fixed_names == ("(Intercept)", "Sepal.Length", "log(e.1)")
    np.testing.assert_array_equal(design.fixed[:, 1], frame["Sepal.Length"])
    np.testing.assert_allclose(design.fixed[:, 2], np.log(frame["e.1"]), rtol=1e-15)
    assert design.random[0].factor == "h.id" and design.random[0].levels == ("u", "v")
    assert build_design("y ~ `Sepal.Length`", frame).fixed_names == ("(Intercept)", "Sepal.Length")


def test_text_response_is_zero_for_its_first_level():
    frame = _frame()
    design = build_design("f ~ x + (1|g)", frame)  # levels a, b, c: R's glm reads a as failure, b and c as success
    np.testing.assert_array_equal(design.response, frame["f"] != "a")


def test_transformations_offset_and_log_response():
    frame = _frame()
    design = build_design("log(y) ~ I(x^2) + offset(log(e)) + (1|g)", frame)
    assert design.response_name == "log(y)"
    np.testing.assert_allclose(design.response, np.log(frame["y"]), rtol=1e-15)
    np.testing.assert_allclose(design.offset, np.log(frame["e"]), rtol=1e-15)
    assert design.fixed_names == ("(Intercept)", "I(x ** 2)")
    np.testing.assert_allclose(design.fixed[:, 1], frame["x"] ** 2, rtol=1e-15)
    assert build_design("y ~ offset", frame.rename(columns={"x": "offset"})).fixed_names == ("(Intercept)", "offset")
    two = build_design("y ~ x + offset(log(e)) + offset(x)", frame)
    np.testing.assert_allclose(two.offset, np.log(frame["e"]) + frame["x"], rtol=1e-15)
    assert two.fixed_names == ("(Intercept)", "x")


def test_cbind_arguments_are_expressions():
    frame = _frame()
    frame["n"] = frame["y"] + 3.0
    design = build_design("cbind(y, n - y) ~ x", frame)
    np.testing.assert_array_equal(design.response, frame["y"])
    np.testing.assert_array_equal(design.trials, frame["n"])


# ----- missing values --------------------------------------------------------------------------------------------
def test_rows_missing_a_used_value_are_dropped_and_counted():
    frame = _frame()
    frame["x"] = frame["x"].astype(float)
    frame.loc[1, "x"] = np.nan  # a fixed-effect column
    frame.loc[4, "f"] = None  # a text column that only groups
    frame.loc[5, "h"] = ""  # an empty cell of a text column
    frame["unused"] = np.nan  # other columns' missing values do not matter
    design = build_design("y ~ x + (1|f) + (1|h)", frame)
    assert design.dropped == 3
    np.testing.assert_array_equal(design.rows, [0, 2, 3, 6, 7, 8, 9, 10, 11])
    np.testing.assert_array_equal(design.fixed[:, 1], frame["x"].to_numpy()[design.rows])
    assert design.random[0].levels == ("a", "b", "c") and design.random[1].levels == ("u", "v")


def test_scale_takes_its_mean_and_sd_before_rows_are_dropped_as_r_does():
    frame = _frame(24, seed=3)
    frame.loc[[2, 7, 11], "y"] = np.nan  # dropped for the response; their e still counts in scale(e), as in R
    frame.loc[[4], "e"] = np.nan
    design = build_design("y ~ scale(e) + (1 + scale(x) | g)", frame)
    assert design.dropped == 4
    e, x = frame["e"].to_numpy(), frame["x"].to_numpy()
    # R: scale(e) = (e - mean(e, na.rm = TRUE)) / sd(e, na.rm = TRUE), then na.omit. Rounding error only.
    expected = (e - np.nanmean(e)) / np.nanstd(e, ddof=1)
    np.testing.assert_allclose(design.fixed[:, 1], expected[design.rows], rtol=0, atol=1e-12)
    slope = design.random[0].columns[:, 1]
    np.testing.assert_allclose(slope, ((x - x.mean()) / x.std(ddof=1))[design.rows], rtol=0, atol=1e-12)
    again = design_on_new_data(design, frame)
    np.testing.assert_array_equal(again.fixed, design.fixed)


def test_read_frame_types_and_missing_cells(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("y,x,trt,g\n1,0.5,a,7\n2,NA,b,8\n3,,a,NA\n4,1.5,,9\n5,2.5,b,7\n6,3,a,8\n")
    frame = read_frame(path)
    assert frame["x"].dtype == np.float64 and frame["g"].dtype == np.float64
    np.testing.assert_array_equal(np.isnan(frame["x"]), [False, True, True, False, False, False])
    assert list(frame["trt"][:3]) == ["a", "b", "a"] and list(frame["trt"].isna()) == [
        False,
        False,
        False,
        True,
        False,
        False,
    ]
    assert frame.attrs["lines"] == [2, 3, 4, 5, 6, 7]
    design = build_design("y ~ x + trt + (1|g)", frame)
    assert design.dropped == 3 and list(design.rows) == [0, 4, 5]
    np.testing.assert_array_equal(design.fixed, [[1, 0.5, 0], [1, 2.5, 1], [1, 3, 0]])
    array = tmp_path / "a.npy"
    np.save(array, np.arange(6.0).reshape(3, 2))
    assert list(read_frame(array).columns) == ["V1", "V2"]


# ----- new data --------------------------------------------------------------------------------------------------
def test_design_on_the_training_frame_is_the_same_design():
    frame = _frame()
    design = build_design("log(y) ~ f * x + scale(e) + offset(log(e)) + (1 + x | g) + (1|h)", frame)
    again = design_on_new_data(design, frame)
    assert again.fixed_names == design.fixed_names
    np.testing.assert_array_equal(again.fixed, design.fixed)
    np.testing.assert_array_equal(again.response, design.response)
    np.testing.assert_array_equal(again.offset, design.offset)
    for old, new in zip(design.random, again.random):
        assert (new.factor, new.terms, new.levels) == (old.factor, old.terms, old.levels)
        np.testing.assert_array_equal(new.columns, old.columns)
        np.testing.assert_array_equal(new.group, old.group)


def test_new_data_keeps_training_scale_and_levels_and_its_own_groups():
    frame = _frame()
    design = build_design("y ~ f + scale(e) + (1|g)", frame)
    new = frame.iloc[[0, 1]].copy()  # two rows, f's levels b and a only, groups 10 and 9
    new["g"] = [77.0, 5.0]
    out = design_on_new_data(design, new)
    # scale() uses the training mean and sd, not the two new rows' own (which would give -0.707, 0.707)
    np.testing.assert_array_equal(out.fixed, design.fixed[[0, 1]])
    assert out.fixed_names == ("(Intercept)", "fb", "fc", "scale(e)")
    assert out.random[0].levels == ("5", "77") and list(out.random[0].group) == [1, 0]
    unseen = new.copy()
    unseen["f"] = ["b", "z"]
    with pytest.raises(FormulaError, match="column 'f' has the level 'z'"):
        design_on_new_data(design, unseen)
    without = design_on_new_data(design, new.drop(columns=["y"]), with_response=False)
    assert np.isnan(without.response).all()


# ----- refusals: one line naming data.formula --------------------------------------------------------------------
REFUSALS = [
    ("y x + (1|g)", "has no '~'"),
    ("y ~ log(x + (1|g)", "unbalanced parentheses"),
    ("y ~ x) + (1|g)", "unbalanced parentheses"),
    ("y ~ x + (1|)", "no grouping factor"),
    ("y ~ x + ( | g)", "no terms left of the bar"),
    ("y ~ x + (0 | g)", "has no terms"),
    ("y ~ x + z", "no column 'z'"),
    ("y ~ x + (1|group)", "grouping factor 'group' of '(1 | group)' is not a column"),
    ("y ~ x + (1|log(g))", "must be column names"),
    ("y ~ x + ", "empty term"),
    ("~ x", "no response"),
    ("y ~ x ** x", "cannot evaluate the fixed part"),
    ("y ~ log(f)", "cannot evaluate the fixed part"),
    ("y ~ log(x)", "'log(x)' is nan"),
    ("log(y - y) ~ x", "'log(y - y)' is -inf"),
    ("y ~ x + I(2 * x)", "column 'I(2 * x)' of 'y ~ x + I(2 * x)' is a linear combination"),
    ("y ~ f + h + I(h == 'u')", "linear combination"),
    ("y ~ x * (1|g)", "must stand alone"),
    ("y ~ x - (1|g)", "subtracted"),
    ("y ~ x | g", "outside parentheses"),
    ("y ~ __import__('os').system('true')", "not a function"),
    ("y ~ open('f')", "not a function"),
    ("y ~ I(log(e).dump('f'))", "not allowed"),
    ("y ~ np.load('f')", "not allowed"),
    ("y ~ I(x.)", "not allowed"),
    ("y ~ I(f\"{open('z')}\")", "prefixed string"),
    ("y ~ x + .", "not allowed"),
    ("y ~ .", "all other columns"),
    ("cbind(y) ~ x", "needs two arguments"),
    ("", "the formula is empty"),
    ("y ~ x + log(offset(e))", "must stand alone"),
    ("y ~ x - offset(e)", "subtracted"),
]


@pytest.mark.parametrize(("formula", "message"), REFUSALS)
def test_refusals_are_one_line_naming_the_key(formula, message):
    frame = _frame()
    frame["x"] = np.abs(frame["x"]) * np.where(np.arange(12) == 3, -1.0, 1.0)
    with pytest.raises(FormulaError, match=re.escape(message)) as caught:
        build_design(formula, frame)
    text = str(caught.value)
    assert isinstance(caught.value, UsageError) and text.startswith("data.formula: ") and "\n" not in text
    if "no column" in message:
        assert "its columns are y, x, e, f, g, h" in text


def test_unknown_column_message_lists_at_most_twelve_columns():
    frame = pd.DataFrame({f"c{k}": [1.0, 2.0] for k in range(20)})
    with pytest.raises(FormulaError, match=r"its columns are c0, .*, c11 and 8 more; fix the name"):
        build_design("c0 ~ nothing", frame)


def test_all_rows_dropped_and_unknown_factor_column_are_refused():
    frame = _frame()
    frame["x"] = np.nan
    with pytest.raises(FormulaError, match="every one of the 12 rows misses a value"):
        build_design("y ~ x", frame)
    with pytest.raises(FormulaError, match="^data.factors: 'YEAR' is not a column"):
        build_design("y ~ 1", _frame(), factors=["YEAR"])


def test_non_finite_value_names_the_file_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("y,x\n1,1\n2,0\n3,2\n")
    with pytest.raises(FormulaError, match=r"'log\(x\)' is -inf at line 3 of the file"):
        build_design("y ~ log(x)", read_frame(path))
