"""The thread count a run picks (issue 28): ``choose_threads`` for a given affinity, load, torch default, override
and share of the cores (sweep jobs, torchrun ranks); the load read from /proc/stat; the line in ``train.log``; and
OpenMP's wait policy set by the ``almond`` command before torch loads its OpenMP runtime."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from conftest import run_almond

from almond_cli.commands.app import parallel_jobs
from almond_cli.training import runtime
from almond_cli.training.distributed import local_processes
from almond_cli.training.runtime import LOAD_TOLERANCE, ThreadChoice, choose_threads, describe_threads

# ----- the choice, a pure function ------------------------------------------------------------------------------


def test_an_idle_machine_keeps_torchs_default():
    # The default run's numbers depend on the thread count: idle, it must stay torch's own (2 on 2 cores).
    choice = choose_threads(None, cores=2, torch_default=2, busy_elsewhere=0.05)
    assert choice.threads == 2 and not choice.notable
    assert "2 cores" in choice.reason
    assert choose_threads(None, cores=16, torch_default=16, busy_elsewhere=0.2).threads == 16


def test_a_busy_neighbour_takes_its_core():
    choice = choose_threads(None, cores=2, torch_default=2, busy_elsewhere=1.0)
    assert choice.threads == 1 and choice.notable
    assert "1.0 of the 2 cores" in choice.reason and "threads=N" in choice.reason
    assert choose_threads(None, cores=2, torch_default=2, busy_elsewhere=2.0).threads == 1  # never 0
    assert choose_threads(None, cores=16, torch_default=16, busy_elsewhere=3.0).threads == 13
    assert choose_threads(None, cores=16, torch_default=8, busy_elsewhere=3.0).threads == 8  # 13 free, 8 wanted


def test_light_background_load_is_tolerated_up_to_the_tolerance():
    assert choose_threads(None, cores=2, torch_default=2, busy_elsewhere=LOAD_TOLERANCE).threads == 2
    assert choose_threads(None, cores=2, torch_default=2, busy_elsewhere=LOAD_TOLERANCE + 0.05).threads == 1
    assert choose_threads(None, cores=4, torch_default=4, busy_elsewhere=1 + LOAD_TOLERANCE).threads == 3
    assert choose_threads(None, cores=4, torch_default=4, busy_elsewhere=1 + LOAD_TOLERANCE + 0.05).threads == 2


def test_threads_given_means_threads_whatever_the_load():
    assert choose_threads(2, cores=2, torch_default=2, busy_elsewhere=2.0) == ThreadChoice(2, "threads=2 as given")
    assert choose_threads(1, cores=16, torch_default=16, busy_elsewhere=0.0).threads == 1


def test_a_resume_keeps_the_count_its_run_started_with():
    # Results are bitwise reproducible for a given count only: a resumed run must not switch because the load did.
    choice = choose_threads(None, cores=2, torch_default=2, busy_elsewhere=2.0, resumed=2)
    assert choice.threads == 2 and not choice.notable and "its checkpoint" in choice.reason
    assert choose_threads(1, cores=2, torch_default=2, busy_elsewhere=0.0, resumed=2).threads == 1  # threads=N wins
    assert choose_threads(None, cores=1, torch_default=1, busy_elsewhere=0.0, resumed=2).notable


def test_more_threads_than_cores_is_run_and_said():
    # Refusing it is issue 27's business; here it runs as given, with a line on screen saying what it costs.
    choice = choose_threads(8, cores=2, torch_default=2, busy_elsewhere=None)
    assert choice.threads == 8 and choice.notable
    assert "exceed the 2 cores" in choice.reason
    swept = choose_threads(2, cores=2, torch_default=1, busy_elsewhere=None, processes=2)
    assert swept.threads == 2 and swept.notable and "2 processes x 2 threads" in swept.reason


def test_never_more_than_the_affinity_or_torchs_default():
    assert choose_threads(None, cores=4, torch_default=8, busy_elsewhere=0.0).threads == 4
    choice = choose_threads(None, cores=2, torch_default=1, busy_elsewhere=0.0)  # OMP_NUM_THREADS=1
    assert choice.threads == 1 and "OMP_NUM_THREADS" in choice.reason and not choice.notable


def test_unreadable_load_keeps_the_share():
    choice = choose_threads(None, cores=4, torch_default=4, busy_elsewhere=None)
    assert choice.threads == 4 and "could not be read" in choice.reason


@pytest.mark.parametrize(("cores", "processes", "expected"), [(2, 2, 1), (16, 4, 4), (16, 3, 5), (2, 4, 1), (8, 1, 8)])
def test_processes_sharing_the_cores_each_take_their_share(cores, processes, expected):
    # joblib jobs x threads (and torchrun ranks x threads) never exceed the cores, and no process gets 0 threads.
    choice = choose_threads(None, cores=cores, torch_default=cores, busy_elsewhere=0.0, processes=processes)
    assert choice.threads == expected
    if processes > 1:
        assert f"shared by {processes} almond processes" in choice.reason


def test_pick_threads_reads_the_load_only_when_there_is_a_choice(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(runtime, "DEFAULT_THREADS", 2)
    monkeypatch.setattr(runtime, "busy_cores", lambda cpus: calls.append(cpus) or 1.0)
    assert runtime.pick_threads(None).threads == 1 and calls == [{0, 1}]
    assert runtime.pick_threads(2).threads == 2 and len(calls) == 1  # given: no look at the load
    assert runtime.pick_threads(None, processes=2).threads == 1 and len(calls) == 1  # share of 1: nothing to pick
    assert runtime.pick_threads(None, resumed=2).threads == 2 and len(calls) == 1  # a resume keeps its count
    monkeypatch.setattr(runtime, "busy_cores", lambda cpus: 0.0)
    assert runtime.pick_threads(None).threads == runtime.DEFAULT_THREADS


# ----- the load of other processes ------------------------------------------------------------------------------

STAT = """cpu  300 0 30 400 10 0 0 5 50 0
cpu0 100 0 10 200 5 0 0 5 0 0
cpu1 200 0 20 200 5 0 0 0 50 0
cpu2 1 0 1 1 1 0 0 0 0 0
intr 12345
"""


def test_cpu_times_reads_the_cpus_this_process_may_use(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    # busy = user + nice + system + irq + softirq + steal; total leaves out guest (counted in user already)
    assert runtime._cpu_times({0, 1}, str(stat)) == {0: (115, 320), 1: (220, 425)}
    assert runtime._cpu_times({7}, str(stat)) is None
    assert runtime._cpu_times({0}, str(tmp_path / "missing")) is None


def test_busy_cores_counts_other_processes_not_this_one(monkeypatch):
    snapshots = iter([{0: (100, 1000), 1: (100, 1000)}, {0: (120, 1020), 1: (110, 1020)}])  # 1.0 + 0.5 cores busy
    own = iter([os.times_result((1.0, 0.0, 0, 0, 0)), os.times_result((1.05, 0.05, 0, 0, 0))])  # 0.1 s of ours
    clock = iter([10.0, 10.2])
    monkeypatch.setattr(runtime, "_cpu_times", lambda cpus: next(snapshots))
    monkeypatch.setattr(runtime.os, "times", lambda: next(own))
    monkeypatch.setattr(runtime.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(runtime.time, "sleep", lambda seconds: None)
    # 1.5 cores busy in the window, 0.1 s / 0.2 s = 0.5 of them ours: 1.0 elsewhere
    assert runtime.busy_cores({0, 1}) == pytest.approx(1.0)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux only")
def test_busy_cores_sees_a_busy_process_on_our_cpu():
    cpu = min(os.sched_getaffinity(0))
    busy = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        import time

        time.sleep(0.3)  # let it start
        # One spinning process on the CPU watched: about one core (more when others use it too; the tolerance
        # for a preempted spinner on a shared machine is a third of a core).
        assert runtime.busy_cores({cpu}, seconds=0.3) >= 0.6
    finally:
        busy.kill()
        busy.wait()


# ----- sweeps and torchrun --------------------------------------------------------------------------------------


def test_parallel_jobs_of_the_launchers():
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert parallel_jobs({"_target_": joblib, "n_jobs": 2}, cores=16) == 2
    assert parallel_jobs({"_target_": joblib, "n_jobs": -1}, cores=16) == 16  # joblib's rule: every core
    assert parallel_jobs({"_target_": joblib, "n_jobs": -2}, cores=16) == 15
    assert parallel_jobs({"_target_": joblib, "n_jobs": None}, cores=16) == 1
    assert parallel_jobs({"_target_": joblib, "n_jobs": -4}, cores=2) == 1
    basic = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    assert parallel_jobs({"_target_": basic}, cores=16) == 1  # one job after another
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert parallel_jobs({"_target_": slurm, "cpus_per_task": 4}, cores=4) == 1  # its own CPUs: the affinity
    assert parallel_jobs(None, cores=4) == 1


def test_local_processes_are_torchruns_ranks_on_this_node(monkeypatch):
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert local_processes() == 1
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert local_processes() == 4
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert local_processes() == 1


# ----- the line in train.log ------------------------------------------------------------------------------------


@pytest.fixture
def log_handlers(tmp_path):
    root = logging.getLogger()
    file_handler = logging.FileHandler(tmp_path / "train.log")
    screen = tmp_path / "screen.log"
    screen_handler = logging.StreamHandler(open(screen, "w"))
    root.addHandler(file_handler)
    root.addHandler(screen_handler)
    yield tmp_path / "train.log", screen
    for handler in (file_handler, screen_handler):
        root.removeHandler(handler)
        handler.close()


def test_the_line_goes_to_the_log_and_to_the_screen_when_it_matters(log_handlers):
    log_file, screen = log_handlers
    describe_threads(ThreadChoice(2, "the 2 cores this process may use"))
    describe_threads(ThreadChoice(1, "other processes keep 1.0 of the 2 cores busy", True))
    logged, shown = log_file.read_text(), screen.read_text()
    assert "threads: 2 (the 2 cores this process may use)" in logged and "threads=2 repeats" in logged
    assert "threads: 1 (other processes" in logged
    assert "threads: 2" not in shown  # nothing to act on: the screen stays as progress= asks
    assert "threads: 1 (other processes" in shown


def test_train_log_says_how_many_threads_ran(tmp_path):
    run_dir = tmp_path / "run"
    process = run_almond(
        ["train", "debug=tiny", "threads=1", "progress=quiet", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=True
    )
    first = (run_dir / "train.log").read_text().splitlines()[0]
    assert "threads: 1 (threads=1 as given)" in first
    assert "threads:" not in process.stdout + process.stderr
    assert json.loads((run_dir / "summary.json").read_text())["almond"]["w1"] > 0
    from almond_cli.training.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["threads"] == 1  # what a resume keeps


# ----- OpenMP's wait policy, set before torch starts ------------------------------------------------------------


# A sitecustomize that records OMP_WAIT_POLICY the moment anything imports torch, then ends the process: what the
# OpenMP runtime loaded by that import will read.
RECORD_AT_TORCH_IMPORT = """
import importlib.abc, os, sys
class Record(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            with open(os.environ["ALMOND_TEST_RECORD"], "w") as handle:
                handle.write(os.environ.get("OMP_WAIT_POLICY", "unset"))
            os._exit(0)
sys.meta_path.insert(0, Record())
"""


@pytest.mark.parametrize("command", [["train", "debug=tiny"], ["evaluate", "missing-run"]])
def test_the_almond_command_leaves_the_wait_policy_alone(tmp_path, command):
    """OpenMP's default spinning is kept: PASSIVE made the idle default run 2.2x slower (benchmarks/README.md)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(RECORD_AT_TORCH_IMPORT)
    record = tmp_path / "record"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(PYTHONPATH=str(hook), ALMOND_TEST_RECORD=str(record))
    subprocess.run([sys.executable, "-m", "almond_cli", *command], cwd=tmp_path, env=env, timeout=120)
    assert record.read_text() == "unset"


@pytest.mark.slow
def test_a_joblib_sweeps_jobs_share_the_cores(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    args = ["train", "--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "debug=tiny", "progress=quiet"]
    process = subprocess.run(
        [sys.executable, "-m", "almond_cli", *args, "seed=1,2", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    for job in ("0", "1"):
        line = (sweep / job / "train.log").read_text().splitlines()[0]
        threads = int(line.split("threads: ")[1].split(" ")[0])
        assert 1 <= threads <= share, line  # 2 jobs x threads never exceed the cores
        assert "shared by 2 almond processes" in line and "OpenMP's default" in line, line
