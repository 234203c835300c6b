"""Segments sealed by distributed workers, staged until the driver's one commit adopts them.

Workers seal segments with the store's own ``seal`` into ``<index>/staging/<job>/shards/``
and then write a sidecar ``<name>.json`` holding the segment's manifest entry (row count,
checksums): the sidecar is the seal's commit point, a segment without one does not exist.
The job folder is keyed by the committed generation the plan was made against (generation,
next id, space, decode settings), so a rerun after a killed job finds the same folder and
adopts what the killed job sealed instead of embedding it again; folders of other keys are
stale and removed. Staging lives outside ``shards/``, so the writer's orphan sweep never
deletes a segment a rerun could adopt.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmsearch.ingest.decode import DecodeOptions
from mmsearch.ingest.discover import FoundFile
from mmsearch.ingest.plan import mtime_us
from mmsearch.store.atomic import atomic_write_bytes
from mmsearch.store.manifest import SHARDS_DIR, Manifest, ShardInfo
from mmsearch.store.shard import Shard, faiss_path, parquet_path

STAGING_DIR = "staging"
SIDECAR_SUFFIX = ".json"


def job_key(manifest: Manifest, decoding: DecodeOptions) -> str:
    """Identifies a job by what its plan and ids were derived from."""
    basis = [manifest.generation, manifest.next_id, manifest.space_id, manifest.audio_space_id, decoding.fingerprint()]
    return hashlib.sha256(json.dumps(basis).encode()).hexdigest()[:16]


def job_folder(index_dir: Path, key: str) -> Path:
    return Path(index_dir) / STAGING_DIR / key


def clear_stale(index_dir: Path, keep: str) -> None:
    """Remove staged jobs other than ``keep`` (the caller holds the writer lock)."""
    root = Path(index_dir) / STAGING_DIR
    if root.is_dir():
        for folder in root.iterdir():
            if folder.name != keep:
                shutil.rmtree(folder, ignore_errors=True)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def write_sidecar(folder: Path, info: ShardInfo) -> None:
    """Mark a staged segment as sealed (after both of its files are durable)."""
    atomic_write_bytes(Path(folder) / SHARDS_DIR / f"{info.name}{SIDECAR_SUFFIX}", json.dumps(asdict(info)).encode())


def sealed(folder: Path) -> list[ShardInfo]:
    """Staged segments whose sidecar exists and whose files match its checksums;
    anything else in the folder (half-written or damaged segments) is deleted."""
    shards = Path(folder) / SHARDS_DIR
    if not shards.is_dir():
        return []
    good, keep = [], set()
    for sidecar in sorted(shards.glob(f"*{SIDECAR_SUFFIX}")):
        try:
            info = ShardInfo(**json.loads(sidecar.read_bytes()))
        except (OSError, ValueError, TypeError):
            continue
        if Shard(Path(folder), info).problem(checksums=True) is None:
            good.append(info)
            keep |= {sidecar.name, faiss_path(folder, info.name).name, parquet_path(folder, info.name).name}
    for path in shards.iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)
    return good


@dataclass
class Resume:
    """What a rerun takes over from a killed job's staged segments.

    ``segments`` to adopt; ``files`` whose rows they hold completely (not embedded again);
    ``hidden`` ids of staged rows that must not become visible (a file cut short, changed
    since, or not in this plan); ``next_id`` is above every staged id.
    """

    segments: list[ShardInfo] = field(default_factory=list)
    files: set[str] = field(default_factory=set)
    hidden: list[int] = field(default_factory=list)
    next_id: int = 0


def resume(folder: Path, infos: Iterable[ShardInfo], planned: dict[str, FoundFile]) -> Resume:
    """Match staged rows against the files this run plans to embed (same path, size and mtime,
    every piece present exactly once)."""
    infos = list(infos)
    tables = [
        pq.read_table(parquet_path(folder, info.name), columns=["id", "path", "size", "mtime", "pieces"])
        for info in infos
    ]
    result = Resume()
    if not tables:
        return result
    rows = pa.concat_tables(tables)
    result.next_id = int(pc.max(rows["id"]).as_py()) + 1
    stamps = zip(rows["path"].to_pylist(), rows["size"].to_pylist(), pc.cast(rows["mtime"], pa.int64()).to_pylist())
    counts: dict[str, int] = defaultdict(int)
    pieces = dict(zip(rows["path"].to_pylist(), rows["pieces"].to_pylist()))
    for path, size, mtime in stamps:
        file = planned.get(path)
        if file is not None and (file.size, mtime_us(file)) == (size, mtime):
            counts[path] += 1
    result.files = {path for path, count in counts.items() if count == pieces[path]}
    for info, table in zip(infos, tables):
        adopted = pc.is_in(table["path"], value_set=pa.array(sorted(result.files), pa.string()))
        if pc.any(adopted).as_py():
            result.segments.append(info)
            result.hidden += table.filter(pc.invert(adopted))["id"].to_pylist()
    return result


def ids_of(folder: Path, infos: Iterable[ShardInfo], paths: Iterable[str]) -> list[int]:
    """Ids of the staged rows of ``paths`` (files that failed after some of their pieces were
    sealed, e.g. one piece's embedding was not finite: none of their rows may become visible)."""
    wanted = pa.array(sorted(set(paths)), pa.string())
    if not len(wanted):
        return []
    ids: list[int] = []
    for info in infos:
        table = pq.read_table(parquet_path(folder, info.name), columns=["id", "path"])
        ids += table.filter(pc.is_in(table["path"], value_set=wanted))["id"].to_pylist()
    return ids
