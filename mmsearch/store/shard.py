"""Shards: an immutable FAISS index file and its Parquet metadata, sealed together.

A shard is written once under a fresh name and never modified; replacing a shard
means writing a new one and committing a manifest that names it instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmsearch.hashing import file_digest
from mmsearch.store import recipes
from mmsearch.store.atomic import atomic_write
from mmsearch.store.manifest import ShardInfo

SHARDS_DIR = "shards"


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
    return ShardInfo(name, len(table), concrete, file_digest(fpath), file_digest(ppath))


class Shard:
    """Read access to one sealed shard; the FAISS file is loaded on first use."""

    def __init__(self, index_dir: Path, info: ShardInfo) -> None:
        self.info = info
        self.faiss_file = faiss_path(index_dir, info.name)
        self.parquet_file = parquet_path(index_dir, info.name)

    @cached_property
    def index(self) -> faiss.IndexIDMap2:
        return faiss.read_index(str(self.faiss_file))

    @cached_property
    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

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
        return pq.read_table(self.parquet_file)

    def select(self, ids: Iterable[int], *, exclude: bool = False) -> tuple[np.ndarray, list[dict]]:
        """Vectors and aligned metadata rows of this shard's ids in ``ids`` (not in them, with ``exclude``)."""
        table = self.table()
        own = table.column("id").to_numpy()
        keep = np.isin(own, np.fromiter(ids, dtype=np.int64)) != exclude
        return self.vectors(own[keep]), table.filter(pa.array(keep)).to_pylist()
