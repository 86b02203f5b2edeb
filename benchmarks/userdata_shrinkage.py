"""Shrinkage on the exponential-prior simulation fed through ``data=file``: three mean squared errors.

The foundation's many-normal-means simulation (Qiu & Wang 2019, Section 5.1: mu_i ~ Exponential(scale 2),
x_i = mu_i + N(0, 1), n = 1000, the data ``almond train`` simulates with seed=S) is written to CSV
(measurements and, separately, the true mu); ``almond train data=file`` fits it at the paper's settings and
``almond sample what=posterior`` computes each row's posterior mean. Printed per seed: the MSE against the
true mu of (1) the posterior means, (2) the raw x, (3) the normal empirical-Bayes (James–Stein-type)
estimates, and for reference (4) the oracle Bayes posterior mean under the true prior, closed form:
mu | x ~ N(x − 1/2, 1) truncated to mu > 0, mean m + φ(m)/Φ(m) with m = x − 1/2.

Usage: python benchmarks/userdata_shrinkage.py [--seeds 1 2 3] [--work DIR] [--threads 1] [--quick] [--reuse]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from almond_cli.data.dataset import make_normal_means
from almond_cli.training.runtime import seed_streams

ALMOND = str(Path(sys.executable).parent / "almond")


def oracle_posterior_mean(x: np.ndarray) -> np.ndarray:
    """E[mu | x] for mu ~ Exponential(scale 2), x | mu ~ N(mu, 1)."""
    m = torch.as_tensor(x - 0.5, dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    # phi(m) / Phi(m) computed in logs so a very negative m stays finite
    ratio = torch.exp(normal.log_prob(m) - torch.special.log_ndtr(m))
    return (m + ratio).numpy()


def write_simulation(folder: Path, seed: int) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """The data ``almond train experiment=mnn_exponential seed=<seed>`` would simulate, as two CSV files."""
    generator = torch.Generator().manual_seed(seed_streams(seed)["data"])
    dataset = make_normal_means(1000, "exponential", 1.0, generator)
    x, mu = dataset.x[:, 0].double().numpy(), dataset.truth[:, 0].double().numpy()
    folder.mkdir(parents=True, exist_ok=True)
    data_path, truth_path = folder / "measurements.csv", folder / "truth.csv"
    np.savetxt(data_path, x[:, None], delimiter=",", header="x", comments="", fmt="%.9g")
    np.savetxt(truth_path, mu[:, None], delimiter=",", header="mu", comments="", fmt="%.9g")
    return data_path, truth_path, x, mu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--work", type=Path, default=Path("outputs/benchmarks/userdata_shrinkage"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="sample again from finished runs in --work")
    parser.add_argument("--quick", action="store_true", help="200+200 epochs instead of the paper's 1000+1000")
    args = parser.parse_args()
    from almond_cli.commands.sample import sample

    rows = []
    for seed in args.seeds:
        folder = args.work / f"seed{seed}"
        data_path, truth_path, x, mu = write_simulation(folder, seed)
        run_dir = folder / "run"
        command = [
            ALMOND,
            "train",
            "data=file",
            f"data.path={data_path}",
            "data.columns=[x]",
            f"data.truth_path={truth_path}",
            "likelihood.sigma=1.0",
            f"seed={seed}",
            f"threads={args.threads}",
            "progress=quiet",
            f"hydra.run.dir={run_dir}",
        ]
        if args.quick:
            command += ["schedule.vae_epochs=200", "schedule.almond_epochs=200", "schedule.warmup_epochs=50"]
        started = time.perf_counter()
        if args.reuse and (run_dir / "summary.json").is_file():
            train_seconds = float("nan")
        else:
            subprocess.run(command, check=True)
            train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        result = sample(run_dir, what="posterior", out=str(folder / "posterior.csv"), seed=seed, threads=args.threads)
        sample_seconds = time.perf_counter() - started
        oracle = float(np.mean((oracle_posterior_mean(x) - mu) ** 2))
        rows.append(
            (
                seed,
                result["mse_posterior_mean"],
                result["mse_raw_x"],
                result["mse_normal_eb"],
                oracle,
                result["coverage"],
                train_seconds,
                sample_seconds,
            )
        )
        print(
            f"seed {seed}: MSE almond posterior means {rows[-1][1]:.4f}, raw x {rows[-1][2]:.4f}, "
            f"normal EB {rows[-1][3]:.4f}, oracle Bayes {oracle:.4f}",
            flush=True,
        )
    print()
    print("exponential prior (scale 2), n = 1000, x = mu + N(0, 1), through data=file; MSE against the true mu")
    print(
        f"{'seed':>4} {'almond post. mean':>18} {'raw x':>8} {'normal EB':>10} {'oracle Bayes':>13} "
        f"{'90% cover':>10} {'train s':>8} {'sample s':>9}"
    )
    for row in rows:
        print(
            f"{row[0]:>4} {row[1]:>18.4f} {row[2]:>8.4f} {row[3]:>10.4f} {row[4]:>13.4f} {row[5]:>10.3f} "
            f"{row[6]:>8.1f} {row[7]:>9.1f}"
        )
    if len(rows) > 1:
        mean = np.mean(np.array([r[1:6] for r in rows]), axis=0)
        print(f"{'mean':>4} {mean[0]:>18.4f} {mean[1]:>8.4f} {mean[2]:>10.4f} {mean[3]:>13.4f} {mean[4]:>10.3f}")
    wins = sum(r[1] < r[2] and r[1] < r[3] for r in rows)
    print(f"posterior means beat raw x and normal EB in {wins} of {len(rows)} seeds")


if __name__ == "__main__":
    main()
