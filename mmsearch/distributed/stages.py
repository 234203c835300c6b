"""The Ray Data stages of a distributed ingest, run on the cluster's workers.

read + decode (CPU tasks) → embed (an actor pool holding the encoder, on GPUs when the
cluster has them) → seal (CPU tasks writing staged segments with the store's ``seal``).
Batches are Arrow tables: model inputs and metadata rows travel pickled in binary
columns, vectors as fixed-size lists. A file that cannot be read or decoded travels as
one row carrying its reason, so it is recorded, never lost. A small job actor hands out
ids and gathers progress and the seconds each node spent per stage.
"""

from __future__ import annotations

import functools
import json
import pickle
import socket
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from mmsearch.distributed import staging
from mmsearch.ingest.add import item_row
from mmsearch.ingest.decode import DecodeOptions, decode
from mmsearch.ingest.discover import FoundFile
from mmsearch.ingest.pipeline import not_finite
from mmsearch.store.manifest import SHARDS_DIR
from mmsearch.store.schema import items_table
from mmsearch.store.shard import seal

DECODED_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("modality", pa.string()),
        ("error", pa.string()),  # set: the file failed, the row carries no piece
        ("last", pa.bool_()),  # the file's last piece
        ("row", pa.binary()),  # pickled metadata row (without id)
        ("payload", pa.binary()),  # pickled model input
    ]
)


class JobState:
    """Ids, progress and per-node stage times of one job: a named actor (no CPU) per job."""

    def __init__(self, next_id: int) -> None:
        self.next_id = next_id
        self.files = 0
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def reserve(self, count: int) -> int:
        start = self.next_id
        self.next_id += count
        return start

    def record(self, node: str, stage: str, seconds: float, files: int = 0) -> None:
        self.seconds[node][stage] += seconds
        self.files += files

    def done(self) -> int:
        return self.files

    def report(self) -> tuple[int, dict[str, dict[str, float]]]:
        return self.next_id, {node: dict(stages) for node, stages in self.seconds.items()}


def _node() -> str:
    return socket.gethostname()


@functools.cache
def _job(name: str):
    """The job actor, found by name (handles passed as arguments would sit in the object store)."""
    return ray.get_actor(name)


def decode_batch(batch: pa.Table, options: DecodeOptions, job: str) -> pa.Table:
    """Read and decode files (one row each) into rows of pieces."""
    started = time.perf_counter()
    out: dict[str, list] = {name: [] for name in DECODED_SCHEMA.names}
    for item in batch.to_pylist():
        file = FoundFile(item["path"], item["decoder"], item["size"], item["mtime_ns"])
        decoded = decode(file.path, file.decoder, options)
        if decoded.error is not None:
            _append(out, file.path, file.modality, decoded.error, True, None, None)
            continue
        for piece in decoded.pieces:
            row = item_row(0, file, decoded, piece)
            del row["id"]
            last = piece is decoded.pieces[-1]
            _append(out, file.path, file.modality, None, last, pickle.dumps(row), pickle.dumps(piece.payload))
    ray.get(_job(job).record.remote(_node(), "decode", time.perf_counter() - started))
    return pa.table(out, schema=DECODED_SCHEMA)


def _append(out: dict[str, list], *values) -> None:
    for name, value in zip(DECODED_SCHEMA.names, values):
        out[name].append(value)


@dataclass(frozen=True)
class EmbedSettings:
    """What an embedding actor needs: the model, where to run it, the space to check, the job."""

    spec: str
    device: str
    space_id: str
    audio_space_id: str | None
    job: str


def embedder(settings: EmbedSettings) -> type[Embedder]:
    """An :class:`Embedder` class bound to ``settings``: Ray Data builds its actors without
    constructor arguments, which it would otherwise keep in the object store (and warn about)."""

    class BoundEmbedder(Embedder):
        def __init__(self) -> None:
            super().__init__(settings)

    return BoundEmbedder


class Embedder:
    """An actor holding the index's encoder; embeds pieces per modality in encoder-sized batches."""

    def __init__(self, settings: EmbedSettings) -> None:
        from mmsearch.models.registry import load_encoder
        from mmsearch.store.manifest import Manifest

        self.encoder = load_encoder(settings.spec, settings.device)
        space = Manifest(settings.spec, settings.space_id, self.encoder.dim, "auto", 1)
        space.audio_space_id = settings.audio_space_id
        space.check_encoder(self.encoder)
        self.job = _job(settings.job)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        modality = batch["modality"].to_pylist()
        failed = batch["error"].is_valid().to_numpy(zero_copy_only=False)
        payloads = batch["payload"].to_pylist()
        errors = batch["error"].to_pylist()
        vectors = np.zeros((batch.num_rows, self.encoder.dim), np.float32)
        for kind in sorted({m for m, bad in zip(modality, failed) if not bad}):
            rows = [i for i, (m, bad) in enumerate(zip(modality, failed)) if m == kind and not bad]
            inputs = [pickle.loads(payloads[i]) for i in rows]
            vectors[rows] = self.encoder.embed(kind, inputs)
            for position, reason in not_finite(vectors[rows], inputs).items():  # sealed as failures, not vectors
                errors[rows[position]], vectors[rows[position]] = reason, 0.0
        files = int(np.count_nonzero(batch["last"].to_numpy(zero_copy_only=False)))
        ray.get(self.job.record.remote(_node(), "encode", time.perf_counter() - started, files))
        flat = pa.array(vectors.reshape(-1), pa.float32())
        column = pa.FixedSizeListArray.from_arrays(flat, self.encoder.dim)
        batch = batch.set_column(batch.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))
        return batch.drop_columns(["payload"]).append_column("vector", column)


SEALED_SCHEMA = pa.schema(
    [
        ("segment", pa.string()),  # JSON manifest entry of a staged segment, or null for a failure
        ("files", pa.int64()),  # files whose last piece is in the segment
        ("vectors", pa.int64()),
        ("path", pa.string()),  # a failed file and its reason
        ("reason", pa.string()),
    ]
)


def seal_batch(batch: pa.Table, folder: str, recipe: str, job: str, max_bytes_per_vector: float | None) -> pa.Table:
    """Seal embedded rows as one staged segment (ids from the job), an ``auto`` recipe within
    ``max_bytes_per_vector``; pass failures on."""
    started = time.perf_counter()
    failed = batch["error"].is_valid()
    out = batch.filter(failed)
    records = [
        {"segment": None, "files": 0, "vectors": 0, "path": path, "reason": reason}
        for path, reason in zip(out["path"].to_pylist(), out["error"].to_pylist())
    ]
    good = batch.filter(pc.invert(failed))
    if good.num_rows:
        start = ray.get(_job(job).reserve.remote(good.num_rows))
        rows = [pickle.loads(row) | {"id": start + n} for n, row in enumerate(good["row"].to_pylist())]
        vectors = good["vector"].combine_chunks().flatten().to_numpy().reshape(good.num_rows, -1)
        (Path(folder) / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        info = seal(Path(folder), f"seg-{start:015d}", recipe, vectors, items_table(rows), max_bytes_per_vector)
        staging.write_sidecar(Path(folder), info)
        files = int(np.count_nonzero(good["last"].to_numpy(zero_copy_only=False)))
        records.append(
            {
                "segment": json.dumps(asdict(info)),
                "files": files,
                "vectors": good.num_rows,
                "path": None,
                "reason": None,
            }
        )
    ray.get(_job(job).record.remote(_node(), "write", time.perf_counter() - started))
    return pa.Table.from_pylist(records, schema=SEALED_SCHEMA)
