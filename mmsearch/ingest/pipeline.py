"""The ingest pipeline: parallel decode → batched encode → sink, timing each stage.

Decoding runs in ``spawn``-ed worker processes (safe next to torch threads and
CUDA) that import only Pillow and NumPy; the main process normalises, encodes in
batches and hands vectors to the sink while workers keep decoding ahead.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from mmsearch.ingest.decode import Decoded, decode_image
from mmsearch.ingest.preprocess import normalise
from mmsearch.models.base import Encoder

INLINE_BELOW = 32  # fewer files than this are decoded in-process: worker start-up costs more
Sink = Callable[[np.ndarray, list[Decoded]], None]


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
    embedded: int = 0
    failures: list[Decoded] = field(default_factory=list)
    times: StageTimes = field(default_factory=StageTimes)


def default_workers(n_files: int) -> int:
    """Worker processes to use: none for tiny jobs, else one per core (at most 8)."""
    if n_files < INLINE_BELOW:
        return 0
    return max(1, min(8, os.cpu_count() or 1))


def _decoded(paths: Sequence[str], size: int, workers: int) -> Iterator[Decoded]:
    decode = partial(decode_image, size=size)
    if workers == 0:
        yield from map(decode, paths)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        yield from pool.imap(decode, paths, chunksize=4)


def run(
    paths: Sequence[str],
    encoder: Encoder,
    sink: Sink,
    workers: int | None = None,
    progress: bool = False,
) -> IngestResult:
    """Decode, embed and deliver ``paths`` to ``sink`` in encoder-sized batches."""
    from tqdm import tqdm

    result = IngestResult()
    spec = encoder.image_input
    batch: list[Decoded] = []

    def flush() -> None:
        started = time.perf_counter()
        vectors = encoder.embed_images(normalise(np.stack([d.crop for d in batch]), spec.mean, spec.std))
        encoded = time.perf_counter()
        sink(vectors, list(batch))
        result.times.encode += encoded - started
        result.times.write += time.perf_counter() - encoded
        result.embedded += len(batch)
        batch.clear()

    workers = default_workers(len(paths)) if workers is None else workers
    bar = tqdm(total=len(paths), unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with bar:
        for decoded in _decoded(paths, spec.size, workers):
            result.times.decode += decoded.seconds
            if decoded.error is not None:
                result.failures.append(decoded)
            else:
                batch.append(decoded)
                if len(batch) >= encoder.batch_size:
                    flush()
            bar.update(1)
        if batch:
            flush()
    return result
