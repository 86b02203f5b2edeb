"""Data-parallel training: the hooks of ``DataParallel`` on 2 gloo processes, and ``almond train`` under
torchrun with 2 CPU processes against the 1-process run, exact resume, and the world-size refusal."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import almond_executable, read_metrics, run_almond

from almond_cli.training.checkpoint import CheckpointError
from almond_cli.training.distributed import DataParallel

TINY = ["debug=tiny", "threads=1", "progress=plain"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _hooks_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        parallel = DataParallel()
        results = {"shard": parallel.shard(torch.arange(8.0).unsqueeze(1)), "batch": parallel.local_batch_size(6)}
        # Gradients averaged before the step: rank r's gradient is r + 1, so both ranks step along 1.5.
        weight = torch.nn.Parameter(torch.zeros(3))
        optimiser = torch.optim.SGD([weight], lr=1.0)
        parallel.average_gradients_before_step(optimiser)
        (weight.sum() * (rank + 1)).backward()
        optimiser.step()
        results["weight"] = weight.detach().clone()
        # Batch norm's running mean after a train-mode step on rank-dependent batches: the mean over ranks.
        norm = torch.nn.BatchNorm1d(2, momentum=1.0)  # momentum 1: the running mean is the last batch's mean
        norm_optimiser = torch.optim.SGD(norm.parameters(), lr=0.0)
        parallel.average_buffers_after_step(norm, norm_optimiser)
        norm(torch.full((4, 2), 10.0 * rank) + torch.arange(4.0).unsqueeze(1)).sum().backward()
        norm_optimiser.step()
        results["running_mean"] = norm.running_mean.clone()
        results["epoch"] = parallel.average_epoch(2.0 * (rank + 1), {"grad_norm": float(rank)}, chains_healthy=True)
        results["nonfinite"] = parallel.average_epoch(1.0, {}, chains_healthy=rank == 0)[0]
        results["any"] = parallel.any(rank == 1)
        results["signal"] = parallel.agree_on_signal(15 if rank == 1 else None)
        state = {
            "chains": {"positions": torch.full((4, 2, 1), float(rank))},
            "order": None,
            "rng": {"noise": torch.tensor([rank])},
            "model": "shared",
        }
        gathered = parallel.gather_state(state)
        results["gathered"] = gathered
        if rank == 0:
            torch.save(gathered, os.path.join(out_dir, "gathered.pt"))
        dist.barrier()
        loaded = torch.load(os.path.join(out_dir, "gathered.pt"), weights_only=True)
        results["local"] = parallel.local_state(loaded)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        parallel.finish()  # no rank tears its connections down while the other is still communicating
    finally:
        dist.destroy_process_group()


def test_data_parallel_hooks_on_two_gloo_processes(tmp_path):
    mp.spawn(_hooks_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["shard"].flatten().tolist() == [0, 1, 2, 3] and ranks[1]["shard"].flatten().tolist() == [4, 5, 6, 7]
    assert ranks[0]["batch"] == ranks[1]["batch"] == 3
    for result in ranks:
        assert torch.equal(result["weight"], torch.full((3,), -1.5))  # mean of gradients 1 and 2, exactly
        assert torch.equal(result["running_mean"], torch.full((2,), 6.5))  # batch means 1.5 and 11.5
        assert result["epoch"] == (3.0, {"grad_norm": 0.5})
        assert result["nonfinite"] != result["nonfinite"]  # NaN everywhere when one rank's chains are not finite
        assert result["any"] is True and result["signal"] == 15
    assert ranks[1]["gathered"] is None
    gathered = ranks[0]["gathered"]
    assert gathered["data_parallel"]["world_size"] == 2 and gathered["model"] == "shared"
    for rank in range(2):
        local = ranks[rank]["local"]
        assert torch.equal(local["chains"]["positions"], torch.full((4, 2, 1), float(rank)))
        assert int(local["rng"]["noise"]) == rank


def test_a_single_process_refuses_a_two_process_checkpoint():
    state = {"chains": None, "data_parallel": {"world_size": 2, "ranks": [{}, {}]}}
    with pytest.raises(CheckpointError, match="nproc_per_node=2"):
        DataParallel().local_state(state)
    plain = {"chains": None}
    assert DataParallel().local_state(plain) is plain  # a one-process checkpoint resumes as before


@pytest.mark.parametrize(
    "body, status, stderr",
    [
        ("print('kept', end='')", 0, ""),
        ("print('kept', end=''); sys.exit(3)", 3, ""),
        ("print('kept', end=''); sys.exit('a usage message')", 1, "a usage message"),
    ],
)
def test_a_rank_ends_with_its_exit_status_and_flushed_output(body, status, stderr):
    # run_then_exit leaves by os._exit, skipping the interpreter's finalisation, so it must give the status
    # sys.exit would have given and flush what the rank printed (to a pipe, print is block-buffered).
    code = (
        "import sys\n"
        "from almond_cli.training.distributed import run_then_exit\n"
        f"def entry():\n    {body}\n"
        "run_then_exit(entry)\n"
        "print('after', file=sys.stderr)\n"  # never reached
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert process.returncode == status
    assert process.stdout == "kept"
    assert process.stderr.strip() == stderr


def torchrun(args, cwd, nproc=2, timeout=300):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        almond_executable(),
        *args,
    ]
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"},
    )


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_two_gloo_processes_match_one_and_resume_exactly(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    assert run_almond(["train", *TINY, f"hydra.run.dir={single}"], cwd=tmp_path).returncode == 0
    process = torchrun(["train", *TINY, f"hydra.run.dir={double}"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    # Rank 0 alone wrote the folder: one .hydra, one log, one line per epoch.
    assert [r["step"] for r in read_metrics(double)] == list(range(1, 41))
    one, two = _summary(single), _summary(double)
    # Same global batch (200 points: 100 per rank); the runs differ only by Monte Carlo noise (rank 1's
    # noise stream and data order). benchmarks/noise_spread.py re-seeded the noise of the 1-process run 8
    # times (networks started as the default experiment starts them, Xavier-uniform): sd of VAE w1 0.0004,
    # ALMOND w1 0.0079, ALMOND ks 0.0047, final VAE loss 0.023, final ALMOND loss 0.060. A difference of two
    # such runs has sd sqrt(2)·sd; we allow 5·sqrt(2)·sd (≈ 7 sd).
    # Without the gradient all-reduce, rank 0 would fit only its own 100 points: a different data set, not
    # just other noise.
    assert abs(one["vae"]["w1"] - two["vae"]["w1"]) < 0.0028
    assert abs(one["almond"]["w1"] - two["almond"]["w1"]) < 0.056
    assert abs(one["almond"]["ks"] - two["almond"]["ks"]) < 0.034

    def final_losses(run):
        return {phase: [r["loss"] for r in read_metrics(run) if r["phase"] == phase][-1] for phase in ("vae", "almond")}

    assert abs(final_losses(single)["vae"] - final_losses(double)["vae"]) < 0.16
    assert abs(final_losses(single)["almond"] - final_losses(double)["almond"]) < 0.43

    # Interrupted after 10 of the 20 ALMOND epochs, then resumed with 2 processes: bitwise the same run.
    resumed = tmp_path / "resumed"
    first = torchrun(["train", *TINY, "schedule.almond_epochs=10", f"hydra.run.dir={resumed}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    refused = run_almond(["train", f"resume={resumed}", "schedule.almond_epochs=20", "threads=1"], cwd=tmp_path)
    assert refused.returncode == 2 and "nproc_per_node=2" in refused.stderr
    second = torchrun(["train", f"resume={resumed}", "schedule.almond_epochs=20", "threads=1"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert read_metrics(resumed) == [
        dict(r, seconds=r2["seconds"], elapsed=r2["elapsed"])
        for r, r2 in zip(read_metrics(double), read_metrics(resumed))
    ]
    a = torch.load(double / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["data_parallel"]["world_size"] == 2
    for part_a, part_b in zip(a["data_parallel"]["ranks"], b["data_parallel"]["ranks"]):
        assert torch.equal(part_a["chains"]["positions"], part_b["chains"]["positions"])
    assert _summary(double)["almond"] == _summary(resumed)["almond"]
