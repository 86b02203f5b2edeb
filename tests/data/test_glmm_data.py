"""The GLMM simulation and the glmm_file CSV loader: round trip and every error case."""

import csv

import pytest
import torch
from conftest import run_almond

from almond_cli.data.glmm import load_glmm_file, make_glmm
from almond_cli.data.tables import DataFileError


def _simulated(n: int = 50):
    return make_glmm(n, 3, 0.2, 2.0, 2.0, 2.0, 1.0, torch.Generator().manual_seed(4))


def test_simulation_layout_and_truth():
    dataset = _simulated(400)
    assert dataset.name == "glmm" and dataset.x.shape == (400, 7) and dataset.truth.shape == (400, 3)
    counts = dataset.x[:, 0]
    assert bool((counts >= 0).all()) and torch.equal(counts, counts.round())
    beta = dataset.true_beta
    assert beta.shape == (3,) and bool((beta.abs() <= 2.0).all())
    assert dataset.likelihood_args() == {"num_fixed": 3} and dataset.copula_theta == 2.0
    # Covariates are 0.2 · N(0, 1): their sd over 2,400 values is 0.2 within a few per cent.
    assert float(dataset.x[:, 1:].std()) == pytest.approx(0.2, rel=0.05)
    # The counts follow the model: E[y | x, zeta, u] = exp(x·beta + zeta·u).
    rate = torch.exp(dataset.x[:, 1:4].double() @ beta + (dataset.x[:, 4:].double() * dataset.truth.double()).sum(1))
    pearson = ((counts.double() - rate) / rate.sqrt()).square().mean()
    assert 0.8 < float(pearson) < 1.2  # Pearson chi²/n of a correct Poisson model: 1 ± 0.07 at n = 400


def _write(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def test_file_round_trip_by_names_and_by_indices(tmp_path):
    dataset = _simulated()
    header = ["id", "count", "a", "b", "c", "r1", "r2", "r3"]
    rows = [[i, *[repr(float(v)) for v in row]] for i, row in enumerate(dataset.x.double().tolist())]
    rows = [[r[0], str(int(float(r[1]))), *r[2:]] for r in rows]
    path = _write(tmp_path / "counts.csv", header, rows)
    by_name = load_glmm_file(str(path), "count", ["a", "b", "c"], ["r1", "r2", "r3"])
    assert by_name.name == "glmm_file" and torch.equal(by_name.x, dataset.x)
    assert by_name.likelihood_args() == {"num_fixed": 3}
    assert by_name.fixed_names == ["a", "b", "c"]
    by_index = load_glmm_file(str(path), "1", ["2", "3", "4"], ["5", "6", "7"])
    assert torch.equal(by_index.x, dataset.x)
    headerless = _write(tmp_path / "plain.csv", None, rows)
    assert torch.equal(load_glmm_file(str(headerless), 1, [2, 3, 4], [5, 6, 7], header=False).x, dataset.x)
    assert torch.equal(load_glmm_file(str(path), "count", ["a"], ["r1"], n=10).x, dataset.x[:10, [0, 1, 4]])
    # Column order in the file does not matter, and fixed effects may be absent.
    reordered = load_glmm_file(str(path), "count", [], ["r3", "r1"])
    assert torch.equal(reordered.x, dataset.x[:, [0, 6, 4]])


@pytest.mark.parametrize(
    "rows, columns, message",
    [
        (
            [["1", "0.5", "0.1"], ["2.5", "0.1", "0.2"]],
            {},
            "row 3 (line 3 of the file), column 'y' (index 0) is 2.5, which is not a count",
        ),
        (
            [["1", "0.5", "0.1"], ["-1", "0.1", "0.2"]],
            {},
            "row 3 (line 3 of the file), column 'y' (index 0) is -1, which is not a count",
        ),
        (
            [["1", "nan", "0.1"]],
            {},
            "row 2 (line 2 of the file), column 'x' (index 1) is nan; every value must be a finite number",
        ),
        (
            [["1", "0.5", "inf"]],
            {},
            "row 2 (line 2 of the file), column 'z' (index 2) is inf; every value must be a finite number",
        ),
        (
            [["1", "abc", "0.1"]],
            {},
            "row 2 (line 2 of the file), column 'x' (index 1) holds 'abc', which is not a number",
        ),
        ([["1", "0.5", "0.1"], ["1", "0.5"]], {}, "row 3 (line 3 of the file) has 2 columns but the header has 3"),
        ([["1", "0.5", "0.1"]], {"response": "count"}, "has no column 'count'; its columns are y, x, z"),
        ([["1", "0.5", "0.1"]], {"random": ["9"]}, "data.random_effects: column index 9 is out of range"),
        ([["1", "0.5", "0.1"]], {"random": []}, "data.random_effects: give at least one"),
        ([["1", "0.5", "0.1"]], {"fixed": ["z"]}, "used more than once"),
        ([], {}, "has a header row (y, x, z) but no data rows"),
    ],
)
def test_file_errors_name_the_row_and_column(tmp_path, rows, columns, message):
    path = _write(tmp_path / "bad.csv", ["y", "x", "z"], rows)
    with pytest.raises(DataFileError) as error:
        load_glmm_file(
            str(path), columns.get("response", "y"), columns.get("fixed", ["x"]), columns.get("random", ["z"])
        )
    assert message in str(error.value)
    assert str(path) in str(error.value) or "data.random_effects: give" in message


def test_missing_file_is_a_usage_error_from_the_command(tmp_path):
    missing = tmp_path / "nowhere.csv"
    process = run_almond(
        [
            "train",
            "experiment=glmm_cpu",
            "data=glmm_file",
            f"data.path={missing}",
            "data.response=y",
            "data.random_effects=[z]",
            "threads=1",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert process.returncode == 2
    assert f"data.path: {missing} does not exist" in process.stderr and "Traceback" not in process.stderr


def test_glmm_data_needs_the_glmm_likelihood(tmp_path):
    process = run_almond(
        ["train", "experiment=glmm_cpu", "likelihood=gaussian", "threads=1", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )
    assert process.returncode == 2 and "likelihood: data=glmm needs likelihood=poisson_glmm" in process.stderr
