"""The Hermite table's two layouts (``langevin/tabulated.py``, ``COLUMN_MAX_THREADS``), timed against each other.

A one-output table is kept cell-major, (G − 1, 7): a particle's seven coefficients side by side, one dim-0 gather
per lookup, which torch splits between threads; and coefficient-major, (7, G − 1): each coefficient of every cell
in one row, so a dim-1 gather gives each coefficient as a contiguous vector and the five multiply-adds run on
contiguous operands (torch does not split a dim-1 gather between threads). The product reads the coefficient-major
copy with one thread only. This script times, at ``--threads T``, in one process, the two layouts interleaved round
by round, each forced whatever T (the cell-major one is what every thread count read before):

    lookup   ``TabulatedTarget.cubic`` (gather and Horner steps) for the B·C = 100,000 particles of a step
    update   ``phases.almond_update`` of the default experiment (mnn_exponential: B = 1000, C = 100, K = 10),
             built as ``almond train`` builds it, with the process set up as ``almond train`` sets it up

and checks that both layouts give bitwise the same lookup.

Usage:  python benchmarks/table_layout.py [--threads 1] [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the benchmarks folder is not a package)

from almond_cli.config import sampler_settings  # noqa: E402
from almond_cli.langevin import tabulated  # noqa: E402
from almond_cli.langevin.chains import PersistentChains  # noqa: E402
from almond_cli.tasks.registry import build_dataset  # noqa: E402
from almond_cli.training import phases  # noqa: E402
from almond_cli.training.build import build_model  # noqa: E402
from almond_cli.training.runtime import configure_process  # noqa: E402

# COLUMN_MAX_THREADS for each: never, and at any thread count (so two threads show what the layout would give there)
LAYOUTS = {"cell-major": 0, "coefficient-major": 1 << 30}
PRODUCT = tabulated.COLUMN_MAX_THREADS


def milliseconds(function, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    configure_process(args.threads)

    cfg = speed.compose("mnn_exponential", [])
    torch.manual_seed(0)
    dataset = build_dataset(cfg.data, 0)
    model = build_model(cfg, dataset).eval()
    settings = sampler_settings(cfg.sampler)
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(dataset.num_points, settings.num_chains, 1, generator=generator)
    chains = PersistentChains(start.clone())
    optimiser = torch.optim.SGD(model.generative_parameters, lr=1e-9)  # a real step that barely moves
    indices = torch.arange(dataset.num_points)
    table = tabulated.TabulatedTarget.around(
        model, dataset.x, start, settings.step_size, settings.num_steps, cfg.sampler.table_nodes
    )
    cell, t, _ = table.locate(start.reshape(-1))

    def lookup():
        return table.cubic(cell, t)

    def update():
        return phases.almond_update(model, optimiser, chains, indices, dataset.x, 0.01, settings, generator)

    results: dict[str, dict[str, list[float]]] = {name: {"lookup": [], "update": []} for name in LAYOUTS}
    outputs = {}
    try:
        for name, limit in LAYOUTS.items():  # warm-up, and each layout's lookup kept for the comparison
            tabulated.COLUMN_MAX_THREADS = limit
            outputs[name] = lookup()
            for _ in range(10):
                update()
        for _ in range(args.rounds):
            for name, limit in LAYOUTS.items():
                tabulated.COLUMN_MAX_THREADS = limit
                results[name]["lookup"].append(milliseconds(lookup, 100))
                results[name]["update"].append(milliseconds(update, 20))
    finally:
        tabulated.COLUMN_MAX_THREADS = PRODUCT
    same = all(torch.equal(a, b) for a, b in zip(outputs["cell-major"], outputs["coefficient-major"]))

    cpu = speed.cpu_description()
    print(
        f"CPU {cpu['model']}, flags {' '.join(cpu['flags'] or [])}; torch {torch.__version__}, threads={args.threads}"
    )
    print(f"{'layout':<18} {'lookup ms':>10} {'update ms':>10}   (medians of {args.rounds} interleaved rounds)")
    medians = {
        name: {part: statistics.median(values) for part, values in parts.items()} for name, parts in results.items()
    }
    for name, parts in medians.items():
        print(f"{name:<18} {parts['lookup']:>10.3f} {parts['update']:>10.2f}")
    before, after = medians["cell-major"], medians["coefficient-major"]
    print(
        f"speed-up: lookup {before['lookup'] / after['lookup']:.2f}x, update {before['update'] / after['update']:.2f}x; "
        f"bitwise the same lookup: {same}"
    )
    if args.threads > PRODUCT:
        print(f"(the product reads the coefficient-major table with up to {PRODUCT} thread; here it reads cell-major)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
