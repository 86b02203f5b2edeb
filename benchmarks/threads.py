"""The default run's speed on an idle machine and beside busy processes, for almond's thread default and fixed counts.

Issue 28: with one busy neighbour on a 2-core machine, torch's default of 2 threads made the default run's ALMOND
phase 4.7x slower than idle, and 3.6x slower than 1 thread under the same load. This script times the default run
(`almond train`, nothing else given, each in its own temporary run folder) in each machine state:

    idle    nothing else started by the script (check the load average it prints)
    busy    one `yes > /dev/null` per spare core (cores this process may use, minus one), started before the run

for the default threads (almond's choice), threads=1 and threads=2 (and with --spin, threads=2 with OpenMP's own
spin-waiting, GOMP_SPINCOUNT=300000: what the default was before issue 28), and prints the issue's table: wall time
of the whole command and the ALMOND phase from summary.json's timing, with the threads each run used (from the
`threads:` line of its train.log), the CPU model and flags, then the issue's ratios:

    busy default / idle default (ALMOND phase)            done when <= 1.3
    default / the better of threads=1 and threads=2       done when <= 1.1 in each state
    idle default / idle threads=2 spinning (with --spin)  done when <= 1.05

OMP_NUM_THREADS, OMP_WAIT_POLICY and GOMP_SPINCOUNT are removed from the runs' environment (a shell that sets
OMP_NUM_THREADS=1 would otherwise make every default a 1-thread run). Run it on a machine doing nothing else.

Usage (from the repository root, with the package installed):

    python benchmarks/threads.py                      # the full table: 2 states x 3 thread settings, ~10 minutes
    python benchmarks/threads.py --spin --rounds 3    # also today's spinning default; medians of 3 rounds
    python benchmarks/threads.py --quick              # a smoke check with few epochs: its figures mean nothing
    python benchmarks/threads.py --json out.json -- experiment=mnn_mixture_fast   # extra overrides after --
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from almond_command import almond_command  # noqa: E402  (the benchmarks folder is not a package)

QUICK = ["schedule.vae_epochs=50", "schedule.almond_epochs=20", "evaluation.nll_samples=50"]
SETTINGS = {  # label: (threads override or None, extra environment)
    "default": (None, {}),
    "1": (1, {}),
    "2": (2, {}),
}
SPINNING = ("2, spinning (before issue 28)", (2, {"GOMP_SPINCOUNT": "300000"}))
CLEARED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_description() -> str:
    """The CPU model and the vector flags that decide torch's kernels (from /proc/cpuinfo where there is one)."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    present = [flag for flag in FLAGS if flag in flags] or ["none of " + ", ".join(FLAGS)]
    return f"{model}, {cores()} cores this process may use, flags: {', '.join(present)}"


def start_busy(count: int) -> list[subprocess.Popen]:
    """``count`` processes that each keep one core busy (`yes > /dev/null`)."""
    return [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(count)]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


def run_once(threads: int | None, extra_env: dict, overrides: list[str], run_dir: Path) -> dict:
    """One default ``almond train`` in ``run_dir``: wall seconds, the phases' seconds and the threads it used."""
    args = [*almond_command(), "train", "progress=quiet", f"hydra.run.dir={run_dir}", *overrides]
    if threads is not None:
        args.append(f"threads={threads}")
    env = {key: value for key, value in os.environ.items() if key not in CLEARED}
    env.update(extra_env)
    started = time.perf_counter()
    process = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"almond train failed ({process.returncode}):\n{process.stdout}\n{process.stderr}")
    timing = json.loads((run_dir / "summary.json").read_text())["timing"]
    line = re.search(r"threads: (\d+)", (run_dir / "train.log").read_text())
    return {
        "wall_seconds": wall,
        "vae_seconds": timing["vae_seconds"],
        "almond_seconds": timing["almond_seconds"],
        "threads_used": int(line.group(1)) if line else None,
    }


def median_of(rows: list[dict]) -> dict:
    keys = ("wall_seconds", "vae_seconds", "almond_seconds")
    return {
        **{key: statistics.median(row[key] for row in rows) for key in keys},
        "threads_used": sorted({row["threads_used"] for row in rows}),
    }


def ratio_lines(results: dict) -> list[str]:
    """The issue's done-when ratios, from the ALMOND phase medians."""

    def almond(state: str, label: str) -> float | None:
        row = results.get(state, {}).get(label)
        return row["almond_seconds"] if row else None

    lines = []
    idle, busy = almond("idle", "default"), almond("busy", "default")
    if idle and busy:
        lines.append(f"busy default / idle default: {busy / idle:.2f} (done when <= 1.3)")
    for state in results:
        default, fixed = almond(state, "default"), [almond(state, "1"), almond(state, "2")]
        fixed = [value for value in fixed if value]
        if default and fixed:
            lines.append(f"{state}: default / better of threads=1, 2: {default / min(fixed):.2f} (done when <= 1.1)")
    spinning = almond("idle", SPINNING[0])
    if idle and spinning:
        lines.append(f"idle default / idle threads=2 spinning: {idle / spinning:.2f} (done when <= 1.05)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", nargs="+", default=["idle", "busy"], choices=["idle", "busy"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--spin", action="store_true", help="also threads=2 with OpenMP spinning (before issue 28)")
    parser.add_argument("--busy", type=int, default=None, help="busy processes in the busy state (default: cores-1)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each cell, rounds interleaved; medians")
    parser.add_argument("--quick", action="store_true", help="few epochs: a smoke check, not a measurement")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run (after --)")
    args = parser.parse_args()

    settings = {label: SETTINGS[label] for label in args.settings}
    if args.spin:
        settings[SPINNING[0]] = SPINNING[1]
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    busy_count = max(1, cores() - 1) if args.busy is None else args.busy
    print(f"CPU: {cpu_description()}")
    print(f"load average at start: {os.getloadavg()}")
    print(f"busy state: {busy_count} x `yes > /dev/null`; overrides: {' '.join(overrides) or '(none)'}")
    if args.quick:
        print("--quick: few epochs, a smoke check of the script; the figures below are not measurements")

    samples: dict[str, dict[str, list[dict]]] = {state: {label: [] for label in settings} for state in args.states}
    with tempfile.TemporaryDirectory(prefix="almond-threads-") as workdir:
        for state in args.states:
            busy = start_busy(busy_count) if state == "busy" else []
            try:
                time.sleep(1.0 if busy else 0.0)  # let the busy processes reach full speed
                for round_number in range(args.rounds):
                    for label, (threads, extra_env) in settings.items():
                        slug = "".join(c if c.isalnum() else "-" for c in label)  # "2" and "2, spinning" differ
                        run_dir = Path(workdir) / f"{state}-{slug}-{round_number}"
                        row = run_once(threads, extra_env, overrides, run_dir)
                        samples[state][label].append(row)
                        print(
                            f"  {state:5s} threads={label:32s} wall {row['wall_seconds']:7.1f} s  "
                            f"ALMOND {row['almond_seconds']:7.1f} s  (ran with {row['threads_used']})",
                            flush=True,
                        )
            finally:
                stop(busy)

    results = {
        state: {label: median_of(rows) for label, rows in by_label.items()} for state, by_label in samples.items()
    }
    print()
    print("| machine state | `threads` | ran with | wall | ALMOND phase |")
    print("|---|---|---|---|---|")
    for state, by_label in results.items():
        state_text = "idle" if state == "idle" else f"{busy_count} other busy process{'es' if busy_count > 1 else ''}"
        for label, row in by_label.items():
            used = ", ".join(str(n) for n in row["threads_used"])
            print(f"| {state_text} | {label} | {used} | {row['wall_seconds']:.1f} s | {row['almond_seconds']:.1f} s |")
    print()
    for line in ratio_lines(results):
        print(line)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cpu": cpu_description(),
                    "busy_processes": busy_count,
                    "overrides": overrides,
                    "rounds": args.rounds,
                    "results": results,
                    "samples": samples,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
