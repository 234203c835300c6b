"""Fan a query out over shards and merge the per-shard top-k exactly.

Without a filter, tombstoned ids are excluded inside FAISS with an id selector.
With a filter (an explicit id set), flat shards search with an id selector (exact);
graph (HNSW) shards score a selective set exactly against the stored vectors, since
a selector that rejects most of the graph starves its search, and take a broad set
as a selector. Shards hold CPU FAISS indexes, which honour selectors (GPU indexes
would silently ignore them).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from mmsearch.store.shard import Shard

EXACT_FILTER_MAX = 50_000  # filtered sets up to this size are scored exactly on graph shards
Hit = tuple[float, int]


def _search_shard(
    shard: Shard, query: np.ndarray, k: int, include: np.ndarray | None, exclude: np.ndarray
) -> list[Hit]:
    if include is not None:
        ids = include[np.isin(include, shard.ids)]
        if len(ids) == 0:
            return []
        if shard.info.recipe != "flat" and len(ids) <= EXACT_FILTER_MAX:
            scores = shard.vectors(ids) @ query
            top = np.argsort(-scores)[:k]
            return [(float(scores[i]), int(ids[i])) for i in top]
        selector = faiss.IDSelectorBatch(ids)
    elif len(exclude):
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(exclude))
    else:
        selector = None
    scores, ids = shard.search(query[None, :], k, selector)
    return [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]


def search(
    shards: Sequence[Shard],
    query: np.ndarray,
    k: int,
    include: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> list[Hit]:
    """Top-``k`` (score, id) pairs over all shards, best first.

    ``include``: only these ids may be returned (already free of tombstones).
    ``exclude``: ids never returned (tombstones).
    """
    query = np.ascontiguousarray(query, dtype=np.float32)
    exclude = np.asarray(exclude if exclude is not None else [], dtype=np.int64)
    if include is not None:
        include = np.unique(np.asarray(include, dtype=np.int64))
    if not shards or k <= 0:
        return []
    with ThreadPoolExecutor(max_workers=min(len(shards), 8)) as pool:
        parts = pool.map(lambda shard: _search_shard(shard, query, k, include, exclude), shards)
        hits = [hit for part in parts for hit in part]
    return heapq.nlargest(k, hits, key=lambda hit: (hit[0], -hit[1]))
