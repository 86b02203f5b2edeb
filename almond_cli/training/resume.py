"""Continuing a run: ``almond train resume=<run folder | checkpoint file> [run-length overrides]``.

The run continues in its own folder from its newest loadable checkpoint. Keys that define the model, the
data or the randomness come from the checkpoint; an override that contradicts one is refused with the
list of conflicting keys. Run-length keys (``RUN_LENGTH_KEYS``) may change, e.g. to extend a finished run.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from omegaconf import OmegaConf

from ..config import (
    CONFIG_GROUPS,
    composition_message,
    override_parse_message,
    register_schemas,
    saved_config,
    usable_cores,
)
from ..data.dataset import check_same_data
from ..errors import UsageError
from ..tasks.registry import build_dataset
from .checkpoint import load_checkpoint
from .run_folder import RunFolder
from .run_lock import hold
from .runtime import seed_streams

RUN_LENGTH_KEYS = (
    "schedule.vae_epochs",
    "schedule.almond_epochs",
    "schedule.auto",
    "checkpoint",
    "progress",
    "threads",
    "device",
    "resume",
    "evaluation",
    "logger",
    "diagnostics",
)


def _is_run_length(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RUN_LENGTH_KEYS)


def find_checkpoint(target: str | Path) -> tuple[Path, Path, dict]:
    """The run folder, the checkpoint to continue from, and its contents.

    ``target`` is a run folder (its newest loadable checkpoint, ``RunFolder.newest_checkpoint``) or a checkpoint
    file inside a run folder's ``checkpoints/``.
    """
    target = Path(target).expanduser()
    if not target.exists():
        raise UsageError(f"resume: {target} does not exist; give a run folder (outputs/DATE/TIME) or a .pt file")
    if target.is_file():
        return RunFolder.of_checkpoint(target).path.resolve(), target.resolve(), load_checkpoint(target)
    path, payload = RunFolder(target).newest_checkpoint("resume")
    return target.resolve(), path.resolve(), payload


def override_keys(overrides: list[str], command_key: str) -> list[tuple[str, bool]]:
    """(key, is a config group) of each command-line override; a parse error is refused in words, prefixed with
    ``command_key`` (``resume`` or ``warm_start``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as error:  # Hydra's parse errors carry the offending text
        raise UsageError(f"{command_key}: {override_parse_message(error, overrides)}") from None
    return [(o.key_or_group, _is_group(o.key_or_group)) for o in parsed]


def touched_subtrees(override_keys: list[tuple[str, bool]], skip=lambda key: False) -> list[str]:
    """Config paths the overrides (key, is a config group) decide: a key, a group's subtree, or everything for the
    global groups; keys for which ``skip`` is true are left out."""
    paths = []
    for key, is_group in override_keys:
        if skip(key):
            continue
        if is_group and key in ("experiment", "debug", "hparams_search"):
            paths.append("")
        else:
            paths.append(key.replace("/", "."))
    return paths


def config_differences(path: str, checkpoint_cfg, new_cfg, may_change=_is_run_length) -> list[str]:
    """The keys under ``path`` (every key for "") whose values differ between the two configs, as
    "key (checkpoint: old, command line: new)", leaving out those ``may_change`` allows."""
    old = OmegaConf.select(checkpoint_cfg, path) if path else checkpoint_cfg
    new = OmegaConf.select(new_cfg, path) if path else new_cfg

    def to_plain(node):
        if OmegaConf.is_config(node):
            return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
        return getattr(node, "value", node)  # a typed config holds Enums; the checkpoint holds their names

    old, new = to_plain(old), to_plain(new)
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [
            d
            for key in keys
            for d in config_differences(f"{path}.{key}" if path else key, checkpoint_cfg, new_cfg, may_change)
        ]
    if path and may_change(path):
        return []
    return (
        []
        if old == new or (old is not None and new is not None and str(old) == str(new))
        else [f"{path} (checkpoint: {old!r}, command line: {new!r})"]
    )


def resume_overrides(overrides: list[str], multirun: bool = False, lock: bool = False) -> list[str]:
    """Rewrites ``resume=...`` into the checkpoint file and the run folder Hydra must reuse.

    With ``lock`` the run folder's lock is taken (for the rest of the process) before anything of the run is
    read, so the checkpoint found is the run's newest and stays so. Refuses (exit 2 via ``UsageError``) a missing
    or unusable checkpoint, one older than the run's newest (a resume never moves a run backwards), data that
    are not the run's, and overrides that contradict the checkpoint's config.
    """
    from hydra import compose, initialize_config_module

    resume_values = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    run_dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    if resume_values and resume_values[-1] == "auto" and not multirun:
        if run_dirs and RunFolder(run_dirs[-1]).holds_a_run():
            resume_values[-1] = run_dirs[-1]
            overrides = [o for o in overrides if not o.startswith(("resume=", "hydra.run.dir="))]
        else:
            return [o for o in overrides if not o.startswith("resume=")]
    if not resume_values or resume_values[-1] in ("", "null", "auto"):
        if run_dirs and not multirun and RunFolder(run_dirs[-1]).holds_a_run():
            raise _already_a_run(run_dirs[-1])
        return overrides
    if lock and Path(resume_values[-1]).expanduser().exists():
        hold(RunFolder.of_target(resume_values[-1]).path, resuming=True)
    run_dir, checkpoint_path, payload = find_checkpoint(resume_values[-1])
    if Path(resume_values[-1]).expanduser().is_file():  # a run folder gives its newest checkpoint already
        refuse_moving_backwards(run_dir, checkpoint_path, payload)
    checkpoint_cfg = saved_config(payload["config_yaml"], "resume")
    others = [o for o in overrides if not o.startswith("resume=")]
    saved_threads, cores = checkpoint_cfg.get("threads"), usable_cores()
    if saved_threads is not None and saved_threads > cores and not any(o.startswith("threads=") for o in others):
        raise UsageError(
            f"threads: {checkpoint_path} was trained with threads={saved_threads}, more than the {cores} CPU cores "
            f"this process may use; resume with threads={cores} or fewer (it may change on resume)"
        )
    touched = touched_subtrees(
        override_keys(others, "resume"), skip=lambda key: key.startswith("hydra") or _is_run_length(key)
    )
    if touched:
        register_schemas()
        with initialize_config_module(config_module="almond_cli.configs", version_base="1.3"):
            try:
                new_cfg = compose("train", overrides=others)
            except Exception as error:  # Hydra's composition errors: a typo, an unknown key or option
                raise UsageError(
                    f"resume: {composition_message(error)} Only run-length keys "
                    f"({', '.join(RUN_LENGTH_KEYS)}) may change on resume; `almond train --cfg job` "
                    "prints every key"
                ) from None
        conflicts = [d for path in touched for d in config_differences(path, checkpoint_cfg, new_cfg)]
        if conflicts:
            raise UsageError(
                f"resume: these overrides contradict the checkpoint {checkpoint_path}, whose model, data and "
                f"randomness must stay as they were: {'; '.join(conflicts)}. Drop them, or start a new run "
                f"without resume=. Only run-length keys ({', '.join(RUN_LENGTH_KEYS)}) may change on resume."
            )
    check_same_data(
        payload.get("data"), build_dataset(checkpoint_cfg.data, seed_streams(checkpoint_cfg.seed)["data"]), "resume"
    )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return others + [
        f"resume={checkpoint_path}",
        f"hydra.run.dir={run_dir}",
        f"hydra.output_subdir={RunFolder.resume_config_dir(stamp)}",
    ]


def refuse_moving_backwards(run_dir: Path, checkpoint_path: Path, payload: dict) -> None:
    """A checkpoint file given to ``resume=`` must be the run's newest loadable one: continuing an older one
    would overwrite the later epochs (``metrics.jsonl``, ``summary.json``, the checkpoints)."""
    _, newest_path, newest = find_checkpoint(run_dir)
    step, newest_step = payload["position"]["global_step"], newest["position"]["global_step"]
    if step < newest_step:
        raise UsageError(
            f"resume: {checkpoint_path} is at update {step} but the run's newest checkpoint {newest_path} is at "
            f"update {newest_step}; a resume never moves a run backwards. Give the run folder to continue from its "
            f"newest checkpoint, or, to branch from the older one on purpose, copy the run folder, delete the newer "
            f"checkpoints in the copy and resume the copy"
        )


def _is_group(key: str) -> bool:
    return key in CONFIG_GROUPS


def _already_a_run(run_dir) -> UsageError:
    return UsageError(
        f"hydra.run.dir: {run_dir} already holds a run ({RunFolder.CHECKPOINTS}/); continue it with resume={run_dir} "
        f"(or resume=auto), or choose another folder: almond never trains over an existing run"
    )


def effective_config(cfg, task_overrides, run_dir: str | Path) -> tuple[object, dict | None]:
    """The config a (resumed) run uses and the checkpoint it continues from (None for a new run).

    For a resume, the checkpoint's config with the run-length keys the command line set. ``resume=auto``
    continues ``run_dir`` if it holds a checkpoint and starts afresh otherwise: what a requeued cluster job
    (same arguments, same folder) needs to find its own checkpoint.
    """
    if cfg.resume == "auto":
        if not RunFolder(run_dir).holds_a_run():
            cfg.resume = None
            return cfg, None
        cfg.resume = str(find_checkpoint(run_dir)[1])
    elif not cfg.resume:
        if RunFolder(run_dir).holds_a_run():
            raise _already_a_run(run_dir)
        return cfg, None
    payload = load_checkpoint(cfg.resume)
    resumed = saved_config(payload["config_yaml"], "resume")
    for override in task_overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if _is_run_length(key) and OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), force_add=True)
    resumed.resume = str(cfg.resume)
    return resumed, payload
