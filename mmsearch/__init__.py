"""mmsearch: cross-modal vector search over images (and more) in one embedding space.

>>> import mmsearch
>>> idx = mmsearch.Index.open("indexes/default")
>>> hits = idx.search("a dog on a beach", k=10, where="width > 800")

Names are imported lazily so that ``import mmsearch`` (and the CLI) start fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["AddSummary", "Index", "MMSearchError", "SearchResult"]

_EXPORTS = {
    "Index": "mmsearch.index",
    "SearchResult": "mmsearch.index",
    "AddSummary": "mmsearch.index",
    "MMSearchError": "mmsearch.errors",
}

if TYPE_CHECKING:
    from mmsearch.errors import MMSearchError
    from mmsearch.index import AddSummary, Index, SearchResult


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmsearch' has no attribute {name!r}")
