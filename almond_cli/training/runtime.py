"""Process-level set-up of a run: device, threads, random streams and the allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib

import torch

from ..errors import UsageError

STREAMS = ("data", "init", "noise", "order")
# torch's thread count when this process started: a job with threads=null gets it back, because a joblib
# (loky) worker runs several sweep jobs in one process and an earlier job's setting would otherwise leak.
DEFAULT_THREADS = torch.get_num_threads()


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


def configure_process(threads: int | None) -> None:
    """Sets torch's CPU threads and keeps glibc from returning large temporaries to the OS after each step.

    Langevin steps allocate the same large temporaries again and again; with glibc's defaults every step pays
    fresh page faults for them (measured 1.1–3.4x slower per step on the workloads here).
    """
    torch.set_num_threads(int(threads) if threads is not None else DEFAULT_THREADS)
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
