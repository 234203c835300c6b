"""The re-ranker contract: a second stage that judges (query, candidate) pairs jointly.

The vector stage compares two vectors computed apart; a re-ranker sees the query and the
candidate together (cross-attention, an ITM head) and returns the probability that the
candidate matches. It re-reads each candidate from its file; a re-ranker may keep what it
computed per item in memory (the demo one does, :mod:`mmsearch.rerank.cache`), keyed by the
file's content hash (the catalog's, see :class:`Candidate`) so an edited file is judged
afresh, and on disk beside the index when it names a ``feature_space``
(:mod:`mmsearch.rerank.store`, filled by ``mmsearch index --rerank-features``).
Subclasses set ``spec`` and ``pairs`` and implement :meth:`Reranker._match_probs`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mmsearch.errors import UserInputError

if TYPE_CHECKING:
    from mmsearch.rerank.cache import Features
    from mmsearch.rerank.store import FeatureStore


@dataclass(frozen=True)
class Query:
    """What was asked: a ``text``, or the path of an ``image`` or ``audio`` file."""

    modality: str
    value: str


@dataclass(frozen=True)
class Candidate:
    """An item found by the vector stage; audio windows carry their ``offset_s``. From an
    index, it also carries what the catalog recorded of its file: ``content_hash`` and
    ``stamp`` = (size, mtime in microseconds), so a cache can be consulted without reading it."""

    id: int
    path: str
    modality: str
    text: str | None = None
    offset_s: float = 0.0
    content_hash: str | None = None
    stamp: tuple[int, int] | None = None


class Reranker(ABC):
    """Scores candidates against a query with a calibrated match probability."""

    spec: str
    pairs: frozenset[tuple[str, str]]  # (query modality, item modality) it can judge
    feature_space: str | None = None  # names what stored per-item features depend on; None: none are stored
    store: FeatureStore | None = None

    def use_store(self, store: FeatureStore | None) -> None:
        """Look candidates' features up in ``store`` before computing them (where ``feature_space`` is set)."""
        self.store = store

    def encode(self, candidates: Sequence[Candidate], modality: str) -> list[tuple[Features, str] | None]:
        """Per candidate, its per-item features and the sha256 of the bytes they came from
        (``None``: unreadable): what a :class:`FeatureStore` keeps."""
        raise UserInputError(f"re-ranker {self.spec!r} keeps no per-item features")

    def supports(self, query_modality: str, item_modality: str) -> bool:
        return (query_modality, item_modality) in self.pairs

    def match_probs(self, query: Query, candidates: Sequence[Candidate]) -> np.ndarray:
        """Probabilities in [0, 1], one per candidate. A candidate whose file can no longer be
        read scores 0: there is no evidence that it matches, and one bad file never stops a query."""
        for candidate in candidates:
            if not self.supports(query.modality, candidate.modality):
                raise UserInputError(self.unsupported(query.modality, candidate.modality))
        probs = np.zeros(len(candidates), dtype=np.float64)
        for modality in {c.modality for c in candidates}:
            group = [i for i, c in enumerate(candidates) if c.modality == modality]
            probs[group] = self._match_probs(query, [candidates[i] for i in group])
        return np.clip(probs, 0.0, 1.0)

    def query_vector(self, query: Query, model: str | None) -> np.ndarray | None:
        """The vector stage's unit query vector for an index built with ``model``, when this
        re-ranker computes it anyway while judging (its text tower is that model's), so the
        query is encoded once; ``None`` (the default): the index embeds the query itself."""
        return None

    def unsupported(self, query_modality: str, item_modality: str) -> str:
        judged = ", ".join(f"{q}→{i}" for q, i in sorted(self.pairs))
        return f"re-ranker {self.spec!r} cannot judge {query_modality}→{item_modality} pairs (it judges {judged})"

    @abstractmethod
    def _match_probs(self, query: Query, candidates: Sequence[Candidate]) -> np.ndarray:
        """Probabilities for supported pairs of one item modality; unreadable candidates get 0."""
