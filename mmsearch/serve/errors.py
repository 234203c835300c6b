"""Every failure becomes one line of JSON with a fitting status: never a traceback.

The engine's typed errors already carry a one-line message for a person; here each
type gets its HTTP status. Anything unexpected is a 500 that names only the
exception type (the traceback goes to the server's log, not to the client).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from mmsearch.errors import (
    IndexFormatError,
    IndexNotFoundError,
    MMSearchError,
    ModelError,
    ModelMismatchError,
    UserInputError,
    WriterBusyError,
)
from mmsearch.serve.items import ItemNotFound
from mmsearch.serve.service import QueryTimeout
from mmsearch.serve.uploads import DecodeTimeout, UploadTooLarge

log = logging.getLogger("mmsearch.serve")

# Most specific first: the first matching class decides.
STATUS: tuple[tuple[type[Exception], int], ...] = (
    (ItemNotFound, 404),
    (UploadTooLarge, 413),
    (DecodeTimeout, 422),
    (QueryTimeout, 504),
    (IndexNotFoundError, 404),
    (UserInputError, 400),  # FilterError included
    (ModelMismatchError, 503),
    (ModelError, 503),
    (IndexFormatError, 503),
    (WriterBusyError, 409),
    (MMSearchError, 400),
)


def one_line(message: str) -> str:
    """Collapse whitespace so a message is a single line."""
    return " ".join(str(message).split())


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": "..."}`` with ``status``."""
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def status_of(exc: Exception) -> int:
    """The HTTP status for an engine error."""
    return next(status for cls, status in STATUS if isinstance(exc, cls))


def validation_message(exc: RequestValidationError) -> str:
    """The first problem pydantic found, as ``field: what is wrong``."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path"))
    message = first.get("msg", "invalid value").removeprefix("Value error, ")  # our validators' own sentences
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(MMSearchError)
    async def engine_error(_request: Request, exc: MMSearchError) -> JSONResponse:
        return error_response(status_of(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, f"internal error ({type(exc).__name__}); see the server's log")
