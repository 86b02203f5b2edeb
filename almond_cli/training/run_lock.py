"""One writer per run folder: an exclusive ``flock`` on ``<run>/.lock`` while a run trains.

A second ``almond train`` (a resume started while the first is still saving, two sweeps pointed at one
folder) is refused instead of interleaving its writes. The kernel drops the lock when the process dies,
even by ``kill -9``, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import UsageError


class RunFolderLock:
    """Context manager holding the lock of ``run_dir``; raises ``UsageError`` if another process holds it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._handle = None

    def __enter__(self) -> "RunFolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UsageError(
                f"run folder {self.path.parent} is being written by {holder}; wait for it to finish (or stop it) "
                f"before resuming, or train into another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"almond pid {os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
