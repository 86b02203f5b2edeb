"""The Hydra application behind ``almond train``: the one place that knows Hydra's runtime.

``task(cfg)`` turns Hydra's composed config into a call of the plain ``trainer.train(cfg, run_dir)``.
In a single run, bad input exits with code 2 and no traceback; inside a multirun the error is raised so
Hydra records the failed job and the sweep goes on (``sys.exit`` would end the whole sweep).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from ..config import register_schemas
from ..errors import EXIT_USAGE, UsageError

log = logging.getLogger("almond")

register_schemas()


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _stop(message: str, code: int) -> None:
    paragraph = " ".join(line.strip() for line in message.splitlines() if line.strip())
    log.error(paragraph)
    print(f"almond: error: {paragraph}", file=sys.stderr)
    sys.exit(code)


def _sweeper_needs_a_number() -> bool:
    """True under a sweeper that searches on the returned value (Optuna), where a raise ends the search."""
    try:
        return "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower()
    except ValueError:
        return False


def parallel_jobs(launcher, cores: int) -> int:
    """Jobs of a sweep that ``launcher`` (Hydra's ``hydra.launcher`` config) runs at once on these ``cores``.

    joblib's ``n_jobs`` by joblib's own rule (-1 every core, -2 all but one, ...; joblib counts the cores this
    process may use, as ``cores`` does); 1 for every other launcher: the basic one runs jobs one after another,
    and a cluster's jobs each get their own CPUs, which the job sees as its affinity.
    """
    if launcher is None or "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n_jobs = launcher.get("n_jobs")
    n_jobs = 1 if n_jobs is None else int(n_jobs)
    if n_jobs < 0:
        n_jobs = cores + 1 + n_jobs
    return max(1, n_jobs)


def _parallel_jobs() -> int:
    if not _is_multirun():
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return parallel_jobs(HydraConfig.get().launcher, cores)


def objective(summary: dict) -> float:
    """The number a sweeper minimises: ALMOND's ``w1`` where the truth is known, else its ``test_nll`` (images), else
    its held-out rows' ``heldout_nll``, else its training rows' ``train_nll`` (a user's file): +inf only for a run
    that scored none of them."""
    almond = summary.get("almond", {})
    for key in ("w1", "test_nll", "heldout_nll", "train_nll"):
        value = almond.get(key)
        if value is not None and math.isfinite(value):
            return float(value)
    return math.inf


def _discard_unstarted(run_dir: str) -> str:
    """After a signal stopped a new run before it had a checkpoint: removes its folder if it holds nothing but
    what starting wrote (Hydra's ``.hydra/`` and log, the lock's record); returns what was done, in words."""
    from ..training.run_folder import RunFolder

    folder = Path(run_dir)
    started_only = {Path(RunFolder.CONFIG).parent.name, RunFolder.LOG, RunFolder.LOCK}
    if folder.is_dir() and {entry.name for entry in folder.iterdir()} <= started_only:
        shutil.rmtree(folder, ignore_errors=True)
        return f"nothing was trained, and its run folder {folder} was removed"
    return f"nothing was trained; {folder} holds no checkpoint of it"


def task(cfg) -> float:
    from ..training.run_folder import WriteError
    from ..training.trainer import DivergenceError, Interrupted, StoppedBeforeTraining, start

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = start(
            cfg,
            list(HydraConfig.get().overrides.task),
            run_dir,
            HydraConfig.get().output_subdir,
            parallel_jobs=_parallel_jobs(),
        )
    except WriteError as error:  # before UsageError, which it is: the resume command belongs to this run
        if _is_multirun():
            raise
        then = f"then `almond train resume={run_dir}`" if error.resumable else "then start the run again"
        _stop(f"{error}. Free some space, {then}", EXIT_USAGE)
    except UsageError as error:
        if _is_multirun():
            raise
        _stop(str(error), EXIT_USAGE)
    except DivergenceError as error:
        if _is_multirun() and _sweeper_needs_a_number():
            # Optuna stops the whole search on a raising trial and crashes on NaN; +inf ranks it last.
            log.error("%s; this trial scores +inf", error)
            return math.inf
        if _is_multirun():
            raise
        _stop(str(error), 1)
    except StoppedBeforeTraining as stop:
        discarded = _discard_unstarted(run_dir)
        message = f"almond: stopped by signal {stop.signal_number} while the run was starting; {discarded}"
        print(message, file=sys.stderr)
        sys.exit(128 + stop.signal_number)
    except Interrupted as stop:
        message = (
            f"almond: stopped by signal {stop.signal_number}; checkpoint written to "
            f"{stop.checkpoint_path}. Resume with:\n  almond train resume={run_dir}"
        )
        log.warning(message)
        print(message, file=sys.stderr)
        sys.exit(128 + stop.signal_number)
    return objective(summary)


@hydra.main(version_base="1.3", config_path="pkg://almond_cli.configs", config_name="train")
def hydra_app(cfg) -> float:
    return task(cfg)
