"""``almond evaluate <run folder> [k=... n_samples=... seed=...]``: score a finished run again, without retraining.

Reads the run back from its newest loadable checkpoint (and ``vae.pt`` for the VAE row, and the fitted baselines'
own checkpoints; ``training/run_folder.py``), computes its summary again by the one function training writes
``summary.json`` with (``training/scoring.py``), with ``n_samples`` draws of u = h(z) and ``k`` importance samples
per data point for ``train_nll`` (Burda et al. 2016; ``model/marginal.py``), and writes it with the figures into a
fresh ``eval/<timestamp>/`` beside the run's own files, which stay untouched. With the run's own ``k``,
``n_samples`` and ``seed`` (the defaults) the summary is the run's ``summary.json``, key for key and value for
value, with an ``evaluation`` key added (the checkpoint read and the settings used).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from ..atomic import write_text_atomic
from ..tasks.registry import task_for
from ..training.console import print_summary
from ..training.run_folder import RunFolder, load_run
from .arguments import DEVICE, THREADS, Argument, Command, at_least, optional_int

ARGUMENTS = {
    "k": Argument(
        optional_int,
        None,
        lambda v: None if v is None or v >= 1 else f"must be >= 1, got {v}",
        "importance samples per data point, an integer >= 1; default: the run's evaluation.nll_samples",
    ),
    "n_samples": Argument(int, None, at_least(100), "draws of u = h(z) for the distribution metrics, >= 100"),
    "seed": Argument(int, None, help="seed of the evaluation draws, an integer"),
    "device": DEVICE,
    "threads": THREADS,
}


def evaluate(
    run_dir: Path,
    k: int | None = None,
    n_samples: int | None = None,
    seed: int | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> tuple[Path, dict]:
    """Scores ``run_dir`` again into ``run_dir/eval/<timestamp>/``; returns that folder and the summary."""
    run = load_run("evaluate", run_dir, device, threads)
    cfg = run.cfg
    if n_samples is not None:
        cfg.evaluation.num_draws = n_samples
    if seed is not None:
        cfg.evaluation.seed = seed
    if k is not None:
        cfg.evaluation.nll_samples = k
    task = task_for(run.dataset)
    vae_model = run.vae_model()
    summary = run.summary(task, vae_model)
    position = run.position
    summary["evaluation"] = {
        "checkpoint": str(run.checkpoint_path),
        "phase": str(position.phase),
        "almond_epochs_done": position.epoch if position.phase != "vae" else 0,
        "k": int(cfg.evaluation.nll_samples),
        "n_samples": int(cfg.evaluation.num_draws),
        "seed": int(cfg.evaluation.seed),
    }
    folder = run.folder.new_output_folder(RunFolder.EVAL)
    write_text_atomic(folder / RunFolder.SUMMARY, json.dumps(summary, indent=2) + "\n")
    write_text_atomic(folder / RunFolder.CONFIG_NAME, OmegaConf.to_yaml(cfg, resolve=True))
    vae_snapshot = None if vae_model is None else task.snapshot(vae_model, run.dataset, cfg, run.device)
    task.figures(folder, run.model, run.dataset, cfg, run.device, summary, vae_snapshot)
    return folder, summary


def run(run_dir: Path, **values) -> None:
    """``almond evaluate``: evaluates and prints the summary table."""
    folder, summary = evaluate(run_dir, **values)
    if summary["evaluation"]["phase"] != "done":
        print(
            f"almond: note: the run stopped in its {summary['evaluation']['phase']} phase; "
            "these are the scores of its last checkpoint"
        )
    print_summary(summary, folder)
    if "train_nll" in summary["almond"]:
        print(
            f"train_nll: importance-sampled −log p(x) per data point with k={summary['evaluation']['k']} "
            f"draws from the encoder mixed with the prior (nats, ± standard error)"
        )
    print(f"written to {folder}")


COMMAND = Command(
    "evaluate",
    "run folder",
    "outputs/DATE/TIME",
    "Reloads the run's newest checkpoint and writes the summary metrics and figures again into "
    f"<run folder>/{RunFolder.EVAL}/<timestamp>/, leaving the run's own files as they are. With the "
    f"defaults the scores equal the run's own {RunFolder.SUMMARY}.",
    ARGUMENTS,
    run,
)
