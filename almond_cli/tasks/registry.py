"""The one table of data sets: each ``data`` option, whole, as a plug-in.

A ``DataOption`` carries everything almond knows about one option: its config schema, its builder, the task that
scores fits to it, its config rules, the check of its files before any run folder exists, the keys that name
files (resolved when a run is read back from another folder) and the likelihoods its rows are laid out for.
Nothing outside this module asks for ``data.name``.

Adding a data set = its schema, builder and checks in ``data/``, its task in ``tasks/`` (or an existing one), a
row here and a YAML file in ``configs/data/`` (whose defaults list ``<name>_schema``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf

from ..data.dataset import Dataset, build_normal_means, hold_out
from ..data.files import PATH_KEYS as FILE_PATH_KEYS
from ..data.files import FileDataConfig, build_file_dataset, check_data_file, row_column_key, validate_file_config
from ..data.glmm import (
    GLMMDataConfig,
    GLMMFileDataConfig,
    build_glmm_file,
    build_glmm_simulation,
    check_glmm_file,
    validate_glmm_config,
    validate_glmm_file_config,
)
from ..data.mixed import (
    MIXED_LIKELIHOODS,
    MixedDataConfig,
    build_mixed,
    check_mixed,
    read_new_groups,
    validate_mixed_config,
)
from ..data.mnist import PATH_KEYS as IMAGE_PATH_KEYS
from ..data.mnist import MnistDataConfig, build_mnist, check_mnist_files, validate_mnist_config
from ..data.normal_means import NormalMeansDataConfig, validate_normal_means_config
from ..errors import UsageError, require
from ..model.likelihoods import Likelihood, likelihood_class
from .base import Task
from .file import FileTask
from .glmm import GLMMTask
from .images import ImageTask
from .mixed import MixedTask
from .normal_means import NormalMeansTask


def _no_rules(cfg) -> None:
    """A data option without config rules of its own."""


@dataclass(frozen=True)
class DataOption:
    """A ``data`` option.

    Attributes:
        schema: the dataclass its YAML file extends, stored in Hydra's ``data`` group as ``<name>_schema``.
        build: ``build(data_cfg, generator) -> Dataset``, every row as read or simulated (simulations draw from
            ``generator``).
        task: the ``Task`` class that scores fits to it.
        validate: ``validate(cfg)``, its config rules that need no file (ranges, keys that go together); raises
            ``UsageError`` naming the key. ``config.validate`` runs it.
        check: ``check(cfg, generator) -> Dataset | None``, its data read with every check training would make
            (against the likelihood and the schedule too), before any run folder exists: the data set as
            ``build`` gives it, or None where reading it is left to training (images: checked, not read twice).
            None: ``build`` is the check (a simulation).
        path_keys: the ``data`` keys that name files or folders, relative to where ``almond train`` ran.
        likelihoods: the likelihoods its rows are laid out for, by name (the GLMM's [y, covariates] rows:
            ``poisson_glmm`` alone); None: any likelihood that reads rows of observations, that is one no
            exclusive option names here, whose per-row columns (``Likelihood.row_columns``) the schema has a
            ``<name>_column`` key for.
        exclusive: whether the ``likelihoods`` it names read its rows alone (the GLMM's) and are refused with other
            options; False where they are ordinary families it lays its own rows out for (``data=mixed``).
        read_new: ``read_new(cfg, path, trained, command) -> Dataset``, a new table's rows laid out as the run's
            data set ``trained`` lays out its own (a formula's contrasts and transforms), for ``almond sample
            data=``; None: its ``check`` on the new file does (``read_new_rows``).
        auto_epochs: whether choosing it on the command line makes both phases' epoch counts ``auto`` unless the
            command gives them (a user's data: a preset's epoch count was chosen for its own data).
    """

    schema: type
    build: Callable[[Any, torch.Generator], Dataset]
    task: type[Task]
    validate: Callable[[Any], None] = _no_rules
    check: Callable[[Any, torch.Generator], Dataset | None] | None = None
    path_keys: tuple[str, ...] = ()
    likelihoods: tuple[str, ...] | None = None
    exclusive: bool = True
    read_new: Callable[[Any, str, Dataset, str], Dataset] | None = None
    auto_epochs: bool = False

    def supplies(self, row_column: str) -> bool:
        """Whether its data rows can carry the per-row column ``row_column`` (its schema has the key)."""
        return row_column_key(row_column) in {f.name for f in fields(self.schema)}


GLMM_LIKELIHOODS = ("poisson_glmm",)

DATA_SETS: dict[str, DataOption] = {
    "normal_means": DataOption(
        NormalMeansDataConfig, build_normal_means, NormalMeansTask, validate=validate_normal_means_config
    ),
    "file": DataOption(
        FileDataConfig,
        build_file_dataset,
        FileTask,
        validate=validate_file_config,
        check=check_data_file,
        path_keys=FILE_PATH_KEYS,
        auto_epochs=True,
    ),
    "mnist": DataOption(
        MnistDataConfig,
        build_mnist,
        ImageTask,
        validate=validate_mnist_config,
        check=check_mnist_files,
        path_keys=IMAGE_PATH_KEYS,
    ),
    "glmm": DataOption(
        GLMMDataConfig, build_glmm_simulation, GLMMTask, validate=validate_glmm_config, likelihoods=GLMM_LIKELIHOODS
    ),
    "glmm_file": DataOption(
        GLMMFileDataConfig,
        build_glmm_file,
        GLMMTask,
        validate=validate_glmm_file_config,
        check=check_glmm_file,
        path_keys=("path",),
        likelihoods=GLMM_LIKELIHOODS,
    ),
    "mixed": DataOption(
        MixedDataConfig,
        build_mixed,
        MixedTask,
        validate=validate_mixed_config,
        check=check_mixed,
        path_keys=("path",),
        likelihoods=MIXED_LIKELIHOODS,
        exclusive=False,
        read_new=read_new_groups,
    ),
}


def trains_until_done(name: str) -> bool:
    """Whether data option ``name`` defaults to ``auto`` epoch counts (``DataOption.auto_epochs``)."""
    return name in DATA_SETS and DATA_SETS[name].auto_epochs


def _option(name: str) -> DataOption:
    if name not in DATA_SETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATA_SETS)}")
    return DATA_SETS[name]


def build_dataset(data_cfg, seed: int) -> Dataset:
    """Builds the data set that ``data_cfg`` names; simulations draw from a generator seeded by ``seed``. With
    ``data.holdout_fraction`` > 0 it holds the training rows and ``heldout`` the rest (``data.dataset.hold_out``):
    training, resume, ``almond evaluate``, ``sample`` and ``prior`` all build their data here, so all see one split."""
    dataset = _option(data_cfg.name).build(data_cfg, torch.Generator().manual_seed(seed))
    return hold_out(dataset, float(data_cfg.get("holdout_fraction", 0.0)), seed)  # a run saved before the key: 0


def task_for(dataset: Dataset) -> Task:
    """A fresh task for ``dataset``, by its ``name``."""
    return _option(dataset.name).task()


# ----- checks -------------------------------------------------------------------------------------------------------
def validate_data(cfg) -> None:
    """The data option's own config rules, then whether the likelihood reads its rows; raises ``UsageError``
    (``ConfigError`` naming ``likelihood`` for a clash). Pure: reads no file (``config.validate`` runs it)."""
    _option(cfg.data.name).validate(cfg)
    likelihood = likelihood_class(str(cfg.likelihood.get("_target_", "")))
    if likelihood is not None:  # a class almond does not know: its rows are the user's business
        check_likelihood(cfg.data.name, likelihood)


def check_likelihood(name: str, likelihood: type[Likelihood]) -> None:
    """Refuses (``ConfigError`` naming ``likelihood``, with the option to use instead) a likelihood that does not
    read the rows of data option ``name``: see ``DataOption.likelihoods``."""
    option = _option(name)
    if option.likelihoods is not None:
        require(
            likelihood.name in option.likelihoods,
            "likelihood",
            f"data={name} needs " + " or ".join(f"likelihood={n}" for n in option.likelihoods),
        )
        return
    owners = [
        other
        for other, entry in DATA_SETS.items()
        if entry.exclusive and entry.likelihoods and likelihood.name in entry.likelihoods
    ]
    require(
        not owners,
        "likelihood",
        f"data={name} needs a likelihood other than {likelihood.name}, which reads only the rows of "
        + " and ".join(f"data={o}" for o in owners)
        + "; use "
        + " or ".join(f"data={o}" for o in owners),
    )
    for column in likelihood.row_columns:
        readers = [
            f"data={r} with data.{row_column_key(column)}=NAME" for r, e in DATA_SETS.items() if e.supplies(column)
        ]
        readers += [f"data={r}" for r, e in DATA_SETS.items() if e.likelihoods and likelihood.name in e.likelihoods]
        require(
            option.supplies(column),
            "likelihood",
            f"likelihood={likelihood.name} reads each row's {column} from a column of a table, which data={name} "
            f"does not have; use " + " or ".join(readers),
        )


def check_before_run(cfg, seed: int) -> None:
    """Refuses, before any run folder exists, what training would refuse about the data: the option's files read
    with every check (``DataOption.check``), a ``data.holdout_fraction`` that leaves nothing to train on, and a
    ``schedule.batch_size`` beyond the data points trained on (a batch is never silently shrunk).

    Args:
        cfg: the composed, validated config.
        seed: the data stream's seed, as training builds the data with (``build_dataset``).
    """
    option = _option(cfg.data.name)
    generator = torch.Generator().manual_seed(seed)
    dataset = option.build(cfg.data, generator) if option.check is None else option.check(cfg, generator)
    if dataset is not None:
        trained = hold_out(dataset, float(cfg.data.get("holdout_fraction", 0.0)), seed)
        batch_size = cfg.schedule.batch_size
        require(
            batch_size is None or batch_size <= trained.num_units,
            "schedule.batch_size",
            f"{batch_size} is more than the {trained.num_units} data points (units) this run trains on; lower it to "
            f"at most {trained.num_units}, or null for the whole data set in every update",
        )


def read_new_rows(cfg, path: str, command: str, trained: Dataset | None = None) -> Dataset:
    """The rows of ``path``, a new file laid out as the run's own data file (the same ``data`` keys: observation,
    per-row and id columns, format, header), read with every check training makes of its file except the batch
    size; no truth, no held-out rows. For ``almond sample data=PATH``. An option with ``read_new`` (a formula's
    table) lays them out by the run's data set ``trained`` instead.

    Args:
        cfg: the run's saved config (not changed).
        path: the new file.
        command: the command, for the messages.
        trained: the run's data set, which ``DataOption.read_new`` needs.

    Raises:
        UsageError: for a run whose data are not read from a table (a simulation, image folders), or a file that
            fails a check (naming the file, row and column).
    """
    option = _option(cfg.data.name)
    if option.read_new is not None and trained is not None:
        return option.read_new(cfg, str(path), trained, command)
    if "path" not in option.path_keys or option.check is None:
        raise UsageError(
            f"{command}: data={path} reads new rows laid out as the run's data file, but this run's data are "
            f"data={cfg.data.name}, not read from a file; new rows need a run trained with data=file, "
            "data=glmm_file or data=mixed"
        )
    new = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    new.data.path = str(path)
    for key, value in (("truth_path", None), ("n", None), ("holdout_fraction", 0.0)):
        if key in new.data:
            new.data[key] = value
    new.schedule.batch_size = None  # a few new rows are fine: they are not trained on
    return option.check(new, torch.Generator().manual_seed(0))


def resolve_data_paths(cfg, train_cwd: str | Path | None) -> None:
    """Makes the option's relative ``path_keys`` point where they did for training: a relative path was relative
    to where ``almond train`` ran (``train_cwd``); one that does not exist from here but does from there is
    replaced, in ``cfg.data``, by the path from there.

    Args:
        cfg: a run's saved config (changed in place).
        train_cwd: the folder ``almond train`` ran in (Hydra's ``hydra.runtime.cwd``), or None if unknown.
    """
    if not train_cwd:
        return
    option = DATA_SETS.get(cfg.data.get("name"))
    for key in option.path_keys if option is not None else ():
        value = cfg.data.get(key)
        if value and not Path(value).expanduser().is_absolute():
            candidate = Path(train_cwd) / value
            if not Path(value).exists() and candidate.exists():
                cfg.data[key] = str(candidate)


def register_data_schemas(store) -> None:
    """Stores every option's schema in Hydra's ``ConfigStore`` ``store`` as ``data/<name>_schema``."""
    for name, option in DATA_SETS.items():
        store.store(group="data", name=f"{name}_schema", node=option.schema)
