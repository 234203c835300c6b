"""A bounded, thread-safe LRU of per-item re-ranker features.

Re-ranking spends most of its time re-reading candidates and running the frozen towers
over them (``benchmarks/rerank.py``), and a warm process (the server, a library user)
judges the same candidates again and again. Entries are keyed by content hash and window
offset: the features depend on nothing else, so a renamed or copied file hits, and an edited
file is a new key and is never served stale. The hash is the one the index's catalog
recorded, trusted while the file still has the size and mtime recorded with it (one
``stat``, the ingest's own test for an unchanged file); otherwise the file is read and hashed.
The cached arrays are bounded in bytes and the least recently used entries go first. The
server searches from many threads, so every operation holds one lock.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

from mmsearch.hashing import file_digest
from mmsearch.rerank.base import Candidate

Key = tuple[str, float]
Features = tuple[np.ndarray, ...]


def content_key(content_hash: str, offset_s: float = 0.0) -> Key:
    """``(sha256 of the file's bytes, window offset)``: all a candidate's features depend on."""
    return content_hash, round(float(offset_s), 3)


def item_key(candidate: Candidate) -> Key | None:
    """The candidate's key: from the catalog's hash while the file's size and mtime are the
    recorded ones (no read), else from hashing the file; ``None`` if it cannot be read."""
    try:
        if candidate.content_hash is not None and candidate.stamp is not None:
            found = os.stat(candidate.path)
            if (found.st_size, found.st_mtime_ns // 1000) == candidate.stamp:
                return content_key(candidate.content_hash, candidate.offset_s)
        return content_key(file_digest(candidate.path), candidate.offset_s)
    except OSError:
        return None


class FeatureCache:
    """Least-recently-used features, at most ``max_bytes`` of array data (0 turns it off)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._entries: OrderedDict[Key, Features] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Features | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: Key, features: Features) -> None:
        """Store private, read-only copies (a row must not pin its whole batch's memory);
        an entry larger than the whole bound is not stored."""
        owned = tuple(np.array(a, copy=True) for a in features)
        for array in owned:
            array.flags.writeable = False
        size = sum(a.nbytes for a in owned)
        if size > self.max_bytes:
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= sum(a.nbytes for a in previous)
            self._entries[key] = owned
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= sum(a.nbytes for a in evicted)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = 0
