"""The shard writer: buffers new rows, seals full shards and commits the manifest.

Rows accumulate until a shard is full, then the shard is sealed and the manifest
committed, so a long ingest checkpoints as it goes and a crash loses at most one
unsealed shard (re-running ``index`` resumes). Each commit seals what is left as a
small segment of its own: an append never rewrites a big shard. Small segments are
merged by a size-tiered policy (Lucene's): when ``MERGE_FACTOR`` segments share a
size tier (1-9 rows, 10-99, ...), they are rewritten as one, without their deleted
rows, so a row is rewritten only a logarithmic number of times.

Visibility is per group (a file's rows): a group's rows, and the tombstones of the
rows they replace, become visible together in the first commit where every row of
the group is sealed. Until then its sealed rows are hidden and the old version
stays visible, so at every committed generation a file is present exactly once.

Files a commit stops naming are retired, not deleted: a reader that opened the
previous generation may still read them. They are deleted by a later writer once
``RETIRE_GRACE_S`` has passed.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmsearch.errors import UserInputError
from mmsearch.store import manifest as manifest_io
from mmsearch.store.atomic import TMP_SUFFIX, atomic_write, fsync_dir
from mmsearch.store.lock import WriterLock
from mmsearch.store.manifest import Manifest, ShardInfo
from mmsearch.store.schema import FAILURE_SCHEMA, conform_items, items_table
from mmsearch.store.shard import SHARDS_DIR, Shard, faiss_path, parquet_path, seal, shard_name

RETIRE_GRACE_S = 600.0
MERGE_FACTOR = 10


@dataclass
class _Group:
    """Rows that become visible together, with the ids they supersede."""

    ids: list[np.ndarray] = field(default_factory=list)
    replaces: list[int] = field(default_factory=list)


def dropped_message(problem: str, rows: int | None, lost: str) -> str:
    """One line for what :meth:`ShardWriter.drop_damaged` dropped: ``lost`` follows a shard's row count."""
    return problem if rows is None else f"{problem}: {rows} {lost}"


class ShardWriter:
    """Single-writer session over an index; use as a context manager."""

    def __init__(
        self,
        index_dir: Path,
        manifest: Manifest | None = None,
        checkpoints: bool = True,
        salvaged: list[str] | None = None,
    ) -> None:
        """Open the index at ``index_dir``; a given ``manifest`` creates it instead.

        With ``checkpoints`` off (compaction), nothing is published before ``commit``.
        ``salvaged`` (``repair``): see :func:`manifest.load`.
        """
        self.dir = Path(index_dir)
        self.checkpoints = checkpoints
        self.salvaged = salvaged
        self.lock = WriterLock(self.dir)
        self._initial = manifest
        self.manifest: Manifest
        self._vectors: list[np.ndarray] = []
        self._tables: list[pa.Table] = []
        self._buffered = 0
        self._open_groups: dict[Hashable, _Group] = {}
        self._closed_groups: list[_Group] = []
        self._sealed_ids: list[np.ndarray] = []
        self._visible: list[np.ndarray] = []
        self._superseded: set[int] = set()
        self._committed_names: set[str] = set()
        self._base_tombstones: set[int] | None = None
        self.expected_rows = 0  # rows the index will hold after this session, when known (compaction)
        self._published_at = time.monotonic()

    def __enter__(self) -> ShardWriter:
        if self.dir.exists() and not self.dir.is_dir():
            raise UserInputError(f"index path {self.dir} is a file, not a folder")
        (self.dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        self.lock.__enter__()
        try:
            if self._initial is not None and manifest_io.exists(self.dir):
                raise UserInputError(f"an index already exists at {self.dir}")
            self.manifest = self._initial or manifest_io.load(self.dir, self.salvaged)
            self._committed_names = set() if self._initial else _named_files(self.manifest)
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
        return self._buffered

    def next_ids(self, count: int) -> np.ndarray:
        """Reserve ``count`` fresh int64 ids."""
        start = self.manifest.next_id
        self.manifest.next_id += count
        return np.arange(start, start + count, dtype=np.int64)

    def append(
        self,
        vectors: np.ndarray,
        rows: list[dict] | pa.Table,
        replaces: Iterable[int] = (),
        *,
        group: Hashable | None = None,
        last: bool = True,
    ) -> None:
        """Add metadata rows (ids already set; dicts or an items table) and their vectors,
        superseding the ids in ``replaces``.

        Rows of one ``group`` (e.g. a file's passages) may come in several calls; the
        group is complete with the call where ``last`` is true, and becomes visible,
        replacing what it supersedes, once all its rows are sealed.
        """
        self._stage(vectors, rows, replaces, group, last)
        self._seal_full()

    def _seal_full(self) -> None:
        while self.buffered >= self.manifest.shard_size:
            self._seal(self.manifest.shard_size)
            if self.checkpoints:
                self._publish()

    def _stage(
        self,
        vectors: np.ndarray,
        rows: list[dict] | pa.Table,
        replaces: Iterable[int],
        group: Hashable | None,
        last: bool,
    ) -> None:
        key = object() if group is None else group
        pending = self._open_groups.setdefault(key, _Group())
        pending.replaces.extend(replaces)
        table = conform_items(rows) if isinstance(rows, pa.Table) else items_table(rows)
        if table.num_rows:
            self._vectors.append(np.asarray(vectors, dtype=np.float32))
            self._tables.append(table)
            self._buffered += table.num_rows
            pending.ids.append(table.column("id").to_numpy().astype(np.int64))
        if last:
            self._closed_groups.append(self._open_groups.pop(key))

    def tombstone(self, ids: Iterable[int]) -> None:
        """Hide ids from searches from the next commit on."""
        self._stage(np.empty((0, self.manifest.dim), np.float32), [], ids, None, True)

    def drop_damaged(self, *, checksums: bool = False) -> list[tuple[str, int | None]]:
        """Take unusable shards out of the manifest (committed at the next publish).

        Their items are no longer known, so the next ``add`` embeds their files again.
        Returns (problem, rows lost) per dropped shard, (problem, None) for a dropped failure table.
        """
        dropped: list[tuple[str, int | None]] = []
        for info in list(self.manifest.shards):
            problem = Shard(self.dir, info).problem(checksums=checksums)
            if problem is not None:
                self.manifest.shards.remove(info)
                dropped.append((problem, info.rows))
        problem = manifest_io.failures_problem(self.dir, self.manifest)
        if problem is not None:
            self.manifest.failures = None
            dropped.append((f"{problem}: the record of failed files is gone (the next `index` retries them)", None))
        return dropped

    def set_failures(self, rows: list[dict]) -> None:
        """Replace the failure table with ``rows`` at the next commit."""
        name = f"failures-{self.manifest.generation + 1:06d}.parquet"
        table = pa.Table.from_pylist(rows, schema=FAILURE_SCHEMA)
        atomic_write(self.dir / SHARDS_DIR / name, lambda tmp: pq.write_table(table, tmp))
        self.manifest.failures = name

    def adopt(self, folder: Path, infos: Iterable[ShardInfo]) -> None:
        """Name segments sealed elsewhere (``folder/shards/``, e.g. by distributed workers) in
        the next commit, under fresh names. They are hard-linked (copied where links are not
        possible), so ``folder`` stays intact until the commit has happened."""
        for info in infos:
            name = shard_name(self.manifest.next_shard)
            self.manifest.next_shard += 1
            for source, target in (
                (faiss_path(folder, info.name), faiss_path(self.dir, name)),
                (parquet_path(folder, info.name), parquet_path(self.dir, name)),
            ):
                target.unlink(missing_ok=True)  # an orphan of a crashed run under the same name
                try:
                    os.link(source, target)
                except OSError:
                    atomic_write(target, functools.partial(shutil.copyfile, source))
            self.manifest.shards.append(replace(info, name=name))
        fsync_dir(self.dir / SHARDS_DIR)

    def detach_all(self) -> tuple[list[Shard], set[int]]:
        """Take every shard and tombstone out of the manifest for a rewrite (compaction).

        Returns the old shards and tombstones so the caller can copy the live rows.
        """
        shards = [Shard(self.dir, info) for info in self.manifest.shards]
        dead = set(self.manifest.tombstones.tolist())
        self.manifest.shards, self.manifest.tombstones = [], np.empty(0, np.int64)
        self._base_tombstones = set()
        return shards, dead

    def checkpoint(self, every_s: float) -> None:
        """Commit if complete groups wait to become visible and ``every_s`` seconds have passed
        since the last commit: a long ingest loses at most that much work to a crash, even
        while no shard fills (a long film, a slow model)."""
        if self.checkpoints and self._closed_groups and time.monotonic() - self._published_at >= every_s:
            self.commit()

    def commit(self) -> None:
        """Seal buffered rows into a segment and make every change visible atomically;
        then merge small segments if a size tier is full (committed again)."""
        if self._buffered:
            self._seal(self._buffered)
        self._publish()
        if self.checkpoints:
            while self._merge_tier():
                self._publish()

    def _merge_tier(self) -> bool:
        """Rewrite the segments of the smallest full size tier as one; False if none is full,
        or while a group is open (its sealed rows, re-staged, would lose their group)."""
        if any(group.ids for group in self._open_groups.values()):
            return False
        tiers: dict[int, list[ShardInfo]] = defaultdict(list)
        for info in self.manifest.shards:
            if info.rows < self.manifest.shard_size:  # full shards are final: merging them gains nothing
                tiers[len(str(max(info.rows, 1))) - 1].append(info)  # 1-9 rows, 10-99, ... (MERGE_FACTOR 10)
        full = [group for _, group in sorted(tiers.items()) if len(group) >= MERGE_FACTOR]
        if not full or sum(info.rows for info in full[0]) > self.manifest.shard_size * MERGE_FACTOR:
            return False
        group = full[0]
        assert self._base_tombstones is not None  # set by the _publish that always precedes a merge
        dead = self._base_tombstones | self._superseded
        for info in group:
            segment = Shard(self.dir, info)
            segment.check_intact()
            vectors, rows = segment.select(dead, exclude=True)
            self.manifest.shards.remove(info)
            gone = set(segment.ids.tolist())
            self._base_tombstones -= gone
            self._superseded -= gone
            self._stage(vectors, rows, (), None, True)
        while self._buffered:  # sealed, not published: the merge becomes visible in one commit
            self._seal(min(self._buffered, self.manifest.shard_size))
        return True

    def _publish(self) -> None:
        """Replace the manifest: complete, sealed groups become visible, the rest stays hidden."""
        if self._base_tombstones is None:
            self._base_tombstones = set(self.manifest.tombstones)
        sealed = np.concatenate(self._sealed_ids) if self._sealed_ids else np.empty(0, np.int64)
        group_ids = [np.concatenate(g.ids) if g.ids else np.empty(0, np.int64) for g in self._closed_groups]
        owner = np.repeat(np.arange(len(group_ids)), [len(ids) for ids in group_ids])
        unsealed = set(owner[~np.isin(np.concatenate([np.empty(0, np.int64), *group_ids]), sealed)].tolist())
        for number, done in enumerate(self._closed_groups):
            if number not in unsealed:
                self._visible.append(group_ids[number])
                self._superseded.update(done.replaces)
        self._closed_groups = [g for number, g in enumerate(self._closed_groups) if number in unsealed]
        hidden = sealed[~np.isin(sealed, np.concatenate([np.empty(0, np.int64), *self._visible]))]
        dead = self._base_tombstones | self._superseded | set(hidden.tolist())
        self.manifest.tombstones = np.array(sorted(dead), dtype=np.int64)
        manifest_io.commit(self.dir, self.manifest, before_write=self._retire)  # a superseded deletions file retires
        self._committed_names = _named_files(self.manifest)
        self._published_at = time.monotonic()
        self.sweep()

    def _seal(self, count: int) -> None:
        vectors = np.concatenate(self._vectors)
        rows = pa.concat_tables(self._tables)
        name = shard_name(self.manifest.next_shard)
        self.manifest.next_shard += 1
        table = rows.slice(0, count).combine_chunks()
        info = seal(self.dir, name, self.manifest.recipe, vectors[:count], table, self.bytes_per_vector())
        self.manifest.shards.append(info)
        self._sealed_ids.append(table.column("id").to_numpy().astype(np.int64))
        self._vectors = [vectors[count:]] if count < len(vectors) else []
        self._tables = [rows.slice(count)] if count < rows.num_rows else []
        self._buffered -= count

    def bytes_per_vector(self, incoming: int = 0) -> float | None:
        """The manifest's memory budget shared by every row the index holds once the buffer is
        sealed (sealed shards, tombstoned rows included, plus the buffer and ``incoming`` rows
        sealed elsewhere; or ``expected_rows`` if larger). Rows that arrive in later sessions
        tighten it for later shards; ``compact`` re-seals every shard under it."""
        if self.manifest.max_memory is None:
            return None
        rows = sum(info.rows for info in self.manifest.shards) + self._buffered + incoming
        return self.manifest.max_memory / max(rows, self.expected_rows, 1)

    def _retire(self) -> None:
        """Record files the last committed generation named and this one does not."""
        now = time.time()
        still_named = _named_files(self.manifest)
        for name in self._committed_names - still_named:
            self.manifest.retired.setdefault(name, now)
        for name in still_named:
            self.manifest.retired.pop(name, None)

    def sweep(self) -> None:
        """Delete crash leftovers, and retired files once no reader can still use them."""
        folder = self.dir / SHARDS_DIR
        named = _named_files(self.manifest)
        expired = {name for name, since in self.manifest.retired.items() if time.time() - since > RETIRE_GRACE_S}
        for path in folder.iterdir():
            retired = path.name in self.manifest.retired
            if path.name.endswith(TMP_SUFFIX) or (path.name not in named and (not retired or path.name in expired)):
                path.unlink(missing_ok=True)
        for name in expired:
            self.manifest.retired.pop(name, None)


def _named_files(manifest: Manifest) -> set[str]:
    """The file names (inside ``shards/``) a manifest refers to."""
    named = {name for name in (manifest.failures, manifest.deletions) if name}
    for info in manifest.shards:
        named.update({f"{info.name}.faiss", f"{info.name}.parquet"})
    return named
