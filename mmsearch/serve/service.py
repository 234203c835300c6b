"""A search request turned into ``Index`` calls, with the server's limits and time bounds.

The query vector is the weighted sum of its parts, each a unit vector: the terms
of a text or arithmetic query, uploaded files, a raw vector and an item ("more
like this"). Texts go through the shared encoder queue; the index search runs on
a thread pool. Searches with a ``where`` filter run on a separate, small pool:
a filter is user SQL whose cost the server cannot bound in advance, so slow
filters can only hold up other filtered searches, and every request gives up
after ``query_timeout_s``.

Query terms are always texts here. The CLI treats a term that names an existing
file as that file; on a server that would let a client probe the server's disk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from mmsearch import checks
from mmsearch.errors import MMSearchError, UserInputError
from mmsearch.index import Index, SearchResult
from mmsearch.jsonvalues import jsonable
from mmsearch.rerank import registry
from mmsearch.search import query as query_parser
from mmsearch.search.query import Term
from mmsearch.serve import auth
from mmsearch.serve.encoding import EncoderQueue
from mmsearch.serve.items import ItemNotFound, ItemRows
from mmsearch.serve.schemas import SearchBody
from mmsearch.serve.settings import ServeSettings
from mmsearch.serve.thumbnails import Thumbnails, has_thumbnail
from mmsearch.serve.uploads import DecodedUpload

T = TypeVar("T")


class QueryTimeout(MMSearchError):
    """A search or filter ran past the server's time limit (HTTP 504)."""


@dataclass
class Query:
    """One validated search request."""

    body: SearchBody
    uploads: list[tuple[DecodedUpload, float]] = field(default_factory=list)
    terms: list[Term] = field(default_factory=list)
    returned: str = "any"


def text_terms(expression: str | None) -> list[Term]:
    """The terms of a text or arithmetic query, every one a text (see the module notes)."""
    if expression is None:
        return []
    if not expression.strip():
        raise UserInputError("the query text is empty")
    return [Term(t.weight, "text", t.value) for t in query_parser.parse(expression)]


def reranks(body: SearchBody) -> bool:
    """Whether a query asks for the second stage."""
    return body.rerank or body.reranker is not None or body.min_prob is not None


def offered_rerankers(model: str | None, extra: Sequence[str]) -> tuple[str, ...]:
    """The re-ranker specs a client may name: the index model's default (if it has one) and the
    operator's. Any other spec would load a model per request (unbounded memory) or read a
    client-chosen path on the server's disk."""
    try:
        default = [registry.default_reranker(model)] if model is not None else []
    except UserInputError:
        default = []
    return tuple(dict.fromkeys([*default, *extra]))


class SearchService:
    """Everything the routes need: search, batch, items, media, thumbnails, info, SQL."""

    def __init__(self, index: Index, settings: ServeSettings) -> None:
        """Serve ``index`` under ``settings``; the encoder loads on first use (or at warm-up)."""
        self.index = index
        self.settings = settings
        self.encoder = EncoderQueue(lambda: index.encoder, threads=settings.encoder_threads)
        self.items = ItemRows(index)
        self.thumbnails = Thumbnails(settings.thumb_cache, settings.thumb_size)
        self._plain = ThreadPoolExecutor(8, thread_name_prefix="mmsearch-search")
        self._filtered = ThreadPoolExecutor(2, thread_name_prefix="mmsearch-filter")
        self.files = ThreadPoolExecutor(4, thread_name_prefix="mmsearch-files")
        self.rerankers = offered_rerankers(index.manifest.model, settings.rerankers)

    def close(self) -> None:
        """Stop the worker threads (queued work is finished first)."""
        self.encoder.close()
        for pool in (self._plain, self._filtered, self.files):
            pool.shutdown(wait=False, cancel_futures=True)

    def warm(self) -> None:
        """Load the model and embed once, so the first request is as fast as the rest."""
        if self.index.manifest.model is not None:
            self.encoder.texts(["warm up"]).result(timeout=600)

    # -- checks ---------------------------------------------------------------------------

    def check(self, body: SearchBody, uploads: Sequence[tuple[DecodedUpload, float]] = ()) -> Query:
        """Limits, then the query's terms and the modality it returns."""
        s = self.settings
        if not 1 <= body.k <= s.max_k:
            raise UserInputError(f"k must be between 1 and {s.max_k}, not {body.k}")
        if not 0 <= body.offset <= s.max_offset:
            raise UserInputError(f"offset must be between 0 and {s.max_offset}, not {body.offset}")
        for name in ("q", "where"):
            value = getattr(body, name)
            if value is not None and len(value) > s.max_text_chars:
                raise UserInputError(f"{name} is longer than {s.max_text_chars} characters")
        if body.vector is not None:
            vector = np.asarray(body.vector, dtype=np.float64)
            dim = self.index.manifest.dim
            if vector.shape != (dim,):
                raise UserInputError(f"vector must have {dim} numbers, not {len(body.vector)}")
            if not np.isfinite(vector).all() or not np.any(vector):
                raise UserInputError("vector must be finite and non-zero")
        if body.reranker is not None and body.reranker not in self.rerankers:
            offered = ", ".join(self.rerankers) or "none"
            raise UserInputError(
                f"re-ranker {body.reranker!r} is not offered by this server (offered: {offered}; "
                "the operator adds more with serve --reranker)"
            )
        terms = text_terms(body.q)
        if reranks(body) and (uploads or body.vector is not None or body.like_id is not None or not terms):
            raise UserInputError("re-ranking needs a text query q (no files, vector or like_id)")
        if not (terms or uploads or body.vector is not None or body.like_id is not None):
            raise UserInputError("give a query: q (text or arithmetic), a file, a vector or like_id")
        kinds = [Term(weight, upload.modality, "upload") for upload, weight in uploads] + terms
        if body.modality is not None or kinds:
            returned = self.index.result_modality(kinds, body.modality)
        elif body.like_id is not None:
            returned = self.items.get(body.like_id)["modality"]
        else:
            returned = "any"
        return Query(body, list(uploads), terms, returned)

    # -- searching ------------------------------------------------------------------------

    async def run(self, function: Callable[[], T], filtered: bool = False) -> T:
        """Run blocking work on a pool, giving up after the query time limit."""
        pool = self._filtered if filtered else self._plain
        return await self.wait(pool.submit(function), "the search")

    async def wait(self, future: Future[T], what: str) -> T:
        """Await a thread's future, giving up after the query time limit."""
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.query_timeout_s)
        except asyncio.TimeoutError:
            raise QueryTimeout(f"{what} took longer than {self.settings.query_timeout_s:g} s") from None

    async def vectors(self, queries: Sequence[Query]) -> np.ndarray:
        """The unit query vector of each query (texts embedded in one batch)."""
        texts = list(dict.fromkeys(t.value for query in queries for t in query.terms))
        text_vectors: dict[str, np.ndarray] = {}
        if texts:
            embedded = await self.wait(self.encoder.texts(texts), "encoding")
            text_vectors = dict(zip(texts, embedded))
        liked = [query.body.like_id for query in queries if query.body.like_id is not None]
        like_vectors = dict(zip(liked, await self.run(lambda: self._like_vectors(liked)))) if liked else {}
        file_vectors = [
            [(await self.wait(self.encoder.pieces(u.modality, u.pieces), "encoding"), w) for u, w in query.uploads]
            for query in queries
        ]
        dim = self.index.manifest.dim
        out = np.zeros((len(queries), dim), dtype=np.float32)
        for row, query in enumerate(queries):
            total = out[row]
            for term in query.terms:
                total += term.weight * text_vectors[term.value]
            for vector, weight in file_vectors[row]:
                total += weight * vector
            if query.body.vector is not None:
                total += checks.unit_rows(np.asarray(query.body.vector)[None], "the query vector", one=True)[0]
            if query.body.like_id is not None:
                total += like_vectors[query.body.like_id]
            norm = np.linalg.norm(total)
            if not np.isfinite(norm):
                raise UserInputError("the query's embedding is not finite (a file with NaN or Inf samples?)")
            if norm < 1e-6:
                raise UserInputError("the query terms cancel out")
            total /= norm
        return out

    def _like_vectors(self, ids: list[int]) -> np.ndarray:
        try:
            return self.index.vectors(ids)
        except UserInputError as exc:  # "no live item with id N"
            raise ItemNotFound(str(exc)) from None

    async def search(self, query: Query, root: str = "") -> dict:
        """One page of results for one query."""
        started = time.perf_counter()
        vectors = await self.vectors([query])
        (answer,) = await self._search_group([query], vectors, root)
        return answer | {"took_ms": round((time.perf_counter() - started) * 1000, 3)}

    async def batch(self, queries: list[Query], root: str = "") -> dict:
        """One page per query; queries that share modality, filter and page size share a search call."""
        started = time.perf_counter()
        vectors = await self.vectors(queries)
        groups: dict[tuple, list[int]] = {}
        for position, query in enumerate(queries):
            b = query.body
            second = (b.rerank, b.reranker, b.rerank_depth, b.min_prob)
            groups.setdefault((query.returned, b.where, b.min_score, self._fetch(query), second), []).append(position)
        answers: list[dict] = [{} for _ in queries]
        for positions in groups.values():
            try:
                found = await self._search_group([queries[p] for p in positions], vectors[positions], root)
            except UserInputError as exc:  # a filter the index refused: name the query, as the checks do
                raise type(exc)(f"query {positions[0] + 1}: {exc}") from None
            for position, answer in zip(positions, found):
                answers[position] = answer
        return {"answers": answers, "took_ms": round((time.perf_counter() - started) * 1000, 3)}

    @staticmethod
    def _fetch(query: Query) -> int:
        return query.body.offset + query.body.k + (1 if query.body.like_id is not None else 0)

    async def _search_group(self, queries: list[Query], vectors: np.ndarray, root: str) -> list[dict]:
        """Queries that share returned modality, filter, min_score and page size: one search call."""
        first = queries[0]
        where, min_score = first.body.where, first.body.min_score

        def search() -> tuple[int, list[list[SearchResult]], list[list[dict]], int]:
            before = self.items.generation()
            if reranks(first.body):
                found = [self._reranked(query) for query in queries]
            else:
                found = self.index.search_batch(
                    vectors, k=self._fetch(first), where=where, modality=first.returned, min_score=min_score
                )
            rows = [[hit.metadata for hit in hits] for hits in found]  # read on first use: here, off the event loop
            return before, found, rows, self.items.generation()

        before, found, rows, after = await self.run(search, filtered=bool(where))
        answers = []
        for query, hits, hit_rows in zip(queries, found, rows):
            if before == after:
                self.items.remember(after, hit_rows)
            more = len(hits) >= self._fetch(query)  # the index may hold more beyond this page
            if query.body.like_id is not None:
                hits = [hit for hit in hits if hit.id != query.body.like_id]
            b = query.body
            page = hits[b.offset : b.offset + b.k]
            answers.append(
                {
                    "results": [self.hit(hit.to_dict(), root) for hit in page],
                    "modality": query.returned,
                    "k": b.k,
                    "offset": b.offset,
                    "next_offset": b.offset + b.k if more and b.offset + b.k <= self.settings.max_offset else None,
                    "generation": after,
                }
            )
        return answers

    def _reranked(self, query: Query) -> list[SearchResult]:
        """One text query through both stages (the re-ranker reads the text, not a vector)."""
        b = query.body
        return self.index.search(
            query=b.q,
            modality=query.returned,
            k=self._fetch(query),
            where=b.where,
            min_score=b.min_score,
            rerank=b.reranker or True,
            rerank_depth=b.rerank_depth,
            min_prob=b.min_prob,
        )

    # -- items ----------------------------------------------------------------------------

    def hit(self, fields: dict, root: str = "") -> dict:
        """A result or item as JSON, with its media and thumbnail links."""
        item_id = fields["id"]
        signature = f"?sig={auth.sign(self.settings.token, item_id)}" if self.settings.token else ""
        fields["media_url"] = f"{root}/api/media/{item_id}{signature}"
        fields["thumb_url"] = f"{root}/api/thumbs/{item_id}{signature}" if has_thumbnail(fields) else None
        return fields

    def item(self, item_id: int, root: str = "") -> dict:
        """One item's metadata, as a search result shows it (without a score)."""
        row = self.items.get(item_id)
        fields = SearchResult.of_row(row).to_dict()
        del fields["score"]
        return self.hit(fields, root)

    def info(self) -> dict:
        """The index's info plus what this server accepts."""
        details = self.index.info()
        inputs = self.index.manifest.inputs or {}
        s = self.settings
        return details | {
            "server": {
                "auth": s.token is not None,
                "sql": s.allow_sql,
                "query_modalities": inputs.get("modalities", []),
                "max_k": s.max_k,
                "max_offset": s.max_offset,
                "max_batch": s.max_batch,
                "max_upload_bytes": s.max_upload_bytes,
                "rerankers": list(self.rerankers),
            }
        }

    def sql(self, statement: str) -> dict:
        """Rows of one sandboxed read-only SELECT (at most ``max_sql_rows``)."""
        if len(statement) > self.settings.max_text_chars * 4:
            raise UserInputError(f"the statement is longer than {self.settings.max_text_chars * 4} characters")
        table = self.index.sql(statement)
        limit = self.settings.max_sql_rows
        rows = table.slice(0, limit).to_pylist()
        return {
            "columns": table.column_names,
            "rows": [jsonable(list(row.values())) for row in rows],
            "truncated": table.num_rows > limit,
        }
