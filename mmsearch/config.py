"""Every environment variable and default folder mmsearch reads, in one place.

So `mmsearch index` and `mmsearch query` meet without flags, the index location is, in
order: ``--index``, ``$MMSEARCH_INDEX``, ``./indexes/default`` when the current folder
has an ``indexes/`` folder (e.g. a checkout of this repo), else
``$XDG_DATA_HOME/mmsearch/indexes/default`` (``~/.local/share/...``). New indexes use
``$MMSEARCH_MODEL`` or :data:`DEFAULT_MODEL`; derived artifacts (fitted projectors,
thumbnails) live under ``$MMSEARCH_CACHE`` or ``$XDG_CACHE_HOME/mmsearch``. The server's
token is ``$MMSEARCH_TOKEN``, the server a ``query`` asks is ``$MMSEARCH_SERVER``, and
``--ray auto`` joins ``$RAY_ADDRESS`` (Ray's own variable). Model weights stay in the
caches their libraries keep (open_clip's, Hugging Face's).
"""

from __future__ import annotations

import os
from pathlib import Path

INDEX_ENV = "MMSEARCH_INDEX"
MODEL_ENV = "MMSEARCH_MODEL"
CACHE_ENV = "MMSEARCH_CACHE"
SERVER_ENV = "MMSEARCH_SERVER"
TOKEN_ENV = "MMSEARCH_TOKEN"
RAY_ADDRESS_ENV = "RAY_ADDRESS"
DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"
OPEN_CLIP_URL_CACHE = Path("~/.cache/clip")  # where open_clip keeps weights fetched by plain URL
CHECKPOINT_S = 120.0  # an ingest commits what is finished at least this often: what a crash may cost


def _xdg(variable: str, fallback: str) -> Path:
    """An XDG base folder: ``$variable`` when set, else ``~/fallback``."""
    return Path(os.environ.get(variable) or Path.home() / fallback)


def default_index_path() -> Path:
    """The index used when ``--index`` is not given."""
    if os.environ.get(INDEX_ENV):
        return Path(os.environ[INDEX_ENV]).expanduser()
    if Path("indexes").is_dir():
        return Path("indexes") / "default"
    return _xdg("XDG_DATA_HOME", ".local/share") / "mmsearch" / "indexes" / "default"


def default_model() -> str:
    """The model spec for new indexes when none is given."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def cache_dir() -> Path:
    """Where mmsearch caches what it derives (fitted projectors): rebuildable, never precious."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return _xdg("XDG_CACHE_HOME", ".cache") / "mmsearch"


def thumbnail_dir() -> Path:
    """Where the server caches thumbnails: derived data, never inside an index."""
    return cache_dir() / "thumbs"


def ray_address() -> str | None:
    """The Ray cluster ``--ray auto`` joins (``None``: start a local runtime)."""
    return os.environ.get(RAY_ADDRESS_ENV) or None
