"""``almond evaluate <run folder> [k=... n_samples=... seed=...]``: score a finished run again, without retraining.

Reloads ``checkpoints/last.pt`` (and ``checkpoints/vae.pt`` for the VAE row, and the fitted baselines' own
checkpoints), recomputes the task's summary metrics and figures with ``n_samples`` draws of u = h(z), with the
importance-sampled negative log-likelihood per data point ``train_nll`` (``k`` draws each; Burda et al. 2016) from
the same estimator training scores with (``model/marginal.py``), and writes all of it into a fresh
``eval/<timestamp>/`` beside the run's own files, which stay untouched. With the run's own ``k``, ``n_samples``
and ``seed`` (the defaults) the scores equal those of the run's ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from ..atomic import write_text_atomic
from ..tasks.metrics import train_likelihood
from ..tasks.registry import task_for
from ..training.baselines import load_baselines
from ..training.build import load_model_state
from ..training.checkpoint import CheckpointError, load_checkpoint
from ..training.console import print_summary
from ..training.position import Phase
from .arguments import DEVICE, THREADS, Argument, Command, at_least, optional_int
from .run_folder import load_run, new_output_folder

ARGUMENTS = {
    "k": Argument(optional_int, None, lambda v: None if v is None or v >= 1 else f"must be >= 1, got {v}",
                  "importance samples per data point, an integer >= 1; default: the run's evaluation.nll_samples"),
    "n_samples": Argument(int, None, at_least(100), "draws of u = h(z) for the distribution metrics, >= 100"),
    "seed": Argument(int, None, help="seed of the evaluation draws, an integer"),
    "device": DEVICE,
    "threads": THREADS,
}


def evaluate(run_dir: Path, k: int | None = None, n_samples: int | None = None, seed: int | None = None,
             device: str = "auto", threads: int | None = None) -> tuple[Path, dict]:
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
    models = {"almond": run.model}
    vae_path = run.run_dir / "checkpoints" / "vae.pt"
    if vae_path.is_file():
        try:
            models["vae"] = load_model_state(cfg, run.dataset, load_checkpoint(vae_path)["model"], run.device)
        except CheckpointError as error:
            print(f"almond: warning: the VAE row is left out: {error}")
    summary: dict = {}
    for name in ("vae", "almond"):
        if name not in models:
            continue
        scores = task.score(models[name], run.dataset, cfg, run.device)
        if "train_nll" not in scores:  # images score held-out images; the training rows are scored here too
            scores.update(train_likelihood(models[name], run.dataset, cfg, run.device))
        summary[name] = scores
    fitted = load_baselines(task, run.dataset, cfg, run.run_dir, run.device)
    summary["baselines"] = task.baselines(run.model, run.dataset, cfg, run.device, fitted)
    position = run.payload["position"]
    summary["timing"] = {"vae_seconds": position["vae_seconds"], "almond_seconds": position["almond_seconds"]}
    summary["evaluation"] = {"checkpoint": str(run.checkpoint_path), "phase": position["phase"],
                             "almond_epochs_done": position["epoch"] if position["phase"] != Phase.VAE else 0,
                             "k": int(cfg.evaluation.nll_samples), "n_samples": int(cfg.evaluation.num_draws),
                             "seed": int(cfg.evaluation.seed)}
    folder = new_output_folder(run.run_dir / "eval")
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(folder / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    vae_snapshot = None
    if "vae" in models:
        vae_snapshot = task.snapshot(models["vae"], run.dataset, cfg, run.device)
    task.figures(folder, run.model, run.dataset, cfg, run.device, summary, vae_snapshot)
    return folder, summary


def run(run_dir: Path, **values) -> None:
    """``almond evaluate``: evaluates and prints the summary table."""
    folder, summary = evaluate(run_dir, **values)
    if summary["evaluation"]["phase"] != Phase.DONE:
        print(f"almond: note: the run stopped in its {summary['evaluation']['phase']} phase; "
              "these are the scores of its last checkpoint")
    print_summary(summary, folder)
    print(f"train_nll: importance-sampled −log p(x) per data point with k={summary['evaluation']['k']} "
          f"draws from the encoder mixed with the prior (nats, ± standard error)")
    print(f"written to {folder}")


COMMAND = Command("evaluate", "run folder", "outputs/DATE/TIME",
                  "Reloads the run's last checkpoint and writes the summary metrics and figures again into "
                  "<run folder>/eval/<timestamp>/, leaving the run's own files as they are. With the defaults the "
                  "scores equal the run's own summary.json.", ARGUMENTS, run)
