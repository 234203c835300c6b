"""The public ``Index``: create/open an index, add files, search, inspect.

``Index`` wires the boxes of the design together — discovery and planning, the
ingest pipeline, the shard writer, the searcher and the DuckDB catalog — and owns
no storage logic itself. Readers take no lock: each read uses one immutable
snapshot of a committed generation, swapped for a newer one when the manifest
changes, so one ``Index`` serves many threads at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa

from mmsearch import checks
from mmsearch.config import CHECKPOINT_S
from mmsearch.errors import (
    IndexFormatError,
    ModelMismatchError,
    ShardDamagedError,
    UserInputError,
    one_line,
)
from mmsearch.ingest.add import AddOptions, AddSummary, add_files
from mmsearch.ingest.discover import MODALITIES, absolute, stored_name
from mmsearch.ingest.pipeline import inputs_of
from mmsearch.jsonvalues import jsonable
from mmsearch.models import registry
from mmsearch.models.base import Encoder
from mmsearch.rerank.base import Reranker
from mmsearch.rerank.prepare import Prepared
from mmsearch.rerank.store import ROOT as RERANK_ROOT
from mmsearch.search import embed, searcher, segments
from mmsearch.search import query as query_parser
from mmsearch.search.query import Term
from mmsearch.store import manifest as manifest_io
from mmsearch.store import recipes
from mmsearch.store.manifest import Manifest
from mmsearch.store.rows import RowsOnDemand
from mmsearch.store.schema import vector_rows
from mmsearch.store.snapshot import Snapshot
from mmsearch.store.writer import ShardWriter, dropped_message

DEFAULT_SHARD_SIZE = 100_000
T = TypeVar("T")


@dataclass(frozen=True)
class SearchResult:
    """One hit: cosine similarity ``score`` (higher is closer) and the item's metadata;
    after re-ranking, ``match_prob`` is the re-ranker's calibrated probability of a match.

    ``rows`` holds the hit's metadata row under its ``id``: a search's hits share one that
    reads all their rows the first time any hit's ``path``, ``modality`` or ``metadata``
    is wanted, so a caller that needs only ids and scores never pays for rows.
    """

    id: int
    score: float
    rows: Mapping[int, dict] = field(repr=False, compare=False)
    match_prob: float | None = None

    @classmethod
    def of_row(cls, row: dict, score: float = 0.0) -> SearchResult:
        """A hit for a metadata row already at hand."""
        return cls(row["id"], score, {row["id"]: row})

    @property
    def metadata(self) -> dict:
        """The item's row of ``items`` (every column; ``None`` where it has no value)."""
        return self.rows[self.id]

    @property
    def path(self) -> str:
        return self.metadata["path"]

    @property
    def modality(self) -> str:
        return self.metadata["modality"]

    def __reduce__(self) -> tuple:
        """Pickled and copied with its own row only (not the shared reader, nor its search's other rows)."""
        return SearchResult, (self.id, self.score, {self.id: self.metadata}, self.match_prob)

    def __repr__(self) -> str:
        judged = "" if self.match_prob is None else f", match_prob={self.match_prob!r}"
        where = f"path={self.path!r}, modality={self.modality!r}"
        return f"SearchResult(id={self.id!r}, score={self.score!r}{judged}, {where})"

    @property
    def start_s(self) -> float | None:
        """Where a video hit's segment starts (seconds; ``None`` for other hits)."""
        return self.metadata.get("start_s")

    @property
    def end_s(self) -> float | None:
        """Where a video hit's segment ends (seconds; ``None`` for other hits)."""
        return self.metadata.get("end_s")

    def to_dict(self) -> dict:
        """JSON-ready form (values as :mod:`mmsearch.jsonvalues` writes them, null fields dropped)."""
        extra = {k: jsonable(v) for k, v in self.metadata.items() if v is not None}
        judged = {} if self.match_prob is None else {"match_prob": round(self.match_prob, 6)}
        return {
            "id": self.id,
            "score": round(self.score, 6),
            **judged,
            "path": self.path,
            "modality": self.modality,
        } | {k: v for k, v in extra.items() if k not in ("id", "path", "modality")}


class Index:
    """A sharded, incrementally updatable cross-modal vector index on disk."""

    def __init__(self, path: Path, encoder: Encoder | None = None, device: str | None = None) -> None:
        """Use :meth:`open` or :meth:`create`."""
        self.path = Path(path)
        self.device = device
        self._encoder = encoder
        self._encoder_lock = threading.Lock()
        self._rerankers: dict[str, Reranker] = {}
        self._unbilled_load_s = 0.0  # a model loaded by create(), reported by the first add()
        self._snapshot = Snapshot.load(self.path)
        if encoder is not None:
            self._check_space(encoder)

    @classmethod
    def create(
        cls,
        path: str | Path,
        model: str | None = None,
        *,
        dim: int | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
        recipe: str = "auto",
        device: str | None = None,
        encoder: Encoder | None = None,
        max_memory: int | None = None,
    ) -> Index:
        """Create an empty index for ``model`` (default: :func:`registry.default_model`).

        With ``dim`` and no model, the index holds vectors only: fed by
        :meth:`add_vectors` and queried with vectors, whatever model made them.
        ``max_memory`` (bytes, ``auto`` recipe only): each shard is sealed with the most
        accurate code whose bytes per vector fit the budget spread over the index's rows.
        Every argument is checked before anything is written.
        """
        path = checks.index_folder(path)
        if manifest_io.exists(path):
            raise UserInputError(f"an index already exists at {path}")
        manifest_io.check_not_orphaned(path)
        shard_size = checks.count(shard_size, "shard size")
        model, device = checks.optional_text(model, "model"), checks.optional_text(device, "device")
        recipe = checks.text(recipe, "recipe")
        max_memory = None if max_memory is None else checks.count(max_memory, "the memory budget")
        if dim is not None and (model is not None or encoder is not None):
            raise UserInputError("give a model or a dim, not both (with a model, the dimension is the model's)")
        load_s = 0.0
        if dim is not None:
            dim = checks.count(dim, "dim")
            spec, space_id, audio_space_id, inputs = None, f"vectors:{dim}", None, None
        else:
            started = time.perf_counter()
            encoder = encoder or registry.load_encoder(model or registry.default_model(), device)
            load_s = time.perf_counter() - started
            spec, space_id, audio_space_id, inputs = (
                encoder.spec,
                encoder.space_id,
                encoder.audio_space_id,
                inputs_of(encoder),
            )
            dim = encoder.dim
        recipes.resolve(recipe, 0, dim)  # a bad recipe fails here, not at the first seal
        recipes.check_budget(recipe, max_memory)
        manifest = Manifest(
            spec,
            space_id,
            dim,
            recipe,
            shard_size,
            max_memory=max_memory,
            audio_space_id=audio_space_id,
            inputs=inputs,
        )
        with ShardWriter(path, manifest):
            pass
        index = cls(path, encoder, device)
        index._unbilled_load_s = load_s
        return index

    @classmethod
    def open(
        cls,
        path: str | Path,
        model: str | None = None,
        *,
        device: str | None = None,
        encoder: Encoder | None = None,
    ) -> Index:
        """Open an existing index; ``model``, if given, must be the one it was built with."""
        index = cls(checks.index_folder(path), encoder, device)
        if model is not None and index._manifest.model is None:
            raise ModelMismatchError(
                f"index {path} holds vectors only (no model), so it cannot embed files with {model!r}; "
                "use another --index, or bring vectors with `mmsearch import`"
            )
        if model is not None and registry.resolve(model).spec != index._manifest.model:
            raise ModelMismatchError(
                f"index {path} was built with model {index._manifest.model!r}, not {model!r}; "
                "omit --model or use another --index"
            )
        return index

    @classmethod
    def open_or_create(cls, path: str | Path, model: str | None = None, **options) -> Index:
        """Open the index at ``path``, creating it (with ``options``) if absent; a ``dim`` (like a
        ``model``) must then be the existing index's."""
        if manifest_io.exists(checks.index_folder(path)):
            index = cls.open(path, model, device=options.get("device"), encoder=options.get("encoder"))
            dim = options.get("dim")
            if dim is not None and checks.count(dim, "dim") != index._manifest.dim:
                raise ModelMismatchError(
                    f"index {path} holds vectors of {index._manifest.dim} dimensions, not {dim}; "
                    "use another path or the index's dimension"
                )
            return index
        return cls.create(path, model, **options)

    @property
    def manifest(self) -> Manifest:
        """The manifest of the generation this object currently reads."""
        return self._snapshot.manifest

    @property
    def _manifest(self) -> Manifest:
        return self._snapshot.manifest

    @property
    def encoder(self) -> Encoder:
        """The index's encoder, loaded once on first use and checked against the index's space."""
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    if self._manifest.model is None:
                        raise UserInputError(
                            f"index {self.path} holds vectors only (created with dim={self._manifest.dim}, no model) "
                            "and cannot embed texts or files; query it with vectors (Index.search(vector=...), "
                            'the server\'s "vector" field)'
                        )
                    encoder = registry.load_encoder(self._manifest.model, self.device)
                    self._check_space(encoder)
                    self._encoder = encoder
        return self._encoder

    def _check_space(self, encoder: Encoder) -> None:
        try:
            self._manifest.check_encoder(encoder)
        except ModelMismatchError as exc:
            raise ModelMismatchError(f"index {self.path}: {exc}") from None

    def refresh(self) -> Snapshot:
        """Pick up a newer generation committed by a writer (a ``stat`` when there is none)."""
        latest = Snapshot.load(self.path, self._snapshot)
        if latest is not self._snapshot:
            with self._encoder_lock:
                if latest.generation >= self._snapshot.generation:
                    self._snapshot = latest
        return latest

    # -- writing -------------------------------------------------------------------------

    def add(
        self,
        paths: Sequence[str | Path],
        *,
        workers: int | None = None,
        progress: bool = False,
        text_column: str | None = None,
        id_column: str | None = None,
        exclude: Sequence[str] = (),
        url_column: str | None = None,
        ray: str | None = None,
        video_every: float | None = None,
        part_size: int | None = None,
        checkpoint_s: float = CHECKPOINT_S,
    ) -> AddSummary:
        """Index every supported file under ``paths``: new and changed files are embedded,
        renamed/copied ones reuse stored vectors, deleted ones are removed.

        Caption tables (CSV/JSONL/Parquet) index ``text_column`` (default: a column named
        text, caption, description or title), with ``id_column`` kept as ``source_id``.
        ``exclude`` takes gitignore-style patterns (``.mmsearchignore`` files are honoured
        too); excluded files are treated as absent. Videos give a frame every
        ``video_every`` seconds (default 2) plus one at each shot change, and their
        soundtrack's windows when the model embeds audio. A file that cannot be decoded is
        skipped and reported in the summary (and in the ``failures`` SQL view); it never
        stops the batch. A damaged shard found on the way is dropped and its files are
        embedded again. The model is loaded only if something must be embedded.

        With ``url_column``, ``paths`` are lists of files/URLs (a table column, or the lines
        of a ``.txt``). With ``ray`` (``auto``, ``local`` or a cluster address), decoding and
        embedding run as a Ray Data pipeline on that cluster (see ``mmsearch.distributed.ingest``).

        Files over ``part_size`` bytes (default per type: text 4 MiB, tables 16 MiB, audio
        64 MiB, video 128 MiB) are cut into parts, decoded in parallel and committed one by
        one; whatever is finished is committed at least every ``checkpoint_s`` seconds, so an
        interrupted run loses little and the next one embeds only what is missing.
        """
        options = AddOptions(
            workers,
            progress,
            text_column,
            id_column,
            tuple(exclude),
            url_column,
            video_every,
            part_size=part_size,
            checkpoint_s=checkpoint_s,
        )
        if ray is not None:
            from mmsearch.distributed.ingest import add_files_ray

            summary: AddSummary = add_files_ray(self.path, paths, lambda: self.encoder, options, ray, self.device)
        else:
            summary = add_files(self.path, paths, lambda: self.encoder, options)
        if self._unbilled_load_s:
            for stage in ("load", "total"):
                summary.seconds[stage] = round(summary.seconds.get(stage, 0.0) + self._unbilled_load_s, 3)
            self._unbilled_load_s = 0.0
        self.refresh()
        return summary

    def add_vectors(
        self,
        vectors: np.ndarray,
        metadata: Sequence[dict] | pa.Table,
        *,
        modality: str = "image",
    ) -> np.ndarray:
        """Add embeddings computed elsewhere; returns their new int64 ids.

        ``vectors``: real ``(n, dim)`` (a single vector may be 1-D), L2-normalised here in
        float64; a row that is zero, not finite or beyond float32's range is refused.
        ``metadata``: one row per vector (a list of dicts, or a pyarrow Table) with at
        least a ``path`` string (a file, a URL, an external id); columns of the items
        schema keep their meaning, others are kept as JSON in ``extra`` (see
        :func:`mmsearch.store.schema.vector_rows` for a row's own ``extra``). Adding no
        rows returns an empty array and commits nothing.
        """
        if modality not in MODALITIES:
            raise UserInputError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
        array = checks.real_matrix(vectors, self._manifest.dim)
        table = vector_rows(metadata, len(array), modality)
        if not len(array):
            return np.empty(0, np.int64)
        units = checks.unit_rows(array)
        with ShardWriter(self.path) as writer:
            ids = writer.next_ids(len(units))
            writer.append(units, table.set_column(0, "id", pa.array(ids)))
            writer.commit()
        self.refresh()
        return ids

    def remove_ids(self, ids: Sequence[int]) -> int:
        """Delete items by id; returns how many were live (unknown or removed ids are ignored)."""
        wanted = np.unique(checks.ids(ids))
        with ShardWriter(self.path) as writer:
            catalog = Snapshot(self.path, writer.manifest, None).catalog
            live = catalog.items.column("id").to_numpy()[catalog.positions(wanted)]
            if len(live):
                writer.tombstone(live.tolist())
                writer.commit()
        self.refresh()
        return len(live)

    def remove(self, paths: Sequence[str | Path]) -> int:
        """Remove every indexed item at or under ``paths`` (which may no longer exist)."""
        targets = [stored_name(absolute(p)) for p in paths]  # a name not valid UTF-8: its failure row
        with ShardWriter(self.path) as writer:
            catalog = Snapshot(self.path, writer.manifest, None).catalog
            ids = catalog.ids_under(targets)
            failures, dropped = catalog.failures_outside(targets)
            if not len(ids) and not dropped:
                raise UserInputError(f"nothing indexed under {', '.join(stored_name(str(p)) for p in paths)}")
            writer.tombstone(ids.tolist())
            writer.set_failures(failures)
            writer.commit()
        self.refresh()
        return len(ids)

    def repair(self) -> list[str]:
        """Verify every shard file against its checksum and drop the damaged shards.

        Their items disappear from the index until the next ``add`` of their folders
        embeds the files again. Returns what was dropped (empty when all was well).
        """
        report = Index.repair_at(self.path)
        self.refresh()
        return report

    @staticmethod
    def repair_at(path: str | Path) -> list[str]:
        """:meth:`repair` for an index too damaged to open: besides damaged shards, it drops an
        unreadable deletions file (the items it deleted come back) or failure table."""
        salvaged: list[str] = []
        with ShardWriter(Path(path), salvaged=salvaged) as writer:
            dropped = writer.drop_damaged(checksums=True)
            if dropped or salvaged:
                writer.commit()
        lost = "items dropped; index their folders again"
        return salvaged + [dropped_message(problem, rows, lost) for problem, rows in dropped]

    def compact(self, max_memory: int | None = None, shard_size: int | None = None) -> int:
        """Rewrite all shards without tombstoned rows; returns how many rows were dropped.

        ``max_memory`` sets a new memory budget (``auto`` recipe) that every shard is sealed
        under, spread over the rows that remain. ``shard_size`` sets a new shard size, e.g. to
        merge many shards into a few big ones: a query pays each shard's coarse quantizer and
        probes, so one IVF over 1M rows answers ~5-10x faster than ten over 100k each."""
        if shard_size is not None and shard_size < 1:
            raise UserInputError("shard size must be at least 1")
        with ShardWriter(self.path, checkpoints=False) as writer:
            writer.manifest.shard_size = shard_size or writer.manifest.shard_size
            if max_memory is not None:
                recipes.check_budget(writer.manifest.recipe, max_memory)
                writer.manifest.max_memory = max_memory
            shards, dead = writer.detach_all()
            for shard in shards:
                shard.check_intact()
            dead_ids = np.fromiter(dead, np.int64, len(dead))
            writer.expected_rows = sum(int(np.count_nonzero(~np.isin(s.ids, dead_ids))) for s in shards)
            for shard in shards:
                vectors, rows = shard.select(dead, exclude=True)
                writer.append(vectors, rows)
            writer.commit()
        self.refresh()
        return len(dead)

    # -- reading -------------------------------------------------------------------------

    def embed_terms(self, terms: Sequence[Term]) -> np.ndarray:
        """The unit vector of a weighted sum of texts and files."""
        return embed.embed_terms(self.encoder, terms)

    def search(
        self,
        text: str | None = None,
        *,
        image: str | Path | None = None,
        audio: str | Path | None = None,
        query: str | None = None,
        vector: np.ndarray | None = None,
        modality: str | None = None,
        k: int = 10,
        where: str | None = None,
        min_score: float | str | None = None,
        group: bool = True,
        rerank: bool | str = False,
        rerank_depth: int = 50,
        min_prob: float | None = None,
    ) -> list[SearchResult]:
        """The ``k`` items closest to a query, best first.

        The query is the sum of whatever is given: a ``text``, an ``image`` or ``audio``
        file, an arithmetic ``query`` expression (``"dog" + "beach" - "2:night"``), or a
        raw ``vector``. ``modality`` (image, text, audio or any) says what to return;
        by default images for text and image queries, audio for audio queries (or any
        modality when the index holds none of the preferred one). ``where`` is a SQL
        boolean expression over the ``items`` columns; ``min_score`` drops weaker hits,
        so an empty list means nothing relevant (``"auto"``: hits that stand out from the
        query's scores over this index, see :mod:`mmsearch.rerank.autoscore`). ``k`` larger
        than the index returns everything. Videos (modality ``video``: frames and soundtrack
        windows) answer with segments: touching hits in one video merge into one result
        carrying ``start_s``/``end_s`` and its best score; ``group=False`` returns the raw
        rows. Safe to call from many threads at once.

        ``rerank`` (``True`` for the index model's default re-ranker, or a re-ranker spec such
        as ``"blip:Salesforce/blip-itm-base-coco"``) re-scores the ``rerank_depth`` best
        candidates (raw rows, never grouped) with a cross-attention model and orders them by
        its calibrated ``match_prob``; ``min_prob`` (which implies ``rerank``) keeps only hits
        at least that probable. See :mod:`mmsearch.rerank.stage`.
        """
        k = checks.count(k, "k")
        if vector is not None:
            vector = checks.query_vectors(vector, self._manifest.dim, batch=False)
        terms = embed.query_terms(text, image, audio, query)
        if vector is None and not terms:
            raise UserInputError("give a query: a text, an image or audio file, an expression or a vector")
        embed.check_files(terms)
        returned = self.result_modality(terms, modality)
        if where:
            self._read(lambda snap: self._check_where(snap, where))  # a bad filter fails before the model loads
        if rerank or min_prob is not None:
            from mmsearch.rerank import stage

            stage.check(rerank_depth, min_prob)
            judge = stage.query_of(terms)
            reranker = self.reranker(rerank if isinstance(rerank, str) else None)
            # the re-ranker may encode the query's terms for both stages at once
            encoded = reranker.query_vector(judge, self._manifest.model) if terms else None
            query_vector = self._query_vector(terms, vector, encoded)
            hits = self._search(query_vector, returned, max(k, rerank_depth), where, min_score, False)[0]
            return stage.rerank(reranker, judge, hits, k, min_prob)
        return self._search(self._query_vector(terms, vector), returned, k, where, min_score, group)[0]

    def _query_vector(
        self, terms: Sequence[Term], vector: np.ndarray | None, encoded: np.ndarray | None = None
    ) -> np.ndarray:
        """One query row: the terms' unit vector (``encoded`` if at hand), plus the given
        ``vector``'s unit vector when there are both."""
        if not terms:
            assert vector is not None  # search refuses a query of neither
            return vector
        own = np.atleast_2d(encoded if encoded is not None else self.embed_terms(terms))
        return own if vector is None else own + searcher.unit_queries(vector)

    def reranker(self, spec: str | None = None) -> Reranker:
        """The re-ranker ``spec`` (default: the one for this index's model), loaded once, reading
        the per-item features this index keeps for it (see :meth:`prepare_rerank`)."""
        from mmsearch.rerank import registry as rerankers
        from mmsearch.rerank.store import FeatureStore, store_dir

        spec = spec or rerankers.default_reranker(self._manifest.model)
        with self._encoder_lock:
            if spec not in self._rerankers:
                reranker = rerankers.load_reranker(spec, self.device)
                if reranker.feature_space is not None:
                    reranker.use_store(FeatureStore(store_dir(self.path, reranker.feature_space)))
                self._rerankers[spec] = reranker
            return self._rerankers[spec]

    def prepare_rerank(self, spec: str | None = None, *, progress: bool = False) -> Prepared:
        """Compute the re-ranker's per-item features (default re-ranker: the one for this index's
        model) for every item that lacks them and keep them in the index, so a re-ranked query
        never re-reads a candidate's file: what ``mmsearch index --rerank-features`` does after
        the ingest. Items already prepared cost a ``stat``."""
        from mmsearch.rerank.prepare import prepare

        reranker = self.reranker(spec)
        return prepare(self.refresh().catalog, reranker, progress=progress)

    def search_batch(
        self,
        vectors: np.ndarray,
        *,
        k: int = 10,
        where: str | None = None,
        modality: str = "any",
        min_score: float | str | None = None,
        group: bool = True,
    ) -> list[list[SearchResult]]:
        """Many vector queries in one vectorised pass: one result list per row of ``vectors``
        (video hits grouped into segments as in :meth:`search`)."""
        k = checks.count(k, "k")
        queries = checks.query_vectors(vectors, self._manifest.dim, batch=True)
        returned = self.result_modality((), modality)
        return self._search(queries, returned, k, where, min_score, group)

    def _search(
        self,
        queries: np.ndarray,
        returned: str,
        k: int,
        where: str | None,
        min_score: float | str | None,
        group: bool,
    ) -> list[list[SearchResult]]:
        """``queries``: (n, dim) rows from :func:`checks.query_vectors` or this index's encoder."""
        queries = searcher.unit_queries(queries)

        def lookup(snap: Snapshot) -> list[list[SearchResult]]:
            counts = self._counts(snap)
            everything_matches = returned == "any" or set(counts) <= {returned}
            restricted = None if everything_matches else returned  # applied apart from ``where``, see Snapshot.allowed
            floors = self._floors(snap, queries, returned, min_score)

            def top(k: int) -> list[list[searcher.Hit]]:
                found = self._top_k(snap, queries, k, where or None, restricted)
                return [
                    [hit for hit in hits if hit[0] >= floor] if floor is not None else hits
                    for hits, floor in zip(found, floors)
                ]

            def ranked(k: int) -> list[list[segments.Ranked]]:
                found = top(k)
                rows = self._rows(snap, _ids_of(found))
                return [[(s, i, rows[i]) for s, i in hits] for hits in found]

            total = sum(counts.values())
            if group and returned in ("video", "any") and "video" in counts:
                grouped = segments.top_segments(ranked, k, total)
                return [[SearchResult(i, s, {i: row}) for s, i, row in hits] for hits in grouped]
            found = top(min(k, total))
            rows = self._hit_rows(snap, lambda: _ids_of(found))
            return [[SearchResult(i, s, rows) for s, i in hits] for hits in found]

        return self._read(lookup)

    # Where a generation's data is read: here, in this process. ``RayIndex`` reads it from
    # the Ray actors that hold the shards (mmsearch/distributed/search.py).

    def _top_k(
        self, snap: Snapshot, queries: np.ndarray, k: int, where: str | None, modality: str | None
    ) -> list[list[searcher.Hit]]:
        allowed = snap.allowed(where, modality)
        return searcher.search(snap.shards, queries, min(k, len(snap.catalog)), allowed)

    def _rows(self, snap: Snapshot, ids: Sequence[int]) -> dict[int, dict]:
        return snap.catalog.rows(ids)

    def _hit_rows(self, snap: Snapshot, ids: Callable[[], list[int]]) -> Mapping[int, dict]:
        """The rows of a search's hits, read from the catalog in memory when first wanted (hits
        not yet read hold the generation's catalog, not its shards)."""
        catalog = snap.catalog
        return RowsOnDemand(lambda: catalog.rows(ids()))

    def _vectors(self, snap: Snapshot, ids: np.ndarray) -> np.ndarray:
        return _live_vectors(snap, ids)

    def _counts(self, snap: Snapshot) -> dict[str, int]:
        return snap.counts()

    def _check_where(self, snap: Snapshot, where: str) -> None:
        snap.catalog.ids_where(where)

    def _incomplete_files(self, snap: Snapshot) -> int | None:
        return snap.catalog.incomplete_files

    def _floors(
        self, snap: Snapshot, queries: np.ndarray, returned: str, min_score: float | str | None
    ) -> list[float | None]:
        """Per query, the lowest score kept: ``min_score`` itself, or its ``"auto"`` threshold."""
        if min_score != "auto":
            if isinstance(min_score, str):
                raise UserInputError(f"min_score must be a number or 'auto', not {min_score!r}")
            if min_score is not None and not -1.0 <= min_score <= 1.0:
                raise UserInputError(f"min_score is a cosine between -1 and 1 (or 'auto'), not {min_score:g}")
            return [min_score] * len(queries)
        from mmsearch.rerank import autoscore

        def load() -> np.ndarray:
            items = snap.catalog.items
            ids = items.column("id").to_numpy()
            if returned != "any":
                ids = ids[np.asarray(items.column("modality").to_pylist()) == returned]
            return self._vectors(snap, autoscore.sample_ids(ids))

        sample = autoscore.cached_sample((str(self.path), snap.generation, returned), load)
        return autoscore.thresholds(queries, sample).tolist()

    def _read(self, operation: Callable[[Snapshot], T]) -> T:
        """Run a read on the latest snapshot. If a file it needs is gone or damaged and a
        writer committed meanwhile, run it again on the new generation; otherwise the
        damage is reported in one line (a user's bad filter is never taken for damage)."""
        snap = self.refresh()
        try:
            return operation(snap)
        except (ShardDamagedError, OSError, RuntimeError) as exc:
            latest = self.refresh()
            if latest.generation == snap.generation:
                if isinstance(exc, ShardDamagedError):
                    raise
                raise IndexFormatError(
                    f"index {self.path} cannot be read ({one_line(exc)}); run `mmsearch repair`"
                ) from None
            return operation(latest)

    def items(self, ids: Sequence[int]) -> dict[int, dict]:
        """Metadata rows of the live items among ``ids``, keyed by id (a lookup, no scan)."""
        wanted = checks.ids(ids).tolist()
        return self._read(lambda snap: self._rows(snap, wanted))

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored unit vectors of live ``ids``, in the given order (e.g. for "more like this")."""
        wanted = checks.ids(ids)
        return self._read(lambda snap: self._vectors(snap, wanted))

    def result_modality(self, terms: Sequence[Term], modality: str | None = None) -> str:
        """The modality a search returns: ``modality`` if given, else the query's preferred one."""
        if modality is not None:
            if modality not in (*MODALITIES, "any"):
                raise UserInputError(f"unknown modality {modality!r}; choose {', '.join(MODALITIES)} or any")
            return modality
        preferred = query_parser.result_modality(list(terms)) if terms else "any"
        if preferred == "any":
            return preferred
        counts = self.info_counts()
        if preferred not in counts and "video" in counts:
            return "video"  # no images (or sounds) to return: the frames (or soundtracks) of videos
        return preferred if preferred in counts else "any"

    def info_counts(self) -> dict[str, int]:
        """Live items per modality (computed once per generation)."""
        return self._read(self._counts)

    def verify(self) -> list[str]:
        """Check every shard file against the checksums in the manifest; returns the problems."""
        snap = self.refresh()
        problems = [problem for shard in snap.shards if (problem := shard.problem(checksums=True))]
        table = manifest_io.failures_problem(self.path, snap.manifest)
        return problems + ([table] if table else [])

    def sql(self, statement: str) -> pa.Table:
        """Run one read-only SQL statement over the views ``items`` and ``failures``.

        The statement runs sandboxed: it sees only this index's metadata, never files,
        URLs or extensions.
        """
        statement = checks.text(statement, "the SQL statement")
        return self._read(lambda snap: snap.catalog.query(statement))

    def info(self) -> dict:
        """Model, space, counts per modality, shards and size on disk; ``incomplete_files``
        counts files left part-done by an interrupted ingest (the next ``add`` finishes them)
        or by a failed part (listed in the failures); ``rerank_features_bytes``: what
        :meth:`prepare_rerank` keeps beside the shards."""
        return self._read(self._info)

    def _info(self, snap: Snapshot) -> dict:
        m = snap.manifest
        size = sum(f.stat().st_size for shard in snap.shards for f in (shard.faiss_file, shard.parquet_file))
        counts = self._counts(snap)
        return {
            "index": str(self.path),
            "model": m.model,
            "space_id": m.space_id,
            "audio_space_id": m.audio_space_id,
            "dim": m.dim,
            "metric": m.metric,
            "recipe": m.recipe,
            "max_memory_bytes": m.max_memory,
            "shard_size": m.shard_size,
            "vectors": sum(counts.values()),
            "by_modality": counts,
            "shards": len(m.shards),
            "shard_recipes": _recipe_summary(m),
            "tombstones": len(m.tombstones),
            "failures": snap.failure_count(),
            "incomplete_files": self._incomplete_files(snap),
            "size_bytes": size,
            "rerank_features_bytes": _folder_bytes(self.path / RERANK_ROOT),
            "generation": m.generation,
            "format_version": m.format_version,
            "created_at": m.created_at,
            "updated_at": m.updated_at,
        }


def _folder_bytes(folder: Path) -> int:
    """Bytes of the files below ``folder`` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def _recipe_summary(manifest: Manifest) -> dict[str, str]:
    """Per recipe in use: shard count, the largest tuned settings and the lowest recall
    measured at seal time."""
    summary: dict[str, list] = {}
    for shard in manifest.shards:
        entry = summary.setdefault(shard.recipe, [0, {}, 1.0])
        entry[0] += 1
        entry[1] |= {k: max(v, entry[1].get(k, v)) for k, v in shard.params.items()}
        entry[2] = min(entry[2], shard.recall if shard.recall is not None else 1.0)
    return {
        recipe: f"{count} shard(s)" + "".join(f", {k} ≤ {v:g}" for k, v in params.items()) + f", recall@10 ≥ {low:.3f}"
        for recipe, (count, params, low) in summary.items()
    }


def _live_vectors(snap: Snapshot, wanted: np.ndarray) -> np.ndarray:
    unique, inverse = np.unique(wanted, return_inverse=True)
    out, found = found_vectors(snap, unique)
    if not found.all():
        raise UserInputError(f"no live item with id {int(unique[~found][0])}")
    return out[inverse]


def found_vectors(snap: Snapshot, unique: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored vectors of ``unique`` (sorted, distinct ids) and which of them are live in ``snap``."""
    out = np.zeros((len(unique), snap.manifest.dim), dtype=np.float32)
    found = np.zeros(len(unique), dtype=bool)
    for shard in snap.shards:
        rows = shard.rows_of(unique)
        if len(rows):
            at = np.searchsorted(unique, shard.ids[rows])
            out[at], found[at] = shard.vectors(rows), True
    return out, found & ~np.isin(unique, snap.tombstones)


def _ids_of(found: list[list[searcher.Hit]]) -> list[int]:
    return sorted({i for hits in found for _, i in hits})
