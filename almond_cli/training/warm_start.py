"""Starting ALMOND from another run's VAE: ``almond train warm_start=<run folder | its checkpoints/vae.pt>``.

A new run (its own folder) takes the finished VAE warm start of an earlier run, its ``checkpoints/vae.pt``,
and trains only the ALMOND phase, so ALMOND settings can be compared, or swept, without repaying the warm start
(about 10 minutes of the paper's GLMM on two CPU cores). The config is the warm start's, with the command line's
values for the keys that only the ALMOND phase reads (``ALMOND_KEYS``) and for the run-length keys; an override
that would change the model, the data, the VAE or the randomness is refused with the list of conflicts, as
``resume=`` does.
The VAE's metrics, time and ``metrics.jsonl`` lines come with it, so the new run's ``summary.json`` reads as if
it had trained the VAE itself. Given the warm start's own settings, the new run's ALMOND phase is the warm start's,
bitwise on CPU.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from ..config import saved_config
from ..errors import UsageError
from .checkpoint import CheckpointError, load_checkpoint
from .position import Phase, Position
from .resume import RUN_LENGTH_KEYS, config_differences, override_keys, touched_subtrees
from .run_folder import RunFolder

# What only the ALMOND phase reads: the sampler, the ALMOND optimisers and their schedule, the minibatch size
# (the VAE's stays on record in the warm start's own run folder) and the run's name.
ALMOND_KEYS = (
    "sampler",
    "schedule.almond_epochs",
    "schedule.warmup_epochs",
    "schedule.adam_lr",
    "schedule.sgd_lr",
    "schedule.sgd_momentum",
    "schedule.weight_decay",
    "schedule.batch_size",
    "schedule.collapse_ratio",
    "experiment_name",
)
# The VAE is over: its length is the warm start's, not a run-length key here.
_FIXED = ("schedule.vae_epochs",)


def _under(key: str, prefixes) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def may_change(key: str) -> bool:
    """Whether a warm-started run may set ``key`` differently from its warm start."""
    if _under(key, _FIXED):
        return False
    return _under(key, ALMOND_KEYS) or _under(key, RUN_LENGTH_KEYS) or _under(key, ("warm_start",))


def vae_checkpoint(target: str | Path) -> Path:
    """The VAE checkpoint ``warm_start=`` names: a run folder's ``checkpoints/vae.pt``, or a file."""
    path = Path(target).expanduser()
    if path.is_dir():
        path = RunFolder(path).vae
        if not path.is_file():
            raise UsageError(
                f"warm_start: {Path(target)} holds no {RunFolder.VAE}: the run never finished its VAE "
                "phase (or is not an almond run folder); give a run whose VAE is done, or its "
                f"{path.name}"
            )
    elif not path.is_file():
        raise UsageError(
            f"warm_start: {Path(target)} does not exist; give a run folder (outputs/DATE/TIME) whose VAE "
            f"phase is done, or its {RunFolder.VAE}"
        )
    return path


def load_warm_start(target: str | Path) -> tuple[Path, dict]:
    """(path, checkpoint) of the warm start ``target`` names; refuses a checkpoint that is not at the end of a VAE."""
    path = vae_checkpoint(target)
    try:
        payload = load_checkpoint(path)
    except CheckpointError as error:
        raise UsageError(f"warm_start: {error}") from None
    position = Position.from_state(payload["position"])
    if position.phase != Phase.ALMOND or position.epoch != 0 or position.batch != 0:
        raise UsageError(
            f"warm_start: {path} is not the end of a VAE phase (it is at {position.phase} epoch {position.epoch}, "
            f"update {position.batch} of its epoch); give the run folder or its {RunFolder.VAE}. To continue "
            "that checkpoint itself, use resume="
        )
    return path, payload


def warm_start_config(cfg, overrides: list[str]) -> tuple[object, Path, dict]:
    """The config of a run started from ``cfg.warm_start``, the warm start's path and its checkpoint.

    The warm start's config, with ``cfg``'s values for the ALMOND and run-length keys that ``overrides`` (the
    command line's) touch; refuses (``UsageError``) any touched key outside those whose value differs.
    """
    path, payload = load_warm_start(cfg.warm_start)
    source = saved_config(payload["config_yaml"], "warm_start")
    touched = touched_subtrees(override_keys(overrides, "warm_start"), skip=lambda key: key.startswith("hydra"))
    conflicts = list(
        dict.fromkeys(d for subtree in touched for d in config_differences(subtree, source, cfg, may_change))
    )
    if conflicts:
        raise UsageError(
            f"warm_start: these settings differ from the warm start {path}, whose model, data, VAE and randomness "
            f"this run keeps: {'; '.join(conflicts)}. Drop them (the warm start's config is in its run folder's "
            f"{RunFolder.CONFIG}), or train a new VAE without warm_start=. A warm-started run may change only the "
            f"ALMOND phase ({', '.join(ALMOND_KEYS)}) and the run-length keys."
        )
    effective = source.copy()
    OmegaConf.set_struct(effective, False)
    for subtree in touched:
        for key in _leaves(cfg, subtree):
            if may_change(key):
                OmegaConf.update(effective, key, OmegaConf.select(cfg, key), force_add=True)
    effective.warm_start = str(path)
    effective.resume = None
    return effective, path, payload


def _leaves(cfg, subtree: str) -> list[str]:
    node = OmegaConf.select(cfg, subtree) if subtree else cfg
    if not OmegaConf.is_dict(node):
        return [subtree]
    return [leaf for key in node for leaf in _leaves(cfg, f"{subtree}.{key}" if subtree else str(key))]
