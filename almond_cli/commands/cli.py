"""The ``almond`` command: argparse subcommands that hand over to Hydra.

``almond train [hydra overrides]`` composes ``configs/train.yaml`` (shipped in the package as
``almond_cli.configs``), checks it, and runs ``trainer.train`` in a timestamped run folder.
Bad input is one paragraph on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from ..errors import EXIT_USAGE, UsageError, fail

CONFIG_MODULE = "almond_cli.configs"
CONFIG_NAME = "train"
HYDRA_FLAGS_WITH_VALUE = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--info",
    "-i",
    "--cfg",
    "-c",
    "--package",
    "-p",
}


def split_hydra_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Separates Hydra's flags (``--multirun``, ``--cfg job``, ...) from the key=value overrides."""
    flags, overrides = [], []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg.startswith("-"):
            flags.append(arg)
            if arg in HYDRA_FLAGS_WITH_VALUE and "=" not in arg and index + 1 < len(args):
                flags.append(args[index + 1])
                index += 1
        else:
            overrides.append(arg)
        index += 1
    return flags, overrides


def check_overrides(overrides: list[str], multirun: bool) -> None:
    """Composes the config once per sweep combination and validates it; exits 2 on the first problem.

    Everything a run would refuse is refused here, before Hydra makes the run folder (``check_before_run``).
    Hydra accepts ``+group.key=value`` for keys no schema knows and drops nothing it then ignores, so such
    additions are refused here too (groups and ``hydra.*`` keys excepted).
    """
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ..config import CONFIG_GROUPS, composition_message, override_parse_message, register_schemas, validate
    from .extras import check_extras

    register_schemas()
    try:
        check_extras(overrides)
    except UsageError as error:
        fail(str(error))
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except Exception as error:  # Hydra's parse errors carry the offending text
        fail(override_parse_message(error, overrides))
    if multirun:
        refuse_duplicate_sweep_values(parsed)
    combinations = [overrides]
    if multirun and all(not o.is_sweep_override() or o.value_type is not None for o in parsed):
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        try:
            batches = BasicSweeper.split_arguments(parsed, None)
            combinations = [list(job) for batch in batches for job in batch] or [overrides]
        except Exception:
            combinations = [[o.input_line for o in parsed if not o.is_sweep_override()]]
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        for override in parsed:
            key = override.key_or_group
            if override.is_add() and not key.startswith("hydra") and key.split("/")[0] not in CONFIG_GROUPS:
                fail(
                    f"{key}: '+{key}' adds a key that almond does not know, and it would be ignored. "
                    f"Check the spelling, or drop the '+' to set an existing key (see `almond train --cfg job`)."
                )
        for combination in combinations:
            try:
                cfg = compose(CONFIG_NAME, overrides=combination)
            except Exception as error:
                fail(
                    clash_message(error, combination)
                    or f"{composition_message(error)} (`almond train --cfg job` prints every key and its value; "
                    f"the options of each group are the files in configs/<group>/)"
                )
            try:
                validate(cfg)
                check_before_run(cfg, combination)
            except UsageError as error:
                fail(f"{error}")


def refuse_duplicate_sweep_values(parsed) -> None:
    """A sweep that lists a value twice (``seed=3,3``) would run the same job twice; exits 2 naming the key and
    the value. Values are compared as written (``3`` and ``3.0`` differ)."""
    for override in parsed:
        if not (override.is_sweep_override() and override.is_discrete_sweep()):
            continue
        values = list(override.sweep_string_iterator())
        repeated = next((value for index, value in enumerate(values) if value in values[:index]), None)
        if repeated is not None:
            key = override.key_or_group
            fail(
                f"{key}: the sweep lists {key}={repeated} {values.count(repeated)} times, which would run the same "
                f"job again; list each value once"
            )


def clash_message(error: Exception, overrides: list[str]) -> str | None:
    """Two options that do not combine, in one line naming both: a config file (``debug/tiny``) setting a key that
    the option chosen elsewhere lacks (``debug=tiny experiment=mnist_cpu``: MNIST's data have no ``data.n``). None
    for any other composition error."""
    import re

    text = f"{error} {error.__cause__ or ''}"
    found = re.search(r"In '(\w+)/(\w+)': ConfigKeyError.*?Key '(\w+)' not in .*?full_key: ([\w.]+)", text, re.S)
    if found is None:
        return None
    group, option, _, key = found.groups()
    section = key.split(".")[0]
    from ..config import CONFIG_GROUPS

    others = [o for o in overrides if o.split("=")[0] in CONFIG_GROUPS and o.split("=")[0] != group and "=" in o]
    chosen = ", ".join(others) or "the defaults"
    return (
        f"{group}={option} does not combine with {chosen}: {group}/{option} sets {key}, which the {section} "
        f"chosen there does not have. Leave out {group}={option}, or set that option's own keys instead (the "
        f"options of each group are the files in configs/<group>/; `almond train --cfg job` prints every key)"
    )


def check_before_run(cfg, overrides: list[str]) -> None:
    """What the run would refuse once started, refused now, while no run folder exists: a warm start that does
    not fit (its config is then the run's), the data (the data option's files read with every check, and the
    hold-out split: ``tasks.registry.check_before_run``) and a device this machine lacks. A resumed run's data and
    config were checked against its checkpoint by ``resolve_resume``. Raises ``UsageError``."""
    from ..config import validate
    from ..tasks.registry import check_before_run as check_data
    from ..training.runtime import pick_device, seed_streams
    from ..training.warm_start import warm_start_config

    if cfg.get("resume"):
        pick_device(cfg.device)
        return
    if cfg.get("warm_start"):
        cfg = warm_start_config(cfg, overrides)[0]
        validate(cfg)
    check_data(cfg, seed_streams(cfg.seed)["data"])  # reads the user's data file now: bad data leave no folder
    pick_device(cfg.device)


def run_train(args: list[str]) -> None:
    """``almond train``: checks the overrides, then runs the Hydra application with them."""
    flags, overrides = split_hydra_args(args)
    multirun = "--multirun" in flags or "-m" in flags
    informational = any(
        flag in flags
        for flag in ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")
    )
    overrides = auto_epochs_for_data(drop_default_experiment(overrides))
    if not informational:
        try:
            overrides = resolve_resume(overrides, multirun)
            check_overrides(overrides, multirun)
        except UsageError as error:
            fail(str(error))
        from ..training.trainer import defer_stop_signals

        defer_stop_signals()  # from here a signal stops the run cleanly, never half-way through making its folder
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 names the folder and tells the others
            overrides = overrides + fresh_output_dir(overrides, multirun)
            lock_run_folder(overrides, multirun)
        overrides = agree_with_other_ranks(overrides, multirun)
    from ..training.distributed import launched_with_several_processes, run_then_exit
    from .app import hydra_app

    sys.argv = ["almond-train", *flags, *overrides]
    if launched_with_several_processes():
        run_then_exit(hydra_app)  # a rank must not finalise while gloo's threads release tensors (distributed.py)
    hydra_app()


def lock_run_folder(overrides: list[str], multirun: bool) -> None:
    """Takes the run folder's lock before Hydra writes ``.hydra/`` and ``train.log`` into it, so a run refused
    because another process writes the folder leaves the folder as it was; exits 2 naming the holder. A sweep's
    jobs lock their own folders when they start (``trainer.train``); a folder Hydra still has to interpolate
    (``${...}``) is locked there too."""
    from ..training.run_lock import hold

    run_dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    if multirun or not run_dirs or "${" in run_dirs[-1]:
        return
    resuming = any(o.startswith("resume=") and o.split("=", 1)[1] not in ("", "null") for o in overrides)
    try:
        hold(Path(run_dirs[-1]).expanduser(), resuming=resuming, record=True)
    except UsageError as error:
        fail(str(error))


DEFAULT_EXPERIMENT_GROUPS = {"data": "normal_means", "likelihood": "gaussian", "encoder": "mlp", "decoder": "mlp"}


def drop_default_experiment(overrides: list[str]) -> list[str]:
    """Choosing another option of a model group with no ``experiment=`` drops (``~experiment``) the default.

    The embedded default experiment (mnn_exponential) sets keys of the normal-means simulation and the MLP
    networks (``data.prior``, ``encoder.hidden_sizes``), which other options do not have; so
    ``almond train data=file data.path=...`` or ``encoder=conv`` must not inherit it. The groups' own
    defaults are the same paper settings, so nothing else changes.
    """
    has_experiment = any(o.lstrip("+~").startswith("experiment=") for o in overrides)
    chosen = {
        o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] in DEFAULT_EXPERIMENT_GROUPS
    }
    if not has_experiment and any(DEFAULT_EXPERIMENT_GROUPS[group] != option for group, option in chosen.items()):
        return [*overrides, "~experiment"]
    return overrides


EPOCH_KEYS = ("schedule.vae_epochs", "schedule.almond_epochs")


def auto_epochs_for_data(overrides: list[str]) -> list[str]:
    """``data=<option>`` of an option that trains until done (``data=file``: ``DataOption.auto_epochs``) makes
    ``schedule.vae_epochs`` and ``schedule.almond_epochs`` auto where the command gives neither of them, and, where
    it makes the ALMOND phase auto and the command gives no ``schedule.warmup_epochs``, runs Adam at its constant
    rate up to the phase's cap (``schedule.auto.max_almond_epochs``).

    An experiment's epoch count was chosen for the data it was published with; on a user's table only the checks
    can say when training is done (``training/stopping.py``). Its warm-up length too: a learning rate that starts to
    decay at a fixed epoch makes the checks stop on the decay rather than on the fit (batting averages: Adam decaying
    from epoch 200 stopped at 380 epochs 0.019 nats per held-out row short of the NPMLE; held constant, 0.003).
    Left alone: a resume or warm start (their run lengths are their own), a ``debug=`` preset (its short counts are
    the point of it) and a sweep over data options.
    """
    from ..tasks.registry import trains_until_done

    keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    data = [o.split("=", 1)[1] for o in overrides if o.startswith("data=")]
    if not data or not trains_until_done(data[-1]) or any(k in ("resume", "warm_start", "debug") for k in keys):
        return overrides
    added = [f"{key}=auto" for key in EPOCH_KEYS if key not in keys]
    if "schedule.almond_epochs=auto" in added and "schedule.warmup_epochs" not in keys:
        added.append(f"schedule.warmup_epochs={auto_cap(overrides)}")
    return [*overrides, *added]


def auto_cap(overrides: list[str]) -> int:
    """``schedule.auto.max_almond_epochs`` as the command gives it, else its default."""
    from ..config import AutoScheduleConfig

    given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "schedule.auto.max_almond_epochs"]
    return int(given[-1]) if given and given[-1].isdigit() else AutoScheduleConfig.max_almond_epochs


def agree_with_other_ranks(overrides: list[str], multirun: bool) -> list[str]:
    """Under torchrun: joins the process group and takes rank 0's run folder (see ``distributed.py``)."""
    from ..training.distributed import agree_on_overrides, init_from_env

    init_from_env()
    try:
        return agree_on_overrides(overrides, multirun)
    except UsageError as error:
        fail(str(error))


def resolve_resume(overrides: list[str], multirun: bool) -> list[str]:
    """``resume=<run folder or file | auto>`` continues that run in its own folder (see ``training/resume.py``).
    The process that writes the run (rank 0 under torchrun) takes the folder's lock before reading it."""
    from ..training.resume import resume_overrides

    return resume_overrides(overrides, multirun, lock=not multirun and os.environ.get("RANK", "0") == "0")


def fresh_output_dir(overrides: list[str], multirun: bool) -> list[str]:
    """Names the run (or sweep) folder now, so two runs started in the same second never share one.

    The folder is Hydra's ``outputs/YYYY-MM-DD/HH-MM-SS`` (``outputs/multirun/...`` for a sweep), created here;
    if it exists already, ``-1``, ``-2``, ... is appended. A folder given on the command line is used as is.
    """
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if any(o.startswith(key + "=") for o in overrides):
        return []
    now = datetime.datetime.now()
    base = Path("outputs") / ("multirun" if multirun else "") / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
    candidate, suffix = base, 0
    while True:
        try:
            candidate.mkdir(parents=True)  # atomic: of two processes only one creates a given name
            return [f"{key}={candidate}"]
        except FileExistsError:
            suffix += 1
            candidate = base.with_name(f"{base.name}-{suffix}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="almond",
        description="Fit deep latent-variable models with ALMOND (Qiu & Wang, JASA 2019). "
        "`almond COMMAND --help` lists a command's keys.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("train", help="train a model: almond train [hydra overrides] (--multirun to sweep)", add_help=False)
    sub.add_parser(
        "evaluate",
        help="score a run again: almond evaluate <run folder> [k=... n_samples=... seed=...]",
        add_help=False,
    )
    sub.add_parser(
        "sample",
        help="draw from a fitted run: almond sample <run folder> what=prior|posterior [n=... out=...]",
        add_help=False,
    )
    sub.add_parser(
        "prior", help="the fitted prior as numbers: almond prior <run folder> [n=... grid=...]", add_help=False
    )
    sub.add_parser(
        "compare",
        help="runs or a sweep's jobs, best first, also as CSV: almond compare <run or sweep folder> ... [csv=...]",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    # OpenMP's wait policy is left to the user: measured on the 2-core AMD EPYC (benchmarks/README.md, threads.py),
    # PASSIVE made the idle default run's ALMOND phase 2.2x slower (48.4 s against 21.7 s spinning), while the load-
    # aware thread count alone already keeps a busy neighbour from costing 3x (training/runtime.py).
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        sys.exit(0 if argv else EXIT_USAGE)
    command, rest = argv[0], argv[1:]
    from .extras import quiet_plugin_warnings

    quiet_plugin_warnings()
    if command == "train":
        run_train(rest)
    elif command in ("evaluate", "sample", "prior", "compare"):
        from importlib import import_module

        from .arguments import run_command

        run_command(import_module(f"{__package__}.{command}").COMMAND, rest)
    else:
        parser.parse_args(argv)  # prints argparse's own message for an unknown command, exit 2


if __name__ == "__main__":
    main()
