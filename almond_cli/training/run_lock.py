"""One writer per run folder: an exclusive ``flock`` on the run folder itself while a run trains.

A second ``almond train`` (a resume started while the first is still saving, two sweeps pointed at one
folder) is refused instead of interleaving its writes. The kernel drops the lock when the process dies,
even by ``kill -9``, so a crash never leaves a stale lock. The ``almond`` command takes the lock of a run it
resumes before it reads anything of the run (``hold``) and keeps it for the rest of the process, so a refused
second process writes nothing there, and what it read (the newest checkpoint) cannot change under it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import UsageError
from .run_folder import RunFolder


class RunFolderLock:
    """Context manager holding the lock of ``run_dir``; raises ``UsageError`` if another process holds it.

    The lock is an exclusive ``flock`` on the folder itself, so taking it writes nothing; ``record_holder`` writes
    the holder's pid into ``<run>/.lock`` for the message another process gets, once training starts.
    """

    def __init__(self, run_dir: Path, record: bool = True):
        self.run_dir = Path(run_dir)
        self.record = record
        self._fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder_file = RunFolder(self.run_dir).lock_file
            holder = holder_file.read_text().strip() if holder_file.is_file() else ""
            raise UsageError(
                f"run folder {self.run_dir} is being written by {holder or 'another almond process'}; wait for it "
                f"to finish (or stop it) before resuming, or train into another folder"
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
    """Writes ``almond pid N`` into ``<run>/.lock``: who holds the lock, for a refused second process."""
    RunFolder(run_dir).lock_file.write_text(f"almond pid {os.getpid()}\n")


_HELD: dict[Path, RunFolderLock] = {}


def hold(run_dir: Path) -> None:
    """Takes the lock of ``run_dir`` for the rest of this process (again: nothing); ``UsageError`` if another
    process holds it."""
    key = Path(run_dir).resolve()
    if key not in _HELD:
        lock = RunFolderLock(key, record=False)  # nothing is written before the run is known to go ahead
        lock.__enter__()
        _HELD[key] = lock


def held_here(run_dir: Path) -> bool:
    """Whether this process took the lock of ``run_dir`` with ``hold``."""
    return Path(run_dir).resolve() in _HELD
