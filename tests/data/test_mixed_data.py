"""``data=mixed`` (``data/mixed.py``): a formula's columns laid out as a mixed model's rows, the fixed-effects-only
fit training starts from, and the response checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from almond_cli.data.formula import build_design
from almond_cli.data.mixed import check_response, fixed_effects_fit, pack_rows
from almond_cli.errors import ConfigError
from almond_cli.model.likelihoods import LIKELIHOODS


def _frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    size = rng.integers(2, 15, n)
    return pd.DataFrame(
        {
            "k": rng.binomial(size, 0.3),
            "size": size,
            "x": rng.normal(size=n).round(3),
            "e": rng.uniform(0.5, 2.0, n).round(3),
            "g": rng.choice(["u", "v", "w"], n),
            "h": rng.integers(1, 6, n),
            "y": rng.poisson(2.0, n),
        }
    )


def test_pack_rows_lays_out_a_cbind_response_with_a_slope_block_and_an_offset():
    frame = _frame()
    design = build_design("cbind(k, size - k) ~ x + offset(log(e)) + (1 + x | g) + (1 | h)", frame)
    rows, layout = pack_rows(design)
    assert layout.family_width == 2 and layout.num_fixed == 2 and rows.shape == (60, layout.row_width)
    assert [(b.factor, b.terms, b.num_groups) for b in layout.blocks] == [
        ("g", ("(Intercept)", "x"), 3),
        ("h", ("(Intercept)",), 5),
    ]
    np.testing.assert_array_equal(rows[:, 0], frame["k"])
    np.testing.assert_array_equal(rows[:, 1], frame["size"])  # trials: k + (size - k), not the failures
    np.testing.assert_allclose(rows[:, layout.offset_column], np.log(frame["e"]))
    np.testing.assert_allclose(rows[:, layout.fixed_columns], np.stack([np.ones(60), frame["x"]], 1))
    np.testing.assert_allclose(rows[:, layout.z_columns(0)], np.stack([np.ones(60), frame["x"]], 1))
    np.testing.assert_allclose(rows[:, layout.z_columns(1)], np.ones((60, 1)))
    # each row's level index points at its own label
    for index, column in ((0, "g"), (1, "h")):
        labels = np.array(design.random[index].levels)[rows[:, layout.group_column(index)].astype(int)]
        assert list(labels) == [str(v) for v in frame[column]]


def test_the_gaussian_start_is_least_squares_and_the_residual_sd():
    frame = _frame()
    frame["z"] = 1.5 + 0.7 * frame["x"] + np.random.default_rng(1).normal(size=60) * 0.4
    design = build_design("z ~ x + (1 | g)", frame)
    rows, layout = pack_rows(design)
    beta, sigma = fixed_effects_fit(LIKELIHOODS["gaussian"](), torch.from_numpy(rows), layout)
    solution, *_ = np.linalg.lstsq(design.fixed, frame["z"].to_numpy(), rcond=None)
    np.testing.assert_allclose(beta.numpy(), solution, rtol=1e-5, atol=1e-6)  # float32 beta
    residual = frame["z"].to_numpy() - design.fixed @ solution
    assert sigma == pytest.approx(residual.std(ddof=1), rel=1e-6)


@pytest.mark.parametrize("family", ["poisson", "binomial"])
def test_the_count_start_is_the_glm_maximum(family):
    """At the fixed-effects-only GLM fit the score X^T (y - E y) is zero (canonical links)."""
    frame = _frame()
    formula = "y ~ x + offset(log(e))" if family == "poisson" else "cbind(k, size - k) ~ x"
    design = build_design(formula + " + (1 | g)", frame)
    rows, layout = pack_rows(design)
    beta, sigma = fixed_effects_fit(LIKELIHOODS[family](), torch.from_numpy(rows), layout)
    assert sigma == 1.0
    eta = design.offset + design.fixed @ beta.double().numpy()
    if family == "poisson":
        expected_y = np.exp(eta)
    else:
        expected_y = design.trials / (1.0 + np.exp(-eta))
    score = design.fixed.T @ (design.response - expected_y)
    # float32 beta: a score of 1e-3 x the information scale (sum of E y, ~100) is a beta error of ~1e-5 or less
    assert np.abs(score).max() < 0.05, score
    assert np.abs(beta.numpy()).max() > 0.05  # not the zeros fallback


def test_check_response_refuses_what_the_family_cannot_take():
    frame = _frame()
    cbind = build_design("cbind(k, size - k) ~ x + (1 | g)", frame)
    counts = build_design("y ~ x + (1 | g)", frame)
    check_response(cbind, "binomial")
    check_response(counts, "poisson")
    with pytest.raises(ConfigError, match="needs likelihood=binomial"):
        check_response(cbind, "poisson")
    with pytest.raises(ConfigError, match="cbind"):
        check_response(counts, "binomial")
    frame.loc[7, "y"] = -2
    with pytest.raises(ConfigError, match=r"is -2 in row 8"):
        check_response(build_design("y ~ x + (1 | g)", frame), "poisson")
    frame.loc[7, "y"] = 2
    frame.loc[3, "k"] = frame.loc[3, "size"] + 1  # trials k + (size - k) = size < k: a negative failure count
    with pytest.raises(ConfigError, match=r"row 4"):
        check_response(build_design("cbind(k, size - k) ~ x + (1 | g)", frame), "binomial")
