"""Speed of the Langevin inner loop: ms per step and per ALMOND update, FLOPs, and the machine's matmul peak.

For each workload, at the paper's batch B, chains C and steps K, this times the product's own code —
``almond_cli.sampler.run`` for the Langevin steps and ``almond_cli.phases.almond_update`` for a whole update
(K steps + the parameter step) — once with the hand-written gradient (``fast``, the default path) and once
with autograd (``autograd``, the reference), interleaved round by round so a load change hits both alike.
In the same run it measures fp32 matmul throughput (``torch.addmm``, the op ``nn.Linear`` uses) on exactly
the layer shapes of the step, so "ratio" = achieved step GFLOP/s ÷ matmul GFLOP/s for those shapes.

FLOPs are analytic and count matrix products only (forward and the input-gradient sweep, 2·m·k·n each);
elementwise work (softplus, sigmoid, noise) is not counted, so on the small exponential network, which is
bound by elementwise work and memory, the GFLOP/s figure is small by construction.

Workloads: exponential ([10] MLP, B 1000, C 100, K 10), mixture ([50, 100, 50], same), GLMM shapes
(decoder [128, 256] → 5, d 5, B 1000, C 30, K 20, a Poisson log-link likelihood defined here as a stand-in
until the GLMM likelihood lands), MNIST conv (pending: no conv decoder on this branch).

Usage:  python benchmarks/speed.py [--threads 2] [--rounds 3] [--only exponential mixture] [--json out.json]
        python benchmarks/speed.py --threads 1 --clock cpu     # CPU time: a proxy for idle-machine time
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
from torch import Tensor

from almond_cli import phases, sampler
from almond_cli.chains import PersistentChains
from almond_cli.fast_gradients import target_for
from almond_cli.likelihoods import Gaussian, Likelihood
from almond_cli.model import LatentVariableModel
from almond_cli.networks import MLPDecoder, MLPEncoder
from almond_cli.runtime import configure_process


class PoissonLogLinkStandIn(Likelihood):
    """y ~ Poisson(exp(offset + zeta · u)): the GLMM's shapes (u in R^5) until its likelihood is merged.

    Data rows are (y, offset, zeta_1..zeta_P). Only for timing: same FLOPs per particle as the GLMM.
    """

    def __init__(self, random_dim: int):
        super().__init__()
        self.random_dim = random_dim

    def param_dim(self, data_dim: int) -> int:
        return self.random_dim

    def _eta(self, x: Tensor, u: Tensor) -> Tensor:
        return x[:, 1:2] + (u * x[:, None, 2:]).sum(-1)

    def log_prob(self, x, u):
        eta = self._eta(x, u)
        y = x[:, 0:1]
        return y * eta - eta.clamp(max=80).exp() - torch.lgamma(y + 1)

    def value_and_grad_u(self, x, u):
        eta = self._eta(x, u)
        y = x[:, 0:1]
        rate = eta.clamp(max=80).exp()
        return y * eta - rate - torch.lgamma(y + 1), (y - rate).unsqueeze(-1) * x[:, None, 2:]


WORKLOADS = {
    "exponential": dict(hidden=[10], latent=1, batch=1000, chains=100, steps=10, burn_in=9, kind="gaussian"),
    "mixture": dict(hidden=[50, 100, 50], latent=1, batch=1000, chains=100, steps=10, burn_in=9, kind="gaussian"),
    "glmm": dict(hidden=[128, 256], latent=5, batch=1000, chains=30, steps=20, burn_in=10, kind="poisson"),
}
PENDING = {"mnist_conv_small": "no conv decoder on this branch (MNIST branch)",
           "mnist_conv_paper": "no conv decoder on this branch (MNIST branch); GPU work (~3.4 s/step on CPU)"}


def build(name: str):
    spec = WORKLOADS[name]
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    batch, latent = spec["batch"], spec["latent"]
    if spec["kind"] == "gaussian":
        likelihood, data_dim = Gaussian(1.0), 1
        x = torch.randn(batch, 1, generator=generator) + 2.0
    else:
        likelihood, data_dim = PoissonLogLinkStandIn(latent), 2 + latent
        zeta = 0.2 * torch.randn(batch, latent, generator=generator)
        offset = 0.5 * torch.randn(batch, 1, generator=generator)
        y = torch.poisson(torch.exp(offset + (zeta * torch.randn(batch, latent, generator=generator)).sum(-1, keepdim=True)))
        x = torch.cat([y, offset, zeta], dim=1)
    model = LatentVariableModel(MLPEncoder(data_dim, latent, [10]),
                                MLPDecoder(latent, likelihood.param_dim(data_dim), spec["hidden"]), likelihood)
    chains = PersistentChains(torch.randn(batch, spec["chains"], latent, generator=generator))
    return spec, model, x, chains


def layer_shapes(spec, output_dim: int) -> list[tuple[int, int]]:
    widths = [spec["latent"], *spec["hidden"], output_dim]
    return list(zip(widths[:-1], widths[1:]))


def step_flops(spec, output_dim: int) -> float:
    """Matmul FLOPs of one Langevin evaluation: forward and input-gradient sweep, 2·N·in·out each."""
    particles = spec["batch"] * spec["chains"]
    return sum(4.0 * particles * fan_in * fan_out for fan_in, fan_out in layer_shapes(spec, output_dim))


def update_flops(spec, output_dim: int) -> float:
    """K evaluations plus the parameter step on the kept states (forward + input and weight gradients)."""
    kept = (spec["steps"] - spec["burn_in"]) * spec["batch"] * spec["chains"]
    parameter_step = sum(6.0 * kept * fan_in * fan_out for fan_in, fan_out in layer_shapes(spec, output_dim))
    return spec["steps"] * step_flops(spec, output_dim) + parameter_step


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def timed(function, repeats: int) -> float:
    """Median seconds of ``function()`` over ``repeats`` calls after one warm-up call, on ``clock``."""
    function()
    samples = []
    for _ in range(repeats):
        started = clock()
        function()
        samples.append(clock() - started)
    return statistics.median(samples)


def matmul_reference(spec, output_dim: int, repeats: int) -> dict:
    """addmm throughput on the step's own shapes (forward N×in·in×out and backward N×out·out×in)."""
    particles = spec["batch"] * spec["chains"]
    total_flops, total_seconds = 0.0, 0.0
    for fan_in, fan_out in layer_shapes(spec, output_dim):
        for rows, inner, cols in ((particles, fan_in, fan_out), (particles, fan_out, fan_in)):
            if inner == 1 or cols == 1:
                continue  # outer products and matrix-vector products are not matmul-bound; left out of the peak
            a, b, bias = torch.randn(rows, inner), torch.randn(inner, cols), torch.randn(cols)
            seconds = timed(lambda: torch.addmm(bias, a, b), repeats)
            total_flops += 2.0 * rows * inner * cols
            total_seconds += seconds
    if total_seconds == 0:
        return {"gflops": None}
    return {"gflops": total_flops / total_seconds / 1e9}


def machine_peaks(repeats: int) -> dict:
    """Large square fp32 matmul and a 64→64 3×3 conv on 14×14 maps (channels_last), GFLOP/s."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    square = 2.0 * 2048**3 / timed(lambda: a @ b, repeats) / 1e9
    images = torch.randn(256, 64, 14, 14).to(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv_seconds = timed(lambda: conv(images), repeats)
    conv_gflops = 2.0 * 256 * 64 * 64 * 9 * 14 * 14 / conv_seconds / 1e9
    return {"matmul_2048_gflops": square, "conv64_3x3_14x14_gflops": conv_gflops}


def bench_workload(name: str, rounds: int, repeats: int) -> dict:
    spec, model, x, chains = build(name)
    output_dim = model.likelihood.param_dim(x.shape[1])
    indices = torch.arange(spec["batch"])
    optimiser = torch.optim.SGD(model.generative_parameters, lr=1e-6)
    generator = torch.Generator().manual_seed(1)
    start = chains.gather(indices)
    steps, burn_in = spec["steps"], spec["burn_in"]
    results = {"fast": {"step": [], "update": []}, "autograd": {"step": [], "update": []}}
    for _ in range(rounds):
        for path, fast in (("fast", True), ("autograd", False)):
            def run_steps():
                with model.frozen():
                    sampler.run(start, target_for(model, x, fast), 0.01, steps, burn_in, generator)

            def run_update():
                phases.almond_update(model, optimiser, chains, indices, x, 0.01, steps, burn_in, generator, fast=fast)

            results[path]["step"].append(timed(run_steps, repeats) / steps)
            results[path]["update"].append(timed(run_update, repeats))
    reference = matmul_reference(spec, output_dim, repeats)
    flops_step, flops_update = step_flops(spec, output_dim), update_flops(spec, output_dim)
    row = {"workload": name, "B": spec["batch"], "C": spec["chains"], "K": steps, "hidden": spec["hidden"],
           "latent_dim": spec["latent"], "step_gflop": flops_step / 1e9, "update_gflop": flops_update / 1e9,
           "matmul_gflops_same_shapes": reference["gflops"]}
    for path, times in results.items():
        step_s, update_s = statistics.median(times["step"]), statistics.median(times["update"])
        achieved = flops_step / step_s / 1e9
        row[path] = {"ms_per_step": 1e3 * step_s, "ms_per_update": 1e3 * update_s, "step_gflops": achieved,
                     "ratio_to_matmul": None if reference["gflops"] is None else achieved / reference["gflops"]}
    return row


def load_note() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved fast/autograd rounds (median taken)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per round (median taken)")
    parser.add_argument("--only", nargs="+", choices=sorted(WORKLOADS), help="run only these workloads")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time (default); cpu: this process's CPU time, a proxy for an idle "
                             "machine's time when others load it (meaningful with --threads 1 only)")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (idle OpenMP threads spin and count as CPU time)")
    global clock
    clock = CLOCKS[args.clock]
    configure_process(args.threads)
    load_before = load_note()
    peaks = machine_peaks(args.repeats)
    rows = [bench_workload(name, args.rounds, args.repeats) for name in (args.only or WORKLOADS)]
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={args.threads}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, clock={args.clock}")
    print(f"machine: fp32 matmul 2048^3 {peaks['matmul_2048_gflops']:.0f} GFLOP/s; conv 64->64 3x3 14x14 "
          f"channels_last {peaks['conv64_3x3_14x14_gflops']:.0f} GFLOP/s")
    header = (f"{'workload':12s} {'path':9s} {'ms/step':>8s} {'ms/update':>10s} {'GFLOP/step':>10s} "
              f"{'GFLOP/s':>8s} {'matmul GFLOP/s':>14s} {'ratio':>6s}")
    print(header)
    print("-" * len(header))
    for row in rows:
        for path in ("fast", "autograd"):
            result = row[path]
            peak = row["matmul_gflops_same_shapes"]
            ratio = result["ratio_to_matmul"]
            print(f"{row['workload']:12s} {path:9s} {result['ms_per_step']:8.2f} {result['ms_per_update']:10.1f} "
                  f"{row['step_gflop']:10.3f} {result['step_gflops']:8.1f} "
                  f"{'n/a (no matmul)' if peak is None else f'{peak:14.1f}'} "
                  f"{'' if ratio is None else f'{ratio:6.2f}'}")
    for name, why in PENDING.items():
        print(f"{name:12s} pending: {why}")
    load_after = load_note()
    print(f"machine load: before {load_before}; after {load_after} (shared machines inflate wall times)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"torch": torch.__version__, "threads": args.threads, "clock": args.clock, "machine": peaks, "rows": rows,
                       "pending": PENDING, "load_before": load_before, "load_after": load_after}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
