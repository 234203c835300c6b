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
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa

from mmsearch.errors import (
    IndexFormatError,
    IndexNotFoundError,
    ModelMismatchError,
    ShardDamagedError,
    UserInputError,
)
from mmsearch.ingest import pipeline
from mmsearch.ingest.decode import Decoded, DecodeOptions, Piece
from mmsearch.ingest.discover import MODALITIES, FoundFile, absolute, check_roots, walk
from mmsearch.ingest.plan import make_plan, mtime_us
from mmsearch.models import registry
from mmsearch.models.base import Encoder
from mmsearch.search import embed, searcher
from mmsearch.search import query as query_parser
from mmsearch.search.query import Term
from mmsearch.store import manifest as manifest_io
from mmsearch.store.manifest import Manifest
from mmsearch.store.recipes import check_recipe
from mmsearch.store.snapshot import Snapshot
from mmsearch.store.writer import ShardWriter

DEFAULT_SHARD_SIZE = 100_000
T = TypeVar("T")


def _jsonable(value: object) -> object:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


@dataclass(frozen=True)
class SearchResult:
    """One hit: cosine similarity ``score`` (higher is closer) and the item's metadata."""

    id: int
    score: float
    path: str
    modality: str
    metadata: dict

    def to_dict(self) -> dict:
        """JSON-ready form (timestamps as ISO strings, null fields dropped)."""
        extra = {k: _jsonable(v) for k, v in self.metadata.items() if v is not None}
        return {"id": self.id, "score": round(self.score, 6), "path": self.path, "modality": self.modality} | {
            k: v for k, v in extra.items() if k not in ("id", "path", "modality")
        }


@dataclass
class AddSummary:
    """What an ``add`` did, in files (``vectors`` counts passages/windows too).

    ``failed`` lists (path, reason) for files that could not be read this time and
    ``previously_failed`` counts files that still fail as before; ``unsupported``
    counts files of modalities the index's model cannot embed, ``skipped`` files of
    types that cannot be indexed (reason -> count); ``repaired`` names damaged shards
    that were dropped so that their files are embedded again.
    """

    index: str
    found: int = 0
    embedded: int = 0
    vectors: int = 0
    reused: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    previously_failed: int = 0
    unsupported: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["failed"] = [{"path": p, "reason": r} for p, r in self.failed]
        return data


class Index:
    """A sharded, incrementally updatable cross-modal vector index on disk."""

    def __init__(self, path: Path, encoder: Encoder | None = None, device: str | None = None) -> None:
        """Use :meth:`open` or :meth:`create`."""
        self.path = Path(path)
        self.device = device
        self._encoder = encoder
        self._encoder_lock = threading.Lock()
        self._snapshot = Snapshot.load(self.path)
        if encoder is not None:
            self._check_space(encoder)

    @classmethod
    def create(
        cls,
        path: str | Path,
        model: str | None = None,
        *,
        shard_size: int = DEFAULT_SHARD_SIZE,
        recipe: str = "auto",
        device: str | None = None,
        encoder: Encoder | None = None,
    ) -> Index:
        """Create an empty index for ``model`` (default: :func:`registry.default_model`)."""
        path = Path(path)
        if manifest_io.exists(path):
            raise UserInputError(f"an index already exists at {path}")
        if shard_size < 1:
            raise UserInputError("shard size must be at least 1")
        encoder = encoder or registry.load_encoder(model or registry.default_model(), device)
        manifest = Manifest(
            model=encoder.spec,
            space_id=encoder.space_id,
            audio_space_id=encoder.audio_space_id,
            dim=encoder.dim,
            recipe=check_recipe(recipe),
            shard_size=shard_size,
        )
        with ShardWriter(path, manifest):
            pass
        return cls(path, encoder, device)

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
        index = cls(Path(path), encoder, device)
        if model is not None and registry.resolve(model).spec != index._manifest.model:
            raise ModelMismatchError(
                f"index {path} was built with model {index._manifest.model!r}, not {model!r}; "
                "omit --model or use another --index"
            )
        return index

    @classmethod
    def open_or_create(cls, path: str | Path, model: str | None = None, **options) -> Index:
        """Open the index at ``path``, creating it (with ``options``) if absent."""
        if manifest_io.exists(Path(path)):
            return cls.open(path, model, device=options.get("device"), encoder=options.get("encoder"))
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
                    encoder = registry.load_encoder(self._manifest.model, self.device)
                    self._check_space(encoder)
                    self._encoder = encoder
        return self._encoder

    def _check_space(self, encoder: Encoder, manifest: Manifest | None = None) -> None:
        """Refuse an encoder of another space than the index's (latest ``manifest`` if given)."""
        manifest = manifest or self._manifest
        expected = (manifest.space_id, manifest.audio_space_id or encoder.audio_space_id)
        for wanted, actual in zip(expected, (encoder.space_id, encoder.audio_space_id)):
            if wanted != actual:
                raise ModelMismatchError(
                    f"index {self.path} holds vectors of space {wanted}, but model "
                    f"{encoder.spec!r} embeds into {actual}; use the model the index was built with"
                )

    def refresh(self) -> Snapshot:
        """Pick up a newer generation committed by a writer (a ``stat`` when there is none)."""
        if not manifest_io.exists(self.path):
            raise IndexNotFoundError(f"index {self.path} has been deleted")
        latest = Snapshot.load(self.path, self._snapshot)
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
    ) -> AddSummary:
        """Index every supported file under ``paths``: new and changed files are embedded,
        renamed/copied ones reuse stored vectors, deleted ones are removed.

        Caption tables (CSV/JSONL/Parquet) index ``text_column`` (default: a column named
        text, caption, description or title), with ``id_column`` kept as ``source_id``.
        ``exclude`` takes gitignore-style patterns (``.mmsearchignore`` files are honoured
        too); excluded files are treated as absent. A file that cannot be decoded is
        skipped and reported in the summary (and in the ``failures`` SQL view); it never
        stops the batch. A damaged shard found on the way is dropped and its files are
        embedded again.
        """
        started = time.perf_counter()
        roots = check_roots(paths)
        if workers is not None and workers < 0:
            raise UserInputError("workers must be 0 (decode in-process) or more")
        summary = AddSummary(index=str(self.path))
        encoder = self.encoder
        options = pipeline.decode_options(encoder, text_column, id_column)
        with ShardWriter(self.path) as writer:
            self._check_space(encoder, writer.manifest)
            writer.manifest.audio_space_id = writer.manifest.audio_space_id or encoder.audio_space_id
            summary.repaired = [f"{problem}: {rows} items to embed again" for problem, rows in writer.drop_damaged()]
            stored = Snapshot(self.path, writer.manifest, None)
            catalog = stored.catalog
            known = catalog.table("SELECT path, id, size, epoch_us(mtime) AS mtime_us, content_hash, pieces FROM items")
            old_failures = catalog.table("SELECT *, epoch_us(mtime) AS mtime_us FROM failures")
            found, unreadable, skipped = [], [], Counter()
            own = [str(self.path.resolve())]
            for file in walk(roots, exclude=own, unreadable=unreadable, ignore=list(exclude), skipped=skipped):
                if file.modality in encoder.modalities:
                    found.append(file)
                else:
                    summary.unsupported[file.modality] = summary.unsupported.get(file.modality, 0) + 1
            summary.skipped = dict(skipped)
            plan = make_plan(found, known, old_failures, roots, options.fingerprint(), unreadable)
            summary.seconds["discover"] = round(time.perf_counter() - started, 3)

            stored_vectors, stored_rows = _stored(stored, [i for reuse in plan.reuse for i in reuse.source_ids])
            for reuse in plan.reuse:
                at = [stored_rows[i] for i in reuse.source_ids]
                rows = [dict(stored_rows[i][1]) for i in reuse.source_ids]
                ids = writer.next_ids(len(rows))
                for row, new_id in zip(rows, ids):
                    row.update(_file_fields(reuse.file), id=int(new_id))
                vectors = stored_vectors[[position for position, _ in at]]
                writer.append(vectors, rows, plan.replaces.pop(reuse.file.path, ()))

            files = {f.path: f for f in plan.embed}

            def sink(vectors: np.ndarray, pieces: list[tuple[Decoded, Piece]]) -> None:
                ids = writer.next_ids(len(pieces))
                rows = [_item_row(int(i), files[d.path], d, piece) for i, (d, piece) in zip(ids, pieces)]
                start = 0
                for end in range(1, len(pieces) + 1):
                    decoded, piece = pieces[end - 1]
                    if end < len(pieces) and pieces[end][0] is decoded:
                        continue
                    last = piece is decoded.pieces[-1]
                    replaced = plan.replaces.pop(decoded.path, ()) if last else ()
                    writer.append(vectors[start:end], rows[start:end], replaced, group=decoded.path, last=last)
                    start = end

            result = pipeline.run(plan.embed, encoder, sink, options, workers, progress)
            writer.tombstone(plan.gone)
            writer.tombstone(old for ids in plan.replaces.values() for old in ids)  # changed, then failed
            failures = [_failure_row(files[d.path], d.error or "", options) for d in result.failures]
            writer.set_failures(plan.kept_failures + failures)
            commit_started = time.perf_counter()
            writer.commit()
            summary.seconds |= result.times.as_dict()
            summary.seconds["write"] = round(summary.seconds["write"] + time.perf_counter() - commit_started, 3)

        summary.found = len(found)
        summary.embedded = result.embedded_files
        summary.vectors = result.vectors
        summary.reused = len(plan.reuse)
        summary.unchanged = plan.unchanged
        summary.removed = len(plan.gone)
        summary.failed = [(d.path, d.error or "") for d in result.failures]
        summary.previously_failed = len(plan.known_failures)
        summary.seconds["total"] = round(time.perf_counter() - started, 3)
        self.refresh()
        return summary

    def remove(self, paths: Sequence[str | Path]) -> int:
        """Remove every indexed item at or under ``paths`` (which may no longer exist)."""
        targets = [absolute(p) for p in paths]
        with ShardWriter(self.path) as writer:
            catalog = Snapshot(self.path, writer.manifest, None).catalog
            ids = catalog.ids_under(targets)
            failures, dropped = catalog.failures_outside(targets)
            if not len(ids) and not dropped:
                raise UserInputError(f"nothing indexed under {', '.join(map(str, paths))}")
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
        with ShardWriter(self.path) as writer:
            dropped = writer.drop_damaged(checksums=True)
            if dropped:
                writer.commit()
        self.refresh()
        return [f"{problem}: {rows} items dropped; index their folders again" for problem, rows in dropped]

    def compact(self) -> int:
        """Rewrite all shards without tombstoned rows; returns how many rows were dropped."""
        with ShardWriter(self.path, checkpoints=False) as writer:
            shards, dead = writer.detach_all()
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
        min_score: float | None = None,
    ) -> list[SearchResult]:
        """The ``k`` items closest to a query, best first.

        The query is the sum of whatever is given: a ``text``, an ``image`` or ``audio``
        file, an arithmetic ``query`` expression (``"dog" + "beach" - "2:night"``), or a
        raw ``vector``. ``modality`` (image, text, audio or any) says what to return;
        by default images for text and image queries, audio for audio queries (or any
        modality when the index holds none of the preferred one). ``where`` is a SQL
        boolean expression over the ``items`` columns; ``min_score`` drops weaker hits,
        so an empty list means nothing relevant. ``k`` larger than the index returns
        everything. Safe to call from many threads at once.
        """
        if k < 1:
            raise UserInputError("k must be at least 1")
        terms = embed.query_terms(text, image, audio, query)
        if vector is None and not terms:
            raise UserInputError("give a query: a text, an image or audio file, an expression or a vector")
        embed.check_files(terms)
        returned = self.result_modality(terms, modality)
        if where:
            self._read(lambda snap: snap.catalog.ids_where(where))  # a bad filter fails before the model loads
        query_vector = vector if vector is not None else self.embed_terms(terms)
        query_vector = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        if query_vector.shape != (self._manifest.dim,):
            raise UserInputError(f"query vector has {query_vector.size} dimensions; the index has {self._manifest.dim}")

        def lookup(snap: Snapshot) -> list[SearchResult]:
            everything_matches = returned == "any" or set(snap.counts()) <= {returned}
            condition = _combine(where, None if everything_matches else f"modality = '{returned}'")
            include = snap.catalog.ids_where(condition) if condition else None
            top = min(k, len(snap.catalog))
            hits = searcher.search(snap.shards, query_vector, top, include, snap.tombstones)
            if min_score is not None:
                hits = [hit for hit in hits if hit[0] >= min_score]
            rows = snap.catalog.rows([i for _, i in hits])
            return [SearchResult(i, s, rows[i]["path"], rows[i]["modality"], rows[i]) for s, i in hits]

        return self._read(lookup)

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
                reason = " ".join(str(exc).split())[:200]
                raise IndexFormatError(f"index {self.path} cannot be read ({reason}); run `mmsearch repair`") from None
            return operation(latest)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored unit vectors of live ``ids``, in the given order (e.g. for "more like this")."""
        return self._read(lambda snap: _live_vectors(snap, np.asarray(ids, dtype=np.int64)))

    def result_modality(self, terms: Sequence[Term], modality: str | None = None) -> str:
        """The modality a search returns: ``modality`` if given, else the query's preferred one."""
        if modality is not None:
            if modality not in (*MODALITIES, "any"):
                raise UserInputError(f"unknown modality {modality!r}; choose image, text, audio or any")
            return modality
        preferred = query_parser.result_modality(list(terms)) if terms else "any"
        return preferred if preferred in self.info_counts() else "any"

    def info_counts(self) -> dict[str, int]:
        """Live items per modality (computed once per generation)."""
        return self._read(lambda snap: snap.counts())

    def verify(self) -> list[str]:
        """Check every shard file against the checksums in the manifest; returns the problems."""
        snap = self.refresh()
        return [problem for shard in snap.shards if (problem := shard.problem(checksums=True))]

    def sql(self, statement: str) -> pa.Table:
        """Run one read-only SQL statement over the views ``items`` and ``failures``.

        The statement runs sandboxed: it sees only this index's metadata, never files,
        URLs or extensions.
        """
        return self._read(lambda snap: snap.catalog.query(statement))

    def info(self) -> dict:
        """Model, space, counts per modality, shards and size on disk."""
        return self._read(self._info)

    def _info(self, snap: Snapshot) -> dict:
        m = snap.manifest
        size = sum(f.stat().st_size for shard in snap.shards for f in (shard.faiss_file, shard.parquet_file))
        return {
            "index": str(self.path),
            "model": m.model,
            "space_id": m.space_id,
            "audio_space_id": m.audio_space_id,
            "dim": m.dim,
            "metric": m.metric,
            "recipe": m.recipe,
            "shard_size": m.shard_size,
            "vectors": len(snap.catalog),
            "by_modality": snap.counts(),
            "shards": len(m.shards),
            "tombstones": len(m.tombstones),
            "failures": snap.catalog.failures.num_rows,
            "size_bytes": size,
            "generation": m.generation,
            "format_version": m.format_version,
            "created_at": m.created_at,
            "updated_at": m.updated_at,
        }


def _live_vectors(snap: Snapshot, wanted: np.ndarray) -> np.ndarray:
    out = np.zeros((len(wanted), snap.manifest.dim), dtype=np.float32)
    found = np.zeros(len(wanted), dtype=bool)
    for shard in snap.shards:
        mask = np.isin(wanted, shard.ids) & ~found
        if mask.any():
            out[mask] = shard.vectors(wanted[mask])
            found |= mask
    missing = ~found | np.isin(wanted, snap.tombstones)
    if missing.any():
        raise UserInputError(f"no live item with id {int(wanted[missing][0])}")
    return out


def _stored(snap: Snapshot, ids: list[int]) -> tuple[np.ndarray, dict[int, tuple[int, dict]]]:
    """Stored vectors of ``ids`` and, per id, (its row in those vectors, its metadata).

    Read before the writer appends anything: appending may pull the last shard
    out of the manifest into the writer's buffer.
    """
    if not ids:
        return np.empty((0, snap.manifest.dim), np.float32), {}
    wanted = set(ids)
    vectors, rows = [], []
    for shard in snap.shards:
        shard_vectors, shard_rows = shard.select(wanted)
        if shard_rows:
            rows.extend(shard_rows)
            vectors.append(shard_vectors)
    if len(rows) != len(wanted):
        raise IndexFormatError(f"index {snap.dir} lost rows {sorted(wanted - {r['id'] for r in rows})}")
    return np.concatenate(vectors), {row["id"]: (position, row) for position, row in enumerate(rows)}


def _combine(*conditions: str | None) -> str | None:
    present = [f"({c})" for c in conditions if c]
    return " AND ".join(present) or None


def _file_fields(file: FoundFile) -> dict:
    return {"path": file.path, "modality": file.modality, "size": file.size, "mtime": mtime_us(file)}


def _item_row(item_id: int, file: FoundFile, decoded: Decoded, piece: Piece) -> dict:
    return {
        "id": item_id,
        "content_hash": decoded.content_hash,
        "pieces": len(decoded.pieces),
        **_file_fields(file),
        **decoded.meta,
        **piece.meta,
    }


def _failure_row(file: FoundFile, reason: str, options: DecodeOptions) -> dict:
    return {**_file_fields(file), "reason": reason, "options": options.fingerprint()}
