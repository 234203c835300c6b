"""Where things live by default, so `mmsearch index` and `mmsearch query` meet without flags.

The index location is, in order: ``--index``, ``$MMSEARCH_INDEX``, ``./indexes/default``
when the current folder has an ``indexes/`` folder (e.g. a checkout of this repo),
else ``$XDG_DATA_HOME/mmsearch/indexes/default`` (``~/.local/share/...``).
"""

from __future__ import annotations

import os
from pathlib import Path

INDEX_ENV = "MMSEARCH_INDEX"


def default_index_path() -> Path:
    """The index used when ``--index`` is not given."""
    if os.environ.get(INDEX_ENV):
        return Path(os.environ[INDEX_ENV]).expanduser()
    if Path("indexes").is_dir():
        return Path("indexes") / "default"
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "mmsearch" / "indexes" / "default"
