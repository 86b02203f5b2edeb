"""How much do the debug run's figures move when only the Monte Carlo noise changes?

A 2-process data-parallel run draws rank 1's Langevin noise and data order from other streams than a
1-process run, so its metrics differ from the 1-process run's by Monte Carlo noise alone. This script
measures that spread: the debug config (``debug=tiny``) trained in one process with the noise and order
streams re-seeded K times (data and initial weights fixed). tests/training/test_distributed.py takes its tolerance
from these figures. Run: ``python benchmarks/noise_spread.py [K]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile

import torch
from hydra import compose, initialize_config_module

from almond_cli.config import register_schemas
from almond_cli.training import runtime, trainer


def main(repeats: int = 8) -> None:
    torch.set_num_threads(1)
    register_schemas()
    with initialize_config_module(config_module="almond_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=["debug=tiny", "progress=quiet", "diagnostics.rhat_every_epochs=0"])
    original = runtime.seed_streams
    rows = []
    for k in range(repeats):

        def streams(seed, k=k):
            seeds = original(seed)
            if k:
                seeds["noise"] += 1000 * k
                seeds["order"] += 1000 * k
            return seeds

        trainer.seed_streams = streams
        with tempfile.TemporaryDirectory() as run_dir:
            summary = trainer.train(cfg, run_dir)
            records = trainer.json.loads("[" + ",".join(open(f"{run_dir}/metrics.jsonl").read().split("\n")[:-1]) + "]")
        vae_loss = [r["loss"] for r in records if r["phase"] == "vae"][-1]
        almond_loss = [r["loss"] for r in records if r["phase"] == "almond"][-1]
        rows.append((vae_loss, almond_loss, summary["vae"]["w1"], summary["almond"]["w1"], summary["almond"]["ks"]))
        print(
            f"noise stream {k}: final VAE loss {vae_loss:.4f}, ALMOND loss {almond_loss:.4f}, "
            f"VAE w1 {rows[-1][2]:.4f}, ALMOND w1 {rows[-1][3]:.4f}, ALMOND ks {rows[-1][4]:.4f}"
        )
    for index, name in enumerate(("VAE loss", "ALMOND loss", "VAE w1", "ALMOND w1", "ALMOND ks")):
        values = [row[index] for row in rows]
        print(
            f"{name}: mean {statistics.mean(values):.4f} sd {statistics.stdev(values):.4f} "
            f"range {max(values) - min(values):.4f}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
