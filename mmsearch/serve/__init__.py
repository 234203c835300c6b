"""``mmsearch serve``: one warm process that answers searches over HTTP and serves the web page.

The package is split by concern: ``settings`` (limits and the bind check, importable
without FastAPI so the CLI can refuse a bad bind instantly), ``auth`` and ``guard``
(token, signed media links, Host check, body limit, security headers), ``encoding``
(one thread owns the encoder and batches its calls), ``uploads`` (query files decoded
in a killable child process), ``service`` (a request turned into ``Index`` calls),
``items``, ``media`` and ``thumbnails`` (indexed files by id only), ``schemas``,
``errors``, ``routes`` and ``app`` (FastAPI), ``server`` (uvicorn) and ``client`` (the
stdlib client behind ``mmsearch query --server``). The page itself is ``mmsearch/web``.

Only ``require_serve`` lives here, so importing the package stays cheap.
"""

from __future__ import annotations

import importlib.util

from mmsearch.errors import UserInputError

SERVE_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart"}


def require_serve() -> None:
    """Fail in one line, with the install hint, when the ``serve`` extra is missing."""
    missing = [package for module, package in SERVE_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UserInputError(
            f"mmsearch serve needs {', '.join(missing)}: pip install 'mmsearch[serve]'",
        )
