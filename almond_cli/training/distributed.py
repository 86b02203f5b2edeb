"""Data-parallel training with torch.distributed, launched by torchrun.

``torchrun --nproc_per_node=N $(which almond) train ...`` starts N copies of the command. Each rank holds a
contiguous shard of the data and the persistent Langevin chains of that shard, runs the same ALMOND update
on its share of the global batch, and the parameter gradients are averaged over ranks before every
optimiser step (an all-reduce of one flat buffer), so all ranks keep identical parameters. Rank 0 alone
writes the run folder; checkpoints hold every rank's chains, data order and generators, so a run resumes
exactly with the same world size (another world size is refused). Backend: gloo for CPU tensors, NCCL for
CUDA ones. Nothing assumes a single node: the device is ``cuda:LOCAL_RANK``, the run folder is decided by
rank 0 and broadcast (``${now:...}`` would differ between ranks), and resume needs the run folder on a
file system every node sees.

With units of several rows (``Dataset.unit_index``) a rank's shard is a contiguous range of units with all their
rows, and the number of units must divide evenly.

Outside torchrun (or with one process) ``DataParallel`` is a no-op, so the trainer calls its hooks always.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

import torch
import torch.distributed as dist

from ..errors import UsageError

RANK_STATE_KEYS = ("chains", "order", "rng")


def launched_with_several_processes() -> bool:
    """True under torchrun (or any launcher setting WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_processes() -> int:
    """The ranks torchrun runs on this node (``LOCAL_WORLD_SIZE``), which share its cores; 1 outside torchrun.

    torchrun itself sets ``OMP_NUM_THREADS=1`` for its workers unless the user set it; either way no rank takes
    more than its share of the cores (``runtime.choose_threads``)."""
    if not launched_with_several_processes():
        return 1
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))))


def init_from_env() -> None:
    """Joins the process group torchrun describes (MASTER_ADDR/PORT, RANK, WORLD_SIZE); idempotent."""
    if dist.is_initialized() or not launched_with_several_processes():
        return
    if torch.cuda.is_available():
        # CPU tensors (and object collectives) go through gloo, CUDA tensors through NCCL; a CPU-only run on
        # a machine with fewer GPUs than processes never touches NCCL.
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank < torch.cuda.device_count():
            torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    atexit.register(_destroy)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def run_then_exit(entry: Callable[[], object]) -> NoReturn:
    """Runs ``entry`` (a rank's whole command) and ends the process with its exit status, without finalising the
    interpreter.

    Why: a gloo worker thread releases a finished collective (and the collectives a barrier waited on) a moment
    after the caller has its result, and releasing a tensor that Python has seen takes the GIL. If the interpreter
    is finalising by then, that thread cannot take the GIL and the process aborts ("terminate called without an
    active exception"; a core dump showed ``~AsyncBarrierWork`` on a gloo worker while the main thread was in
    ``Py_FinalizeEx``): about one resume in 15-50 beside busy processes. ``destroy_process_group`` does not join
    those threads in torch 2.13 (only the process group's destructor does, and torch keeps other references to
    it). Everything a rank writes is written atomically and flushed before ``entry`` returns; the logs and the
    console are flushed here, and the run folder's lock is a ``flock`` the kernel releases.
    """
    try:
        entry()
        code = 0
    except SystemExit as stop:
        code = _exit_status(stop.code)
    _destroy()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` gives: None is 0, an int is itself, anything else is printed and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def agree_on_overrides(overrides: list[str], multirun: bool) -> list[str]:
    """Rank 0's overrides for every rank, with the run folder decided once.

    Every rank composes its own Hydra config, and ``${now:...}`` in the default ``hydra.run.dir`` would give
    each rank (and each restart) its own folder; so rank 0 resolves the folder and broadcasts it. Ranks
    other than 0 write no ``.hydra/`` and log to the console only: rank 0 alone writes the run folder.
    """
    if not dist.is_initialized():
        return overrides
    if multirun:
        raise UsageError(
            "--multirun under torchrun: data-parallel training runs one job across the processes; "
            "launch the sweep without torchrun (or run torchrun once per configuration)"
        )
    payload = [None]
    if dist.get_rank() == 0:
        payload = [
            overrides
            if any(o.startswith("hydra.run.dir=") for o in overrides)
            else [*overrides, f"hydra.run.dir={_resolved_run_dir(overrides)}"]
        ]
    dist.broadcast_object_list(payload, src=0)
    agreed = list(payload[0])
    if dist.get_rank() != 0:
        agreed = [o for o in agreed if not o.startswith("hydra.output_subdir=")]
        agreed += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    return agreed


def _resolved_run_dir(overrides: list[str]) -> str:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="almond_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        try:
            return str(OmegaConf.select(cfg, "hydra.run.dir"))
        except Exception as error:  # an interpolation only a running job can resolve
            raise UsageError(
                f"hydra.run.dir: cannot decide the run folder before the job starts ({error}); "
                "give it explicitly, e.g. hydra.run.dir=outputs/ddp-run"
            ) from None


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value


class DataParallel:
    """This process's place in a data-parallel run; every method is a no-op for a single process."""

    def __init__(self):
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world_size = dist.get_world_size() if self.active else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0")) if self.active else 0

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the run folder: metrics, checkpoints, summary, figures, logs."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """A bare ``cuda`` becomes this rank's GPU, ``cuda:LOCAL_RANK``."""
        if self.active and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def rank_seed(self, seed: int) -> int:
        """Rank 0 keeps ``seed`` (a one-process run is unchanged); other ranks get independent streams."""
        if self.rank == 0:
            return seed
        return int.from_bytes(hashlib.sha256(f"almond:{seed}:rank:{self.rank}".encode()).digest()[:8], "little") >> 1

    # ----- the data ----------------------------------------------------------------------------------------
    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous rows of ``x`` (n, D); n must divide evenly so every rank does equal updates."""
        if not self.active:
            return x
        num_points = x.shape[0]
        if num_points % self.world_size:
            raise UsageError(
                f"data: {num_points} data points do not split evenly over {self.world_size} processes; "
                f"use a process count that divides {num_points} (every rank must make the same "
                "number of updates per epoch)"
            )
        size = num_points // self.world_size
        return x[self.rank * size : (self.rank + 1) * size]

    def shard_units(self, x: torch.Tensor, unit_index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's contiguous units with all their rows: (rows of x (n_rank, D), their units renumbered from 0
        (n_rank,)); ``unit_index`` None (every row its own unit) is ``shard``. The number of units U must divide
        evenly so every rank does equal updates."""
        if unit_index is None:
            return self.shard(x), None
        if not self.active:
            return x, unit_index
        num_units = int(unit_index.max()) + 1
        if num_units % self.world_size:
            raise UsageError(
                f"data: {num_units} units do not split evenly over {self.world_size} processes; use a "
                f"process count that divides {num_units} (every rank must make the same number of "
                "updates per epoch)"
            )
        size = num_units // self.world_size
        first = self.rank * size
        rows = ((unit_index >= first) & (unit_index < first + size)).nonzero().squeeze(1)
        return x[rows], unit_index[rows] - first

    def local_batch_size(self, global_batch_size: int) -> int:
        """This rank's share of the global batch (``schedule.batch_size`` is the global batch)."""
        if not self.active:
            return global_batch_size
        if global_batch_size % self.world_size:
            raise UsageError(
                f"schedule.batch_size: the global batch {global_batch_size} does not split evenly over "
                f"{self.world_size} processes; use a multiple of {self.world_size}"
            )
        return global_batch_size // self.world_size

    # ----- keeping ranks in step ---------------------------------------------------------------------------
    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters everywhere (they agree already when seeded alike; this makes it certain)."""
        if not self.active:
            return
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)

    def average_gradients_before_step(self, *optimisers: torch.optim.Optimizer) -> None:
        """Registers a pre-step hook on each optimiser that replaces every gradient by its mean over ranks.

        Each rank's loss is a mean over its equal share of the global batch, so the mean of the ranks'
        gradients is the gradient of the global batch's mean loss: the update a single process would make.
        """
        if not self.active:
            return
        for optimiser in optimisers:
            optimiser.register_step_pre_hook(self._all_reduce_hook)

    def average_buffers_after_step(self, module: torch.nn.Module, *optimisers: torch.optim.Optimizer) -> None:
        """Registers a post-step hook on each optimiser that replaces ``module``'s floating-point buffers (batch
        norm's running statistics) by their mean over ranks.

        A train-mode forward updates the running statistics from this rank's shard alone; without this the ranks'
        statistics drift apart during the VAE phase, so in ALMOND (eval mode) each rank would sample a different
        target, and the checkpoint, written by rank 0, would resume the other ranks with statistics they never had.
        The mean of the ranks' running means is exactly what one process would track on the global batch.
        """
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        if not self.active or not buffers:
            return

        for optimiser in optimisers:
            optimiser.register_step_post_hook(lambda _optimiser, _args, _kwargs: self._average_over_ranks(buffers))

    def _all_reduce_hook(self, optimiser, _args, _kwargs) -> None:
        self._average_over_ranks(
            [p.grad for group in optimiser.param_groups for p in group["params"] if p.grad is not None]
        )

    def _average_over_ranks(self, tensors: list[torch.Tensor]) -> None:
        """Replaces each tensor by its mean over ranks, in place, with one all-reduce of a flat buffer."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        offset = 0
        for tensor in tensors:
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()

    def average_epoch(self, loss_mean: float, diagnostics: dict, chains_healthy: bool) -> tuple[float, dict]:
        """Means over ranks of an epoch's loss and diagnostics; a rank with diverged chains makes the loss NaN
        everywhere, so every rank stops on the divergence together instead of waiting for the others."""
        if not self.active:
            return loss_mean, diagnostics
        names = sorted(diagnostics)
        values = torch.tensor(
            [loss_mean + (0.0 if chains_healthy else float("nan")), *[float(diagnostics[n]) for n in names]],
            dtype=torch.float64,
        )
        dist.all_reduce(values)
        values /= self.world_size
        return float(values[0]), {name: float(value) for name, value in zip(names, values[1:])}

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any (a time-based save must happen on all ranks at once)."""
        if not self.active:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def agree_on_signal(self, signal_number: int | None) -> int | None:
        """The stop signal any rank received (ranks see a signal at different updates; all must stop at one)."""
        if not self.active:
            return signal_number
        value = torch.tensor([signal_number or 0], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item()) or None

    def finish(self) -> None:
        """Waits for every rank to complete its run; none tears its connections down (at exit) while a peer is
        still in a collective, which can make gloo abort that peer."""
        if self.active:
            dist.barrier()

    # ----- checkpoints -------------------------------------------------------------------------------------
    def gather_state(self, state: dict) -> dict | None:
        """On rank 0, ``state`` plus every rank's chains, data order and generators; None on other ranks."""
        if not self.active:
            return state
        # On the host, so rank 0 can hold other ranks' GPU chains (a GPU index of another node may not exist here).
        part = _to_cpu({key: state[key] for key in RANK_STATE_KEYS})
        parts = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(part, parts, dst=0)
        if self.rank != 0:
            return None
        return {**state, "data_parallel": {"world_size": self.world_size, "ranks": parts}}

    def local_state(self, state: dict, key: str = "resume") -> dict:
        """This rank's view of a checkpoint; refuses one written by a different number of processes. ``key`` is the
        command-line key that brought the checkpoint (``resume`` or ``warm_start``), for the message."""
        from .checkpoint import CheckpointError

        saved = state.get("data_parallel") or {"world_size": 1}
        if saved["world_size"] != self.world_size:
            verb = "resume" if key == "resume" else "start this run"
            raise CheckpointError(
                f"this checkpoint was written by a data-parallel run of {saved['world_size']} process(es) and this "
                f"run has {self.world_size}; every process's chains and random streams are in it, so {verb} with "
                f"the same number: torchrun --nproc_per_node={saved['world_size']} (times nodes) ... "
                f"almond train {key}=<run folder>"
                + (f" (or plain `almond train {key}=...`)" if saved["world_size"] == 1 else "")
            )
        if not self.active:
            return state
        return {**state, **saved["ranks"][self.rank]}
