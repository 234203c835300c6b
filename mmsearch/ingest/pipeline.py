"""The ingest pipeline: parallel decode → batched encode → sink, timing each stage.

Decoding runs in ``spawn``-ed worker processes (safe next to torch threads and
CUDA) that import only Pillow, NumPy and the audio/table readers; the main process
groups decoded pieces per modality, encodes full batches and hands vectors to the
sink while workers keep decoding ahead. Workers never import the caller's main
script, so library users need no ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
import types
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol, cast

import numpy as np

from mmsearch.hashing import file_digest
from mmsearch.ingest import device_jpeg
from mmsearch.ingest.decode import WHOLE, Decoded, DecodeOptions, Part, Piece, decode
from mmsearch.ingest.discover import ENCODED_AS, MODALITY_OF_DECODER, FoundFile
from mmsearch.models.base import Encoder, finite_rows

INLINE_BELOW = 32  # fewer jobs than this are decoded in-process: worker start-up costs more
MiB = 1 << 20
PART_BYTES = {"text": 4 * MiB, "table": 16 * MiB, "audio": 64 * MiB, "video": 128 * MiB}  # larger files are split
HEAVY_PARTS = frozenset({"audio", "video"})  # parts whose decoding is worth a worker process even when few


class Sink(Protocol):
    """Where decoded files and embedded pieces go (the index writer's side of the pipeline)."""

    def expect(self, decoded: Decoded) -> None:
        """A job was decoded (or failed): its pieces follow in later calls."""

    def drop(self, decoded: Decoded, pieces: int) -> None:
        """``pieces`` of a decoded job will not come after all (they failed on the device)."""

    def __call__(self, vectors: np.ndarray, pieces: list[tuple[Decoded, Piece]]) -> None:
        """Embedded pieces, in encoder batches, with the vectors in the same order."""


@dataclass(frozen=True)
class Job:
    """One decode job: a whole file, or one part of a large one (see ``decode.Part``)."""

    file: FoundFile
    part: Part = WHOLE


def jobs(
    files: Sequence[FoundFile], todo: dict[str, tuple[int, list[int]]], part_bytes: int | None = None
) -> list[Job]:
    """The decode jobs for ``files``: a large local file (over ``part_bytes``, by default
    ``PART_BYTES`` of its type) is cut into parts; ``todo`` gives, for a file resuming,
    its parts and those still missing."""
    planned: list[Job] = []
    for file in files:
        if file.path in todo:
            count, missing = todo[file.path]
        else:
            cut = file.decoder in PART_BYTES  # images are one piece each: never cut
            count = max(1, -(-file.size // (part_bytes or PART_BYTES[file.decoder]))) if cut else 1
            missing = list(range(count))
        planned.extend(Job(file, Part(index, count)) for index in missing)
    return planned


@dataclass
class StageTimes:
    """Seconds spent per stage; ``decode`` is summed over workers."""

    decode: float = 0.0
    encode: float = 0.0
    write: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in vars(self).items()}


@dataclass
class IngestResult:
    """What a run did: the files with at least one part embedded, vectors, failed jobs, stage times."""

    embedded: set[str] = field(default_factory=set)
    vectors: int = 0
    failures: list[Decoded] = field(default_factory=list)
    times: StageTimes = field(default_factory=StageTimes)


def inputs_of(encoder: Encoder) -> dict:
    """What planning and decoding need to know of an encoder (recorded in the manifest)."""
    inputs: dict = {"modalities": sorted(encoder.modalities)}
    if encoder.image_input is not None:
        inputs["image_size"] = encoder.image_input.size
    if encoder.audio_input is not None:
        inputs |= {"sample_rate": encoder.audio_input.sample_rate, "window_s": encoder.audio_input.window_s}
    return inputs


def decode_options(
    inputs: dict, text_column: str | None, id_column: str | None, video_every: float | None = None
) -> DecodeOptions:
    """What decode workers need to know to prepare input for an encoder with ``inputs``."""
    settings = {key: inputs[key] for key in ("image_size", "sample_rate", "window_s") if key in inputs}
    settings["soundtrack"] = "audio" in inputs.get("modalities", ())
    if video_every is not None:
        settings["video_every"] = video_every
    return replace(DecodeOptions(text_column=text_column, id_column=id_column), **settings)


def indexable(modality: str, encoded: Sequence[str]) -> bool:
    """Whether files of ``modality`` can be indexed by a model that embeds ``encoded``."""
    return ENCODED_AS.get(modality, modality) in encoded


def default_workers(n_jobs: int, heavy: bool = False) -> int:
    """Worker processes to use: none for a few small jobs, else one per core (at most 32: a GPU
    encoder outruns a few decoding cores, so a big machine's cores all decode). ``heavy`` jobs
    (parts of a film or a long recording: decoding them costs about what embedding them does)
    always get workers."""
    if n_jobs < INLINE_BELOW and not heavy:
        return 0
    return max(1, min(32, os.cpu_count() or 1))


def _decoded(jobs: Sequence[Job], options: DecodeOptions, workers: int, split: bool) -> Iterator[Decoded]:
    """Decoded jobs in order; when some file is ``split``, parts go to workers one at a time,
    so one file's parts spread over them."""
    work = partial(_decode_job, options=options)
    if workers == 0:
        yield from map(work, _hashed(jobs))
        return
    context = multiprocessing.get_context("spawn")
    with _main_script_hidden():
        pool = context.Pool(workers)
    with pool:
        yield from pool.imap(work, _hashed(jobs), chunksize=1 if split else 4)


def _hashed(jobs: Sequence[Job]) -> Iterator[tuple[str, str, Part, str | None]]:
    """Work items; the parts of a file carry its content hash, computed once here (with a
    pool, in its task-feeding thread while workers decode) rather than by every part."""
    digest: tuple[str, str | None] | None = None
    for job in jobs:
        content_hash = None
        if job.part.count > 1:
            if digest is None or digest[0] != job.file.path:
                try:
                    digest = (job.file.path, file_digest(job.file.path))
                except OSError:  # each part's own read records why
                    digest = (job.file.path, None)
            content_hash = digest[1]
        yield (job.file.path, job.file.decoder, job.part, content_hash)


@contextlib.contextmanager
def _encoder_threads(workers: int) -> Iterator[None]:
    """Leave the cores busy decoding to the workers: torch's intra-op threads fighting
    them for the same cores made encoding 3-4× slower (measured on 2 cores)."""
    torch = sys.modules.get("torch")  # only when the encoder uses torch (never imported here)
    if torch is None or workers == 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Start workers without the caller's ``__main__``.

    ``spawn`` re-imports the parent's main script in every worker so that pickled
    functions from it resolve; an unguarded script would then run its top level
    again (and again, as the pool restarts workers). Our jobs reference mmsearch
    functions only, so workers are started while ``__main__`` is a bare module.
    """
    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real


def _device_crops(
    batch: list[tuple[Decoded, Piece]], encoder: Encoder, result: IngestResult, sink: Sink
) -> tuple[list[tuple[Decoded, Piece]], Any]:
    """Decode a batch's deferred JPEGs on the encoder's device; files that cannot be decoded
    there or by Pillow leave the batch as failures (a photo is one piece, so nothing else of
    theirs is in flight)."""
    payloads = [cast("np.ndarray | device_jpeg.DeferredJpeg", p.payload) for _, p in batch]  # images: never text
    crops, failed = device_jpeg.crops(payloads, encoder.image_spec().size, encoder.device)
    for position, reason in failed.items():
        decoded = batch[position][0]
        decoded.error, decoded.pieces = reason, []
        result.failures.append(decoded)
        result.embedded.discard(decoded.path)
        sink.drop(decoded, 1)
    keep = [i for i in range(len(batch)) if i not in failed]
    if failed:
        crops = crops[keep]
    return [batch[i] for i in keep], crops


def not_finite(vectors: np.ndarray, payloads: Sequence[Any]) -> dict[int, str]:
    """The rows of an embedded batch that must not be written, with the reason their file
    fails: a NaN or Inf anywhere in a vector (from its decoded input or from the model)."""
    reasons = {}
    for row in np.flatnonzero(~finite_rows(vectors)).tolist():
        payload = payloads[row]
        bad_input = isinstance(payload, np.ndarray) and not np.isfinite(payload).all()
        cause = "NaN or Inf in the decoded input" if bad_input else "the model returned NaN or Inf"
        reasons[row] = f"its embedding is not finite ({cause})"
    return reasons


def _finite_only(
    batch: list[tuple[Decoded, Piece]], vectors: np.ndarray, result: IngestResult, sink: Sink
) -> tuple[list[tuple[Decoded, Piece]], np.ndarray]:
    """Keep a batch's rows whose vectors are finite; a job with a non-finite piece fails, and
    none of its pieces from here on are written (one bad file never stops the batch)."""
    payloads = [piece.payload for _, piece in batch]
    for row, reason in not_finite(vectors, payloads).items():
        decoded = batch[row][0]
        if decoded.error is None:
            decoded.error = reason
            result.failures.append(decoded)
            result.embedded.discard(decoded.path)
    keep = np.array([decoded.error is None for decoded, _ in batch])
    if keep.all():
        return batch, vectors
    failed = [decoded for decoded, _ in batch if decoded.error is not None]  # one per piece: a job's pieces share it
    pieces = Counter(map(id, failed))
    for decoded in {id(decoded): decoded for decoded in failed}.values():
        sink.drop(decoded, pieces[id(decoded)])
    return [pair for pair, kept in zip(batch, keep) if kept], vectors[keep]


def _decode_job(job: tuple[str, str, Part, str | None], options: DecodeOptions) -> Decoded:
    path, decoder, part, content_hash = job
    return decode(path, decoder, options, part, content_hash)


def run(
    planned: Sequence[Job],
    encoder: Encoder,
    sink: Sink,
    options: DecodeOptions,
    workers: int | None = None,
    progress: bool = False,
) -> IngestResult:
    """Decode, embed and deliver the ``planned`` jobs to ``sink`` in encoder-sized batches per
    modality. The progress bar counts files, or parts when some file is cut into parts; its
    ``vectors`` count moves with every batch, so a single huge file shows progress too."""
    from tqdm import tqdm

    result = IngestResult()
    batches: dict[str, list[tuple[Decoded, Piece]]] = defaultdict(list)

    def flush(modality: str) -> None:
        batch = batches.pop(modality, [])
        if not batch:
            return
        started = time.perf_counter()
        if modality == "image" and options.jpeg_on_device:
            batch, crops = _device_crops(batch, encoder, result, sink)
            result.times.decode += time.perf_counter() - started
            started = time.perf_counter()
            if not batch:
                return
            vectors = encoder.embed_crops(crops)
        else:
            vectors = encoder.embed(modality, [piece.payload for _, piece in batch])
        encoded = time.perf_counter()
        batch, vectors = _finite_only(batch, vectors, result, sink)
        if batch:
            sink(vectors, batch)
        result.times.encode += encoded - started
        result.times.write += time.perf_counter() - encoded
        result.vectors += len(batch)

    split = any(job.part.count > 1 for job in planned)
    heavy = any(job.part.count > 1 and job.file.decoder in HEAVY_PARTS for job in planned)
    workers = default_workers(len(planned), heavy) if workers is None else workers
    if "image" in encoder.modalities and encoder.crops_on_device and device_jpeg.available(encoder.device):
        options = replace(options, jpeg_on_device=True)
    unit = "part" if split else "file"
    bar = tqdm(total=len(planned), unit=unit, disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with bar, _encoder_threads(workers):
        for decoded in _decoded(planned, options, workers, split):
            result.times.decode += decoded.seconds
            sink.expect(decoded)
            if decoded.error is not None:
                result.failures.append(decoded)
                bar.update(1)
                continue
            if decoded.pieces:  # parts past those a file uses come back empty
                result.embedded.add(decoded.path)
            own = MODALITY_OF_DECODER[decoded.decoder]
            for piece in decoded.pieces:
                modality = piece.modality or own
                batches[modality].append((decoded, piece))
                if len(batches[modality]) >= encoder.batch_size:
                    flush(modality)
                    bar.set_postfix(vectors=result.vectors, refresh=False)
                    bar.update(0)
            bar.update(1)
        for modality in list(batches):
            flush(modality)
        bar.set_postfix(vectors=result.vectors)
    return result
