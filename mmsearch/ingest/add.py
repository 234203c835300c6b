"""The add use case: one writer session that discovers, plans, reuses, embeds and commits.

The encoder is loaded only when something must be embedded: the decode settings a
plan needs are recorded in the manifest, so a no-op re-index never pays for a
model load. A file's rows become visible together (see the writer), so a crash at
any point leaves each file present exactly once, in its old or new version.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from mmsearch.config import CHECKPOINT_S
from mmsearch.errors import IndexFormatError, UserInputError
from mmsearch.ingest import pipeline, sources
from mmsearch.ingest.decode import Decoded, DecodeOptions, Piece
from mmsearch.ingest.discover import FoundFile, check_roots, stored_name, walk
from mmsearch.ingest.plan import Plan, make_plan, mtime_us
from mmsearch.ingest.sources import check_lists
from mmsearch.models.base import Encoder
from mmsearch.store.manifest import Manifest
from mmsearch.store.schema import items_table
from mmsearch.store.snapshot import Snapshot
from mmsearch.store.writer import ShardWriter, dropped_message

UNSTORABLE_NAME = "file name is not valid UTF-8"


@dataclass
class AddSummary:
    """What an ``add`` did, in files (``vectors`` counts passages/windows too).

    ``failed`` lists (path, reason) for files that could not be read this time and
    ``previously_failed`` counts files that still fail as before; ``unsupported``
    counts files of modalities the index's model cannot embed, ``skipped`` files of
    types that cannot be indexed (reason -> count); ``repaired`` names damaged shards
    that were dropped so that their files are embedded again; ``resumed`` counts files an
    interrupted run had left part-done (only their missing parts were embedded). ``seconds`` has the
    time per stage: discover, load (the model, only when needed), decode, encode, write.
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
    resumed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["failed"] = [{"path": p, "reason": r} for p, r in self.failed]
        return data

    @property
    def nothing_indexed(self) -> bool:
        """Files failed and none under the paths is indexed: nothing embedded, reused or already
        there unchanged. (A failure next to unchanged files is a partial success: files whose
        names cannot be stored are reported again on every run.)"""
        return bool(self.failed) and self.embedded == self.reused == self.unchanged == 0


@dataclass(frozen=True)
class AddOptions:
    """How to add: decode workers, progress bar, caption-table columns, exclusions, video sampling;
    with ``url_column`` the paths are lists of files/URLs (see ``sources``)."""

    workers: int | None = None
    progress: bool = False
    text_column: str | None = None
    id_column: str | None = None
    exclude: Sequence[str] = ()
    url_column: str | None = None
    video_every: float | None = None  # seconds between sampled frames (default: DecodeOptions')
    part_size: int | None = None  # bytes above which a file is cut into parts (default: per type, see pipeline)
    checkpoint_s: float = CHECKPOINT_S  # the most embedding time a crash may lose (a commit at least this often)

    def __post_init__(self) -> None:
        """Checked here, so every path that adds (local, Ray) refuses the same bad options."""
        if self.workers is not None and self.workers < 0:
            raise UserInputError("workers must be 0 (decode in-process) or more")
        if self.video_every is not None and not self.video_every > 0:
            raise UserInputError(f"video_every must be a positive number of seconds, not {self.video_every}")
        if self.part_size is not None and self.part_size < 1:
            raise UserInputError(f"the part size must be a positive number of bytes, not {self.part_size}")
        if not self.checkpoint_s >= 0:
            raise UserInputError(f"the checkpoint interval must be 0 seconds or more, not {self.checkpoint_s}")


@dataclass
class Prepared:
    """A planned add inside an open writer session: what to do and how to decode it;
    ``unnamed``: files whose names cannot be stored (under their escaped names), to report;
    ``not_files``: (path, reason) of entries that are not files and folders that cannot be read."""

    plan: Plan
    decoding: DecodeOptions
    stored: Snapshot
    encoder: Encoder | None
    unnamed: list[FoundFile] = field(default_factory=list)
    not_files: list[tuple[str, str]] = field(default_factory=list)


def add_files(
    index_dir: Path, paths: Sequence[str | Path], load_encoder: Callable[[], Encoder], options: AddOptions
) -> AddSummary:
    """Bring the index at ``index_dir`` up to date with the files under ``paths``.

    ``load_encoder`` returns the index's encoder, checked against its space; it is
    called only when a file must be embedded.
    """
    started = time.perf_counter()
    summary = AddSummary(index=str(index_dir))
    with ShardWriter(index_dir) as writer:
        prepared = prepare(writer, paths, load_encoder, options, summary)
        plan, decoding = prepared.plan, prepared.decoding
        reuse(writer, prepared.stored, plan.reuse, plan.replaces)
        result = pipeline.IngestResult()
        if plan.embed:
            encoder = prepared.encoder or _loaded(load_encoder, summary, writer.manifest)
            todo = {path: (resume.parts, resume.todo) for path, resume in plan.resume.items()}
            planned = pipeline.jobs(plan.embed, todo, options.part_size)
            sink = _Sink(writer, {f.path: f for f in plan.embed}, plan.replaces, planned, options.checkpoint_s)
            result = pipeline.run(planned, encoder, sink, decoding, options.workers, options.progress)
        summary.seconds |= result.times.as_dict()
        summary.failed = _first_failure_per_file(result.failures)
        summary.seconds["write"] += finish(writer, prepared, summary)

    summary.embedded = len(result.embedded)
    summary.vectors = result.vectors
    summary.seconds["total"] = round(time.perf_counter() - started, 3)
    return summary


def prepare(
    writer: ShardWriter,
    paths: Sequence[str | Path],
    load_encoder: Callable[[], Encoder],
    options: AddOptions,
    summary: AddSummary,
) -> Prepared:
    """Repair, discover and plan (timed as ``discover``; a model load only for old indexes)."""
    started = time.perf_counter()
    listed = options.url_column is not None
    roots = check_lists(paths) if listed else check_roots(paths)
    manifest = writer.manifest
    dropped = writer.drop_damaged()
    summary.repaired = [dropped_message(problem, rows, "items to embed again") for problem, rows in dropped]
    encoder, inputs = None, manifest.inputs
    if inputs is None:  # an index from before inputs were recorded
        encoder = _loaded(load_encoder, summary, manifest)
        inputs = pipeline.inputs_of(encoder)
    decoding = pipeline.decode_options(inputs, options.text_column, options.id_column, options.video_every)
    stored = Snapshot(writer.dir, manifest, None)
    known = stored.catalog.table(
        "SELECT path, id, size, epoch_us(mtime) AS mtime_us, content_hash, pieces,"
        " coalesce(part, 0) AS part, coalesce(parts, 1) AS parts FROM items"
    )
    old_failures = stored.catalog.table("SELECT *, epoch_us(mtime) AS mtime_us FROM failures")
    unreadable: list[str] = []
    not_files: list[tuple[str, str]] = []
    if listed:
        candidates = sources.listed(roots, options.url_column)
        roots = [f.path for f in candidates]
    else:
        skipped: Counter[str] = Counter()
        own = [str(Path(writer.dir).resolve())]
        walked = walk(
            roots, exclude=own, unreadable=unreadable, ignore=list(options.exclude), skipped=skipped, failed=not_files
        )
        candidates = list(walked)
        summary.skipped = dict(skipped)
    found: list[FoundFile] = []
    unnamed: list[FoundFile] = []
    for file in candidates:
        name = stored_name(file.path)
        if not pipeline.indexable(file.modality, inputs["modalities"]):
            summary.unsupported[file.modality] = summary.unsupported.get(file.modality, 0) + 1
        elif name != file.path:
            unnamed.append(replace(file, path=name))
        else:
            found.append(file)
    roots, unreadable = [stored_name(r) for r in roots], [stored_name(u) for u in unreadable]
    plan = make_plan(found, known, old_failures, roots, decoding.fingerprint(), unreadable, listed=listed)
    _resume_only_alike(plan, manifest, decoding.fingerprint(), stored.catalog.incomplete_files)
    summary.found = len(found)
    summary.reused = len(plan.reuse)
    summary.unchanged = plan.unchanged
    summary.removed = len(plan.gone)
    summary.previously_failed = len(plan.known_failures)
    summary.resumed = len(plan.resume)
    summary.seconds["discover"] = round(time.perf_counter() - started - summary.seconds.get("load", 0), 3)
    not_files = [(stored_name(path), reason) for path, reason in not_files]
    return Prepared(plan, decoding, stored, encoder, unnamed, not_files)


def _first_failure_per_file(failures: Sequence[Decoded]) -> list[tuple[str, str]]:
    """(path, reason) once per file, in the order they failed (a file in parts may fail in several)."""
    first: dict[str, str] = {}
    for decoded in failures:
        first.setdefault(decoded.path, decoded.error or "")
    return list(first.items())


def _resume_only_alike(plan: Plan, manifest: Manifest, fingerprint: str, incomplete: int) -> None:
    """Resume files cut short only under the decode options that cut them (else their parts
    would lie on two grids): ``manifest.decoding`` names the options every part-done file of
    the index was decoded with, or is ``None`` once part-done files of other options may
    remain. Under other options, files cut short are embedded whole again."""
    if manifest.decoding != fingerprint:
        plan.redo_cut_short()
    manifest.decoding = fingerprint if incomplete == 0 or manifest.decoding == fingerprint else None


def finish(writer: ShardWriter, prepared: Prepared, summary: AddSummary) -> float:
    """Tombstone gone and superseded rows, record ``summary.failed`` (first the files whose
    names cannot be stored and the entries that are not files), commit; returns the seconds it took."""
    started = time.perf_counter()
    plan = prepared.plan
    writer.tombstone(plan.gone)
    writer.tombstone(old for ids in plan.replaces.values() for old in ids)  # changed, then failed
    summary.failed[:0] = [(file.path, UNSTORABLE_NAME) for file in prepared.unnamed] + prepared.not_files
    files = {f.path: f for f in [*plan.embed, *prepared.unnamed]}
    failures = [_failure_row(files.get(path), path, reason, prepared.decoding) for path, reason in summary.failed]
    writer.set_failures(plan.kept_failures + failures)
    writer.commit()
    return round(time.perf_counter() - started, 3)


def _loaded(load_encoder: Callable[[], Encoder], summary: AddSummary, manifest) -> Encoder:
    """Load the encoder (timed as the ``load`` stage) and record what decoding needs."""
    started = time.perf_counter()
    encoder = load_encoder()
    manifest.check_encoder(encoder)
    manifest.audio_space_id = manifest.audio_space_id or encoder.audio_space_id
    manifest.inputs = pipeline.inputs_of(encoder)
    summary.seconds["load"] = round(time.perf_counter() - started, 3)
    return encoder


def reuse(writer: ShardWriter, stored: Snapshot, reuses: list, replaces: dict[str, list[int]]) -> None:
    """Copy stored vectors for renamed/copied files under new ids (read before any append)."""
    wanted = [i for reuse in reuses for i in reuse.source_ids]
    if not wanted:
        return
    vectors, rows = [], []
    for shard in stored.shards:
        shard_vectors, shard_rows = shard.select(set(wanted))
        if shard_rows.num_rows:
            rows.extend(shard_rows.to_pylist())
            vectors.append(shard_vectors)
    if len(rows) != len(set(wanted)):
        raise IndexFormatError(f"index {writer.dir} lost rows {sorted(set(wanted) - {r['id'] for r in rows})}")
    by_id = {row["id"]: (position, row) for position, row in enumerate(rows)}
    stacked = np.concatenate(vectors)
    for reuse in reuses:
        positions = [by_id[i][0] for i in reuse.source_ids]
        copies = [dict(by_id[i][1]) for i in reuse.source_ids]
        for row, new_id in zip(copies, writer.next_ids(len(copies))):
            row.update(_file_fields(reuse.file), id=int(new_id))
        writer.append(stacked[positions], copies, replaces.pop(reuse.file.path, ()))


class _Sink:
    """Receives decoded jobs and embedded batches, and decides what becomes visible together.

    A part of a new file is a visibility group of its own, so a long file is committed
    part by part as checkpoints come. A file that replaces rows (a changed file, or one
    whose cut-short part is redone) is one group over all its parts: its old version stays
    visible until the new one is whole. A group is complete once every job of its file was
    decoded and every piece it announced has arrived (a video's frames and sound arrive in
    different batches, in any order). A group that fails after some of its pieces were
    written (a later piece's embedding is not finite) has those rows tombstoned. At least
    every ``checkpoint_s`` seconds the writer commits what is complete.
    """

    def __init__(
        self,
        writer: ShardWriter,
        files: dict[str, FoundFile],
        replaces: dict[str, list[int]],
        planned: Sequence[pipeline.Job],
        checkpoint_s: float,
    ) -> None:
        self.writer, self.files, self.replaces, self.checkpoint_s = writer, files, replaces, checkpoint_s
        self.undecoded = Counter(job.file.path for job in planned)
        self.outstanding: Counter[Hashable] = Counter()
        self.whole = set(replaces)  # files whose parts become visible together
        self.written: dict[Hashable, list[np.ndarray]] = {}  # ids appended to groups still open

    def _group(self, decoded: Decoded) -> Hashable:
        return decoded.path if decoded.path in self.whole else (decoded.path, decoded.part)

    def _complete(self, group: Hashable, path: str) -> bool:
        return self.outstanding[group] == 0 and (group != path or self.undecoded[path] == 0)

    def expect(self, decoded: Decoded) -> None:
        self.undecoded[decoded.path] -= 1
        group = self._group(decoded)
        self.outstanding[group] += len(decoded.pieces)
        if decoded.path in self.whole and self._complete(group, decoded.path):
            self._close(group, decoded.path)  # the file's last job brought nothing (it failed, or an empty part)

    def drop(self, decoded: Decoded, pieces: int) -> None:
        group = self._group(decoded)
        self.outstanding[group] -= pieces
        if decoded.error is not None:  # its pieces from earlier batches must not appear either
            self.writer.tombstone(int(i) for ids in self.written.pop(group, []) for i in ids)
        if self._complete(group, decoded.path):
            self._close(group, decoded.path)

    def _close(self, group: Hashable, path: str) -> None:
        replaced = self.replaces.pop(path, ())
        self.written.pop(group, None)
        self.writer.append(np.empty((0, self.writer.manifest.dim), np.float32), [], replaced, group=group)

    def __call__(self, vectors: np.ndarray, pieces: list[tuple[Decoded, Piece]]) -> None:
        ids = self.writer.next_ids(len(pieces))
        rows = items_table([item_row(int(i), self.files[d.path], d, piece) for i, (d, piece) in zip(ids, pieces)])
        start = 0
        for end in range(1, len(pieces) + 1):
            decoded = pieces[end - 1][0]
            if end < len(pieces) and pieces[end][0] is decoded:
                continue
            group = self._group(decoded)
            self.outstanding[group] -= end - start
            last = self._complete(group, decoded.path)
            replaced = self.replaces.pop(decoded.path, ()) if last else ()
            file_rows = rows.slice(start, end - start)
            self.writer.append(vectors[start:end], file_rows, replaced, group=group, last=last)
            if last:
                self.written.pop(group, None)
            else:
                self.written.setdefault(group, []).append(ids[start:end])
            start = end
        self.writer.checkpoint(self.checkpoint_s)


def _file_fields(file: FoundFile) -> dict:
    return {"path": file.path, "modality": file.modality, "size": file.size, "mtime": mtime_us(file)}


def item_row(item_id: int, file: FoundFile, decoded: Decoded, piece: Piece) -> dict:
    return {
        "id": item_id,
        "content_hash": decoded.content_hash,
        "pieces": len(decoded.pieces),
        "part": decoded.part,
        "parts": decoded.parts,
        **_file_fields(file),
        **decoded.meta,
        **piece.meta,
    }


def _failure_row(file: FoundFile | None, path: str, reason: str, options: DecodeOptions) -> dict:
    """A failure; ``file`` is ``None`` for an entry that is not a file (no modality, size or mtime)."""
    fields = _file_fields(file) if file is not None else {"path": path}
    return {**fields, "reason": reason, "options": options.fingerprint()}
