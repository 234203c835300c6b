"""The manifest: one JSON file that is the index's commit point.

Anything the manifest does not name does not exist. Writers build new shard files
first and replace the manifest last, so a crash at any moment leaves the previous
generation intact. The format is versioned with step-by-step migrations.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mmsearch.errors import IndexFormatError, IndexNotFoundError
from mmsearch.store.atomic import atomic_write_bytes

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}  # version -> upgrade of a dict from it


@dataclass(frozen=True)
class ShardInfo:
    """A sealed shard: ``shards/<name>.faiss`` plus ``shards/<name>.parquet``."""

    name: str
    rows: int
    recipe: str
    faiss_sha256: str
    parquet_sha256: str
    faiss_bytes: int | None = None  # None in indexes written before sizes were recorded
    parquet_bytes: int | None = None


@dataclass
class Manifest:
    """Everything needed to read an index, and nothing that can be derived."""

    model: str
    space_id: str
    dim: int
    recipe: str
    shard_size: int
    metric: str = "inner_product"
    audio_space_id: str | None = None
    shards: list[ShardInfo] = field(default_factory=list)
    tombstones: list[int] = field(default_factory=list)
    failures: str | None = None
    retired: dict[str, float] = field(default_factory=dict)  # file name -> when a commit stopped naming it
    next_id: int = 0
    next_shard: int = 1
    generation: int = 0
    format_version: int = FORMAT_VERSION
    created_at: str = field(default_factory=lambda: _now())
    updated_at: str = field(default_factory=lambda: _now())

    @property
    def live_rows(self) -> int:
        """Vectors that searches can return."""
        return sum(shard.rows for shard in self.shards) - len(self.tombstones)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        data = dict(data)
        data["shards"] = [ShardInfo(**shard) for shard in data.get("shards", [])]
        return cls(**data)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def manifest_path(index_dir: Path) -> Path:
    return Path(index_dir) / MANIFEST_NAME


def exists(index_dir: Path) -> bool:
    return manifest_path(index_dir).is_file()


def load(index_dir: Path) -> Manifest:
    """Read and, if needed, migrate the manifest of ``index_dir``."""
    path = manifest_path(index_dir)
    if not path.is_file():
        raise IndexNotFoundError(f"no index at {index_dir}; create one with `mmsearch index PATH` or pass --index")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"cannot read {path}: {exc}") from exc
    version = data.get("format_version") if isinstance(data, dict) else None
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has format version {version}; this mmsearch reads up to {FORMAT_VERSION}, upgrade mmsearch"
        )
    while version < FORMAT_VERSION:
        data = MIGRATIONS[version](data)
        version = data["format_version"]
    try:
        return Manifest.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise IndexFormatError(f"{path} is damaged: {exc}") from exc


def commit(index_dir: Path, manifest: Manifest) -> None:
    """Bump the generation and atomically replace the manifest."""
    manifest.generation += 1
    manifest.updated_at = _now()
    atomic_write_bytes(manifest_path(index_dir), manifest.to_json())
