"""The single-writer lock: an advisory ``flock`` on ``<index>/lock``.

The kernel drops the lock when the holder dies, so a crash never leaves the index
locked. Readers never take it: they only read files named by the manifest.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from mmsearch.errors import WriterBusyError


class WriterLock:
    """Context manager holding the index's exclusive write lock."""

    def __init__(self, index_dir: Path) -> None:
        self.path = Path(index_dir) / "lock"
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WriterBusyError(
                f"another mmsearch process (pid {holder}) is writing to {self.path.parent}; "
                "wait for it to finish and retry"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
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
