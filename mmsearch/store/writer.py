"""The shard writer: buffers new rows, seals full shards and commits the manifest.

Rows accumulate until a shard is full, then the shard is sealed and the manifest
committed, so a long ingest checkpoints as it goes and a crash loses at most one
unsealed shard (re-running ``index`` resumes). A partly filled last shard is
merged into the next shard written, keeping the shard count low.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmsearch.errors import UserInputError
from mmsearch.store import manifest as manifest_io
from mmsearch.store.atomic import TMP_SUFFIX, atomic_write
from mmsearch.store.lock import WriterLock
from mmsearch.store.manifest import Manifest
from mmsearch.store.schema import FAILURE_SCHEMA, items_table
from mmsearch.store.shard import SHARDS_DIR, Shard, seal, shard_name


class ShardWriter:
    """Single-writer session over an index; use as a context manager."""

    def __init__(self, index_dir: Path, manifest: Manifest | None = None, checkpoints: bool = True) -> None:
        """Open the index at ``index_dir``; a given ``manifest`` creates it instead.

        With ``checkpoints`` off (compaction), nothing is published before ``commit``.
        """
        self.dir = Path(index_dir)
        self.checkpoints = checkpoints
        self.lock = WriterLock(self.dir)
        self._initial = manifest
        self.manifest: Manifest
        self._vectors: list[np.ndarray] = []
        self._rows: list[dict] = []
        self._pending_tombstones: list[int] = []
        self._merged_tail = False

    def __enter__(self) -> ShardWriter:
        if self.dir.exists() and not self.dir.is_dir():
            raise UserInputError(f"index path {self.dir} is a file, not a folder")
        (self.dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        self.lock.__enter__()
        try:
            if self._initial is not None and manifest_io.exists(self.dir):
                raise UserInputError(f"an index already exists at {self.dir}")
            self.manifest = self._initial or manifest_io.load(self.dir)
            if self._initial is not None:
                self._publish()
            self.sweep()
        except BaseException:
            self.lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.lock.__exit__(exc_type, exc, tb)

    @property
    def buffered(self) -> int:
        return len(self._rows)

    def next_ids(self, count: int) -> np.ndarray:
        """Reserve ``count`` fresh int64 ids."""
        start = self.manifest.next_id
        self.manifest.next_id += count
        return np.arange(start, start + count, dtype=np.int64)

    def append(self, vectors: np.ndarray, rows: list[dict], replaces: Iterable[int] = ()) -> None:
        """Add rows (ids already set); ``replaces`` are tombstoned in the same commit."""
        if not rows:
            return
        self._merge_tail()
        self._vectors.append(np.asarray(vectors, dtype=np.float32))
        self._rows.extend(rows)
        self._pending_tombstones.extend(replaces)
        while self.buffered >= self.manifest.shard_size:
            self._seal(self.manifest.shard_size)
            if self.checkpoints:
                self._publish()

    def tombstone(self, ids: Iterable[int]) -> None:
        """Hide ids from searches from the next commit on."""
        self._pending_tombstones.extend(ids)

    def set_failures(self, rows: list[dict]) -> None:
        """Replace the failure table with ``rows`` at the next commit."""
        name = f"failures-{self.manifest.generation + 1:06d}.parquet"
        table = pa.Table.from_pylist(rows, schema=FAILURE_SCHEMA)
        atomic_write(self.dir / SHARDS_DIR / name, lambda tmp: pq.write_table(table, tmp))
        self.manifest.failures = name

    def detach_all(self) -> tuple[list[Shard], set[int]]:
        """Take every shard and tombstone out of the manifest for a rewrite (compaction).

        Returns the old shards and tombstones so the caller can copy the live rows.
        """
        shards = [Shard(self.dir, info) for info in self.manifest.shards]
        dead = set(self.manifest.tombstones)
        self.manifest.shards, self.manifest.tombstones = [], []
        self._merged_tail = True
        return shards, dead

    def commit(self) -> None:
        """Seal buffered rows into a shard and make every change visible atomically."""
        if self._rows:
            self._seal(len(self._rows))
        self._publish()

    def _publish(self) -> None:
        """Replace the manifest (valid only when no merged tail rows are unsealed)."""
        self.manifest.tombstones = sorted(set(self.manifest.tombstones) | set(self._pending_tombstones))
        self._pending_tombstones = []
        manifest_io.commit(self.dir, self.manifest)
        self.sweep()

    def _seal(self, count: int) -> None:
        vectors = np.concatenate(self._vectors)
        name = shard_name(self.manifest.next_shard)
        self.manifest.next_shard += 1
        info = seal(self.dir, name, self.manifest.recipe, vectors[:count], items_table(self._rows[:count]))
        self.manifest.shards.append(info)
        self._vectors = [vectors[count:]] if count < len(vectors) else []
        self._rows = self._rows[count:]

    def _merge_tail(self) -> None:
        """Pull a partly filled last shard into the buffer, minus its tombstoned rows."""
        if self._merged_tail:
            return
        self._merged_tail = True
        shards = self.manifest.shards
        if not shards or shards[-1].rows >= self.manifest.shard_size:
            return
        tail = Shard(self.dir, shards.pop())
        dead = set(self.manifest.tombstones)
        vectors, rows = tail.select(dead, exclude=True)
        self.manifest.tombstones = sorted(dead - set(tail.ids.tolist()))
        self._vectors.append(vectors)
        self._rows.extend(rows)

    def sweep(self) -> None:
        """Delete files the manifest does not name: crash leftovers and replaced shards."""
        folder = self.dir / SHARDS_DIR
        named = {self.manifest.failures} if self.manifest.failures else set()
        for info in self.manifest.shards:
            named.update({f"{info.name}.faiss", f"{info.name}.parquet"})
        for path in folder.iterdir():
            if path.name not in named or path.name.endswith(TMP_SUFFIX):
                path.unlink(missing_ok=True)
