"""Runs ``almond train experiment=glmm_cpu`` (or another GLMM experiment) on several seeds and prints the
median table of the GLMM metrics for VAE, ALMOND and the Gaussian GLMM baseline, beside the paper's values
(Qiu & Wang 2019, Table 3), and whether issue #4's bar is met.

    python benchmarks/glmm_table.py                          # 3 seeds of experiment=glmm_cpu, one at a time
    python benchmarks/glmm_table.py --jobs 3 --threads 1     # the seeds in parallel, one thread each
    python benchmarks/glmm_table.py --collect outputs/glmm_table   # only re-read finished run folders
    python benchmarks/glmm_table.py -- schedule.almond_epochs=200  # extra Hydra overrides after --
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from almond_command import almond_command  # noqa: E402  (the benchmarks folder is not a package)

METRICS = ("ks", "w1", "ks_mean", "w1_mean", "lambda_l1", "beta_error")
METHODS = ("vae", "almond", "gaussian_glmm")
PAPER = {
    "vae": {"ks": 0.136, "w1": 0.335},
    "almond": {"ks": 0.015, "w1": 0.062},
    "gaussian_glmm": {"ks": 0.107, "w1": 0.359},
}  # paper's Gaussian row is lme4's


def launch(seed: int, out: Path, experiment: str, threads: int, overrides: list[str]) -> subprocess.Popen:
    run_dir = out / f"seed{seed}"
    args = [
        *almond_command(),
        "train",
        f"experiment={experiment}",
        f"seed={seed}",
        f"threads={threads}",
        "progress=plain",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / f"seed{seed}.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)


def rows(summaries: list[dict]) -> dict[str, dict[str, float]]:
    """Median over seeds of each method's metrics."""
    table = {}
    for method in METHODS:
        entries = [s["baselines"][method] if method in s.get("baselines", {}) else s.get(method) for s in summaries]
        entries = [entry for entry in entries if entry]
        if entries:
            table[method] = {m: statistics.median(e[m] for e in entries) for m in METRICS if m in entries[0]}
    return table


def print_table(table: dict, per_seed: list[dict], seeds: list[int], walls: dict) -> None:
    header = f"{'method':<15}" + "".join(f"{m:>11}" for m in METRICS) + f"{'paper ks':>10}{'paper w1':>10}"
    print(f"median over seeds {seeds}")
    print(header)
    for method, values in table.items():
        paper = PAPER.get(method, {})
        print(
            f"{method:<15}"
            + "".join(f"{values.get(m, float('nan')):>11.4f}" for m in METRICS)
            + f"{paper.get('ks', float('nan')):>10.3f}{paper.get('w1', float('nan')):>10.3f}"
        )
    for seed, summary in zip(seeds, per_seed):
        parts = []
        for method in METHODS:
            entry = summary["baselines"].get(method) if method not in summary else summary[method]
            if entry:
                parts.append(f"{method} ks {entry['ks']:.4f} w1 {entry['w1']:.4f} beta {entry['beta_error']:.3f}")
        timing = summary.get("timing", {})
        wall = f", wall {walls[seed]:.0f} s" if seed in walls else ""
        print(
            f"  seed {seed}: "
            + "; ".join(parts)
            + f" (VAE {timing.get('vae_seconds', 0):.0f} s, ALMOND {timing.get('almond_seconds', 0):.0f} s{wall})"
        )
    almond, gaussian, vae = table.get("almond"), table.get("gaussian_glmm"), table.get("vae")
    if almond and gaussian and vae:
        checks = {
            "almond ks < vae ks": almond["ks"] < vae["ks"],
            "almond ks < gaussian ks": almond["ks"] < gaussian["ks"],
            "almond w1 <= 0.6 x gaussian w1": almond["w1"] <= 0.6 * gaussian["w1"],
            "almond beta_error <= 0.25": almond["beta_error"] <= 0.25,
        }
        for name, passed in checks.items():
            print(f"  {'PASS' if passed else 'FAIL'}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--experiment", default="glmm_cpu")
    parser.add_argument("--out", type=Path, default=Path("outputs/glmm_table"))
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at the same time")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--collect", type=Path, help="only read the run folders under this folder")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    args = parser.parse_args(argv)
    out = args.collect or args.out
    walls: dict[int, float] = {}
    if args.collect is None:
        pending, running = list(args.seeds), {}
        while pending or running:
            while pending and len(running) < args.jobs:
                seed = pending.pop(0)
                running[seed] = (launch(seed, out, args.experiment, args.threads, args.overrides), time.monotonic())
            time.sleep(2)
            for seed, (process, started) in list(running.items()):
                if process.poll() is not None:
                    walls[seed] = time.monotonic() - started
                    del running[seed]
                    if process.returncode != 0:
                        print(f"seed {seed} failed ({process.returncode}); see {out / f'seed{seed}.log'}")
    seeds = [s for s in args.seeds if (out / f"seed{s}" / "summary.json").is_file()]
    if not seeds:
        print(f"no finished runs under {out}")
        return 1
    per_seed = [json.loads((out / f"seed{s}" / "summary.json").read_text()) for s in seeds]
    print_table(rows(per_seed), per_seed, seeds, walls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
