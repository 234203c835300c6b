"""A snapshot: one committed generation, as the immutable state every read uses.

A reader takes the current snapshot once and uses only it, so a concurrent commit
never mixes two generations inside one query; a newer snapshot replaces the old
one atomically. Whether a newer generation exists is a ``stat`` of the manifest,
not a JSON parse. Shards unchanged between generations are shared, so their loaded
FAISS indexes survive a refresh.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmsearch.errors import ShardDamagedError
from mmsearch.store import manifest as manifest_io
from mmsearch.store.catalog import Catalog
from mmsearch.store.manifest import Manifest
from mmsearch.store.schema import FAILURE_SCHEMA, ITEM_SCHEMA
from mmsearch.store.shard import SHARDS_DIR, RowFilter, Shard

Stamp = tuple[int, int, int]
KEPT_COLUMNS = ("id", "modality", "path")  # read by the engine itself, even where all null


def manifest_stamp(index_dir: Path) -> Stamp:
    """Identity of the manifest file (it is replaced by rename on every commit)."""
    try:
        stat = os.stat(os.path.join(index_dir, manifest_io.MANIFEST_NAME))
    except FileNotFoundError:
        raise manifest_io.not_found(index_dir) from None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class Snapshot:
    """Manifest, shards, tombstones and (lazily) the metadata catalog of one generation."""

    def __init__(self, index_dir: Path, manifest: Manifest, stamp: Stamp | None, previous: Snapshot | None = None):
        """``stamp``: the manifest file's identity when read (``None`` for a writer's own view)."""
        self.dir = Path(index_dir)
        self.manifest = manifest
        self.stamp = stamp
        reusable = {s.info: s for s in previous.shards} if previous is not None else {}
        self.shards: list[Shard] = [reusable.get(info) or Shard(self.dir, info) for info in manifest.shards]
        self.tombstones = np.asarray(manifest.tombstones, dtype=np.int64)
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._counts: dict[str, int] | None = None
        self._live: list[RowFilter | None] | None = None
        self.allowed = lru_cache(maxsize=8)(self._allowed)

    @classmethod
    def load(cls, index_dir: Path, previous: Snapshot | None = None) -> Snapshot:
        """The current generation; ``previous`` itself when nothing was committed since."""
        stamp = manifest_stamp(index_dir)
        if previous is not None and stamp == previous.stamp:
            return previous
        manifest = manifest_io.load(index_dir)
        if previous is not None and manifest.generation == previous.manifest.generation:
            return previous
        return cls(index_dir, manifest, stamp, previous)

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def catalog(self) -> Catalog:
        """Live rows and failures in memory, read once per generation."""
        if self._catalog is None:
            with self._lock:
                if self._catalog is None:
                    self._catalog = Catalog(self._live_items(), self._failures())
        return self._catalog

    def _live_items(self) -> pa.Table:
        """The live rows, without the columns that are null in every row (see :class:`Catalog`)."""
        valued = set().union(KEPT_COLUMNS, *(shard.valued_columns() for shard in self.shards))
        tables = [shard.table(valued) for shard in self.shards]
        items = pa.concat_tables(tables) if tables else ITEM_SCHEMA.empty_table()
        if len(self.tombstones):
            items = items.filter(pc.invert(pc.is_in(items.column("id"), pa.array(self.tombstones))))
        return items.combine_chunks()

    def _failures(self) -> pa.Table:
        if not self.manifest.failures:
            return FAILURE_SCHEMA.empty_table()
        path = self.dir / SHARDS_DIR / self.manifest.failures
        try:
            return pq.read_table(path).cast(FAILURE_SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            raise ShardDamagedError(path, str(exc)) from None

    def failure_count(self) -> int:
        """Files recorded as failed (the Parquet footer alone unless the catalog is loaded)."""
        if self._catalog is not None or not self.manifest.failures:
            return self.catalog.failures.num_rows if self._catalog is not None else 0
        path = self.dir / SHARDS_DIR / self.manifest.failures
        try:
            return pq.read_metadata(path).num_rows
        except (OSError, pa.ArrowException) as exc:
            raise ShardDamagedError(path, str(exc)) from None

    def live(self) -> list[RowFilter | None]:
        """Per shard, its rows that are not deleted (``None``: all of them)."""
        if self._live is None:
            masks = [~np.isin(shard.ids, self.tombstones) for shard in self.shards]
            self._live = [RowFilter(_frozen(mask)) if not mask.all() else None for mask in masks]
        return self._live

    def _allowed(self, where: str | None, modality: str | None = None) -> list[RowFilter | None]:
        """Per shard, the rows a search may return: live, matching ``where`` (a SQL
        expression over ``items``) and of ``modality``, evaluated once per generation and
        cached. The filter and the modality are evaluated apart and intersected, never
        joined as SQL text, so no filter can lift the modality restriction."""
        if not where and modality is None:
            return self.live()
        catalog = self.catalog
        if modality is None:
            ids = catalog.ids_where(where)  # live ids only
        elif where:
            ids = np.intersect1d(catalog.ids_where(where), catalog.ids_of_modality(modality), assume_unique=True)
        else:
            ids = catalog.ids_of_modality(modality)
        return [RowFilter(_frozen(np.isin(shard.ids, ids))) for shard in self.shards]

    def counts(self) -> dict[str, int]:
        """Live items per modality."""
        if self._counts is None:
            table = self.catalog.items.group_by("modality").aggregate([("id", "count")]).sort_by("modality")
            self._counts = dict(zip(table.column("modality").to_pylist(), table.column("id_count").to_pylist()))
        return self._counts


def _frozen(mask: np.ndarray) -> np.ndarray:
    mask.setflags(write=False)
    return mask
