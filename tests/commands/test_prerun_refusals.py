"""Every data option refuses bad files and config clashes before anything is written: exit code 2, one
``almond: error:`` line naming the key (or the file, row and column), no traceback, and no run folder.

Each case runs in-process through ``cli.main`` (fast: the refusal comes before Hydra starts); six of them, one from
each place a refusal comes from, also run as the installed ``almond train`` in a subprocess (the traceback and the
folder are checked there as a user sees them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_one_error_line, compose_config, run_almond

from almond_cli.commands import cli

TINY = ["debug=tiny", "threads=1"]
GLMM_FILE = [
    "data=glmm_file",
    "likelihood=poisson_glmm",
    "decoder=linear",
    "data.response=y",
    "data.fixed_effects=[x]",
    "data.random_effects=[z]",
]
GOOD_ROWS = "y,x,z\n1,0.1,0.2\n2,0.3,-0.1\n0,0.2,0.5\n"

# name: (file content (None: no file), overrides (FILE is the file's path), fragments of the one error line)
CASES = {
    "glmm_file_missing": (None, [*GLMM_FILE, "data.path=FILE"], ["data.path", "does not exist"]),
    "glmm_file_empty": ("", [*GLMM_FILE, "data.path=FILE"], ["data.path", "is empty"]),
    "glmm_file_header_only": ("y,x,z\n", [*GLMM_FILE, "data.path=FILE"], ["data.path", "no data rows"]),
    "glmm_file_negative_count": (
        "y,x,z\n1,0.1,0.2\n-1,0.3,0.1\n",
        [*GLMM_FILE, "data.path=FILE"],
        ["data.response", "row 3", "is -1", "not a count"],
    ),
    "glmm_file_fractional_count": (
        "y,x,z\n1,0.1,0.2\n2.5,0.3,0.1\n",
        [*GLMM_FILE, "data.path=FILE"],
        ["data.response", "row 3", "is 2.5"],
    ),
    "glmm_file_nan_count": (
        "y,x,z\nnan,0.1,0.2\n1,0.3,0.1\n",
        [*GLMM_FILE, "data.path=FILE"],
        ["data.response", "row 2", "column 'y'", "finite"],
    ),
    "glmm_file_unknown_response": (
        GOOD_ROWS,
        [*GLMM_FILE, "data.path=FILE", "data.response=count"],
        ["data.response", "no column 'count'"],
    ),
    "glmm_file_no_random_effects": (
        GOOD_ROWS,
        [*GLMM_FILE, "data.path=FILE", "data.random_effects=[]"],
        ["data.random_effects", "at least one"],
    ),
    "glmm_file_huge_covariate": (
        "y,x,z\n1,0.1,0.2\n2,0.3,1e39\n",
        [*GLMM_FILE, "data.path=FILE"],
        ["data.random_effects", "row 3", "column 'z'", "float32"],
    ),
    "glmm_file_holdout_leaves_nothing": (
        GOOD_ROWS,
        [*GLMM_FILE, "data.path=FILE", "data.holdout_fraction=0.9"],
        ["data.holdout_fraction", "leaves no row"],
    ),
    "hetero_without_a_file": (None, ["likelihood=gaussian_hetero"], ["likelihood", "data=file"]),
    "glmm_likelihood_on_a_file": (
        "x\n1\n2\n3\n",
        ["data=file", "data.path=FILE", "likelihood=poisson_glmm"],
        ["likelihood", "data=glmm"],
    ),
    "holdout_leaves_nothing": (None, ["data.holdout_fraction=0.999"], ["data.holdout_fraction", "leaves no row"]),
    "cuda_without_cuda": (None, ["device=cuda"], ["device", "no CUDA"]),
    "warm_start_missing": (None, ["warm_start=FILE"], ["warm_start", "does not exist"]),
    "image_root_missing": (None, ["data=mnist", "data.root=FILE"], ["data.root", "not a folder"]),
}
# The installed command runs the same cli.main as the in-process cases: a refusal from a data file and one from a
# config clash show it as a user sees it (each process pays seconds of start-up; the other places refuse in-process).
SUBPROCESS = ("glmm_file_negative_count", "hetero_without_a_file")


def arguments(name: str, tmp_path) -> tuple[list[str], list[str]]:
    """The ``almond train`` arguments of case ``name`` (its file written under ``tmp_path``) and its fragments."""
    content, overrides, fragments = CASES[name]
    if name == "cuda_without_cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    extra = [] if name.startswith("image") else TINY  # debug=tiny sets data.n, which images do not have
    overrides = [o.replace("FILE", str(path)) for o in overrides]
    return ["train", *extra, *overrides, f"hydra.run.dir={tmp_path / 'run'}"], fragments


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_before_the_run_folder_exists(name, tmp_path, capsys):
    args, fragments = arguments(name, tmp_path)
    with pytest.raises(SystemExit) as stopped:
        cli.main(args)
    assert stopped.value.code == 2
    assert_one_error_line(capsys.readouterr().err, fragments)
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("name", SUBPROCESS)
def test_the_installed_command_refuses_before_the_run_folder_exists(name, tmp_path):
    args, fragments = arguments(name, tmp_path)
    process = run_almond(args, cwd=tmp_path, timeout=120)
    assert process.returncode == 2, process.stderr
    assert_one_error_line(process.stderr, fragments)
    assert "Traceback" not in process.stdout
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def test_a_good_glmm_file_passes_the_check(tmp_path):
    """The check refuses bad files only: the good rows of the cases above pass it and build the same data."""
    from almond_cli.config import validate
    from almond_cli.tasks.registry import build_dataset, check_before_run

    (tmp_path / "good.csv").write_text(GOOD_ROWS)
    cfg = compose_config([*TINY, "~experiment", *GLMM_FILE, f"data.path={tmp_path / 'good.csv'}"])
    validate(cfg)
    check_before_run(cfg, 0)
    assert np.array_equal(
        build_dataset(cfg.data, 0).x.numpy(), np.array([[1, 0.1, 0.2], [2, 0.3, -0.1], [0, 0.2, 0.5]], dtype=np.float32)
    )
