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
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from mmsearch.ingest import device_jpeg
from mmsearch.ingest.decode import Decoded, DecodeOptions, Piece, decode
from mmsearch.ingest.discover import ENCODED_AS, MODALITY_OF_DECODER, FoundFile
from mmsearch.models.base import Encoder

INLINE_BELOW = 32  # fewer files than this are decoded in-process: worker start-up costs more
Sink = Callable[[np.ndarray, list[tuple[Decoded, Piece]]], None]


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
    embedded_files: int = 0
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


def default_workers(n_files: int) -> int:
    """Worker processes to use: none for tiny jobs, else one per core (at most 32: a GPU encoder
    outruns a few decoding cores, so a big machine's cores all decode)."""
    if n_files < INLINE_BELOW:
        return 0
    return max(1, min(32, os.cpu_count() or 1))


def _decoded(files: Sequence[FoundFile], options: DecodeOptions, workers: int) -> Iterator[Decoded]:
    jobs = [(f.path, f.decoder) for f in files]
    work = partial(_decode_job, options=options)
    if workers == 0:
        yield from map(work, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with _main_script_hidden():
        pool = context.Pool(workers)
    with pool:
        yield from pool.imap(work, jobs, chunksize=4)


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
    batch: list[tuple[Decoded, Piece]], encoder: Encoder, result: IngestResult
) -> tuple[list[tuple[Decoded, Piece]], Any]:
    """Decode a batch's deferred JPEGs on the encoder's device; files that cannot be decoded
    there or by Pillow leave the batch as failures (a photo is one piece, so nothing else of
    theirs is in flight)."""
    crops, failed = device_jpeg.crops([p.payload for _, p in batch], encoder.image_spec().size, encoder.device)
    for position, reason in failed.items():
        decoded = batch[position][0]
        decoded.error, decoded.pieces = reason, []
        result.failures.append(decoded)
        result.embedded_files -= 1
    keep = [i for i in range(len(batch)) if i not in failed]
    if failed:
        crops = crops[keep]
    return [batch[i] for i in keep], crops


def _decode_job(job: tuple[str, str], options: DecodeOptions) -> Decoded:
    return decode(job[0], job[1], options)


def run(
    files: Sequence[FoundFile],
    encoder: Encoder,
    sink: Sink,
    options: DecodeOptions,
    workers: int | None = None,
    progress: bool = False,
) -> IngestResult:
    """Decode, embed and deliver ``files`` to ``sink`` in encoder-sized batches per modality."""
    from tqdm import tqdm

    result = IngestResult()
    batches: dict[str, list[tuple[Decoded, Piece]]] = defaultdict(list)

    def flush(modality: str) -> None:
        batch = batches.pop(modality, [])
        if not batch:
            return
        started = time.perf_counter()
        if modality == "image" and options.jpeg_on_device:
            batch, crops = _device_crops(batch, encoder, result)
            result.times.decode += time.perf_counter() - started
            started = time.perf_counter()
            if not batch:
                return
            vectors = encoder.embed_crops(crops)
        else:
            vectors = encoder.embed(modality, [piece.payload for _, piece in batch])
        encoded = time.perf_counter()
        sink(vectors, batch)
        result.times.encode += encoded - started
        result.times.write += time.perf_counter() - encoded
        result.vectors += len(batch)

    workers = default_workers(len(files)) if workers is None else workers
    if "image" in encoder.modalities and encoder.crops_on_device and device_jpeg.available(encoder.device):
        options = replace(options, jpeg_on_device=True)
    bar = tqdm(total=len(files), unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with bar, _encoder_threads(workers):
        for decoded in _decoded(files, options, workers):
            result.times.decode += decoded.seconds
            if decoded.error is not None:
                result.failures.append(decoded)
                bar.update(1)
                continue
            result.embedded_files += 1
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
