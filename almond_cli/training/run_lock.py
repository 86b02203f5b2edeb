"""One writer per run folder: an exclusive ``flock`` on the run folder itself while a run trains.

A second ``almond train`` (a resume started while the first is still saving, two runs or sweeps pointed at one
folder) is refused instead of interleaving its writes. The kernel drops the lock when the process dies,
even by ``kill -9``, so a crash never leaves a stale lock. The ``almond`` command takes the lock of the run
folder before anything is written into it (before Hydra writes ``.hydra/`` and ``train.log``) and, for a
resume, before it reads anything of the run (``hold``); it keeps it for the rest of the process, so a refused
second process writes nothing there, and what it read (the newest checkpoint) cannot change under it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

from ..errors import UsageError
from .run_folder import RunFolder


class RunFolderLock:
    """Context manager holding the lock of ``run_dir``; raises ``UsageError`` if another process holds it.

    The lock is an exclusive ``flock`` on the folder itself, so taking it writes nothing; ``record_holder`` writes
    the holder (pid, host, start time) into ``<run>/.lock`` for the message another process gets.

    Args:
        run_dir: the run folder (created if missing).
        record: write this process into ``<run>/.lock`` once the lock is taken.
        resuming: whether the refused process meant to resume the run (the message's advice).
    """

    def __init__(self, run_dir: Path, record: bool = True, resuming: bool = False):
        self.run_dir = Path(run_dir)
        self.record = record
        self.resuming = resuming
        self._fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            advice = "before resuming it" if self.resuming else "or train into another folder"
            raise UsageError(
                f"run folder {self.run_dir} is being written by {live_holder(self.run_dir)}; wait for it to finish "
                f"(or stop it) {advice}. Nothing was written"
            ) from None
        self._fd = fd
        if self.record:
            record_holder(self.run_dir)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def record_holder(run_dir: Path) -> None:
    """Writes who holds the lock (pid, host, start time) into ``<run>/.lock``, for a refused second process."""
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    RunFolder(run_dir).lock_file.write_text(json.dumps(holder) + "\n")


def live_holder(run_dir: Path) -> str:
    """Who holds the lock of ``run_dir``, in words: the process ``<run>/.lock`` names if it is alive (or on
    another host, where it cannot be checked), else "another almond process". A ``.lock`` left by a process
    that died (its lock died with it) or written in an older format never names a holder."""
    unknown = "another almond process (it has not recorded itself yet)"
    try:
        holder = json.loads(RunFolder(run_dir).lock_file.read_text())
        pid, host, started = int(holder["pid"]), str(holder["host"]), str(holder["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return unknown
    if host == socket.gethostname() and not _alive(pid):
        return unknown
    return f"almond pid {pid} on host {host}, started {started}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


_HELD: dict[Path, RunFolderLock] = {}


def hold(run_dir: Path, resuming: bool = False, record: bool = False) -> None:
    """Takes the lock of ``run_dir`` for the rest of this process (again: nothing); ``UsageError`` if another
    process holds it. With ``record``, this process is written into ``<run>/.lock`` at once (a run that goes
    ahead); without, the trainer records it when training starts."""
    key = Path(run_dir).resolve()
    if key not in _HELD:
        lock = RunFolderLock(key, record=False, resuming=resuming)  # a refused run writes nothing
        lock.__enter__()
        _HELD[key] = lock
    if record:
        record_holder(key)


def held_here(run_dir: Path) -> bool:
    """Whether this process took the lock of ``run_dir`` with ``hold``."""
    return Path(run_dir).resolve() in _HELD
