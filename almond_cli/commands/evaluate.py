"""``almond evaluate <run folder> [k=... n_samples=... seed=...]``: score a finished run again, without retraining.

Reloads ``checkpoints/last.pt`` (and ``checkpoints/vae.pt`` for the VAE row), recomputes the task's summary
metrics and figures with ``n_samples`` draws of u = h(z), adds an importance-sampled estimate of the
negative log-likelihood per data point with ``k`` samples from the encoder (Burda et al. 2016:
log p(x) ≈ log (1/k) Σ f(x | h(z_j)) N(z_j; 0, I) / q(z_j | x), z_j ~ q(z | x)), and writes all of it into a
fresh ``eval/<timestamp>/`` beside the run's own files, which stay untouched.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..atomic import write_text_atomic
from ..training.checkpoint import CheckpointError, load_checkpoint
from ..training.console import print_summary
from ..model.model import LOG_2PI, reparameterise, standard_normal_log_prob
from .run_folder import Argument, help_requested, at_least, fail_on_usage_error, load_model_state, load_run, new_output_folder, \
    optional_int, parse_arguments
from ..tasks.base import task_for

ARGUMENTS = {
    "k": Argument(int, 100, at_least(1), "importance samples per data point, an integer >= 1"),
    "n_samples": Argument(int, None, at_least(100), "draws of u = h(z) for the distribution metrics, >= 100"),
    "seed": Argument(int, None, help="seed of the evaluation draws, an integer"),
    "device": Argument(str, "auto", lambda v: None if v in ("auto", "cpu", "cuda") or v.startswith("cuda:")
                       else f"must be auto, cpu, cuda or cuda:N, got {v!r}", "auto, cpu, cuda or cuda:N"),
    "threads": Argument(optional_int, None, lambda v: None if v is None or v >= 1 else f"must be >= 1, got {v}",
                        "CPU threads, an integer >= 1"),
}


@torch.no_grad()
def importance_sampled_nll(model, x: torch.Tensor, k: int, generator: torch.Generator,
                           max_particles: int = 2_000_000) -> tuple[float, float]:
    """Mean and standard error over data points of −log p̂(x) with ``k`` encoder proposals each.

    Args:
        model: the fitted ``LatentVariableModel`` (eval mode).
        x: (n, D) data.
        k: importance samples per data point.
        generator: noise source of the proposals.
        max_particles: rows are processed in chunks of at most this many (row, sample) pairs.

    Returns:
        (mean of −log p̂(x_i), its standard error over the n data points), in nats.
    """
    values = []
    rows = max(1, max_particles // k)
    for start in range(0, x.shape[0], rows):
        batch = x[start:start + rows]
        mean, log_var = model.encoder(batch)
        z = reparameterise(mean, log_var, k, generator)  # (B, k, d)
        log_q = -0.5 * (((z - mean.unsqueeze(1)).square() / log_var.exp().unsqueeze(1))
                        + log_var.unsqueeze(1) + LOG_2PI).sum(-1)
        log_weights = model.log_lik(batch, z) + standard_normal_log_prob(z) - log_q
        values.append(-(torch.logsumexp(log_weights.double(), dim=1) - math.log(k)))
    nll = torch.cat(values)
    return float(nll.mean()), float(nll.std() / math.sqrt(nll.numel())) if nll.numel() > 1 else 0.0


def evaluate(run_dir: Path, k: int = 100, n_samples: int | None = None, seed: int | None = None,
             device: str = "auto", threads: int | None = None) -> tuple[Path, dict]:
    """Scores ``run_dir`` again into ``run_dir/eval/<timestamp>/``; returns that folder and the summary."""
    run = load_run("evaluate", run_dir, device, threads)
    cfg = run.cfg
    if n_samples is not None:
        cfg.evaluation.num_draws = n_samples
    if seed is not None:
        cfg.evaluation.seed = seed
    task = task_for(run.dataset)
    x = run.dataset.x.to(run.device)
    eval_seed = int(cfg.evaluation.seed)
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
        nll, se = importance_sampled_nll(models[name], x, k, torch.Generator(device=run.device).manual_seed(eval_seed))
        summary[name] = {**scores, "train_nll": nll, "train_nll_se": se}
    summary["baselines"] = task.baselines(run.dataset, cfg, run.device)
    position = run.payload["position"]
    summary["timing"] = {"vae_seconds": position["vae_seconds"], "almond_seconds": position["almond_seconds"]}
    summary["evaluation"] = {"checkpoint": str(run.checkpoint_path), "phase": position["phase"],
                             "almond_epochs_done": position["epoch"] if position["phase"] != "vae" else 0,
                             "k": k, "n_samples": int(cfg.evaluation.num_draws), "seed": eval_seed}
    folder = new_output_folder(run.run_dir / "eval")
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(folder / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    vae_snapshot = None
    if "vae" in models:
        vae_snapshot = task.snapshot(models["vae"], run.dataset, cfg, run.device)
    task.figures(folder, run.model, run.dataset, cfg, run.device, summary, vae_snapshot)
    return folder, summary


def main(args: list[str]) -> None:
    """``almond evaluate``: parses the arguments, evaluates, prints the summary table."""

    if help_requested("evaluate", args, ARGUMENTS, "Reloads the run's last checkpoint and writes the summary metrics and figures again into <run folder>/eval/<timestamp>/, leaving the run's own files as they are."):
        return

    def command() -> None:
        run_dir, values = parse_arguments("evaluate", args, ARGUMENTS)
        folder, summary = evaluate(run_dir, **values)
        if summary["evaluation"]["phase"] != "done":
            print(f"almond: note: the run stopped in its {summary['evaluation']['phase']} phase; "
                  "these are the scores of its last checkpoint")
        print_summary(summary, folder)
        print(f"train_nll: importance-sampled −log p(x) per data point with k={summary['evaluation']['k']} "
              f"encoder proposals (nats, ± standard error)")
        print(f"written to {folder}")

    fail_on_usage_error(command)
