"""Is the neural prior worth it? Normal empirical Bayes, the Kiefer–Wolfowitz NPMLE, the VAE and ALMOND side by side.

Runs ``almond train experiment=<name> seed=<s>`` for each experiment and seed (each seed draws new data), reads
every run's ``summary.json`` and prints, per method: KS and W1 of the fitted prior to the true one, the posterior-mean
MSE against the true means, and the marginal log-likelihood per data point (−``train_nll``; exact for normal EB and
the NPMLE, the importance-sampling estimate for the VAE and ALMOND), per seed and as medians over seeds; then
ALMOND's paired gain over each baseline in log-likelihood per point (± its standard error over rows). Usage:

    python benchmarks/eb_comparison.py                                   # mnn_exponential, mnn_mixture_fast; seeds 1-5
    python benchmarks/eb_comparison.py --experiments mnn_exponential_fast --seeds 1 2 --out outputs/eb
    python benchmarks/eb_comparison.py --collect                         # only re-read finished runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from almond_command import almond_command  # noqa: E402  (the benchmarks folder is not a package)

METHODS = {
    "normal EB": ("baselines", "normal_eb"),
    "NPMLE": ("baselines", "npmle"),
    "VAE": ("vae",),
    "ALMOND": ("almond",),
}
COLUMNS = (("KS", "ks"), ("W1", "w1"), ("post.-mean MSE", "mse_posterior_mean"), ("log-lik / point", "loglik"))


def run_one(experiment: str, seed: int, out: Path, extra: list[str]) -> dict | None:
    run_dir = out / f"{experiment}-seed{seed}"
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        started = time.time()
        subprocess.run(
            [
                *almond_command(),
                "train",
                f"experiment={experiment}",
                f"seed={seed}",
                "progress=quiet",
                f"hydra.run.dir={run_dir}",
                *extra,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"  {experiment} seed {seed}: {time.time() - started:.0f} s wall", file=sys.stderr, flush=True)
    return json.loads(summary_path.read_text())


def scores(summary: dict, path: tuple[str, ...]) -> dict:
    node = summary
    for key in path:
        node = node[key]
    return {**node, "loglik": -node["train_nll"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=["mnn_exponential", "mnn_mixture_fast"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmark-eb"))
    parser.add_argument("--collect", action="store_true", help="only read runs that already finished")
    parser.add_argument("extra", nargs="*", help="further hydra overrides for every run")
    args = parser.parse_args()
    header = "| method | " + " | ".join(name for name, _ in COLUMNS) + " |"
    rule = "|---|" + "---|" * len(COLUMNS)
    for experiment in args.experiments:
        summaries = {}
        for seed in args.seeds:
            if args.collect:
                path = args.out / f"{experiment}-seed{seed}" / "summary.json"
                if path.exists():
                    summaries[seed] = json.loads(path.read_text())
            else:
                summaries[seed] = run_one(experiment, seed, args.out, args.extra)
        if not summaries:
            continue
        print(f"\n## {experiment}: medians over seeds {', '.join(map(str, summaries))}\n")
        print(header)
        print(rule)
        for method, path in METHODS.items():
            rows = [scores(summary, path) for summary in summaries.values()]
            cells = [f"{statistics.median(row[key] for row in rows):.3f}" for _, key in COLUMNS]
            print(f"| {method} | " + " | ".join(cells) + " |")
        print(f"\n{experiment}, per seed (KS / W1 / MSE / log-lik per point):\n")
        print("| seed | " + " | ".join(METHODS) + " | ALMOND − normal EB | ALMOND − NPMLE |")
        print("|---|" + "---|" * (len(METHODS) + 2))
        for seed, summary in summaries.items():
            cells = []
            for path in METHODS.values():
                row = scores(summary, path)
                cells.append(" / ".join(f"{row[key]:.3f}" for _, key in COLUMNS))
            gains = [
                f"{summary['baselines'][name]['almond_gain']:+.3f} ± {summary['baselines'][name]['almond_gain_se']:.3f}"
                for name in ("normal_eb", "npmle")
            ]
            print(f"| {seed} | " + " | ".join(cells + gains) + " |")


if __name__ == "__main__":
    main()
