"""The FastAPI application: API routes, the static web page, errors and the guard.

One ``Index`` and one encoder are shared by every request. The model is loaded
(and the upload fork server started) before the server accepts connections, so the
first request costs what every other one costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from mmsearch import __version__
from mmsearch.index import Index
from mmsearch.serve import errors, uploads
from mmsearch.serve.guard import Guard
from mmsearch.serve.routes import build_router
from mmsearch.serve.schemas import request_schemas
from mmsearch.serve.service import SearchService
from mmsearch.serve.settings import ServeSettings

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def create_app(
    index: Index, settings: ServeSettings | None = None, on_ready: Callable[[], None] | None = None
) -> FastAPI:
    """An ASGI app serving ``index``: the API under ``/api``, the page at ``/``, docs at ``/docs``.

    ``on_ready`` is called once the model is loaded, just before requests are served.
    Uploads are decoded in processes from a fork server, which (like any use of
    ``multiprocessing``) re-imports the main script: a script that calls this needs
    the ``if __name__ == "__main__":`` guard.
    """
    settings = settings or ServeSettings()
    service = SearchService(index, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.warm:
            await asyncio.to_thread(service.warm)
            await asyncio.to_thread(uploads.warm_up)
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="mmsearch",
        version=__version__,
        summary="Cross-modal search over one index: text, images and sounds in one space.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.service = service
    _document_request_bodies(app)
    errors.install(app)
    app.include_router(build_router(service))
    app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    app.add_middleware(Guard, settings=settings)
    return app


def _document_request_bodies(app: FastAPI) -> None:
    """Add the request body schemas the routes refer to to ``/openapi.json``."""
    make = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = make()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(request_schemas())
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
