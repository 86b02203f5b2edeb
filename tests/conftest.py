"""Shared test helpers: the installed ``almond`` command in a subprocess, and small configs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_mnist_dir() -> Path:
    """The shared MNIST 10k split: $ALMOND_MNIST_DIR, else ../shared/data/mnist from the repository or from
    the folder holding its worktree (a worktree at /work/wt/x finds /work/shared). Tests skip if it is absent."""
    candidates = [
        os.environ.get("ALMOND_MNIST_DIR"),
        REPO_ROOT.parent / "shared" / "data" / "mnist",
        REPO_ROOT.parent.parent / "shared" / "data" / "mnist",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return REPO_ROOT.parent / "shared" / "data" / "mnist"


MNIST_DIR = _find_mnist_dir()


def almond_executable() -> str:
    """The ``almond`` script installed beside this Python (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "almond"
    if beside.exists():
        return str(beside)
    found = shutil.which("almond")
    if found is None:
        pytest.fail("the almond command is not installed: run `pip install -e .` first")
    return found


def run_almond(
    args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None, check: bool = False
) -> subprocess.CompletedProcess:
    """Runs ``almond *args`` in ``cwd`` and returns the finished process (text output captured)."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    process = subprocess.run(
        [almond_executable(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )
    if check and process.returncode != 0:
        raise AssertionError(
            f"almond {' '.join(args)} failed ({process.returncode}):\n{process.stdout}\n{process.stderr}"
        )
    return process


@pytest.fixture
def almond_refuses(monkeypatch, capsys):
    """``almond *args`` in-process (``cli.main``, no interpreter start-up to pay), expected to refuse: exit code 2
    and one ``almond: error:`` line, no traceback. Returns that line. The installed command runs the same
    ``cli.main``; a few tests per place a refusal comes from still run it in a subprocess (``run_almond``)."""
    from almond_cli.commands import cli
    from almond_cli.training import trainer

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main sets it; a run that goes ahead sets handlers too
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def refuses(args: list[str], cwd: Path | None = None) -> str:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            cli.main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        assert stopped.value.code == 2, (stopped.value.code, out[-2000:], err[-2000:])
        assert "Traceback" not in out + err, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("almond: error: "), err
        return lines[0]

    yield refuses
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    trainer.pending_stop_signal()  # a signal a test left pending is not the next test's


def assert_one_error_line(stderr: str, fragments: list[str]) -> None:
    """A refusal as the user sees it: stderr is one ``almond: error:`` line holding every fragment, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("almond: error:")]
    assert len(lines) == 1 and stderr.strip() == lines[0], stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _one_thread():
    """Unit tests run on one thread so two test processes do not oversubscribe a 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _no_handlers_left_behind():
    """A run trained in-process gets Hydra's job logging: handlers on the root logger bound to the captured stderr
    of the test (or module fixture) that ran it, closed afterwards. Left there, a later warning (threads chosen under
    load) writes to a closed file and logging prints its own traceback into that test's stderr."""
    import logging

    loggers = [logging.getLogger(), logging.getLogger("almond")]

    def drop(keep) -> None:
        for logger in loggers:
            for handler in [h for h in logger.handlers if not keep(h)]:
                logger.removeHandler(handler)

    drop(lambda h: not getattr(getattr(h, "stream", None), "closed", False))  # a module fixture's, since closed
    before = {id(h) for logger in loggers for h in logger.handlers}
    yield
    drop(lambda h: id(h) in before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def compose_config(overrides: list[str]):
    """The config ``almond train <overrides>`` would run, composed in-process."""
    from hydra import compose, initialize_config_module

    from almond_cli.config import register_schemas

    register_schemas()
    with initialize_config_module(config_module="almond_cli.configs", version_base="1.3"):
        return compose("train", overrides=overrides)


def assert_same_final_state(first_run: Path, second_run: Path) -> None:
    """Bitwise equality of the final parameters and chains of two run folders, and the same epochs logged."""
    from almond_cli.training.checkpoint import load_checkpoint

    first = load_checkpoint(first_run / "checkpoints" / "last.pt")
    second = load_checkpoint(second_run / "checkpoints" / "last.pt")
    assert first["model"].keys() == second["model"].keys()
    for name in first["model"]:
        assert torch.equal(first["model"][name], second["model"][name]), name
    if first["chains"] is not None or second["chains"] is not None:
        assert torch.equal(first["chains"]["positions"], second["chains"]["positions"])
    strip = lambda records: [{k: v for k, v in r.items() if k not in ("seconds", "elapsed")} for r in records]  # noqa: E731
    assert strip(read_metrics(first_run)) == strip(read_metrics(second_run))
