"""The Gaussian baseline child run of a mixed model (``MixedTask.trained_baselines``): where its log-likelihood is
exact (every factor one random term, integrated by grids) the final polish is lme4's maximum-likelihood fit, so its
stochastic phase is cut to ``GAUSSIAN_EXACT_EPOCHS``; elsewhere it trains as the parent does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from almond_cli.data.formula import build_design
from almond_cli.data.mixed import mixed_dataset
from almond_cli.tasks.mixed import GAUSSIAN_EXACT_EPOCHS, MixedTask


def _dataset(formula: str):
    rng = np.random.default_rng(0)
    b = np.repeat(np.arange(12), 3)
    crossed = np.tile(np.arange(4), 9)
    frame = pd.DataFrame(
        {
            "y": rng.poisson(2.0, b.size),
            "x": rng.normal(size=b.size).round(3),
            "b": [f"B{k}" for k in b],
            "a": [f"A{k % 4}" for k in b],  # b nested in a
            "c": [f"C{k}" for k in crossed],  # crossed with b
        }
    )
    return mixed_dataset(build_design(formula, frame))


def _cfg(almond_epochs):
    return OmegaConf.create(
        {
            "experiment_name": "mixed",
            "resume": None,
            "decoder": {"_target_": "mixed_mlp"},
            "data": {"gaussian_baseline": True},
            "schedule": {"almond_epochs": almond_epochs},
        }
    )


@pytest.mark.parametrize(
    "formula,exact",
    [
        ("y ~ x + (1|b)", True),  # one factor, one term: a dense grid
        ("y ~ x + (1|a/b)", True),  # nested pair: nested grids
        ("y ~ x + (1|b) + (1|c)", False),  # crossed: importance sampling
        ("y ~ x + (1 + x|b)", False),  # a slope: the polish moves no correlation
    ],
)
def test_the_gaussian_child_trains_briefly_only_where_its_log_likelihood_is_exact(formula, exact):
    dataset = _dataset(formula)
    for given in ("auto", 400):
        child = MixedTask().trained_baselines(dataset, _cfg(given))["gaussian"]
        assert child.schedule.almond_epochs == (GAUSSIAN_EXACT_EPOCHS if exact else given), (formula, given)
        assert child.data.gaussian_baseline is False and child.decoder._target_.endswith("MixedLinearDecoder")
    fewer = MixedTask().trained_baselines(dataset, _cfg(20))["gaussian"]
    assert fewer.schedule.almond_epochs == 20  # never more than the user asked for
    assert (
        MixedTask().trained_baselines(dataset, OmegaConf.merge(_cfg("auto"), {"data": {"gaussian_baseline": False}}))
        == {}
    )
