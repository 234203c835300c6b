"""FAISS index recipes: how a shard's vectors are indexed.

``flat`` is exact; ``hnsw`` is a graph index for large shards; ``auto`` picks flat
below ``HNSW_MIN_ROWS`` rows per shard (exact and fast enough there) and HNSW above.
All recipes use inner product on L2-normalised vectors, i.e. cosine similarity, and
wrap the index in an ``IndexIDMap2`` so ids are explicit int64 and vectors can be
read back by id (for renames, filters and compaction).
"""

from __future__ import annotations

import faiss
import numpy as np

from mmsearch.errors import UserInputError

RECIPES = ("auto", "flat", "hnsw")
HNSW_MIN_ROWS = 50_000
HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128


def check_recipe(recipe: str) -> str:
    if recipe not in RECIPES:
        raise UserInputError(f"unknown index recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    return recipe


def concrete_recipe(recipe: str, rows: int) -> str:
    """Resolve ``auto`` for a shard of ``rows`` vectors."""
    if recipe == "auto":
        return "hnsw" if rows >= HNSW_MIN_ROWS else "flat"
    return recipe


def build(recipe: str, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """Index ``vectors`` under ``ids`` with a concrete recipe."""
    dim = vectors.shape[1]
    if recipe == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif recipe == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        raise UserInputError(f"unknown concrete recipe {recipe!r}")
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return index


def search_params(recipe: str, selector: faiss.IDSelector | None) -> faiss.SearchParameters | None:
    """Per-query parameters carrying an id selector (CPU indexes honour it)."""
    if selector is None:
        return None
    if recipe == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=HNSW_EF_SEARCH)
    return faiss.SearchParameters(sel=selector)
