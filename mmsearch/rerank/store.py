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

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from mmsearch.rerank.cache import Features, Key
from mmsearch.store.atomic import TMP_SUFFIX, atomic_write
from mmsearch.store.lock import WriterLock

KEYS = ".keys.npy"
KEY_DTYPE = np.dtype([("hash", "S64"), ("offset", "<f8")])
_FIELDS = ("tag", "offset", "pack", "row")
_ENTRY = np.dtype(list(zip(_FIELDS, ("<u8", "<f8", "<i4", "<i4"))))
ROOT = "rerank"
LOCK = "lock"
PRUNE_SHARE = 0.25  # rewrite the packs once more than this share of their entries belong to no live item
SETTLED_NS = 2_000_000_000  # a folder mtime older than this no longer moves within its tick


def store_dir(index_dir: Path, feature_space: str) -> Path:
    """Where an index keeps the features of one re-ranker's weights."""
    return Path(index_dir) / ROOT / feature_space


class FeatureStore:
    """Packs of per-item features, looked up by content key; safe to share between threads.

    In memory, a reader holds 24 bytes per stored item (a 64-bit digest of the content hash,
    the offset, the pack and row, sorted for binary search); the features and the full keys
    stay in the mapped files.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._forget()

    def _forget(self) -> None:
        """Drop what was loaded: the next look reads the folder afresh."""
        self.damaged: list[str] = []  # packs that could not be read (skipped)
        self._names: list[str] = []
        self._packs: list[tuple[np.ndarray, ...]] = []
        self._keys: list[np.ndarray] = []  # per pack, its mapped keys (for the exact check)
        self._index: tuple[np.ndarray, ...] = tuple(np.empty(0, _ENTRY[name]) for name in _FIELDS)
        self._loaded: set[str] = set()
        self._seen_mtime: int | None = None

    def __len__(self) -> int:
        self.refresh()
        return len(self._index[0])

    def get_many(self, keys: Sequence[Key]) -> list[Features | None]:
        """Per key, its stored features (read-only views of mapped files) or ``None``."""
        self.refresh()
        tags, offsets, packs, rows = self._index
        wanted = np.array([tag_of(digest) for digest, _ in keys], np.uint64)
        lows = np.searchsorted(tags, wanted, side="left").tolist()
        highs = np.searchsorted(tags, wanted, side="right").tolist()
        out: list[Features | None] = []
        for (digest, offset), low, high in zip(keys, lows, highs):
            at = low + int(np.searchsorted(offsets[low:high], offset)) if high - low > 1 else low
            found = None
            if at < high and offsets[at] == offset:
                pack, row = int(packs[at]), int(rows[at])
                if self._keys[pack][row]["hash"] == digest.encode():  # the 64-bit tag matched: check it all
                    found = tuple(array[row] for array in self._packs[pack])
            out.append(found)
        return out

    def get(self, key: Key) -> Features | None:
        """The features stored under ``key``, or ``None``."""
        return self.get_many([key])[0]

    def refresh(self) -> None:
        """Load the packs written since the last look (one ``stat`` when there are none). A
        folder changed within the last seconds is listed again on the next look: on file
        systems with coarse timestamps a pack committed in the same tick leaves the mtime as it was."""
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._seen_mtime:
            return
        with self._lock:
            if mtime == self._seen_mtime:
                return
            fresh = [
                self._load(keys_file.name[: -len(KEYS)], keys_file)
                for keys_file in sorted(self.folder.glob(f"*{KEYS}"))
                if keys_file.name[: -len(KEYS)] not in self._loaded
            ]
            entries = [_entries(pack, self._keys[pack]) for pack in fresh if pack is not None]
            if entries:
                merged = np.sort(np.concatenate([_joined(self._index), *entries]), order=("tag", "offset"))
                self._index = tuple(np.ascontiguousarray(merged[name]) for name in _FIELDS)
            if time.time_ns() - mtime > SETTLED_NS:
                self._seen_mtime = mtime

    def _load(self, name: str, keys_file: Path) -> int | None:
        """Map one pack; its number, or ``None`` when it is damaged (then skipped, and listed in ``damaged``)."""
        self._loaded.add(name)
        try:
            keys = _mapped(keys_file)
            arrays = []
            part = 0
            while (self.folder / f"{name}.{part}.npy").is_file():
                arrays.append(_mapped(self.folder / f"{name}.{part}.npy"))
                part += 1
        except (OSError, ValueError, EOFError):
            self.damaged.append(name)
            return None
        if keys.dtype != KEY_DTYPE or not arrays or any(len(array) != len(keys) for array in arrays):
            self.damaged.append(name)  # not a complete pack (written by hand or damaged)
            return None
        self._names.append(name)
        self._packs.append(tuple(arrays))
        self._keys.append(keys)
        return len(self._packs) - 1

    def add(self, keys: Sequence[Key], features: Sequence[Features]) -> None:
        """Write one pack of ``features`` (each a tuple of same-shaped arrays) under ``keys``."""
        if keys:
            table = np.array([(digest.encode(), offset) for digest, offset in keys], dtype=KEY_DTYPE)
            self._write(table, tuple(np.stack([f[part] for f in features]) for part in range(len(features[0]))))
        self.refresh()

    def _write(self, table: np.ndarray, arrays: tuple[np.ndarray, ...]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        for part, array in enumerate(arrays):
            atomic_write(self.folder / f"{name}.{part}.npy", partial(_save, array=array))
        atomic_write(self.folder / f"{name}{KEYS}", partial(_save, array=table))  # the pack's commit point

    def prune(self, live_tags: np.ndarray, live_offsets: np.ndarray, share: float = PRUNE_SHARE) -> int:
        """Rewrite the packs without the entries no live item has (``live_tags`` from
        :func:`tag_of`, with their offsets) once those are more than ``share`` of the store;
        returns how many entries went. Each pack is rewritten before the old one is
        uncommitted (its keys file goes first), so a crash leaves duplicates or orphans the
        next sweep removes, never a missing entry. Only under :meth:`writing`."""
        self.refresh()
        tags, offsets, packs, rows = self._index
        keep = np.isin(_combined(tags, offsets), _combined(live_tags, live_offsets))
        dropped = int((~keep).sum())
        if dropped == 0 or dropped <= share * len(tags):
            return 0
        for pack, name in enumerate(self._names):
            kept = np.sort(rows[(packs == pack) & keep])
            if len(kept):
                self._write(np.asarray(self._keys[pack][kept]), tuple(a[kept] for a in self._packs[pack]))
            (self.folder / f"{name}{KEYS}").unlink()
            for part in range(len(self._packs[pack])):
                (self.folder / f"{name}.{part}.npy").unlink()
        with self._lock:
            self._forget()
        return dropped

    def sweep(self) -> int:
        """Remove arrays of packs whose keys were never written (a crash mid-pack) and
        temporary files; returns how many files went. Only under :meth:`writing`: another
        writer may be mid-pack."""
        committed = {p.name[: -len(KEYS)] for p in self.folder.glob(f"*{KEYS}")}
        removed = 0
        for path in self.folder.glob("*"):
            orphan = path.name.endswith(TMP_SUFFIX) or path.name.split(".", 1)[0] not in committed
            if orphan and path.name != LOCK and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def writing(self) -> WriterLock:
        """The store's own writer lock: packs are written by one process at a time, while the
        index itself stays free for other writers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return WriterLock(self.folder)


def tag_of(digest: str) -> int:
    """A content hash as the 64-bit tag the store sorts by."""
    return int.from_bytes(hashlib.blake2b(digest.encode(), digest_size=8).digest(), "little")


def _combined(tags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(tag, offset) as one 64-bit value, for set membership (a collision only keeps an entry)."""
    millis = np.round(np.asarray(offsets, np.float64) * 1000).astype(np.int64).view(np.uint64)
    return np.asarray(tags, np.uint64) ^ (millis * np.uint64(0x9E3779B97F4A7C15))


def _joined(index: tuple[np.ndarray, ...]) -> np.ndarray:
    entries = np.empty(len(index[0]), _ENTRY)
    for name, column in zip(_FIELDS, index):
        entries[name] = column
    return entries


def _entries(pack: int, keys: np.ndarray) -> np.ndarray:
    entries = np.empty(len(keys), _ENTRY)
    entries["tag"] = [tag_of(digest.decode()) for digest in keys["hash"].tolist()]
    entries["offset"] = keys["offset"]
    entries["pack"] = pack
    entries["row"] = np.arange(len(keys))
    return entries


def _mapped(path: Path) -> np.ndarray:
    """The array in a ``.npy`` file, memory-mapped read-only, as a plain ndarray view (it keeps
    the map open): indexing an ``np.memmap`` runs Python code on every access, which cost
    more than the rest of a 50-candidate look-up."""
    return np.load(path, mmap_mode="r").view(np.ndarray)


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)
