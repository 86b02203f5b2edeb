"""Speed of the Langevin inner loop: ms per step and per ALMOND update, FLOPs, and the machine's matmul/conv peak.

Each workload is one of the product's own experiments, composed through Hydra exactly as ``almond train``
composes it (``configs/experiment/*.yaml``), its data and model built by the product's own builders
(``tasks.registry.build_dataset``, ``trainer.build_model``), at the experiment's batch B, chains C and steps K:

    exponential  mnn_exponential   [10] MLP, B 1000, C 100, K 10 (burn-in 9)
    mixture      mnn_mixture       [50, 100, 50] MLP, same B, C, K
    glmm         glmm              [128, 256] MLP → 5 random effects, d 5, B 1000, C 30, K 20 (burn-in 19)
    mnist_conv_small  mnist_cpu    conv decoder, 16 filters, B 200, C 2, K 3 (needs the MNIST files)
    mnist_conv_paper  mnist_20d    conv decoder, 64 filters, B 200, C 20, K 5 (GPU work; ~seconds per step on CPU)

It times ``almond_cli.langevin.sampler.run`` (the Langevin steps) and ``almond_cli.training.phases.almond_update`` (K steps + the
parameter step) once with the hand-written gradient (``fast``, the default path: ``targets.MLPTarget``) and once
with autograd (``autograd``, the reference: ``targets.AutogradTarget``), both built by ``targets.target_for``,
interleaved round by round so a load change hits both alike; a model the fast path does not cover (the conv
decoder) is timed once, as ``autograd``.

FLOPs are analytic: the multiply-adds of the decoder's Linear, Conv2d and ConvTranspose2d layers at the step's
shapes (read by forward hooks), ×2 for the forward and ×2 again for the input-gradient sweep; elementwise work
(activations, likelihood, noise) is not counted, so the elementwise-bound exponential network shows a small
GFLOP/s by construction. In the same run, the reference throughput ("matmul/conv GFLOP/s, same shapes") times
each of those layers alone — its forward and its input gradient, on the very inputs the step feeds it — so
"ratio" = achieved step GFLOP/s ÷ the same layers' own throughput. Layers with a single input or output
feature (outer products and matrix-vector products, not matmul-bound) are left out of the reference.

Against the machine: the same run also times a 2048³ fp32 matmul (best of ``--repeats``), and a bfloat16 one
where the CPU has native bf16 products (avx512_bf16 or amx_bf16, ``langevin.precision``); each path's step
GFLOP/s is divided by the fp32 one ("÷ GEMM fp32"), a bf16 path's by the bf16 one too ("÷ GEMM bf16").
``--precision bf16`` or ``both`` adds the fused path with ``sampler.precision=bf16`` (``fast_bf16``: the
decoder's sweeps in bfloat16, see docs/speed.md); its "same shapes" reference stays the fp32 layers, so its ratio
there is its gain over them.

Usage:  python benchmarks/speed.py [--threads 2] [--rounds 3] [--only exponential mixture] [--json out.json]
        python benchmarks/speed.py --precision both          # fast (fp32), fast_bf16 and autograd paths
        python benchmarks/speed.py --threads 1 --clock cpu     # CPU time: a proxy for idle-machine time
        python benchmarks/speed.py --mnist-root PATH           # default: ../shared/data/mnist beside the repo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from almond_cli.langevin import precision as precisions
from almond_cli.langevin import sampler
from almond_cli.langevin.chains import PersistentChains
from almond_cli.langevin.settings import SamplerSettings
from almond_cli.langevin.targets import AutogradTarget, MLPTarget, Target, target_for
from almond_cli.tasks.registry import build_dataset
from almond_cli.training import phases
from almond_cli.training.build import build_model
from almond_cli.training.runtime import configure_process

REPOSITORY = Path(__file__).resolve().parent.parent
MNIST_ROOT = REPOSITORY.parent / "shared" / "data" / "mnist"
# The 60k training split is not on this machine: the paper-size conv workload reads the 10k test split;
# only B = 200 images enter a step, so the split does not change the timing.
MNIST_OVERRIDES = ["data.splits=[t10k]", "data.held_out_split=null", "device=cpu"]
WORKLOADS = {
    "exponential": ("mnn_exponential", []),
    "mixture": ("mnn_mixture", []),
    "glmm": ("glmm", ["device=cpu"]),
    "mnist_conv_small": ("mnist_cpu", MNIST_OVERRIDES),
    "mnist_conv_paper": ("mnist_20d", MNIST_OVERRIDES),
}
HEAVY = {"mnist_conv_paper"}  # seconds per step on a CPU: one round of one timed call
COUNTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def compose(experiment: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from almond_cli.config import register_schemas, validate

    register_schemas()
    with initialize_config_module(config_module="almond_cli.configs", version_base="1.3"):
        cfg = hydra_compose("train", overrides=[f"experiment={experiment}", *overrides])
    validate(cfg)
    return cfg


def build(name: str, mnist_root: Path):
    """(spec, model, x (B, D), chains) of a workload, built the way ``almond train`` builds its experiment."""
    experiment, overrides = WORKLOADS[name]
    if name.startswith("mnist"):
        overrides = [*overrides, f"data.root={mnist_root}"]
    cfg = compose(experiment, overrides)
    torch.manual_seed(0)
    dataset = build_dataset(cfg.data, 0)
    model = build_model(cfg, dataset)
    batch = min(cfg.schedule.batch_size or dataset.num_points, dataset.num_points)
    spec = {
        "experiment": experiment,
        "batch": batch,
        "chains": cfg.sampler.num_chains,
        "steps": cfg.sampler.num_steps,
        "burn_in": cfg.sampler.burn_in,
        "latent": cfg.latent_dim,
        "step_size": cfg.sampler.step_size,
    }
    generator = torch.Generator().manual_seed(0)
    chains = PersistentChains(torch.randn(batch, spec["chains"], cfg.latent_dim, generator=generator))
    return spec, model, dataset.x[:batch], chains


def decoder_layers(model, z: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor, float]]:
    """[(layer, its input, its forward multiply-adds)] of the decoder's counted layers on particles z (N, d)."""
    seen: list[tuple[nn.Module, torch.Tensor, float]] = []

    def record(module, inputs, output):
        if isinstance(module, nn.Linear):
            macs = output.numel() * module.in_features
        elif isinstance(module, nn.Conv2d):
            macs = (
                output.numel() * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
            )
        else:  # ConvTranspose2d: every input value is spread over out_channels × kernel outputs
            macs = (
                inputs[0].numel()
                * (module.out_channels // module.groups)
                * module.kernel_size[0]
                * module.kernel_size[1]
            )
        seen.append((module, inputs[0].detach(), float(macs)))

    handles = [m.register_forward_hook(record) for m in model.decoder.modules() if isinstance(m, COUNTED)]
    try:
        with torch.no_grad():
            model.decoder(z)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def step_flops(layers) -> float:
    """FLOPs of one Langevin evaluation: every counted layer's forward and input-gradient product, 2 each per MAC."""
    return sum(4.0 * macs for _, _, macs in layers)


def update_flops(spec, layers) -> float:
    """K evaluations plus the parameter step on the kept states (forward + input and weight gradients)."""
    kept_states = spec["steps"] - spec["burn_in"]
    return spec["steps"] * step_flops(layers) + kept_states * sum(6.0 * macs for _, _, macs in layers)


def _matmul_bound(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return module.in_features > 1 and module.out_features > 1
    return True


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def add_clock_option(parser: argparse.ArgumentParser) -> None:
    """``--clock wall|cpu`` (the benchmarks' timing clock)."""
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, a proxy for an idle "
        "machine's time when others load it (meaningful with --threads 1 only)",
    )


def chosen_clock(parser: argparse.ArgumentParser, args):
    """The clock ``--clock`` names; CPU time only with one thread (idle OpenMP threads spin and count as CPU time)."""
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (idle OpenMP threads spin and count as CPU time)")
    return CLOCKS[args.clock]


def samples(function, repeats: int) -> list[float]:
    """Seconds of ``function()`` in each of ``repeats`` calls after one warm-up call, on ``clock``."""
    function()
    seconds = []
    for _ in range(repeats):
        started = clock()
        function()
        seconds.append(clock() - started)
    return seconds


def timed(function, repeats: int) -> float:
    """Median seconds of ``function()`` over ``repeats`` calls after one warm-up call, on ``clock``."""
    return statistics.median(samples(function, repeats))


def layer_reference(layers, repeats: int) -> float | None:
    """GFLOP/s of the matmul-bound layers alone: forward + input gradient on the step's own inputs (call it with
    the parameters frozen, so no weight gradient is computed)."""
    total_flops, total_seconds = 0.0, 0.0
    for module, inputs, macs in layers:
        if not _matmul_bound(module):
            continue
        grad_out = None

        def forward_and_input_gradient():
            nonlocal grad_out
            leaf = inputs.detach().requires_grad_(True)
            output = module(leaf)
            if grad_out is None:
                grad_out = torch.ones_like(output)
            torch.autograd.grad(output, leaf, grad_out)

        total_seconds += timed(forward_and_input_gradient, repeats)
        total_flops += 4.0 * macs
    return None if total_seconds == 0 else total_flops / total_seconds / 1e9


def best(function, repeats: int) -> float:
    """Least seconds of ``function()`` over ``repeats`` calls after one warm-up call, on ``clock``."""
    return min(samples(function, repeats))


CPU_FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> dict:
    """The CPU model and the vector/matrix flags that decide which GEMM kernels run (Linux /proc/cpuinfo)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = precisions.cpu_flags()
    return {
        "model": model,
        "flags": None if flags is None else [f for f in CPU_FLAGS_SHOWN if f in flags],
        "bf16_native": precisions.choose_precision("auto", "cpu", flags) == "bf16",
    }


def gemm_peaks(repeats: int, bf16: bool) -> dict:
    """Best-of-``repeats`` GFLOP/s of a 2048³ matmul in fp32, and in bf16 when ``bf16`` (the CPU has it natively)."""
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and not bf16:
            peaks[name] = None
            continue
        a, b = torch.randn(2048, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
        peaks[name] = 2.0 * 2048**3 / best(lambda: a @ b, max(repeats, 3)) / 1e9
    return peaks


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


# --precision: the fused paths timed, as (path name, sampler.precision).
FAST_PATHS = {
    "fp32": (("fast", "fp32"),),
    "bf16": (("fast_bf16", "bf16"),),
    "both": (("fast", "fp32"), ("fast_bf16", "bf16")),
}


class Workload:
    """A workload ready to time as ``almond_update`` runs it: the model in eval mode (batch norm uses its running
    statistics during the update), one batch and its chains, a parameter step that barely moves, one generator."""

    def __init__(self, name: str, mnist_root: Path):
        self.spec, self.model, self.x, self.chains = build(name, mnist_root)
        self.model.eval()
        self.indices = torch.arange(self.spec["batch"])
        self.optimiser = torch.optim.SGD(self.model.generative_parameters, lr=1e-9)  # a real step that barely moves
        self.generator = torch.Generator().manual_seed(1)
        self.start = self.chains.gather(self.indices)

    def target(self, fast: bool, precision: str) -> Target:
        """The fused target (``target_for``, in ``precision``) or, without ``fast``, the autograd reference."""
        if fast:
            return target_for(self.model, self.x, precision)
        return AutogradTarget(lambda z: self.model.log_joint(self.x, z))

    def run_steps(self, fast: bool, precision: str) -> None:
        """The K Langevin steps of one update from the same start, the parameters frozen."""
        spec = self.spec
        with self.model.frozen():
            sampler.run(
                self.start,
                self.target(fast, precision),
                spec["step_size"],
                spec["steps"],
                spec["burn_in"],
                self.generator,
            )

    def run_update(self, fast: bool, precision: str) -> None:
        """One whole ALMOND update: K steps over the persistent chains and the parameter step; ``fast`` is
        ``phases.almond_update`` itself (no table), the autograd reference is the same update written out."""
        spec = self.spec
        if fast:
            settings = SamplerSettings(num_steps=spec["steps"], burn_in=spec["burn_in"], precision=precision)
            phases.almond_update(
                self.model,
                self.optimiser,
                self.chains,
                self.indices,
                self.x,
                spec["step_size"],
                settings,
                self.generator,
            )
            return
        start = self.chains.gather(self.indices)
        with self.model.frozen():
            kept, _ = sampler.run(
                start, self.target(False, precision), spec["step_size"], spec["steps"], spec["burn_in"], self.generator
            )
        self.chains.scatter(self.indices, kept[-1])
        particles = kept.permute(1, 0, 2, 3).reshape(kept.shape[1], -1, kept.shape[-1])
        self.optimiser.zero_grad(set_to_none=True)
        (-self.model.log_lik(self.x, particles).mean()).backward()
        self.optimiser.step()


def bench_workload(
    name: str, rounds: int, repeats: int, mnist_root: Path, precision: str = "fp32", gemm: dict | None = None
) -> dict:
    """One workload's row: every path's ms per step and update, and its GFLOP/s against the same layers alone
    and, when ``gemm`` (``gemm_peaks``) is given, against the machine's 2048³ GEMM."""
    workload = Workload(name, mnist_root)
    spec, model, x = workload.spec, workload.model, workload.x
    has_fast_path = isinstance(target_for(model, x), MLPTarget)
    # (path, fast, sampler.precision); an autograd target runs fp32 whatever is asked, so it is timed once.
    paths = [(path, True, chosen) for path, chosen in FAST_PATHS[precision]] if has_fast_path else []
    paths.append(("autograd", False, "fp32"))
    if name in HEAVY:
        rounds, repeats = 1, 1
    results = {path: {"step": [], "update": []} for path, _, _ in paths}
    for _ in range(rounds):
        for path, fast, chosen in paths:
            results[path]["step"].append(timed(lambda: workload.run_steps(fast, chosen), repeats) / spec["steps"])
            results[path]["update"].append(timed(lambda: workload.run_update(fast, chosen), repeats))
    layers = decoder_layers(model, workload.start.reshape(-1, spec["latent"]))
    with model.frozen():  # input gradients only, as in the Langevin step
        reference = layer_reference(layers, repeats)
    flops_step, flops_update = step_flops(layers), update_flops(spec, layers)
    row = {
        "workload": name,
        **spec,
        "step_gflop": flops_step / 1e9,
        "update_gflop": flops_update / 1e9,
        "reference_gflops_same_shapes": reference,
        "paths": {},
    }
    for path, _, chosen in paths:
        times = results[path]
        step_s, update_s = statistics.median(times["step"]), statistics.median(times["update"])
        achieved = flops_step / step_s / 1e9
        row["paths"][path] = {
            "ms_per_step": 1e3 * step_s,
            "ms_per_update": 1e3 * update_s,
            "step_gflops": achieved,
            "precision": chosen,
            "ratio_to_reference": None if reference is None else achieved / reference,
        }
        if gemm is not None:
            row["paths"][path]["ratio_to_gemm_fp32"] = achieved / gemm["fp32"]
            bf16_peak = gemm["bf16"] if chosen == "bf16" else None  # a bf16 path against the bf16 GEMM only
            row["paths"][path]["ratio_to_gemm_bf16"] = None if bf16_peak is None else achieved / bf16_peak
    return row


def load_note() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unknown"


def print_against_gemm(rows: list[dict], cpu: dict, gemm: dict, threads: int) -> None:
    """Each path's step GFLOP/s over the same run's best 2048³ GEMM, with the CPU and torch it ran on."""
    flags = "unknown (no /proc/cpuinfo)" if cpu["flags"] is None else (" ".join(cpu["flags"]) or "none of them")
    print(
        f"\nCPU {cpu['model']}; flags {flags} (of {' '.join(CPU_FLAGS_SHOWN)}); torch {torch.__version__}, "
        f"threads={threads}"
    )
    bf16 = "n/a (no native bf16)" if gemm["bf16"] is None else f"{gemm['bf16']:.0f} GFLOP/s"
    print(f"GEMM 2048^3, best of the run: fp32 {gemm['fp32']:.0f} GFLOP/s, bf16 {bf16}")
    header = f"{'workload':17s} {'path':9s} {'precision':9s} {'GFLOP/s':>8s} {'÷ GEMM fp32':>11s} {'÷ GEMM bf16':>11s}"
    print(header)
    print("-" * len(header))
    for row in rows:
        for path, result in row["paths"].items():
            ratio16 = result.get("ratio_to_gemm_bf16")
            print(
                f"{row['workload']:17s} {path:9s} {result['precision']:9s} {result['step_gflops']:8.1f} "
                f"{result['ratio_to_gemm_fp32']:11.2f} {'-' if ratio16 is None else f'{ratio16:.2f}':>11s}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved fast/autograd rounds (median taken)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per round (median taken)")
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), help="run only these workloads")
    parser.add_argument("--mnist-root", type=Path, default=MNIST_ROOT, help="folder with the MNIST IDX files")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument(
        "--precision",
        choices=sorted(FAST_PATHS),
        default="fp32",
        help="sampler.precision of the fused path: fp32 (default), bf16, or both side by side",
    )
    add_clock_option(parser)
    args = parser.parse_args(argv)
    global clock
    clock = chosen_clock(parser, args)
    configure_process(args.threads)
    load_before = load_note()
    peaks = machine_peaks(args.repeats)
    cpu = cpu_description()
    gemm = gemm_peaks(args.repeats, cpu["bf16_native"])
    rows, skipped = [], {}
    for name in args.only or WORKLOADS:
        if name.startswith("mnist") and not args.mnist_root.is_dir():
            skipped[name] = f"no MNIST files at {args.mnist_root} (give --mnist-root)"
            continue
        rows.append(bench_workload(name, args.rounds, args.repeats, args.mnist_root, args.precision, gemm))
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={args.threads}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, clock={args.clock}"
    )
    print(
        f"machine: fp32 matmul 2048^3 {peaks['matmul_2048_gflops']:.0f} GFLOP/s; conv 64->64 3x3 14x14 "
        f"channels_last {peaks['conv64_3x3_14x14_gflops']:.0f} GFLOP/s"
    )
    header = (
        f"{'workload':17s} {'B':>5s} {'C':>4s} {'K':>3s} {'path':9s} {'ms/step':>9s} {'ms/update':>10s} "
        f"{'GFLOP/step':>10s} {'GFLOP/s':>8s} {'same-shape GFLOP/s':>18s} {'ratio':>6s}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        reference = row["reference_gflops_same_shapes"]
        for path, result in row["paths"].items():
            ratio = result["ratio_to_reference"]
            print(
                f"{row['workload']:17s} {row['batch']:5d} {row['chains']:4d} {row['steps']:3d} {path:9s} "
                f"{result['ms_per_step']:9.2f} {result['ms_per_update']:10.1f} {row['step_gflop']:10.3f} "
                f"{result['step_gflops']:8.1f} "
                f"{'n/a (no matmul)' if reference is None else f'{reference:18.1f}':>18s} "
                f"{'' if ratio is None else f'{ratio:6.2f}'}"
            )
    for name, why in skipped.items():
        print(f"{name:17s} skipped: {why}")
    print_against_gemm(rows, cpu, gemm, args.threads)
    load_after = load_note()
    print(f"machine load: before {load_before}; after {load_after} (shared machines inflate wall times)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "torch": torch.__version__,
                    "threads": args.threads,
                    "clock": args.clock,
                    "machine": peaks,
                    "cpu": cpu,
                    "gemm_2048_best_gflops": gemm,
                    "precision": args.precision,
                    "rows": rows,
                    "skipped": skipped,
                    "load_before": load_before,
                    "load_after": load_after,
                },
                handle,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
