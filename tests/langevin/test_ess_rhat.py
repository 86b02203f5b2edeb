"""The rank-normalised split-R-hat and bulk/tail ESS of Vehtari et al. (2021) on chains whose answer is known,
and against ArviZ's own values where ArviZ is installed (it is not a dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from almond_cli.langevin.diagnostics import ess_bulk, ess_tail, rank_rhat


def ar1_chains(phi: float, chains: int, draws: int, seed: int) -> np.ndarray:
    """Stationary AR(1) chains x_t = phi x_{t−1} + sqrt(1 − phi²) e_t: integrated autocorrelation time
    (1 + phi) / (1 − phi), so ESS ≈ chains · draws · (1 − phi) / (1 + phi)."""
    rng = np.random.default_rng(seed)
    x = np.empty((chains, draws))
    x[:, 0] = rng.standard_normal(chains)
    noise = rng.standard_normal((chains, draws)) * math.sqrt(1 - phi**2)
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x


def test_independent_chains_agree_and_count_fully():
    """4 × 1000 independent normal draws: R-hat within 1.01 (its sd here is about 0.002) and both ESS near 4000
    (the estimator's relative sd at this size is about 5 %; ±20 % leaves room)."""
    draws = np.random.default_rng(0).standard_normal((4, 1000))
    assert rank_rhat(draws) < 1.01
    assert 3200 < ess_bulk(draws) < 4800 and 3200 < ess_tail(draws) < 4800


def test_autocorrelated_chains_give_the_ar1_effective_size():
    """phi = 0.9: ESS = 4 · 4000 · 0.1 / 1.9 ≈ 842; the estimate is within 25 % (its relative sd is ~8 % here)."""
    draws = ar1_chains(0.9, 4, 4000, seed=1)
    expected = 4 * 4000 * 0.1 / 1.9
    assert abs(ess_bulk(draws) / expected - 1) < 0.25
    assert rank_rhat(draws) < 1.01


def test_disagreeing_chains_raise_the_alarm():
    """Chains stuck in different places (one shifted by 2 sd) or with different spreads (the tail R-hat's case:
    same centre, one chain 3 times wider) give R-hat far above 1.01."""
    rng = np.random.default_rng(2)
    shifted = rng.standard_normal((4, 500))
    shifted[0] += 2.0
    assert rank_rhat(shifted) > 1.1
    wide = rng.standard_normal((4, 500))
    wide[0] *= 3.0
    assert rank_rhat(wide) > 1.05
    stuck = np.repeat(rng.standard_normal((4, 1)), 500, axis=1)  # each chain constant, all different
    assert rank_rhat(stuck) > 1.5


def test_matches_arviz_where_installed():
    arviz = pytest.importorskip("arviz", reason="ArviZ is not installed (it is not a dependency of almond)")
    for phi, seed in ((0.0, 3), (0.7, 4), (0.95, 5)):
        draws = ar1_chains(phi, 4, 300, seed)
        draws[1] += 0.3  # a little disagreement, so R-hat is not 1
        assert rank_rhat(draws) == pytest.approx(float(arviz.rhat(draws, method="rank")), rel=1e-10)
        assert ess_bulk(draws) == pytest.approx(float(arviz.ess(draws, method="bulk")), rel=1e-10)
        assert ess_tail(draws) == pytest.approx(float(arviz.ess(draws, method="tail")), rel=1e-10)


def test_trajectory_rhat_and_ess_are_unchanged_by_a_strictly_increasing_transform():
    """Rank normalisation makes the trajectory checks depend on the draws' order alone (issue 27: without it every
    test still passed). x -> sign(x)|x|³ is strictly increasing and odd: with the pooled median at exactly 0 (an
    odd number of pooled draws, one of them shifted to 0) it also keeps the order of |x − median|, which the tail
    R-hat ranks, so every number is the same; the ranks are identical, so they agree to rounding (1e-12)."""
    from almond_cli.langevin.diagnostics import trajectory_convergence

    points, chains, draws, dims = 3, 3, 9, 2  # 27 pooled draws per point and coordinate: the median is one of them
    rng = np.random.default_rng(5)
    trajectory = np.stack(
        [
            np.stack([ar1_chains(0.6, chains, draws, seed=int(rng.integers(1 << 30))) for _ in range(dims)], -1)
            for _ in range(points)
        ]
    )  # (P, C, N, d)
    trajectory[1, 0] *= 4.0  # one wide chain: R-hat well above 1, so the check has something to keep
    pooled = trajectory.transpose(0, 3, 1, 2).reshape(points, dims, -1)
    trajectory = trajectory - np.median(pooled, axis=-1)[:, None, None, :]
    cubed = np.sign(trajectory) * np.abs(trajectory) ** 3
    plain, transformed = trajectory_convergence(trajectory), trajectory_convergence(cubed)
    assert (
        plain.keys()
        == transformed.keys()
        == {"rhat_max", "rhat_median", "ess_bulk_min", "ess_bulk_median", "ess_tail_min"}
    )
    assert plain["rhat_max"] > 1.01
    for key in plain:
        assert math.isclose(plain[key], transformed[key], rel_tol=1e-12), (key, plain[key], transformed[key])
