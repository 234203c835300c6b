"""Shards: an immutable FAISS index file and its Parquet metadata, sealed together.

A shard is written once under a fresh name and never modified; replacing a shard
means writing a new one and committing a manifest that names it instead.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmsearch.errors import IndexFormatError, ShardDamagedError, one_line
from mmsearch.hashing import file_digest
from mmsearch.store import recipes
from mmsearch.store.atomic import atomic_write
from mmsearch.store.manifest import SHARDS_DIR, ShardInfo
from mmsearch.store.schema import conform_items

MMAP_IVF_MIN_BYTES = 4 << 30


def shard_name(number: int) -> str:
    return f"{number:06d}"


def faiss_path(index_dir: Path, name: str) -> Path:
    return Path(index_dir) / SHARDS_DIR / f"{name}.faiss"


def parquet_path(index_dir: Path, name: str) -> Path:
    return Path(index_dir) / SHARDS_DIR / f"{name}.parquet"


def seal(
    index_dir: Path,
    name: str,
    recipe: str,
    vectors: np.ndarray,
    table: pa.Table,
    max_bytes_per_vector: float | None = None,
) -> ShardInfo:
    """Build, tune and write both files of a shard atomically; return its manifest entry.

    Row i of the FAISS index is row i of the Parquet file, which holds the ids.
    ``max_bytes_per_vector`` is the memory budget an ``auto`` recipe must fit.
    """
    factory = recipes.resolve(recipe, len(table), vectors.shape[1], max_bytes_per_vector)
    index = recipes.build(factory, vectors)
    tuning = recipes.tune(index, factory, vectors)
    fpath, ppath = faiss_path(index_dir, name), parquet_path(index_dir, name)
    atomic_write(fpath, lambda tmp: faiss.write_index(index, str(tmp)))
    atomic_write(ppath, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    return ShardInfo(
        name,
        len(table),
        factory,
        file_digest(fpath),
        file_digest(ppath),
        fpath.stat().st_size,
        ppath.stat().st_size,
        dict(tuning.params),
        round(tuning.recall, 4),
    )


class Shard:
    """Read access to one sealed shard; files are loaded on first use.

    Safe to share between threads: loading happens once under a lock, and FAISS CPU
    searches on a loaded index are read-only. A missing or unreadable file raises
    :class:`ShardDamagedError`, never a FAISS/Arrow error.
    """

    def __init__(self, index_dir: Path, info: ShardInfo) -> None:
        self.info = info
        self.faiss_file = faiss_path(index_dir, info.name)
        self.parquet_file = parquet_path(index_dir, info.name)
        self._lock = threading.Lock()
        self._index: faiss.Index | None = None
        self._ids: np.ndarray | None = None
        self._order: np.ndarray | None = None
        self._plain_params: tuple[faiss.SearchParameters | None] | None = None  # built once, shared by threads

    @property
    def index(self) -> faiss.Index:
        """The bare FAISS index (shards of format 1 are unwrapped from their IDMap2)."""
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index = self._read_faiss()
        return self._index

    def _read_faiss(self) -> faiss.Index:
        """Memory-map flat codes (a shard's files never change), so opening is fast and memory
        tracks what queries touch. IVF lists are mapped only above ``MMAP_IVF_MIN_BYTES``: FAISS
        maps them as on-disk lists, which made searches 1.3-2.4× slower (benchmarks/search.py)."""
        if "IVF" in self.info.recipe:
            big = (self.info.faiss_bytes or 0) >= MMAP_IVF_MIN_BYTES
            flag = faiss.IO_FLAG_MMAP if big else 0
        else:
            flag = faiss.IO_FLAG_MMAP_IFC
        try:
            try:
                index = faiss.read_index(str(self.faiss_file), flag)
            except RuntimeError:
                index = faiss.read_index(str(self.faiss_file))
            index, _ = recipes.unwrap(index)
        except RuntimeError as exc:
            raise ShardDamagedError(self.faiss_file, str(exc).strip().splitlines()[-1]) from None
        if index.ntotal != self.info.rows:
            raise ShardDamagedError(self.faiss_file, f"{index.ntotal} vectors, the manifest says {self.info.rows}")
        return index

    @property
    def ids(self) -> np.ndarray:
        """Item ids by row (read from the Parquet file's id column)."""
        if self._ids is None:
            with self._lock:
                if self._ids is None:
                    self._ids = self._read_table(columns=["id"]).column("id").to_numpy().astype(np.int64)
        return self._ids

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row numbers of those ``ids`` that live in this shard."""
        if self._order is None:
            self._order = np.argsort(self.ids, kind="stable")
        sorted_ids = self.ids[self._order]
        at = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
        hit = sorted_ids[at] == ids if len(sorted_ids) else np.zeros(len(ids), bool)
        return np.sort(self._order[at[hit]])

    def search(
        self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None = None, widen: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, rows) per query; missing slots have row -1. ``widen`` scales
        the tuned nprobe/efSearch (a selective filter leaves fewer candidates per probe)."""
        if selector is None and widen <= 1.0:
            if self._plain_params is None:
                self._plain_params = (recipes.search_params(self.info.recipe, self.info.params),)
            params = self._plain_params[0]
        else:
            params = recipes.search_params(self.info.recipe, _widened(self.info.params, widen), selector)
        return recipes.search(self.index, queries, min(k, self.info.rows), params)

    def vectors(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Stored vectors of ``rows`` (all of them, in row order, when ``None``)."""
        rows = np.arange(self.info.rows) if rows is None else np.asarray(rows, dtype=np.int64)
        return recipes.reconstruct(self.index, rows)

    def _read_table(self, columns: list[str] | None = None) -> pa.Table:
        try:
            table = pq.read_table(self.parquet_file, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise ShardDamagedError(self.parquet_file, str(exc)) from None
        if table.num_rows != self.info.rows:
            raise ShardDamagedError(self.parquet_file, f"{table.num_rows} rows, the manifest says {self.info.rows}")
        return table

    def table(self, columns: Collection[str] | None = None) -> pa.Table:
        """The shard's metadata in the current items schema (only ``columns``, if given)."""
        stored = None if columns is None else [c for c in self._stored_columns if c in columns]
        return conform_items(self._read_table(columns=stored), columns)

    @cached_property
    def _stored_columns(self) -> list[str]:
        return self._footer.schema.to_arrow_schema().names

    @cached_property
    def _footer(self) -> pq.FileMetaData:
        try:
            return pq.read_metadata(self.parquet_file)
        except (OSError, pa.ArrowException) as exc:
            raise ShardDamagedError(self.parquet_file, str(exc)) from None

    def valued_columns(self) -> set[str]:
        """Columns holding a value in some row, from the Parquet footer's statistics (a column
        without statistics counts as valued): the others need not be read at all."""
        footer = self._footer
        valued = set()
        for group in range(footer.num_row_groups):
            row_group = footer.row_group(group)
            for position in range(row_group.num_columns):
                chunk = row_group.column(position)
                stats = chunk.statistics
                if stats is None or not stats.has_null_count or stats.null_count < chunk.num_values:
                    valued.add(chunk.path_in_schema)
        return valued

    def select(self, ids: Iterable[int], *, exclude: bool = False) -> tuple[np.ndarray, pa.Table]:
        """Vectors and aligned metadata of this shard's ids in ``ids`` (not in them, with ``exclude``)."""
        keep = np.isin(self.ids, np.fromiter(ids, dtype=np.int64)) != exclude
        rows = np.flatnonzero(keep)
        return self.vectors(rows), self.table().take(pa.array(rows))

    def check_intact(self) -> None:
        """Refuse to copy a shard whose files fail their checksums (what ``verify`` checks):
        a rewrite would seal the damage under fresh checksums, where ``repair`` no longer sees it."""
        problem = self.problem(checksums=True)
        if problem is not None:
            raise IndexFormatError(f"{problem}; run `mmsearch repair` first")

    def problem(self, *, checksums: bool = False) -> str | None:
        """Why this shard is unusable, or ``None``. Cheap by default (presence, sizes,
        Parquet footer); ``checksums`` hashes both files."""
        expected = (
            (self.faiss_file, self.info.faiss_bytes, self.info.faiss_sha256),
            (self.parquet_file, self.info.parquet_bytes, self.info.parquet_sha256),
        )
        for path, size, digest in expected:
            if not path.is_file():
                return f"{path}: missing"
            if size is not None and path.stat().st_size != size:
                return f"{path}: size {path.stat().st_size} bytes, the manifest says {size}"
            if checksums and file_digest(path) != digest:
                return f"{path}: checksum mismatch"
        try:
            rows = pq.read_metadata(self.parquet_file).num_rows
        except (OSError, pa.ArrowException) as exc:
            return f"{self.parquet_file}: unreadable ({one_line(exc, 120)})"
        if rows != self.info.rows:
            return f"{self.parquet_file}: holds {rows} rows, the manifest says {self.info.rows}"
        return None


def _widened(params: dict[str, float], factor: float) -> dict[str, float]:
    if factor <= 1.0:
        return params
    return {key: (value * factor if key in ("nprobe", "efSearch") else value) for key, value in params.items()}


@dataclass(frozen=True)
class RowFilter:
    """The rows of one shard a search may return, with what searches derive from them
    (computed once per generation and filter, not per query)."""

    mask: np.ndarray

    @cached_property
    def allowed(self) -> int:
        return int(np.count_nonzero(self.mask))

    @cached_property
    def share(self) -> float:
        return self.allowed / max(len(self.mask), 1)

    @cached_property
    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.mask)

    @cached_property
    def selector(self) -> faiss.IDSelectorBitmap:
        bits = np.packbits(self.mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(self.mask), faiss.swig_ptr(bits))
        # The selector reads this memory during every search; a plain attribute on the SWIG proxy keeps it alive.
        selector.bits_owner = bits  # type: ignore[attr-defined]  # not in faiss's stubs
        return selector
