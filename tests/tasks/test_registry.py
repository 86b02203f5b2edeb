"""The data registry: each ``data`` option is one entry (schema, rules, pre-run check, path keys, likelihoods), and
nothing outside it dispatches on ``data.name``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from almond_cli.errors import ConfigError
from almond_cli.model.likelihoods import LIKELIHOODS
from almond_cli.tasks.registry import DATA_SETS, check_likelihood, resolve_data_paths

PACKAGE = Path(__file__).resolve().parents[2] / "almond_cli"
CONFIG_DATA = PACKAGE.parent / "configs" / "data"


def test_every_data_yaml_is_a_registered_option_with_its_schema():
    names = {OmegaConf.load(path).get("name") for path in CONFIG_DATA.glob("*.yaml")} - {None}
    assert names == set(DATA_SETS)
    for path in CONFIG_DATA.glob("*.yaml"):
        defaults = OmegaConf.load(path).get("defaults", [])
        schemas = [d for d in defaults if isinstance(d, str) and d.endswith("_schema")]
        assert all(s.removesuffix("_schema") in DATA_SETS for s in schemas), (path.name, schemas)


def test_no_module_but_the_registry_dispatches_on_the_data_option():
    """``data.name == "file"`` and its kin live only in tasks/registry.py (a new option would need them in
    every such place)."""
    pattern = re.compile(
        r"""(data(_cfg)?|dataset)\.(name|get\(["']name["']\))\s*(==|!=|in\b|not in\b)"""
        r"""|["'](normal_means|file|mnist|glmm|glmm_file)["']\s*(==|!=|in\b)"""
    )
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).as_posix() == "tasks/registry.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, offenders


# Which likelihood reads which option's rows: the GLMM rows only poisson_glmm; a per-row sd only a table with
# data.sd_column; every other likelihood any other option.
PLAIN = {"gaussian", "bernoulli", "poisson", "negative_binomial"}
ACCEPTED = {
    "normal_means": PLAIN,
    "mnist": PLAIN,
    "file": PLAIN | {"gaussian_hetero"},
    "glmm": {"poisson_glmm"},
    "glmm_file": {"poisson_glmm"},
    "mixed": PLAIN | {"binomial"},  # the families a formula's rows are laid out for (binomial: cbind's trials)
}


@pytest.mark.parametrize("data", sorted(DATA_SETS))
def test_each_option_accepts_the_likelihoods_its_rows_are_for(data):
    assert set(LIKELIHOODS) == PLAIN | {"gaussian_hetero", "poisson_glmm", "binomial"}  # a new likelihood: add it above
    for name, cls in LIKELIHOODS.items():
        if name in ACCEPTED[data]:
            check_likelihood(data, cls)
            continue
        with pytest.raises(ConfigError) as error:
            check_likelihood(data, cls)
        assert error.value.key == "likelihood" and re.search(r"(needs|use) (data|likelihood)=\w+", str(error.value))


def _data_cfg(name, **keys):
    return OmegaConf.create({"data": {"name": name, **keys}})


def test_relative_paths_of_every_file_option_resolve_from_where_training_ran(tmp_path, monkeypatch):
    trained_in, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (trained_in / "data").mkdir(parents=True)
    elsewhere.mkdir()
    for name in ("counts.csv", "m.csv", "truth.csv"):
        (trained_in / "data" / name).write_text("x\n1\n")
    (trained_in / "images").mkdir()
    monkeypatch.chdir(elsewhere)
    glmm = _data_cfg("glmm_file", path="data/counts.csv")
    resolve_data_paths(glmm, trained_in)  # the reload of a glmm_file run from another folder
    assert glmm.data.path == str(trained_in / "data" / "counts.csv")
    file = _data_cfg("file", path="data/m.csv", truth_path="data/truth.csv")
    resolve_data_paths(file, trained_in)
    assert (file.data.path, file.data.truth_path) == (
        str(trained_in / "data" / "m.csv"),
        str(trained_in / "data" / "truth.csv"),
    )
    images = _data_cfg("mnist", root="images")
    resolve_data_paths(images, trained_in)
    assert images.data.root == str(trained_in / "images")
    # Kept as saved: a path found from here, an absolute path, a path found nowhere, an unknown training folder.
    (elsewhere / "data").mkdir()
    (elsewhere / "data" / "m.csv").write_text("x\n2\n")
    kept = _data_cfg("file", path="data/m.csv", truth_path=str(tmp_path / "nowhere.csv"))
    resolve_data_paths(kept, trained_in)
    missing = _data_cfg("glmm_file", path="data/gone.csv")
    resolve_data_paths(missing, trained_in)
    unknown = _data_cfg("glmm_file", path="data/counts.csv")
    resolve_data_paths(unknown, None)
    assert (kept.data.path, kept.data.truth_path, missing.data.path, unknown.data.path) == (
        "data/m.csv",
        str(tmp_path / "nowhere.csv"),
        "data/gone.csv",
        "data/counts.csv",
    )
