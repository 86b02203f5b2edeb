"""data=file: reading CSV/TSV/npy/npz, column selection, and one clear message (exit 2) per bad-data case."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import run_almond
from omegaconf import OmegaConf

from almond_cli.commands import cli
from almond_cli.data.files import build_file_dataset
from almond_cli.data.tables import DataFileError, read_table


def data_cfg(path, **keys):
    base = {
        "name": "file",
        "path": str(path),
        "format": "auto",
        "header": None,
        "array": None,
        "columns": None,
        "sd_column": None,
        "id_column": None,
        "truth_path": None,
        "truth_array": None,
        "truth_columns": None,
        "n": None,
    }
    return OmegaConf.create({**base, **keys})


def write(path, text):
    path.write_text(text)
    return path


# ----- reading what is right ----------------------------------------------------------------------------------
def test_csv_header_is_detected_and_columns_pick_by_name_or_index(tmp_path):
    path = write(tmp_path / "m.csv", "id,x,se\n1,0.5,1.0\n2,-1.25,2.0\n3,3,0.5\n")
    table = read_table(path)
    assert table.names == ["id", "x", "se"] and table.rows.tolist() == [2, 3, 4]
    by_name = build_file_dataset(data_cfg(path, columns=["x"]))
    by_index = build_file_dataset(data_cfg(path, columns=["1"]))
    assert torch.equal(by_name.x, by_index.x)
    assert by_name.x[:, 0].tolist() == [0.5, -1.25, 3.0]
    hetero = build_file_dataset(data_cfg(path, columns=["x"], sd_column="se"))
    assert hetero.x.tolist() == [[0.5, 1.0], [-1.25, 2.0], [3.0, 0.5]]  # the sd travels as the last column


def test_text_columns_that_are_not_selected_are_allowed(tmp_path):
    path = write(tmp_path / "m.csv", "unit,estimate,se\nu1,0.5,1\nu2,1.5,2\n")
    dataset = build_file_dataset(data_cfg(path, columns=["estimate"], sd_column="se"))
    assert dataset.x.tolist() == [[0.5, 1.0], [1.5, 2.0]] and dataset.column_names == ["estimate"]
    labelled = build_file_dataset(data_cfg(path, sd_column="se", id_column="unit"))  # ids left out of x
    assert labelled.x.tolist() == dataset.x.tolist() and labelled.ids == ["u1", "u2"]
    headerless = write(tmp_path / "h.csv", "u1,0.5\nu2,1.5\n")  # text in a column of numbers' place: no header
    assert read_table(headerless).names is None
    with pytest.raises(DataFileError, match=r"row 2 \(line 2 of the file\), column 'unit' .* 'u1'.*data.columns"):
        build_file_dataset(data_cfg(path))


def test_headerless_tsv_and_forced_header(tmp_path):
    path = write(tmp_path / "m.tsv", "1\t2\n3\t4\n\n")
    table = read_table(path)
    assert table.names is None and table.values.tolist() == [[1, 2], [3, 4]]
    forced = read_table(path, header=True)
    assert forced.names == ["1", "2"] and forced.values.tolist() == [[3, 4]]
    np.savetxt(tmp_path / "s.txt", np.array([[1.5, 2.0], [3.0, -4.0]]))  # space-separated, as np.savetxt writes
    assert read_table(tmp_path / "s.txt").values.tolist() == [[1.5, 2.0], [3.0, -4.0]]
    assert read_table(write(tmp_path / "c.txt", "a;b\n1;2\n")).names == ["a", "b"]


def test_npy_and_npz_with_array_name(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", counts=x, other=x[:, :1])
    assert np.array_equal(read_table(tmp_path / "a.npy").values, x)
    dataset = build_file_dataset(data_cfg(tmp_path / "b.npz", array="counts", columns=["1"]))
    assert dataset.x[:, 0].tolist() == x[:, 1].tolist()
    np.save(tmp_path / "v.npy", np.arange(5.0))  # a vector is one measurement per row
    assert read_table(tmp_path / "v.npy").values.shape == (5, 1)


def test_truth_file_and_row_limit(tmp_path):
    path = write(tmp_path / "m.csv", "x\n" + "".join(f"{i}\n" for i in range(10)))
    truth = write(tmp_path / "t.csv", "mu\n" + "".join(f"{i / 2}\n" for i in range(10)))
    dataset = build_file_dataset(data_cfg(path, truth_path=str(truth), n=4))
    assert dataset.x.shape == (4, 1) and dataset.truth[:, 0].tolist() == [0.0, 0.5, 1.0, 1.5]
    assert dataset.prior is not None and float(dataset.prior.cdf(torch.tensor(0.75))) == 0.5


# ----- every bad-data case: one message naming file, place and problem; exit 2; nothing written ----------------------
def train_args(path, tmp_path, *extra):
    return [
        "train",
        "data=file",
        f"data.path={path}",
        "debug=tiny",
        "threads=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        *extra,
    ]


BAD_CASES = {
    # name: (file name, content (str, bytes, or callable writing the file), extra overrides, expected fragments)
    "missing": ("nope.csv", None, [], ["nope.csv", "does not exist"]),
    "empty": ("e.csv", "", [], ["e.csv", "is empty"]),
    "blank": ("b.csv", "\n\n", [], ["b.csv", "is empty"]),
    "header_only": ("h.csv", "x,y\n", [], ["h.csv", "no data rows"]),
    "non_numeric": ("n.csv", "x,y\n1,2\n3,abc\n", [], ["n.csv", "row 3", "column 'y'", "'abc'", "not a number"]),
    "empty_cell": ("c.csv", "x,y\n1,\n", [], ["c.csv", "row 2", "column 'y'", "is empty"]),
    "nan": ("nan.csv", "x\n1\nnan\n", [], ["nan.csv", "row 3", "column 'x'", "nan", "finite"]),
    "inf": ("inf.csv", "x\n1\n2\n-inf\n", [], ["inf.csv", "row 4", "column 'x'", "-inf", "finite"]),
    "ragged": ("r.csv", "x,y\n1,2\n3,4,5\n", [], ["r.csv", "row 3", "3 columns", "header has 2"]),
    "column_out_of_range": ("o.csv", "1,2\n3,4\n", ["data.columns=[5]"], ["data.columns", "index 5", "2 column"]),
    "unknown_column": ("u.csv", "x,y\n1,2\n", ["data.columns=[z]"], ["data.columns", "no column 'z'", "x, y"]),
    "poisson_negative": (
        "p.csv",
        "k\n1\n2\n-3\n",
        ["likelihood=poisson"],
        ["p.csv", "row 4", "column 'k'", "negative", "poisson"],
    ),
    "poisson_fraction": (
        "f.csv",
        "k\n1\n2.5\n",
        ["likelihood=poisson"],
        ["f.csv", "row 3", "column 'k'", "not an integer"],
    ),
    "bernoulli_range": (
        "bin.csv",
        "a,b\n0,1\n1,2\n",
        ["likelihood=bernoulli"],
        ["bin.csv", "row 3", "column 'b'", "outside [0, 1]"],
    ),
    "too_few_rows": (
        "few.csv",
        "x\n1\n2\n3\n",
        ["schedule.batch_size=10"],
        ["few.csv", "3 data rows", "schedule.batch_size", "batch of 10"],
    ),
    "sd_not_positive": (
        "sd.csv",
        "x,se\n1,1\n2,0\n",
        ["likelihood=gaussian_hetero", "data.sd_column=se"],
        ["sd.csv", "row 3", "column 'se'", "> 0"],
    ),
    "npz_which_array": (
        "z.npz",
        lambda p: np.savez(p, a=np.ones((4, 1)), b=np.ones((4, 1))),
        [],
        ["z.npz", "2 arrays", "a, b", "data.array"],
    ),
    "npy_damaged": ("d.npy", b"\x93NUMPY garbage", [], ["d.npy", "npy"]),
    "npy_nan": (
        "nan.npy",
        lambda p: np.save(p, np.array([[1.0], [np.nan]])),
        [],
        ["nan.npy", "row index 1", "column index 0", "nan"],
    ),
    "truth_rows": ("t.csv", "x\n1\n2\n3\n", ["data.truth_path=TRUTH"], ["truth.csv", "2 rows", "3 data rows"]),
}


def make_bad_file(tmp_path, name):
    file_name, content, extra, fragments = BAD_CASES[name]
    path = tmp_path / file_name
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    truth = write(tmp_path / "truth.csv", "mu\n1\n2\n")
    extra = [e.replace("TRUTH", str(truth)) for e in extra]
    return path, extra, fragments


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_data_is_one_message_and_exit_2_before_anything_is_written(name, tmp_path, capsys):
    path, extra, fragments = make_bad_file(tmp_path, name)
    with pytest.raises(SystemExit) as stopped:
        cli.main(train_args(path, tmp_path, *extra))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("almond: error: ") and err.count("\n") == 1, err  # one paragraph
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["non_numeric", "poisson_negative"])
def test_installed_command_leaves_no_run_folder_and_no_traceback(name, tmp_path):
    path, extra, fragments = make_bad_file(tmp_path, name)
    process = run_almond(train_args(path, tmp_path, *extra), cwd=tmp_path)
    assert process.returncode == 2
    assert "Traceback" not in process.stderr and fragments[1] in process.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def test_sd_column_needs_the_heteroscedastic_likelihood(tmp_path, capsys):
    path = write(tmp_path / "m.csv", "x,se\n1,1\n2,1\n")
    with pytest.raises(SystemExit) as stopped:
        cli.main(train_args(path, tmp_path, "data.sd_column=se"))
    assert stopped.value.code == 2 and "likelihood=gaussian_hetero" in capsys.readouterr().err


def test_read_errors_are_usage_errors(tmp_path):
    with pytest.raises(DataFileError, match="cannot tell the format"):
        read_table(write(tmp_path / "m.xlsx", "1\n"))


@pytest.mark.parametrize("value", ["1e39", "-1e39"])
def test_the_float32_range_is_checked_on_both_sides(value, tmp_path):
    """A value finite as read (float64) but beyond float32 either way is refused naming its row and column
    (issue 27: a one-sided check, |x| replaced by x, passed every test, which all used +1e39)."""
    from almond_cli.data.tables import check_finite

    table = read_table(write(tmp_path / "m.csv", f"x,y\n1,2\n3,{value}\n"))
    check_finite(table, [0])  # the column without it passes
    shown = f"{float(value):g}"  # 1e+39, -1e+39
    with pytest.raises(DataFileError, match=rf"row 3 .*column 'y'.* is {re.escape(shown)}, beyond the float32 range"):
        check_finite(table, [0, 1])
