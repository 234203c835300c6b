"""The single-writer lock: an advisory ``flock`` on ``<index>/lock``.

The kernel drops the lock when the holder dies, so a crash never leaves the index
locked. Readers never take it: they only read files named by the manifest.

Threads of one process (sharing an ``Index``) wait for each other on an in-process lock
per lock file, taken before the ``flock``: a writer in another process is refused at once
(``WriterBusyError``), a writer thread of this process is waited for.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType

from mmsearch.errors import WriterBusyError

_THREAD_LOCKS: dict[str, threading.RLock] = {}  # lock file (resolved) -> this process's writer
_REGISTRY = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child starts with no writer: a lock held by a parent's thread would never be released."""
    global _REGISTRY
    _THREAD_LOCKS.clear()
    _REGISTRY = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def _thread_lock(path: Path) -> threading.RLock:
    key = os.path.realpath(path)
    with _REGISTRY:
        return _THREAD_LOCKS.setdefault(key, threading.RLock())


class WriterLock:
    """Context manager holding the index's exclusive write lock."""

    def __init__(self, index_dir: Path) -> None:
        self.path = Path(index_dir) / "lock"
        self._fd: int | None = None
        self._threads: threading.RLock | None = None

    def __enter__(self) -> WriterLock:
        threads = _thread_lock(self.path)
        threads.acquire()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except BaseException:
            threads.release()
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            threads.release()
            raise WriterBusyError(
                f"another mmsearch process (pid {holder}) is writing to {self.path.parent}; "
                "wait for it to finish and retry"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd, self._threads = fd, threads
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._threads is not None:
            self._threads.release()
            self._threads = None
