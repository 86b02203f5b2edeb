"""``sampler.precision``: the number format of the decoder's products inside the Langevin step.

- ``fp32``: everything in float32 (the paper's arithmetic; what a run saved before the key existed resumes with).
- ``bf16``: the hand-written target (``targets.MLPTarget``) runs the decoder's forward and input-gradient sweep
  in bfloat16 — its matrix products, bias adds and activation derivatives; the likelihood's value and gradient,
  the chain positions, the noise and the parameter gradient and update stay float32. bfloat16 keeps float32's
  exponent range and 8 significant bits (unit roundoff 2^-8), so the gradient the chains follow carries a
  relative error of a few 2^-8 and nothing overflows; an autograd target runs float32 whatever is asked.
- ``auto``: ``bf16`` where the hardware runs bfloat16 products natively, ``fp32`` elsewhere: on a CPU that
  reports AMX (``amx_bf16``/``amx_tile``) or AVX512-BF16 (``avx512_bf16``) in /proc/cpuinfo (Linux; fp32 when
  the flags cannot be read), on a CUDA device where ``torch.cuda.is_bf16_supported()``. The default of new runs
  (``configs/sampler/langevin.yaml``): bf16 moved no accuracy median by more than a twentieth of the seed-to-seed
  spread (docs/speed.md).

``choose_precision`` is the pure rule (tests feed it flag sets); ``resolve_precision`` reads the machine.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "auto")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# CPU flags (as Linux names them in /proc/cpuinfo) of native bfloat16 products: either one suffices.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def choose_precision(
    requested: str, device_type: str, cpu_flags: frozenset[str] | None = None, cuda_bf16: bool = False
) -> str:
    """The precision that runs, ``"fp32"`` or ``"bf16"``, for ``requested`` in ``PRECISIONS``.

    Args:
        requested: ``sampler.precision``.
        device_type: ``"cpu"``, ``"cuda"`` or another torch device type (``auto`` gives fp32 there).
        cpu_flags: the CPU's feature flags, or None when they could not be read (``auto`` gives fp32).
        cuda_bf16: whether the CUDA device runs bfloat16 (``torch.cuda.is_bf16_supported()``).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if device_type == "cpu":
        return "bf16" if cpu_flags is not None and BF16_CPU_FLAGS & cpu_flags else "fp32"
    if device_type == "cuda":
        return "bf16" if cuda_bf16 else "fp32"
    return "fp32"


@functools.lru_cache(maxsize=1)
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The flags of the first processor in ``path`` (Linux), or None when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """``choose_precision`` for this machine's ``device``: reads the CPU flags or asks CUDA only for ``auto``."""
    if requested != "auto":
        return choose_precision(requested, "cpu")
    device_type = torch.device(device).type
    if device_type == "cpu":
        return choose_precision(requested, device_type, cpu_flags())
    if device_type == "cuda":
        return choose_precision(requested, device_type, cuda_bf16=torch.cuda.is_bf16_supported())
    return choose_precision(requested, device_type)
