"""Re-ranker features kept on disk beside an index, computed once at ingest.

A cold query re-ranked at depth 50 spent 90% of its time re-reading the candidates'
files and running the frozen towers over them (``benchmarks/rerank.py``), though what
comes out depends on the file's bytes and the re-ranker's weights alone. So ``mmsearch
index --rerank-features`` computes those features for every item once and keeps them
here; a fresh process then judges any candidate without touching its file.

Layout: ``<index>/rerank/<feature space>/`` holds immutable packs. A pack is one ``.npy``
per feature array (rows aligned) and a ``.keys.npy`` of (content hash, window offset),
written last: a pack without its keys file does not exist, so a crash mid-write leaves
nothing half-read, and writers in other processes never collide (every pack has a fresh
name). The store is content-addressed, like the in-memory cache: a renamed file hits, an
edited one is a new key. Readers map the arrays (memory tracks what queries touch) and
pick up new packs when the folder's mtime changes.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from mmsearch.rerank.cache import Features, Key
from mmsearch.store.atomic import TMP_SUFFIX, atomic_write

KEYS = ".keys.npy"
KEY_DTYPE = np.dtype([("hash", "S64"), ("offset", "<f8")])
ROOT = "rerank"


def store_dir(index_dir: Path, feature_space: str) -> Path:
    """Where an index keeps the features of one re-ranker's weights."""
    return Path(index_dir) / ROOT / feature_space


class FeatureStore:
    """Packs of per-item features, looked up by content key; safe to share between threads."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._where: dict[Key, tuple[int, int]] = {}  # key -> (pack, row)
        self._packs: list[tuple[np.ndarray, ...]] = []
        self._loaded: set[str] = set()
        self._seen_mtime: int | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        self.refresh()
        return len(self._where)

    def __contains__(self, key: Key) -> bool:
        self.refresh()
        return key in self._where

    def get(self, key: Key) -> Features | None:
        """The features stored under ``key`` (read-only views of mapped files), or ``None``."""
        self.refresh()
        found = self._where.get(key)
        if found is None:
            return None
        pack, row = found
        return tuple(array[row] for array in self._packs[pack])

    def refresh(self) -> None:
        """Load the packs written since the last look (one ``stat`` when there are none)."""
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._seen_mtime:
            return
        with self._lock:
            if mtime == self._seen_mtime:
                return
            for keys_file in sorted(self.folder.glob(f"*{KEYS}")):
                name = keys_file.name[: -len(KEYS)]
                if name not in self._loaded:
                    self._load(name, keys_file)
            self._seen_mtime = mtime

    def _load(self, name: str, keys_file: Path) -> None:
        keys = np.load(keys_file)
        arrays = []
        part = 0
        while (self.folder / f"{name}.{part}.npy").is_file():
            arrays.append(np.load(self.folder / f"{name}.{part}.npy", mmap_mode="r"))
            part += 1
        if not arrays or any(len(array) != len(keys) for array in arrays):
            return  # not a complete pack (written by hand or damaged): ignored
        pack = len(self._packs)
        self._packs.append(tuple(arrays))
        for row, (digest, offset) in enumerate(keys.tolist()):
            self._where[(digest.decode(), offset)] = (pack, row)
        self._loaded.add(name)

    def add(self, keys: Sequence[Key], features: Sequence[Features]) -> None:
        """Write one pack of ``features`` (each a tuple of same-shaped arrays) under ``keys``."""
        if not keys:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        for part in range(len(features[0])):
            stacked = np.stack([f[part] for f in features])
            atomic_write(self.folder / f"{name}.{part}.npy", partial(_save, array=stacked))
        table = np.array([(digest.encode(), offset) for digest, offset in keys], dtype=KEY_DTYPE)
        atomic_write(self.folder / f"{name}{KEYS}", partial(_save, array=table))  # the pack's commit point
        self.refresh()

    def sweep(self) -> int:
        """Remove arrays of packs whose keys were never written (a crash mid-pack) and
        temporary files; returns how many files went. Only for a writer that holds the
        index lock: another writer may be mid-pack."""
        committed = {p.name[: -len(KEYS)] for p in self.folder.glob(f"*{KEYS}")}
        removed = 0
        for path in self.folder.glob("*"):
            orphan = path.name.endswith(TMP_SUFFIX) or path.name.split(".", 1)[0] not in committed
            if orphan and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)
