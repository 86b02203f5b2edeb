"""benchmarks/real_data.py's pure pieces: the distances of a fitted law to a known one, the simulated laws, the
coverage tally, the distances to lme4, the tables, and lme4's reference figures against the shared data's README.
No fit runs here (milliseconds each)."""

import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "real_data.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("real_data_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up by name
    spec.loader.exec_module(module)
    return module


def uniform_cdf(t):
    return np.clip(t, 0.0, 1.0)


def test_ks_of_a_sample_counts_both_sides_of_each_jump(bench):
    # below the law: draws bunched low, the empirical CDF ends at 1 where F(0.3) = 0.3
    assert bench.ks_sample(np.array([0.3, 0.1, 0.2]), uniform_cdf) == pytest.approx(0.7)
    # above it: one draw at 0.9, the empirical CDF is 0 just below where F = 0.9
    assert bench.ks_sample(np.array([0.9]), uniform_cdf) == pytest.approx(0.9)


def test_w1_of_a_point_mass_against_the_uniform(bench):
    # ∫_0^0.3 t dt + ∫_0.3^1 (1 − t) dt = 0.045 + 0.245; the trapezoid rule on 200,001 points is exact to ~1e-5
    assert bench.w1_sample(np.array([0.3]), uniform_cdf, 0.0, 1.0) == pytest.approx(0.29, abs=1e-4)


def test_distances_between_two_normals(bench):
    ks, w1 = bench.cdf_distances(
        lambda t: bench.normal_cdf(t, 0.0, 1.0), lambda t: bench.normal_cdf(t, 0.5, 1.0), -10.0, 10.0
    )
    assert ks == pytest.approx(2 * 0.5 * (1 + math.erf(0.25 / math.sqrt(2))) - 1, abs=1e-6)  # at the midpoint
    assert w1 == pytest.approx(0.5, abs=1e-6)  # a shift moves every quantile by 0.5


@pytest.mark.parametrize("name", ["gamma", "mixture"])
def test_each_law_is_centred_with_its_sd_and_draws_follow_its_cdf(bench, name):
    law = bench.LAWS[name]
    draws = law.draw(np.random.default_rng(1), 40_000)
    # 40,000 draws: the mean's SE is 0.7/200 = 0.0035 and the sd's about 0.003-0.005; 0.015 is 3-4 of those
    assert abs(draws.mean()) < 0.015
    assert abs(draws.std() - law.sd) < 0.015
    # KS of n draws from their own law: 99.9 % below 1.95/sqrt(n) ≈ 0.0098; a shifted or rescaled CDF gives > 0.05
    assert bench.ks_sample(draws, law.cdf) < 0.0098
    assert law.cdf(np.array([law.lower]))[0] < 1e-6 and law.cdf(np.array([law.upper]))[0] > 1 - 1e-6


def test_law_distances_favour_the_true_law_over_a_normal(bench):
    law = bench.LAWS["mixture"]
    draws = law.draw(np.random.default_rng(2), 50_000)
    found = bench.law_distances(law, draws, law.sd)
    assert found["almond"]["ks"] < 0.01 and found["almond"]["w1"] < 0.01  # the truth's own draws
    # the normal with the same sd misses the two modes by far more (KS about 0.27, as in the benchmark)
    assert found["gaussian"]["ks"] > 0.05 and found["gaussian"]["w1"] > 0.05


def test_simulate_gives_each_group_its_rows_and_one_effect(bench, tmp_path):
    group, x, y, effects = bench.simulate(bench.LAWS["gamma"], groups=4, rows=3, seed=0)
    assert list(group) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert x.shape == y.shape == (12,) and effects.shape == (4,)
    assert (y >= 0).all() and y.dtype.kind == "i"
    path = tmp_path / "t.csv"
    bench.write_table(path, group, x, y)
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    assert path.read_text().splitlines()[0] == "g,x,y"
    np.testing.assert_allclose(table, np.column_stack([group, x, y]), atol=1e-6)


def test_the_simulated_counts_follow_the_model(bench):
    group, x, y, effects = bench.simulate(bench.LAWS["mixture"], groups=3000, rows=6, seed=3)
    # E[y | x, u] = exp(b0 + b1 x + u): the mean of y·exp(−b1 x − u) is e^b0 (2.718); its SE over 18,000 rows
    # is about 0.02 (the ratio's sd ≈ sqrt(e^b0 E[exp(−b1 x − u)]) ≈ 2.4), so 0.1 is 5 SEs; a wrong b1 or u
    # moves it by > 0.3
    ratio = y * np.exp(-bench.B1 * x - effects[group - 1])
    assert abs(ratio.mean() - math.exp(bench.B0)) < 0.1


def test_coverage_tallies_the_intervals_that_hold_the_truth(bench):
    def replicate(low, high):
        return {"intervals": {m: {"(Intercept)": [low, high], "x": [0.0, 1.0]} for m in ("gaussian", "almond")}}

    replicates = [replicate(0.5, 1.5), replicate(1.1, 1.5), replicate(0.9, 1.0), replicate(-1.0, 0.99)]
    found = bench.coverage(replicates, {"(Intercept)": 1.0, "x": 0.5})
    assert found["almond"]["(Intercept)"]["covered"] == 2  # the interval's ends count as inside
    assert found["almond"]["(Intercept)"]["n"] == 4
    assert found["gaussian"]["x"]["fraction"] == 1.0
    assert found["almond"]["(Intercept)"]["se"] == pytest.approx(math.sqrt(0.25 / 4))


def _record(shift_in_se=0.0, sd_factor=1.0):
    reference = {
        "fixed": {"(Intercept)": (1.0, 0.2), "x": (0.5, 0.1)},
        "sd": {"g": 0.6},
    }
    record = {
        "fixed": {"(Intercept)": [1.0 + shift_in_se * 0.2, 0.21], "x": [0.5, 0.1]},
        "sd": {"g": 0.6 * sd_factor},
    }
    return reference, record


def test_distances_to_lme4_are_in_its_se_and_meet_the_targets_only_within_them(bench):
    reference, record = _record(shift_in_se=0.08, sd_factor=1.04)
    found = bench.distances_to_reference(reference, record)
    assert found["estimate_in_se"]["(Intercept)"] == pytest.approx(0.08)
    assert found["se_ratio"]["(Intercept)"] == pytest.approx(1.05)
    assert found["sd_relative"]["g"] == pytest.approx(0.04)
    assert bench.meets_targets(found)
    assert not bench.meets_targets(bench.distances_to_reference(*_record(shift_in_se=-0.11)))
    assert not bench.meets_targets(bench.distances_to_reference(*_record(sd_factor=0.94)))
    reference, record = _record()
    del record["fixed"]["x"]
    found = bench.distances_to_reference(reference, record)
    assert found["missing"] == ["x"] and not bench.meets_targets(found)


def _fit(estimate, sd, log_lik, extra=None):
    fixed = {term: [value, 0.1] for term, value in estimate.items()}
    return {"fixed": fixed, "sd": {"g": sd}, "log_lik": log_lik, "log_lik_se": 0.05, "log_lik_method": "m",
            "se_basis": "joint", **(extra or {})}  # fmt: skip


def test_the_real_data_table_shows_each_fit_beside_lme4(bench):
    reference = {
        "formula": "y ~ x + (1|g)",
        "likelihood": "poisson",
        "factors": [],
        "fixed": {"(Intercept)": (1.0, 0.2), "x": (0.5, 0.1)},
        "sd": {"g": 0.6},
        "log_lik": -100.0,
        "log_lik_method": "Laplace",
    }
    gain = {"almond_gain": 0.1, "almond_gain_se": 0.05, "almond_gain_groups": 10}
    fits = {
        "gaussian": _fit({"(Intercept)": 1.01, "x": 0.5}, 0.606, -99.0, gain),
        "almond": _fit({"(Intercept)": 0.9, "x": 0.52}, 0.55, -98.0),
    }
    result = {
        "fits": fits,
        "distances": {m: bench.distances_to_reference(reference, fit) for m, fit in fits.items()},
        "wall_s": 12.3,
    }
    lines = bench.format_real_table("toy", reference, result)
    row = next(line for line in lines if line.startswith("| (Intercept)"))
    assert row == "| (Intercept) | 1.0000 (0.2000) | 1.0100 (0.1000) | +0.05 | 0.9000 (0.1000) | −0.50 |"
    assert "| log-likelihood | −100.00 (Laplace) | −99.00 ± 0.05 (m) |" in "\n".join(lines)
    sd_row = next(line for line in lines if line.startswith("| sd g"))
    assert "| 0.6060 | +1.0 % |" in sd_row and "| 0.5500 | −8.3 % |" in sd_row
    text = "\n".join(lines)
    assert "+0.100 ± 0.050 nats per group (10 independent groups)" in text
    assert "log-likelihood difference +1.00" in text and "12 s" in text and ": met." in text


def test_summaries_and_the_simulation_table(bench):
    def replicate(rep, almond_ks, gain):
        fits = {
            "gaussian": _fit({"(Intercept)": 1.1, "x": 0.5}, 0.65, -10.0, {"almond_gain": gain}),
            "almond": _fit({"(Intercept)": 0.9 + 0.1 * rep, "x": 0.5}, 0.7, -9.0),
        }
        intervals = {m: {t: [v[0] - 0.196, v[0] + 0.196] for t, v in fit["fixed"].items()} for m, fit in fits.items()}
        distances = {"gaussian": {"ks": 0.1, "w1": 0.2}, "almond": {"ks": almond_ks, "w1": 0.1}}
        return {"fits": fits, "intervals": intervals, "distances": distances, "wall_s": 60.0 + rep}

    replicates = [replicate(0, 0.05, 0.01), replicate(1, 0.2, 0.03), replicate(2, 0.03, -0.01)]
    summary = bench.summarise_law(replicates, {"(Intercept)": 1.0, "x": 0.5}, 0.7)
    assert summary["almond"]["ks"] == 0.05 and summary["gaussian"]["ks"] == 0.1  # medians
    assert summary["almond_closer_ks"] == 2 and summary["almond_closer_w1"] == 3
    # ALMOND's intercepts 0.9, 1.0, 1.1: bias 0, RMSE sqrt(0.02/3); the Gaussian's 1.1 each time
    assert summary["almond"]["(Intercept) bias"] == pytest.approx(0.0, abs=1e-12)
    assert summary["almond"]["(Intercept) rmse"] == pytest.approx(math.sqrt(0.02 / 3))
    assert summary["gaussian"]["(Intercept) bias"] == pytest.approx(0.1)
    assert summary["coverage"]["gaussian"]["(Intercept)"]["covered"] == 3  # 1.0 lies in 1.1 ± 0.196
    assert summary["gain"] == pytest.approx(0.01) and summary["gain_positive"] == 2
    assert summary["gain_se"] == pytest.approx(0.02 / math.sqrt(3))
    lines = bench.format_simulation_table({"gamma": summary}, 500, 6)
    assert "| gamma (n = 3) | Gaussian | 0.100 | 0.200 | +0.100, 0.100 | +0.000, 0.000 | 3/3 | 3/3 |" in lines[4]
    assert "closer in KS in 2/3, in W1 in 3/3" in "\n".join(lines)


def test_train_args_quote_the_formula_as_one_hydra_value(bench, tmp_path):
    args = bench.train_args(tmp_path / "d.csv", "y ~ a + (1|g)", "poisson", ["a", "b"], tmp_path / "run", 3, 1, ["x=1"])
    assert 'data.formula="y ~ a + (1|g)"' in args and "data.factors=[a,b]" in args
    assert args[-1] == "x=1" and "seed=3" in args and "threads=1" in args and "experiment=mixed" in args
    assert not any(a.startswith("data.factors") for a in bench.train_args(tmp_path, "f", "p", [], tmp_path, 0, 1, []))


README = next(
    (p / "shared/data/real/README.md" for p in BENCHMARK.parents if (p / "shared/data/real/README.md").is_file()),
    None,
)


@pytest.mark.skipif(README is None, reason="the shared real data sets' README is not there")
@pytest.mark.parametrize("name", ["grouseticks", "epil", "cbpp"])
def test_the_transcribed_lme4_fits_are_the_readmes(bench, name):
    text = README.read_text()
    paragraph = re.search(rf"^{name}, `.*?(?=\n\n|\Z)", text, re.S | re.M).group(0)
    pairs = [(float(a), float(b)) for a, b in re.findall(r"(-?\d+\.\d+)\s+\((\d+\.\d+)\)", paragraph)]
    reference = bench.DATASETS[name]
    assert list(reference["fixed"].values()) == pairs[: len(reference["fixed"])]  # the first model in the paragraph
    sds = re.search(r"sd\s+(\w+)\s+(\d+\.\d+)(?:,\s+(\w+)\s+(\d+\.\d+))?", paragraph).groups()
    assert reference["sd"] == {k: float(v) for k, v in zip(sds[::2], sds[1::2]) if k}
    log_lik = re.search(r"logLik\s+(-\d+\.\d+)", paragraph.split("Adding")[0])
    assert reference["log_lik"] == (float(log_lik.group(1)) if log_lik else None)
