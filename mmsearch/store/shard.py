"""Shards: an immutable FAISS index file and its Parquet metadata, sealed together.

A shard is written once under a fresh name and never modified; replacing a shard
means writing a new one and committing a manifest that names it instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmsearch.errors import ShardDamagedError
from mmsearch.hashing import file_digest
from mmsearch.store import recipes
from mmsearch.store.atomic import atomic_write
from mmsearch.store.manifest import SHARDS_DIR, ShardInfo
from mmsearch.store.schema import conform_items


def shard_name(number: int) -> str:
    return f"{number:06d}"


def faiss_path(index_dir: Path, name: str) -> Path:
    return Path(index_dir) / SHARDS_DIR / f"{name}.faiss"


def parquet_path(index_dir: Path, name: str) -> Path:
    return Path(index_dir) / SHARDS_DIR / f"{name}.parquet"


def seal(index_dir: Path, name: str, recipe: str, vectors: np.ndarray, table: pa.Table) -> ShardInfo:
    """Write both files of a shard atomically and return its manifest entry."""
    concrete = recipes.concrete_recipe(recipe, len(table))
    ids = table.column("id").to_numpy()
    index = recipes.build(concrete, vectors, ids)
    fpath, ppath = faiss_path(index_dir, name), parquet_path(index_dir, name)
    atomic_write(fpath, lambda tmp: faiss.write_index(index, str(tmp)))
    atomic_write(ppath, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    return ShardInfo(
        name,
        len(table),
        concrete,
        file_digest(fpath),
        file_digest(ppath),
        fpath.stat().st_size,
        ppath.stat().st_size,
    )


class Shard:
    """Read access to one sealed shard; the FAISS file is loaded on first use.

    Safe to share between threads: loading happens once under a lock, and FAISS CPU
    searches on a loaded index are read-only. A missing or unreadable file raises
    :class:`ShardDamagedError`, never a FAISS/Arrow error.
    """

    def __init__(self, index_dir: Path, info: ShardInfo) -> None:
        self.info = info
        self.faiss_file = faiss_path(index_dir, info.name)
        self.parquet_file = parquet_path(index_dir, info.name)
        self._lock = threading.Lock()
        self._index: faiss.IndexIDMap2 | None = None
        self._ids: np.ndarray | None = None

    @property
    def index(self) -> faiss.IndexIDMap2:
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index = self._read_faiss()
        return self._index

    def _read_faiss(self) -> faiss.IndexIDMap2:
        try:
            index = faiss.read_index(str(self.faiss_file))
        except RuntimeError as exc:
            raise ShardDamagedError(self.faiss_file, str(exc).strip().splitlines()[-1]) from None
        if index.ntotal != self.info.rows or not hasattr(index, "id_map"):
            raise ShardDamagedError(
                self.faiss_file, f"holds {index.ntotal} vectors, the manifest says {self.info.rows}"
            )
        return index

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return self._ids

    def search(
        self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query; missing slots have id -1."""
        params = recipes.search_params(self.info.recipe, selector)
        return self.index.search(queries, min(k, self.info.rows), params=params)

    def vectors(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Stored vectors for ``ids`` (all of them, in id-map order, when ``None``)."""
        if ids is None:
            return self.index.index.reconstruct_n(0, self.index.ntotal)
        return self.index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))

    def table(self) -> pa.Table:
        """The shard's metadata in the current items schema."""
        try:
            table = pq.read_table(self.parquet_file)
        except (OSError, pa.ArrowException) as exc:
            raise ShardDamagedError(self.parquet_file, str(exc)) from None
        if table.num_rows != self.info.rows:
            raise ShardDamagedError(
                self.parquet_file, f"holds {table.num_rows} rows, the manifest says {self.info.rows}"
            )
        return conform_items(table)

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
            return f"{self.parquet_file}: unreadable ({' '.join(str(exc).split())[:120]})"
        if rows != self.info.rows:
            return f"{self.parquet_file}: holds {rows} rows, the manifest says {self.info.rows}"
        return None

    def select(self, ids: Iterable[int], *, exclude: bool = False) -> tuple[np.ndarray, list[dict]]:
        """Vectors and aligned metadata rows of this shard's ids in ``ids`` (not in them, with ``exclude``)."""
        table = self.table()
        own = table.column("id").to_numpy()
        keep = np.isin(own, np.fromiter(ids, dtype=np.int64)) != exclude
        return self.vectors(own[keep]), table.filter(pa.array(keep)).to_pylist()
