"""The second stage of a search: re-score the vector stage's top candidates.

``Index.search(..., rerank=True)`` fetches ``rerank_depth`` candidates by vector score,
then this module asks a :class:`~mmsearch.rerank.base.Reranker` for each one's match
probability, orders by it (ties keep the vector order), drops those under ``min_prob``
and keeps ``k``. An empty list is an answer: nothing the model believes matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from mmsearch.errors import UserInputError
from mmsearch.rerank.base import Candidate, Query, Reranker

if TYPE_CHECKING:
    from mmsearch.index import SearchResult
    from mmsearch.search.query import Term

DEFAULT_DEPTH = 50
MAX_DEPTH = 1000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def query_of(terms: Sequence[Term]) -> Query:
    """The one query a re-ranker can judge against: a single text, image or audio term
    (arithmetic has no single meaning to match)."""
    if len(terms) != 1 or terms[0].weight <= 0:
        raise UserInputError("re-ranking needs a single query (one text, image or audio file), not arithmetic")
    return Query(terms[0].modality, terms[0].value)


def check(depth: int, min_prob: float | None) -> None:
    """Fail on bad settings before anything is searched."""
    if not 1 <= depth <= MAX_DEPTH:
        raise UserInputError(f"rerank depth must be between 1 and {MAX_DEPTH}, not {depth}")
    if min_prob is not None and not 0.0 <= min_prob <= 1.0:
        raise UserInputError(f"min_prob must be between 0 and 1, not {min_prob}")


def candidate_of(hit: SearchResult) -> Candidate:
    """The hit as a re-ranker sees it, with the catalog's content hash, size and mtime."""
    return candidate_of_row(hit.metadata)


def candidate_of_row(row: dict) -> Candidate:
    """A catalog row as a re-ranker sees it (see :func:`candidate_of`)."""
    mtime, size = row.get("mtime"), row.get("size")
    stamp = None
    if isinstance(mtime, datetime) and size is not None:  # else the cache hashes the file for its key
        aware = mtime if mtime.tzinfo is not None else mtime.replace(tzinfo=timezone.utc)
        stamp = (int(size), (aware - EPOCH) // timedelta(microseconds=1))
    return Candidate(
        row["id"],
        row["path"],
        row["modality"],
        row.get("text"),
        float(row.get("offset_s") or 0.0),
        row.get("content_hash"),
        stamp,
    )


def rerank(
    reranker: Reranker, query: Query, hits: Sequence[SearchResult], k: int, min_prob: float | None = None
) -> list[SearchResult]:
    """``hits`` re-ordered by match probability (set as ``match_prob``), filtered and cut to ``k``."""
    candidates = [candidate_of(hit) for hit in hits]
    probs = reranker.match_probs(query, candidates)
    order = sorted(range(len(hits)), key=lambda i: -probs[i])  # stable: ties keep the vector order
    kept = [i for i in order if min_prob is None or probs[i] >= min_prob][:k]
    return [replace(hits[i], match_prob=float(probs[i])) for i in kept]
