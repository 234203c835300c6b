"""Fan queries out over shards and merge the per-shard top-k exactly.

Each shard gets a :class:`RowFilter` of the rows it may return (live rows, narrowed
by a filter). When most rows are allowed (deletions, broad filters), the shard is
searched without a selector for a few more than k and the disallowed rows dropped:
a selector check on every candidate would cost more. A small allowed set is scored
exactly against the stored vectors: the cost is then what the filter lets through,
and an ANN index never starves on a selective filter. In between, the filter reaches
FAISS as an ``IDSelectorBitmap`` over row numbers, and on approximate indexes
nprobe/efSearch widen by the inverse of the allowed share. Shards hold CPU FAISS
indexes, which honour selectors (GPU indexes would silently ignore them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import faiss
import numpy as np

from mmsearch.store import recipes
from mmsearch.store.shard import RowFilter, Shard

EXACT_MAX = 20_000  # allowed rows up to this many are scored exactly on approximate shards
EXACT_SHARE = 0.5  # on exact shards, below this share a gather beats a masked full scan
MAX_WIDEN = 16.0
OVERFETCH_SHARE = 0.5  # at least this share allowed: search unfiltered for k/share (+ margin), then drop
OVERFETCH_MARGIN = 16
Hit = tuple[float, int]
_POOL = ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="mmsearch-shard")


def _search_shard(shard: Shard, queries: np.ndarray, k: int, rows: RowFilter | None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (nq, ≤k), for one shard; id -1 marks an empty slot."""
    if rows is None:
        return _found(shard, *shard.search(queries, k))
    if rows.allowed == 0:
        return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
    exact = recipes.is_exact(shard.info.recipe)
    if rows.allowed <= k or (rows.share < EXACT_SHARE if exact else rows.allowed <= EXACT_MAX):
        return _score_rows(shard, queries, k, rows.rows)
    if rows.share >= OVERFETCH_SHARE:
        scores, found = shard.search(queries, math.ceil(k / rows.share) + OVERFETCH_MARGIN)
        keep = rows.mask[found] if found.min(initial=0) >= 0 else (found >= 0) & rows.mask[np.maximum(found, 0)]
        counts = np.cumsum(keep, axis=1)
        if (counts[:, -1] >= k).all():  # more than k rows are allowed (else scored exactly above)
            first = keep & (counts <= k)  # each query's first k allowed, in score order
            return _found(shard, scores[first].reshape(len(queries), k), found[first].reshape(len(queries), k))
    widen = 1.0 if exact else min(1.0 / rows.share, MAX_WIDEN)
    return _found(shard, *shard.search(queries, k, rows.selector, widen))


def _found(shard: Shard, scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if rows.min(initial=0) >= 0:
        return scores, shard.ids[rows]
    return scores, np.where(rows >= 0, shard.ids[np.maximum(rows, 0)], -1)


def _score_rows(shard: Shard, queries: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ shard.vectors(rows).T
    top = min(k, len(rows))
    best = np.argpartition(-scores, top - 1, axis=1)[:, :top]
    return np.take_along_axis(scores, best, axis=1), shard.ids[rows][best]


def search(
    shards: Sequence[Shard], queries: np.ndarray, k: int, filters: Sequence[RowFilter | None] | None = None
) -> list[list[Hit]]:
    """Per query, the top-``k`` (score, id) pairs over all shards, best first (ties: lower id).

    ``filters[i]``: the rows of ``shards[i]`` that may be returned (``None``: all).
    """
    if len(shards) == 1 and k > 0 and (filters is None or filters[0] is None):
        return _one_shard(shards[0], _as_queries(queries), k)
    return hits(*search_top_k(shards, queries, k, filters))


def _one_shard(shard: Shard, queries: np.ndarray, k: int) -> list[list[Hit]]:
    """:func:`search` over one unfiltered shard. FAISS's answer is nearly always already
    merged (every slot filled, scores strictly best first): its hits are then read straight
    off the lists, without the merge's numpy calls, which cost more than the rest of a
    query's Python because they run with the caches cold after FAISS's scan."""
    scores, rows = shard.search(queries, k)
    ids = shard.ids.take(rows, mode="wrap")  # a missing slot (-1) wraps; such a query is merged below
    found = []
    for q_scores, q_rows, q_ids in zip(scores.tolist(), rows.tolist(), ids.tolist()):
        if -1 in q_rows or any(a <= b for a, b in pairwise(q_scores)):
            return hits(*merge([_found(shard, scores, rows)], k))
        found.append(list(zip(q_scores, q_ids)))
    return found


def search_top_k(
    shards: Sequence[Shard], queries: np.ndarray, k: int, filters: Sequence[RowFilter | None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`search`, as the (scores, ids) arrays of :func:`merge`: what a group of
    shards answers before the groups are merged in turn (``mmsearch.distributed.search``)."""
    queries = _as_queries(queries)
    if not shards or k <= 0:
        return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
    filters = filters if filters is not None else [None] * len(shards)
    jobs = list(zip(shards, filters))
    if len(jobs) == 1:
        parts = [_search_shard(jobs[0][0], queries, k, jobs[0][1])]
    else:
        parts = list(_POOL.map(lambda job: _search_shard(job[0], queries, k, job[1]), jobs))
    return merge(parts, k)


def _as_queries(queries: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)


def unit_queries(queries: np.ndarray) -> np.ndarray:
    """A float32 C-order copy of ``queries`` (n, dim) with rows of unit length (zero rows
    stay zero): one FAISS call where numpy takes five, each µs on a search's cold caches."""
    out = np.array(queries, dtype=np.float32, order="C")
    faiss.normalize_L2(out)
    return out


def merge(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-``k`` of per-part (scores, ids) arrays, each (nq, any width): (nq, ≤k)
    arrays, best first, ties by lower id, empty slots (id -1, score -inf) last.

    Exact because every part is a top-k under the same order: the best k of the union
    are among the union of the parts' best k, whether the parts are shards or groups of them.
    """
    if len(parts) == 1 and _in_order(*parts[0], k):
        return parts[0]
    scores = np.concatenate([p[0] for p in parts], axis=1) if len(parts) > 1 else parts[0][0]
    ids = np.concatenate([p[1] for p in parts], axis=1) if len(parts) > 1 else parts[0][1]
    scores = np.where(ids >= 0, scores, np.float32(-np.inf)).astype(np.float32, copy=False)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]  # best first, ties by lower id; empty slots sort last
    at = np.arange(len(order))[:, None]  # plain indexing: take_along_axis costs ~10 µs a call in Python
    return scores[at, order], ids[at, order]


def _in_order(scores: np.ndarray, ids: np.ndarray, k: int) -> bool:
    """Already merged: at most ``k`` wide, no empty slot, strictly best first (no ties to order
    by id). What one shard's FAISS search returns, nearly always; the check costs a third
    of a merge."""
    return scores.shape[1] <= k and ids.min(initial=0) >= 0 and bool((scores[:, 1:] < scores[:, :-1]).all())


def hits(scores: np.ndarray, ids: np.ndarray) -> list[list[Hit]]:
    """Merged arrays as one list of (score, id) per query, without the empty slots."""
    return [
        [(s, i) for s, i in zip(q_scores, q_ids) if i >= 0] for q_scores, q_ids in zip(scores.tolist(), ids.tolist())
    ]
