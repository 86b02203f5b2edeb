"""The Hydra application behind ``almond train``: the one place that knows Hydra's runtime.

``task(cfg)`` turns Hydra's composed config into a call of the plain ``trainer.train(cfg, run_dir)``.
In a single run, bad input exits with code 2 and no traceback; inside a multirun the error is raised so
Hydra records the failed job and the sweep goes on (``sys.exit`` would end the whole sweep).
"""

from __future__ import annotations

import logging
import math
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


def objective(summary: dict) -> float:
    """The number a sweeper minimises: ALMOND's ``w1`` where the truth is known, else its ``test_nll``."""
    almond = summary.get("almond", {})
    for key in ("w1", "test_nll"):
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
        summary = start(cfg, list(HydraConfig.get().overrides.task), run_dir, HydraConfig.get().output_subdir)
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
