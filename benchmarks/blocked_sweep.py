"""The fast fp32 Langevin path with its CPU sweep in blocks of rows (``targets.BLOCK_BYTES``) against the same path
over the whole batch at once (the code before blocking, line for line), interleaved round by round: ms per Langevin
step (``sampler.run`` / K), ms per ALMOND update (``phases.almond_update``) and minor page faults per step, on
``speed.py``'s workloads (the product's own experiments at their B, C and K), in a process set up as ``almond
train`` sets it up (``configure_process``). The product blocks with one thread only (``targets.BLOCK_MAX_THREADS``);
this benchmark times blocks at any ``--threads``, which is how that rule was chosen.

Usage:  python benchmarks/blocked_sweep.py [--threads 1] [--rounds 5] [--only mixture glmm] [--blocks-mib 1 2 4 8]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the benchmarks folder is not a package)

from almond_cli.langevin import targets  # noqa: E402
from almond_cli.training.runtime import configure_process  # noqa: E402

WHOLE = 1 << 62  # a block budget no batch reaches: one sweep over all rows


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(name: str, variants: dict[str, int], rounds: int) -> dict[str, dict[str, float]]:
    workload = speed.Workload(name, speed.MNIST_ROOT)
    steps = workload.spec["steps"]
    samples = {label: {"step": [], "update": [], "faults": []} for label in variants}
    default = targets.BLOCK_BYTES, targets.BLOCK_MAX_THREADS
    targets.BLOCK_MAX_THREADS = torch.get_num_threads()  # time blocks at any thread count, whatever the product does
    try:
        for _ in range(rounds):
            for label, budget in variants.items():
                targets.BLOCK_BYTES = budget
                faults, began = minor_faults(), time.perf_counter()
                workload.run_steps(fast=True, precision="fp32")
                samples[label]["step"].append(1e3 * (time.perf_counter() - began) / steps)
                samples[label]["faults"].append((minor_faults() - faults) / steps)
                began = time.perf_counter()
                workload.run_update(fast=True, precision="fp32")
                samples[label]["update"].append(1e3 * (time.perf_counter() - began))
    finally:
        targets.BLOCK_BYTES, targets.BLOCK_MAX_THREADS = default
    return {
        label: {key: statistics.median(values) for key, values in times.items()} for label, times in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="+", default=["mixture", "glmm"], choices=["exponential", "mixture", "glmm"])
    parser.add_argument(
        "--blocks-mib",
        nargs="+",
        type=float,
        default=[targets.BLOCK_BYTES / 2**20],
        help="block budgets to time beside the whole batch (default: the product's)",
    )
    args = parser.parse_args(argv)
    configure_process(args.threads)
    variants = {"whole batch": WHOLE, **{f"{mib:g} MiB": int(mib * 2**20) for mib in args.blocks_mib}}
    cpu = speed.cpu_description()
    print(
        f"CPU {cpu['model']}; flags {' '.join(cpu['flags'] or []) or '-'}; torch {torch.__version__}, "
        f"threads={args.threads}, medians of {args.rounds} interleaved rounds; {speed.load_note()}"
    )
    print(
        f"{'workload':12s} {'sweep':12s} {'ms/step':>8s} {'ms/update':>10s} {'faults/step':>12s} "
        f"{'update speed-up':>16s}"
    )
    for name in args.only:
        rows = measure(name, variants, args.rounds)
        whole = rows["whole batch"]["update"]
        for label, row in rows.items():
            print(
                f"{name:12s} {label:12s} {row['step']:8.1f} {row['update']:10.1f} {row['faults']:12.0f} "
                f"{whole / row['update']:15.2f}x",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
