"""Items by id, for ``/api/items``, ``/api/media`` and ``/api/thumbs``.

A page of results asks for a thumbnail per hit right after the search, so rows the
search just returned are remembered, keyed by generation: an id removed by a later
commit is never answered from the cache. Other ids are read with one SQL lookup.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from mmsearch.errors import UserInputError
from mmsearch.index import Index

CACHE_SIZE = 20_000


class ItemNotFound(UserInputError):
    """No live item with that id (HTTP 404)."""


class ItemRows:
    """Metadata rows of live items, by id, for the generation the index is at."""

    def __init__(self, index: Index, size: int = CACHE_SIZE) -> None:
        """Rows of ``index``; at most ``size`` are remembered."""
        self.index = index
        self._size = size
        self._rows: OrderedDict[tuple[int, int], dict] = OrderedDict()
        self._lock = threading.Lock()

    def generation(self) -> int:
        """The newest committed generation (a ``stat`` of the manifest)."""
        return self.index.refresh().generation

    def remember(self, generation: int, rows: Iterable[dict]) -> None:
        """Keep the rows a search on ``generation`` returned."""
        rows = list(rows)  # read outside the lock: a search's rows are read on first use
        with self._lock:
            for row in rows:
                self._rows[(generation, row["id"])] = row
                self._rows.move_to_end((generation, row["id"]))
            while len(self._rows) > self._size:
                self._rows.popitem(last=False)

    def get(self, item_id: int) -> dict:
        """The row of live item ``item_id`` (all ``items`` columns), or ``ItemNotFound``."""
        generation = self.generation()
        with self._lock:
            row = self._rows.get((generation, item_id))
        if row is not None:
            return row
        row = self.index.items([item_id]).get(item_id)
        if row is None:
            raise ItemNotFound(f"no item with id {item_id}")
        if self.generation() == generation:
            self.remember(generation, [row])
        return row
