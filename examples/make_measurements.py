"""Writes ``measurements.csv``: 2,000 noisy measurements with a standard error each, for the README example.

Think of 2,000 units (schools, genes, sensors) whose true values mu_i come from a skewed, two-bump
distribution nobody knows in advance (70% Gamma(shape 2, scale 1), 30% N(6, 0.7²)), each measured once with
its own standard error se_i between 0.5 and 2 (x_i = mu_i + se_i · N(0, 1)). The file has a header row and the
columns ``unit``, ``estimate`` and ``se``; the true values go to ``true_values.csv`` (column ``mu``), which a
real study would not have, so the example can show how close the shrinkage estimates get.

Usage: python examples/make_measurements.py [--out measurements.csv] [--n 2000] [--seed 7]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def simulate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, se, estimate), each (n,)."""
    rng = np.random.default_rng(seed)
    bump = rng.random(n) < 0.3
    mu = np.where(bump, rng.normal(6.0, 0.7, n), rng.gamma(2.0, 1.0, n))
    se = rng.uniform(0.5, 2.0, n)
    return mu, se, mu + se * rng.normal(size=n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("measurements.csv"))
    parser.add_argument("--truth", type=Path, default=None, help="default: true_values.csv beside --out")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    mu, se, estimate = simulate(args.n, args.seed)
    truth = args.truth or args.out.with_name("true_values.csv")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write("unit,estimate,se\n")
        for index in range(args.n):
            handle.write(f"u{index + 1:04d},{estimate[index]:.4f},{se[index]:.3f}\n")
    np.savetxt(truth, mu[:, None], delimiter=",", header="mu", comments="", fmt="%.6f")
    print(f"wrote {args.n} measurements to {args.out} (columns unit, estimate, se) and the true values to {truth}")


if __name__ == "__main__":
    main()
