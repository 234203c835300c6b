"""Compute a re-ranker's per-item features for every item of an index, once.

What ``mmsearch index --rerank-features`` runs after the ingest: for each live item the
re-ranker can judge whose features the index's :class:`~mmsearch.rerank.store.FeatureStore`
lacks, re-read the file, run the re-ranker's item side, and write the results in packs.
Items already stored (by content: copies and renames included) cost one ``stat``; a file
that can no longer be read is counted and left out, never stopping the run. It holds the
store's own lock, so two runs never write packs at once while the index itself stays free
for other writers (an ``index`` or ``remove`` meanwhile is fine: features are keyed by content).
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import asdict, dataclass

import numpy as np

from mmsearch.errors import UserInputError
from mmsearch.rerank.base import Candidate, Reranker
from mmsearch.rerank.cache import Features, Key, content_key, item_key
from mmsearch.rerank.stage import candidate_of_row
from mmsearch.rerank.store import FeatureStore, tag_of
from mmsearch.store.catalog import Catalog

BATCH = 64  # candidates through the re-ranker's towers at once
PACK_ROWS = 4096  # items per pack file written


@dataclass(frozen=True)
class Prepared:
    """What a run did, in items: ``computed`` now, ``stored`` already, ``unreadable`` skipped;
    ``dropped``: features of items no longer in the index, removed from the store."""

    reranker: str
    computed: int
    stored: int
    unreadable: int
    dropped: int
    folder: str

    def to_dict(self) -> dict:
        return asdict(self)


def prepare(catalog: Catalog, reranker: Reranker, *, progress: bool = False) -> Prepared:
    """Fill ``reranker``'s store (the index's, see ``Index.reranker``) with the features of
    the items in ``catalog``."""
    store = reranker.store
    if store is None:
        raise UserInputError(f"re-ranker {reranker.spec!r} keeps no per-item features to prepare")
    from tqdm import tqdm

    judged = sorted({item for _, item in reranker.pairs})
    ids = np.sort(np.concatenate([catalog.ids_of_modality(m) for m in judged]))
    run = _Run(store, reranker)
    with store.writing(), tqdm(total=len(ids), unit="item", disable=not progress, file=sys.stderr) as bar:
        store.sweep()
        for start in range(0, len(ids), PACK_ROWS):
            chunk = ids[start : start + PACK_ROWS]
            run.items([candidate_of_row(row) for row in catalog.rows(chunk.tolist()).values()])
            bar.update(len(chunk))
        run.flush()
        dropped = store.prune(np.array(run.live_tags, np.uint64), np.array(run.live_offsets, np.float64))
    return Prepared(reranker.spec, run.computed, run.stored, run.unreadable, dropped, str(store.folder))


class _Run:
    """One pass: sorts candidates into stored, unreadable and to compute; writes packs."""

    def __init__(self, store: FeatureStore, reranker: Reranker) -> None:
        self.store, self.reranker = store, reranker
        self.computed = self.stored = self.unreadable = 0
        self._done: dict[Key, bool] = {}  # keys met in this run: computed (True) or unreadable (False)
        self.live_tags: array[int] = array("Q")  # every live item's key, compactly (what prune keeps)
        self.live_offsets: array[float] = array("d")
        self._pending: dict[str, tuple[list[Key], list[Features]]] = {}  # per modality: one shape per pack

    def items(self, candidates: list[Candidate]) -> None:
        """Sort one chunk of candidates and compute what is missing (a file's windows together,
        so a recording is decoded once per batch, not once per window)."""
        keys = [item_key(candidate) for candidate in candidates]
        present = [key for key in keys if key is not None]
        self.live_tags.extend(tag_of(digest) for digest, _ in present)
        self.live_offsets.extend(offset for _, offset in present)
        stored = {key for key, found in zip(present, self.store.get_many(present)) if found is not None}
        copies: dict[Key, int] = {}  # key -> further items with the same content, in this chunk
        todo: dict[str, list[tuple[Key, Candidate]]] = {}
        for key, candidate in zip(keys, candidates):
            if key is None or self._done.get(key) is False:
                self.unreadable += 1
            elif key in stored or self._done.get(key):
                self.stored += 1
            elif key in copies:
                copies[key] += 1
            else:
                copies[key] = 0
                todo.setdefault(candidate.modality, []).append((key, candidate))
        for modality, group in todo.items():
            group.sort(key=lambda item: (item[1].path, item[1].offset_s))
            for start in range(0, len(group), BATCH):
                batch = group[start : start + BATCH]
                fresh = self.reranker.encode([candidate for _, candidate in batch], modality)
                for (key, candidate), result in zip(batch, fresh, strict=True):
                    self._done[key] = result is not None
                    if result is None:
                        self.unreadable += 1 + copies[key]
                        continue
                    pending = self._pending.setdefault(modality, ([], []))
                    pending[0].append(content_key(result[1], candidate.offset_s))
                    pending[1].append(result[0])
                    self.computed += 1
                    self.stored += copies[key]
            if len(self._pending.get(modality, ((),))[0]) >= PACK_ROWS:
                self.flush(modality)

    def flush(self, modality: str | None = None) -> None:
        """Write what is pending as packs (of ``modality``; default: all)."""
        for name in [modality] if modality else list(self._pending):
            self.store.add(*self._pending.pop(name, ([], [])))
