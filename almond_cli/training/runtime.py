"""Process-level set-up of a run: device, threads, random streams and the allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import math
import os
import time
from typing import NamedTuple

import torch

from ..errors import UsageError

STREAMS = ("data", "init", "noise", "order")
# torch's thread count when this process started (it follows OMP_NUM_THREADS and the affinity): the most a job with
# threads=null takes. Read once here, because a joblib (loky) worker runs several sweep jobs in one process and an
# earlier job's setting would otherwise leak.
DEFAULT_THREADS = torch.get_num_threads()

log = logging.getLogger("almond")

# Another process counts as holding a core once it uses more than this share of one: a browser tab or a shell
# idling at a few percent leaves the core free, while a neighbour using a third of a core holds one of our threads
# off it a third of the time, and every parallel operation waits for its slowest thread. Erring towards fewer
# threads is the cheap mistake: on a 2-core machine (issue 28's figures, ALMOND phase) one thread where two were
# free cost 1.4x, two threads beside one busy process cost 3.6x.
LOAD_TOLERANCE = 0.3
# How long the CPUs are watched before a run without ``threads`` picks its count: 20 ticks of the kernel's 100 Hz
# accounting per CPU, enough to tell a busy core (about 20) from an idle one (about 0), short beside any run.
LOAD_SAMPLE_SECONDS = 0.2


class ThreadChoice(NamedTuple):
    """How many intra-op threads a run uses and why, in words for ``train.log``.

    ``notable`` is True when the user should hear of it on screen: fewer threads than the cores because other
    processes hold some, or a requested count beyond the cores this process may use.
    """

    threads: int
    reason: str
    notable: bool = False


def choose_threads(
    requested: int | None,
    cores: int,
    torch_default: int,
    busy_elsewhere: float | None,
    processes: int = 1,
    resumed: int | None = None,
) -> ThreadChoice:
    """The intra-op thread count of a run: pure, so tests pin it for any machine state.

    Args:
        requested: the ``threads`` key; an integer is used as given (only described when it exceeds the cores).
        cores: the CPUs this process may run on (``os.sched_getaffinity``).
        torch_default: torch's own default in this process (``OMP_NUM_THREADS`` if set, else the cores, or the
            physical cores where torch counts those); never exceeded, so ``OMP_NUM_THREADS`` keeps its meaning.
        busy_elsewhere: cores' worth of CPU time other processes used on those CPUs just now (``busy_cores``),
            None when it could not be read.
        processes: almond processes sharing these cores: a joblib sweep's parallel jobs, or torchrun's ranks on
            this node; each gets ``cores // processes``.
        resumed: the count a resumed run computed with (its checkpoint's), kept when ``requested`` is None:
            results are bitwise reproducible for a given count only, and a resume must continue the same run.

    Returns:
        The count, the reason in words, and whether it is worth a line on screen.
    """
    cores = max(1, int(cores))
    processes = max(1, int(processes))
    if requested is None and resumed is not None:
        threads = int(resumed)
        kept = (
            "the count this run started with (its checkpoint), so the resume continues it bitwise; threads=N overrides"
        )
        if threads * processes > cores:
            return ThreadChoice(threads, f"{kept}; more than the {cores} cores this process may use", True)
        return ThreadChoice(threads, kept, False)
    if requested is not None:
        threads = int(requested)
        if threads * processes > cores:
            total = f"{processes} processes x {threads} threads" if processes > 1 else f"{threads} threads"
            return ThreadChoice(
                threads,
                f"threads={threads} as given, but {total} exceed the {cores} cores this process may use, so "
                "threads will wait for one another at every operation; leave threads unset to let almond choose",
                True,
            )
        return ThreadChoice(threads, f"threads={threads} as given", False)
    share = max(1, cores // processes)
    capacity = max(1, min(share, torch_default))
    if torch_default < share:
        limit = f"torch's default in this process, {torch_default} (OMP_NUM_THREADS sets it)"
    elif processes > 1:
        limit = f"the {cores} cores this process may use, shared by {processes} almond processes"
    else:
        limit = f"the {cores} cores this process may use"
    if capacity == 1:
        return ThreadChoice(1, limit, False)
    if busy_elsewhere is None:
        return ThreadChoice(capacity, f"{limit}; the load of other processes could not be read", False)
    taken = max(0, math.ceil(busy_elsewhere - LOAD_TOLERANCE))
    threads = max(1, min(capacity, cores - taken))
    if threads < capacity:
        return ThreadChoice(
            threads,
            f"other processes keep {busy_elsewhere:.1f} of the {cores} cores this process may use busy, and a "
            f"thread waiting for a taken core stalls every operation: {threads} instead of {capacity}; "
            "threads=N overrides",
            True,
        )
    return ThreadChoice(threads, f"{limit}; other processes use {busy_elsewhere:.1f} cores", False)


def _cpu_times(cpus: set[int], stat: str = "/proc/stat") -> dict[int, tuple[int, int]] | None:
    """(busy, total) clock ticks since boot of each CPU in ``cpus``, from /proc/stat; None where it cannot be read.

    Busy counts steal (the hypervisor lent our CPU to another machine: just as unavailable); total leaves out guest
    time, which /proc/stat counts inside user time already.
    """
    try:
        with open(stat) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    times = {}
    for line in lines:
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
            continue
        try:
            cpu = int(fields[0][3:])
            ticks = [int(value) for value in fields[1:9]]
        except ValueError:
            continue
        if cpu in cpus and len(ticks) >= 5:
            total = sum(ticks)
            idle = ticks[3] + ticks[4]  # idle and iowait
            times[cpu] = (total - idle, total)
    return times or None


def busy_cores(cpus: set[int], seconds: float = LOAD_SAMPLE_SECONDS) -> float | None:
    """Cores' worth of CPU time that other processes use on ``cpus`` now, watched for ``seconds``.

    Why not /proc/loadavg: it is a one-minute average (a neighbour that started ten seconds ago hardly shows, one
    that stopped still does), it counts every CPU of the machine rather than those this process may use (a
    container on 2 CPUs of a 64-core host sees the host's load), it counts tasks waiting on disk, and it counts
    this process's own start-up. /proc/stat's per-CPU counters over a short sleep measure what is used now on our
    CPUs; this process's own CPU time in that window (threads of a library, say) is subtracted.

    Returns:
        Cores busy elsewhere (0.0 to len(cpus)), or None without a readable /proc/stat (not Linux).
    """
    before, own_before, start = _cpu_times(cpus), os.times(), time.monotonic()
    if before is None:
        return None
    time.sleep(seconds)
    after, own_after, elapsed = _cpu_times(cpus), os.times(), time.monotonic() - start
    if after is None or elapsed <= 0:
        return None
    used = 0.0
    for cpu, (busy, total) in after.items():
        if cpu in before and total > before[cpu][1]:
            used += (busy - before[cpu][0]) / (total - before[cpu][1])
    own = (own_after.user + own_after.system - own_before.user - own_before.system) / elapsed
    return max(0.0, used - own)


def wait_policy() -> str:
    """How OpenMP's idle threads wait in this process, in words (set before torch starts: ``commands.cli``)."""
    policy, spin = os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT")
    if spin is not None:
        return f"spin GOMP_SPINCOUNT={spin} times, then sleep"
    if policy and policy.upper() == "PASSIVE":
        return "sleep at once (OMP_WAIT_POLICY=PASSIVE)"
    return f"OMP_WAIT_POLICY={policy}" if policy else "OpenMP's default (spin, then sleep)"


def seed_streams(seed: int) -> dict[str, int]:
    """Independent 63-bit seeds for each random stream, derived from the run's ``seed``.

    Separate streams keep, for example, the simulated data fixed when only the sampler changes.
    """
    return {
        name: int.from_bytes(hashlib.sha256(f"almond:{seed}:{name}".encode()).digest()[:8], "little") >> 1
        for name in STREAMS
    }


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an explicit ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device: device={name} was asked for but this machine has no CUDA device; use device=cpu")
    return torch.device(name)


def pick_threads(threads: int | None, processes: int = 1, resumed: int | None = None) -> ThreadChoice:
    """``choose_threads`` on this machine now: the affinity, torch's default and, when there is a choice to make,
    the load of other processes (a ``LOAD_SAMPLE_SECONDS`` look at /proc/stat)."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux
        cpus = set(range(os.cpu_count() or 1))
    share = max(1, len(cpus) // max(1, processes))
    measure = threads is None and resumed is None and min(share, DEFAULT_THREADS) > 1
    busy = busy_cores(cpus) if measure else 0.0
    return choose_threads(threads, len(cpus), DEFAULT_THREADS, busy, processes, resumed)


def configure_process(threads: int | None, processes: int = 1, resumed: int | None = None) -> ThreadChoice:
    """Sets torch's CPU threads and keeps glibc from returning large temporaries to the OS after each step.

    Langevin steps allocate the same large temporaries again and again; with glibc's defaults every step pays
    fresh page faults for them (measured 1.1–3.4x slower per step on the workloads here).

    Args:
        threads: the ``threads`` key: a count, or None to let ``choose_threads`` decide.
        processes: almond processes sharing this machine's cores (parallel sweep jobs, torchrun's local ranks).
        resumed: a resumed run's own count (its checkpoint's ``threads``), kept when ``threads`` is None.

    Returns:
        The choice made; ``describe_threads`` writes it to ``train.log``.
    """
    choice = pick_threads(threads, processes, resumed)
    torch.set_num_threads(choice.threads)
    _keep_freed_memory()
    return choice


def _keep_freed_memory() -> None:
    """glibc keeps freed large blocks for reuse instead of unmapping them (see ``configure_process``)."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    try:
        libc = ctypes.CDLL(libc_name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**31 - 1)


def describe_threads(choice: ThreadChoice) -> None:
    """One line on how many threads run and why: in ``train.log`` always, on screen too when it matters (fewer
    threads than cores because of other processes, or more threads than cores); the screen otherwise stays as
    ``progress`` asks. Outside a Hydra run (evaluate, sample, prior) only the notable line is shown, on stderr."""
    message = (
        f"threads: {choice.threads} ({choice.reason}). Idle OpenMP threads: {wait_policy()}. Results are bitwise "
        f"reproducible for a given thread count: threads={choice.threads} repeats this run."
    )
    if choice.notable:
        log.warning(message)
        return
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers + log.handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)
