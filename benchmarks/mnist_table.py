"""ALMOND vs its own VAE warm start on held-out MNIST images: ``experiment=mnist_cpu`` over seeds.

Runs ``almond train experiment=mnist_cpu data.root=<root> seed=<s>`` for each seed (or reads finished run
folders with ``--reuse``) and prints, per seed, both ``test_nll`` values with their standard errors, the gain
of ALMOND over its warm start, that gain in units of the combined standard error sqrt(se_vae² + se_almond²)
(conservative: both are scored on the same images, so the paired error is smaller), the training time, the
wall time and the CPU time (user + system) of the whole command: on a shared machine the wall time is
inflated by the others' load, and the CPU time of a ``threads=1`` run bounds what 2 idle cores need;
then the medians and the verdict of the issue's bar (median gain > 2 combined standard errors).

    python benchmarks/mnist_table.py --root ../shared/data/mnist [--seeds 1 2 3] [--jobs 1] [-- overrides...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from almond_command import almond_command  # noqa: E402  (the benchmarks folder is not a package)


def run_seed(seed: int, args, extra: list[str]) -> dict:
    run_dir = Path(args.out) / f"seed-{seed}"
    if not (args.reuse and (run_dir / "summary.json").is_file()):
        started = time.monotonic()
        command = [
            *almond_command(),
            "train",
            "experiment=mnist_cpu",
            f"data.root={args.root}",
            f"seed={seed}",
            "progress=plain",
            f"hydra.run.dir={run_dir}",
            *extra,
        ]
        with open(Path(args.out) / f"seed-{seed}.log", "w") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HYDRA_FULL_ERROR": "0"}
            )
            _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(
                f"seed {seed} failed (exit {os.waitstatus_to_exitcode(status)}); see {args.out}/seed-{seed}.log"
            )
        (run_dir / "wall_seconds.txt").write_text(f"{time.monotonic() - started:.1f}\n")
        (run_dir / "cpu_seconds.txt").write_text(f"{usage.ru_utime + usage.ru_stime:.1f}\n")
    summary = json.loads((run_dir / "summary.json").read_text())
    wall, cpu = run_dir / "wall_seconds.txt", run_dir / "cpu_seconds.txt"
    vae, almond = summary["vae"], summary["almond"]
    combined = math.hypot(vae["test_nll_se"], almond["test_nll_se"])
    gain = vae["test_nll"] - almond["test_nll"]
    return {
        "seed": seed,
        "vae": vae["test_nll"],
        "vae_se": vae["test_nll_se"],
        "almond": almond["test_nll"],
        "almond_se": almond["test_nll_se"],
        "gain": gain,
        "gain_in_se": gain / combined,
        "wall": float(wall.read_text()) if wall.is_file() else float("nan"),
        "cpu": float(cpu.read_text()) if cpu.is_file() else float("nan"),
        "train_seconds": summary["timing"]["vae_seconds"] + summary["timing"]["almond_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data/mnist", help="folder of the MNIST IDX files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default="outputs/benchmarks/mnist_table", help="run folders go here")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (each uses the experiment's threads)")
    parser.add_argument("--reuse", action="store_true", help="read finished run folders instead of re-running")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, after --")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda seed: run_seed(seed, args, args.overrides), args.seeds))
    header = f"{'seed':>4}  {'VAE test_nll':>16}  {'ALMOND test_nll':>16}  {'gain':>6}  {'gain/SE':>7}  {'train s':>7}  {'wall s':>7}  {'CPU s':>7}"
    print("experiment=mnist_cpu: held-out NLL in nats per image (± standard error over the 1,000 held-out images)")
    print(header)
    for r in rows:
        print(
            f"{r['seed']:>4}  {r['vae']:>9.2f} ± {r['vae_se']:4.2f}  {r['almond']:>9.2f} ± {r['almond_se']:4.2f}  "
            f"{r['gain']:>6.2f}  {r['gain_in_se']:>7.2f}  {r['train_seconds']:>7.0f}  {r['wall']:>7.0f}  {r['cpu']:>7.0f}"
        )
    median = {
        key: statistics.median(r[key] for r in rows) for key in ("vae", "almond", "gain", "gain_in_se", "wall", "cpu")
    }
    print(
        f"{'med':>4}  {median['vae']:>16.2f}  {median['almond']:>16.2f}  {median['gain']:>6.2f}  "
        f"{median['gain_in_se']:>7.2f}  {'':>7}  {median['wall']:>7.0f}  {median['cpu']:>7.0f}"
    )
    verdict = "MET" if median["gain_in_se"] > 2 else "NOT MET"
    print(f"bar (median gain > 2 combined standard errors): {verdict}")


if __name__ == "__main__":
    main()
