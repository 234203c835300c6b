"""The HTTP API: thin handlers that validate, call the service and shape the answer."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from typing import Annotated, Optional, TypeVar

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from mmsearch.errors import MMSearchError, UserInputError
from mmsearch.serve import media
from mmsearch.serve.errors import error_response
from mmsearch.serve.schemas import (
    RERANKER_HELP,
    UPLOAD_FORM,
    BatchAnswer,
    BatchBody,
    MinScore,
    Modality,
    SearchAnswer,
    SearchBody,
    SqlBody,
)
from mmsearch.serve.service import SearchService
from mmsearch.serve.uploads import DecodedUpload, UploadTooLarge, decode_upload, upload_options

MAX_FILES = 4
Body = TypeVar("Body", bound=BaseModel)
ItemId = Annotated[int, Path(ge=0, le=2**63 - 1, description="An item id from a search result")]


def _content_type(request: Request) -> str:
    """The request's media type, lower case, without parameters ("" when not given: JSON)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _root(request: Request) -> str:
    return request.scope.get("root_path", "") or ""


def build_router(service: SearchService) -> APIRouter:
    """The ``/api`` routes of one server."""
    router = APIRouter(prefix="/api")
    settings = service.settings

    @router.get("/healthz", summary="Liveness: answers without a token")
    async def healthz() -> JSONResponse:
        try:  # a stat of the manifest: a moved or deleted index is not healthy
            generation = await service.run(service.items.generation)
        except (MMSearchError, OSError) as exc:
            return error_response(503, f"the index is not readable: {exc}")
        return JSONResponse({"status": "ok", "generation": generation})

    @router.get("/info", summary="The index: model, counts per modality, shards, size; and this server's limits")
    async def info() -> JSONResponse:
        return JSONResponse(await service.run(service.info))

    @router.get("/search", response_model=SearchAnswer, summary="Search with a text or arithmetic query")
    async def search_get(
        request: Request,
        q: Annotated[Optional[str], Query(description='Text or arithmetic: "dog" + "beach" - "2:night"')] = None,
        like_id: Annotated[Optional[int], Query(description="More like this item")] = None,
        k: int = 10,
        offset: int = 0,
        modality: Optional[Modality] = None,
        where: Annotated[Optional[str], Query(description="SQL boolean expression over items")] = None,
        min_score: Annotated[Optional[MinScore], Query(description="A cosine -1..1, or auto")] = None,
        rerank: bool = False,
        reranker: Annotated[Optional[str], Query(description=RERANKER_HELP)] = None,
        rerank_depth: Annotated[int, Query(ge=1, le=1000)] = 50,
        min_prob: Annotated[Optional[float], Query(ge=0.0, le=1.0)] = None,
    ) -> JSONResponse:
        body = _validated(
            SearchBody,
            {
                "q": q,
                "like_id": like_id,
                "k": k,
                "offset": offset,
                "modality": modality,
                "where": where,
                "min_score": min_score,
                "rerank": rerank,
                "reranker": reranker,
                "rerank_depth": rerank_depth,
                "min_prob": min_prob,
            },
        )
        query = await service.run(lambda: service.check(body))
        return JSONResponse(await service.search(query, _root(request)))

    @router.post(
        "/search",
        response_model=SearchAnswer,
        summary="Search with JSON, or a multipart form with image/audio files",
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/SearchBody"}},
                    "multipart/form-data": {"schema": UPLOAD_FORM},
                },
                "required": True,
            }
        },
    )
    async def search_post(request: Request) -> JSONResponse:
        kind = _content_type(request)
        if kind == "multipart/form-data":
            body, uploads = await _form(request)
        elif kind in ("application/json", ""):
            body, uploads = _validated(SearchBody, await request.body()), []
        else:
            return error_response(415, "send application/json or multipart/form-data")
        query = await service.run(lambda: service.check(body, uploads))
        return JSONResponse(await service.search(query, _root(request)))

    @router.post(
        "/search/batch",
        response_model=BatchAnswer,
        summary="Many queries in one vectorised pass",
        openapi_extra={
            "requestBody": {
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchBody"}}},
                "required": True,
            }
        },
    )
    async def search_batch(request: Request) -> JSONResponse:
        if _content_type(request) not in ("application/json", ""):
            return error_response(415, "send application/json")
        batch = _validated(BatchBody, await request.body())
        if len(batch.queries) > settings.max_batch:
            raise UserInputError(f"a batch holds at most {settings.max_batch} queries, not {len(batch.queries)}")

        def check_all() -> list:
            checked = []
            for number, body in enumerate(batch.queries, 1):
                try:
                    checked.append(service.check(body))
                except UserInputError as exc:
                    raise type(exc)(f"query {number}: {exc}") from None
            return checked

        queries = await service.run(check_all)
        return JSONResponse(await service.batch(queries, _root(request)))

    @router.get("/items/{item_id}", summary="One item's metadata and links")
    async def item(request: Request, item_id: ItemId) -> JSONResponse:
        return JSONResponse(await service.run(lambda: service.item(item_id, _root(request))))

    @router.head("/media/{item_id}", include_in_schema=False)
    @router.get("/media/{item_id}", summary="The item's original file (HTTP Range)")
    async def media_file(request: Request, item_id: ItemId) -> Response:
        row = await service.run(lambda: service.items.get(item_id))
        opened = await service.run(lambda: media.open_item_file(row))
        etag = row.get("content_hash") or f"{opened.size}-{int(opened.mtime)}"
        headers = media.headers(opened, etag)
        try:
            wanted = media.byte_range(request.headers.get("range"), opened.size)
        except ValueError:
            opened.close()
            return error_response(
                416, "the requested range is outside the file", {"Content-Range": f"bytes */{opened.size}"}
            )
        start, end = wanted if wanted is not None else (0, opened.size - 1)
        headers["Content-Length"] = str(max(0, end - start + 1))
        status = 200
        if wanted is not None:
            status, headers["Content-Range"] = 206, f"bytes {start}-{end}/{opened.size}"
        if request.method == "HEAD":
            opened.close()
            return Response(status_code=status, headers=headers, media_type=opened.content_type)
        return StreamingResponse(
            opened.chunks(start, end), status_code=status, headers=headers, media_type=opened.content_type
        )

    @router.get("/thumbs/{item_id}", summary="A small cached thumbnail of an image, or of a video's frame at the hit")
    async def thumb(item_id: ItemId) -> Response:
        row = await service.run(lambda: service.items.get(item_id))
        made = await service.wait(service.files.submit(service.thumbnails.get, row), "making the thumbnail")
        headers = {**media.MEDIA_HEADERS, "Cache-Control": "private, max-age=86400", "ETag": f'"{made.tag}"'}
        return Response(made.data, media_type=made.media_type, headers=headers)

    @router.post("/sql", summary="One read-only SELECT over items and failures (needs --allow-sql)")
    async def sql(body: SqlBody) -> JSONResponse:
        if not settings.allow_sql:
            return error_response(404, "this server has no SQL endpoint (start it with --allow-sql)")
        return JSONResponse(await service.run(lambda: service.sql(body.sql), filtered=True))

    async def _form(request: Request) -> tuple[SearchBody, list[tuple[DecodedUpload, float]]]:
        form = await request.form(max_files=MAX_FILES, max_fields=32)
        try:
            files = [f for f in form.getlist("file") if isinstance(f, UploadFile) and (f.filename or f.size)]
            weights = [str(w) for w in form.getlist("weight")]
            given = {key: value for key, value in form.items() if key not in ("file", "weight")}
            texts = {key: value for key, value in given.items() if isinstance(value, str)}
            if len(texts) != len(given):
                raise UserInputError("only the field 'file' may hold files")
            fields: dict[str, object] = dict(texts)
            if "vector" in texts:
                try:
                    fields["vector"] = json.loads(texts["vector"])
                except ValueError:
                    raise UserInputError("vector must be a JSON list of numbers") from None
            fields = {key: value for key, value in fields.items() if value != ""}  # empty form fields: not given
            body = _validated(SearchBody, fields)
            if len(weights) not in (0, len(files)):
                raise UserInputError(f"give one weight per file ({len(files)} files, {len(weights)} weights)")
            try:
                weight_values = [float(w) for w in weights] or [1.0] * len(files)
            except ValueError:
                raise UserInputError("each weight must be a number") from None
            if not all(math.isfinite(w) for w in weight_values):
                raise UserInputError(f"each weight must be a finite number, not {', '.join(weights)}")
            uploads = []
            for upload, weight in zip(files, weight_values):
                decoded = await service.wait(service.files.submit(_decode, upload), "decoding the upload")
                uploads.append((decoded, weight))
            return body, uploads
        finally:
            await form.close()

    def _decode(upload: UploadFile) -> DecodedUpload:
        """Copy the upload to a private temp file (bounded) and decode it in a child process."""
        handle, path = tempfile.mkstemp(prefix="mmsearch-upload-")
        try:
            with os.fdopen(handle, "wb") as out:
                upload.file.seek(0)
                shutil.copyfileobj(upload.file, out, 1024 * 1024)
                size = out.tell()
            if size > settings.max_upload_bytes:
                raise UploadTooLarge(f"the file is larger than the {settings.max_upload_bytes / 1e6:g} MB upload limit")
            if size == 0:
                raise UserInputError("the uploaded file is empty")
            options = upload_options(service.index.manifest.inputs, settings.max_upload_pixels)
            return decode_upload(path, options, settings.decode_timeout_s, settings.max_audio_s)
        finally:
            os.unlink(path)

    return router


def _validated(model: type[Body], data: bytes | dict) -> Body:
    """Validate a JSON body or form fields, reporting problems as request validation errors."""
    try:
        if isinstance(data, bytes):
            return model.model_validate_json(data or b"{}")
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
