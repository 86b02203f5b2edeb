"""Time per ALMOND update with the exact Langevin target against the tabulated one (``sampler.tabulate``).

For a one-dimensional latent, ``langevin/tabulated.py`` evaluates the decoder h and h' once per update at G grid
nodes and interpolates them per particle (cubic Hermite) instead of running every particle of every Langevin step
through the network, and the parameter step after sampling reads the same table: its decoder gradient is summed
onto the G nodes (``tabulated_loss``) instead of back-propagating all B·K'·C particles (docs/speed.md).
This script times ``phases.almond_update`` both ways on the paper's many-normal-means experiments, composed
through Hydra as ``almond train`` composes them and built by the product's own builders, at the experiment's
B = 1000, C = 100, K = 10 (burn-in 9):

    exponential  mnn_exponential   [10] softplus MLP decoder
    mixture      mnn_mixture       [50, 100, 50] softplus MLP decoder

at n = 1000 (one batch: the paper's setting) and n = 100,000 rows in batches of 1000 (persistent chains of all
rows; a few updates timed, each on its own batch, and the epoch of 100 updates projected). Exact and tabulated
are interleaved round by round so a load change hits both alike. The update includes the parameter step: exact
through the network with the table off, through the table's nodes (``tabulated_loss``) with it on.

Also printed: ms per Langevin step alone (``sampler.run`` / K, the table's construction included), the largest
|∇_z log p| difference between the two targets at the starting chains, and the largest difference between the
exact loss's and ``tabulated_loss``'s parameter gradients with the starting chains as particles, relative to
the largest entry of each parameter tensor (float32 both).

Usage:  python benchmarks/tabulated_speed.py [--threads 1] [--rounds 3] [--nodes 2049] [--only exponential]
        python benchmarks/tabulated_speed.py --threads 1 --clock cpu   # CPU time: a proxy for an idle machine
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from almond_cli.langevin import sampler
from almond_cli.langevin.chains import PersistentChains
from almond_cli.langevin.settings import SamplerSettings
from almond_cli.langevin.tabulated import TabulatedTarget, tabulated_loss
from almond_cli.langevin.targets import target_for
from almond_cli.tasks.registry import build_dataset
from almond_cli.training import phases
from almond_cli.training.build import build_model
from almond_cli.training.runtime import configure_process

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import add_clock_option, chosen_clock, compose, load_note  # noqa: E402  (the benchmarks folder is not a package)

WORKLOADS = {"exponential": "mnn_exponential", "mixture": "mnn_mixture"}
SIZES = (1000, 100_000)
clock = time.perf_counter


def bench(name: str, num_points: int, rounds: int, nodes: int, batch_size: int = 1000) -> dict:
    cfg = compose(WORKLOADS[name], [f"data.n={num_points}", f"schedule.batch_size={batch_size}"])
    torch.manual_seed(0)
    dataset = build_dataset(cfg.data, 0)
    model = build_model(cfg, dataset)
    model.eval()
    sampler_cfg = cfg.sampler
    generator = torch.Generator().manual_seed(0)
    chains = PersistentChains(torch.randn(dataset.num_points, sampler_cfg.num_chains, 1, generator=generator))
    optimiser = torch.optim.SGD(model.generative_parameters, lr=1e-9)  # a real step that barely moves
    num_batches = dataset.num_points // batch_size
    batches = [torch.arange(index * batch_size, (index + 1) * batch_size) for index in range(num_batches)]
    step_size, steps, burn_in = sampler_cfg.step_size, sampler_cfg.num_steps, sampler_cfg.burn_in
    x0 = dataset.x[batches[0]]
    start = chains.gather(batches[0])
    with model.frozen():
        exact = sampler.initial_state(start, target_for(model, x0))
        table = TabulatedTarget.around(model, x0, start, step_size, steps, nodes)
        tabulated = sampler.initial_state(start, table)
    grad_difference = float((exact.grad - tabulated.grad).abs().max())
    parameters = model.generative_parameters
    exact_grads = torch.autograd.grad(-model.log_lik(x0, start).mean(), parameters)
    table_grads = torch.autograd.grad(tabulated_loss(model, table, x0, start), parameters)
    parameter_difference = max(
        float((got - want).abs().max() / want.abs().max()) for got, want in zip(table_grads, exact_grads)
    )
    times: dict[str, list[float]] = {"off": [], "on": []}
    step_times: dict[str, list[float]] = {"off": [], "on": []}
    per_round = min(3, num_batches)  # updates timed per path and round, each on its own batch
    for round_index in range(rounds + 1):  # round 0 warms up
        for mode in ("off", "on"):
            for index in range(per_round):
                indices = batches[(round_index * per_round + index) % num_batches]
                started = clock()
                settings = SamplerSettings(num_steps=steps, burn_in=burn_in, tabulate=mode, table_nodes=nodes)
                phases.almond_update(
                    model, optimiser, chains, indices, dataset.x[indices], step_size, settings, generator
                )
                if round_index:
                    times[mode].append(clock() - started)
            # The Langevin steps alone (the table's construction included), from the first batch's chains.
            started = clock()
            with model.frozen():
                target = (
                    TabulatedTarget.around(model, x0, start, step_size, steps, nodes)
                    if mode == "on"
                    else target_for(model, x0)
                )
                sampler.run(start, target, step_size, steps, burn_in, generator)
            if round_index:
                step_times[mode].append((clock() - started) / steps)
    exact_ms, table_ms = (1e3 * statistics.median(times[mode]) for mode in ("off", "on"))
    exact_step_ms, table_step_ms = (1e3 * statistics.median(step_times[mode]) for mode in ("off", "on"))
    return {
        "workload": name,
        "n": dataset.num_points,
        "batch": batch_size,
        "chains": sampler_cfg.num_chains,
        "steps": steps,
        "exact_step_ms": exact_step_ms,
        "tabulated_step_ms": table_step_ms,
        "exact_ms": exact_ms,
        "tabulated_ms": table_ms,
        "speedup": exact_ms / table_ms,
        "epoch_exact_s": exact_ms * num_batches / 1e3,
        "epoch_tabulated_s": table_ms * num_batches / 1e3,
        "grid": (table.lower, table.upper),
        "max_grad_difference": grad_difference,
        "parameter_grad_difference": parameter_difference,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved exact/tabulated rounds")
    parser.add_argument("--nodes", type=int, default=2049, help="sampler.table_nodes")
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="numbers of rows n")
    add_clock_option(parser)
    args = parser.parse_args(argv)
    global clock
    clock = chosen_clock(parser, args)
    configure_process(args.threads)
    load_before = load_note()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={args.threads}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, clock={args.clock}, nodes={args.nodes}"
    )
    header = (
        f"{'workload':12s} {'n':>7s} {'B':>5s} {'C':>4s} {'K':>3s} {'exact ms/step':>14s} {'tabulated':>10s} "
        f"{'exact ms/update':>16s} "
        f"{'tabulated':>10s} {'speedup':>8s} {'epoch exact s':>14s} {'tabulated s':>12s} {'max |Δ∇|':>9s} "
        f"{'Δ∇_β rel':>9s}"
    )
    print(header)
    print("-" * len(header))
    for name in args.only or WORKLOADS:
        for num_points in args.sizes:
            row = bench(name, num_points, args.rounds, args.nodes)
            print(
                f"{row['workload']:12s} {row['n']:7d} {row['batch']:5d} {row['chains']:4d} {row['steps']:3d} "
                f"{row['exact_step_ms']:14.2f} {row['tabulated_step_ms']:10.2f} {row['exact_ms']:16.1f} "
                f"{row['tabulated_ms']:10.1f} {row['speedup']:7.2f}x "
                f"{row['epoch_exact_s']:14.2f} {row['epoch_tabulated_s']:12.2f} {row['max_grad_difference']:9.1e} "
                f"{row['parameter_grad_difference']:9.1e}",
                flush=True,
            )
    print(f"machine load: before {load_before}; after {load_note()} (shared machines inflate wall times)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
