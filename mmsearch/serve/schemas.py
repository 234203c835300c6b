"""Request and response shapes of the HTTP API (also what ``/docs`` shows).

Types are checked here; limits that depend on the server's settings (largest k,
longest filter) are checked by the service, with one-line messages.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.json_schema import models_json_schema

Modality = Literal["image", "text", "audio", "video", "any"]
ItemNumber = Annotated[int, Field(ge=0, le=2**63 - 1)]  # item ids are non-negative int64
RERANKER_HELP = (
    "Re-ranker spec (implies rerank); default: the index model's. Only the index's default and the specs the "
    "server was started with (serve --reranker) are accepted: /api/info lists them"
)


def _min_score(value: object) -> object:
    """``auto`` or a cosine in -1..1 (NaN is neither): one sentence for any other value."""
    if value == "auto":
        return value
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not -1.0 <= number <= 1.0:
        raise ValueError(f"min_score must be a cosine between -1 and 1, or auto, not {value!r}")
    return number


MinScore = Annotated[Union[float, Literal["auto"]], BeforeValidator(_min_score)]


class SearchBody(BaseModel):
    """One query: the sum of whatever is given (text or arithmetic, a vector, an item)."""

    model_config = ConfigDict(extra="forbid")

    q: Optional[str] = Field(None, description='Text or arithmetic: "dog" + "beach" - "2:night"')
    vector: Optional[list[float]] = Field(None, description="A query vector of the index's dimension")
    like_id: Optional[ItemNumber] = Field(None, description="More like this item (the item itself is left out)")
    k: int = Field(10, description="Results per page")
    offset: int = Field(0, description="Results to skip (paging)")
    modality: Optional[Modality] = Field(None, description="What to return; default: by the query")
    where: Optional[str] = Field(None, description="SQL boolean expression over the items columns")
    min_score: Optional[MinScore] = Field(
        None, description="Drop weaker hits: a cosine, or 'auto' (hits that stand out from the index's scores)"
    )
    rerank: bool = Field(False, description="Re-score the top rerank_depth candidates with the re-ranker (text q only)")
    reranker: Optional[str] = Field(None, description=RERANKER_HELP)
    rerank_depth: int = Field(50, ge=1, le=1000, description="Candidates the re-ranker judges")
    min_prob: Optional[float] = Field(
        None, ge=0.0, le=1.0, description="Keep hits with match_prob >= this (implies rerank)"
    )


class BatchBody(BaseModel):
    """Many queries answered in one pass (no uploads)."""

    model_config = ConfigDict(extra="forbid")

    queries: list[SearchBody] = Field(min_length=1)


class Hit(BaseModel):
    """One result: the item's metadata columns (null ones left out) plus links."""

    model_config = ConfigDict(extra="allow")

    id: int
    score: float
    path: str
    modality: str
    media_url: str
    thumb_url: Optional[str] = None


class SearchAnswer(BaseModel):
    """A page of results."""

    results: list[Hit]
    took_ms: float
    modality: str = Field(description="The modality returned")
    k: int
    offset: int
    next_offset: Optional[int] = Field(None, description="Offset of the next page, null on the last one")
    generation: int = Field(description="Index generation searched")


class BatchAnswer(BaseModel):
    """One page per query, in order."""

    answers: list[SearchAnswer]
    took_ms: float


class SqlBody(BaseModel):
    """One read-only SELECT over the views ``items`` and ``failures``."""

    model_config = ConfigDict(extra="forbid")

    sql: str


UPLOAD_FORM = {
    "type": "object",
    "properties": {
        "file": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "Image or audio files to search with",
        },
        "weight": {"type": "array", "items": {"type": "number"}, "description": "A weight per file (default 1)"},
        "q": {"type": "string"},
        "like_id": {"type": "integer"},
        "k": {"type": "integer"},
        "offset": {"type": "integer"},
        "modality": {"type": "string", "enum": ["image", "text", "audio", "video", "any"]},
        "where": {"type": "string"},
        "min_score": {"type": "string", "description": "A number, or auto"},
        "vector": {"type": "string", "description": "A JSON list of numbers"},
    },
}


def request_schemas() -> dict[str, dict]:
    """The JSON schemas of the request bodies the routes read themselves (not through FastAPI's
    parameters, so JSON without a Content-Type is accepted): ``/docs`` refers to these."""
    _keys, found = models_json_schema(
        [(SearchBody, "validation"), (BatchBody, "validation")], ref_template="#/components/schemas/{model}"
    )
    return found["$defs"]
