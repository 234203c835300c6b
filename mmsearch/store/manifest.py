"""The manifest: one small JSON file that is the index's commit point.

Anything the manifest does not name does not exist. Writers build new shard files
first and replace the manifest last, so a crash at any moment leaves the previous
generation intact. The format is versioned with step-by-step migrations.

The manifest never holds per-row data: deleted ids live in an immutable
``shards/deletions-<generation>.i64`` (sorted little-endian int64) that the manifest names, so it
stays a few KB whatever the number of deletions.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

import numpy as np

from mmsearch.errors import IndexFormatError, IndexNotFoundError, ModelMismatchError, ShardDamagedError, one_line
from mmsearch.store.atomic import atomic_write, atomic_write_bytes

if TYPE_CHECKING:
    from mmsearch.models.base import Encoder

FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
SHARDS_DIR = "shards"


def _from_v1(data: dict) -> dict:
    """v1 kept deleted ids in the manifest and wrapped FAISS indexes in IDMap2 (still read).
    The ids move to memory here and into a deletions file at the next commit."""
    data = {**data, "format_version": 2, "pending_tombstones": data.pop("tombstones", [])}
    return data


MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _from_v1}  # version -> upgrade of a dict from it


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
    params: dict[str, float] = field(default_factory=dict)  # search settings tuned at seal time
    recall: float | None = None  # recall@10 measured at seal time with ``params`` (1.0: exact)

    def __hash__(self) -> int:
        return hash((self.name, self.faiss_sha256, self.parquet_sha256))


@dataclass
class Manifest:
    """Everything needed to read an index, and nothing that can be derived."""

    model: str | None  # None: a vector-only index fed by add_vectors
    space_id: str
    dim: int
    recipe: str
    shard_size: int
    metric: str = "inner_product"
    max_memory: int | None = None  # bytes the ``auto`` recipe may spend on the index's vectors (None: no budget)
    audio_space_id: str | None = None
    inputs: dict | None = None  # modalities and decode settings of the model (None: vector-only or unknown)
    decoding: str | None = None  # decode options every part-done file was decoded with (None: unknown or mixed)
    shards: list[ShardInfo] = field(default_factory=list)
    deletions: str | None = None  # file in shards/ holding the sorted deleted ids
    failures: str | None = None
    retired: dict[str, float] = field(default_factory=dict)  # file name -> when a commit stopped naming it
    next_id: int = 0
    next_shard: int = 1
    generation: int = 0
    format_version: int = FORMAT_VERSION
    created_at: str = field(default_factory=lambda: _now())
    updated_at: str = field(default_factory=lambda: _now())

    tombstones: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False, compare=False)
    written: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False, compare=False)  # on disk

    def check_encoder(self, encoder: Encoder) -> None:
        """Refuse an encoder (``spec``, ``space_id``, ``audio_space_id``) of another space."""
        audio = getattr(encoder, "audio_space_id", None)
        for wanted, actual in ((self.space_id, encoder.space_id), (self.audio_space_id or audio, audio)):
            if wanted != actual:
                raise ModelMismatchError(
                    f"this index holds vectors of space {wanted}, but model {encoder.spec!r} embeds into "
                    f"{actual}; use the model the index was built with"
                )

    def to_json(self) -> bytes:
        data = asdict(self)
        data.pop("tombstones")
        data.pop("written")
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        """The manifest in ``data``; a ``ValueError`` naming the first field that is missing or
        of the wrong type (checked against the dataclass annotations, once per generation)."""
        known = {f.name for f in fields(cls)} - {"tombstones", "written"}
        data = {k: v for k, v in data.items() if k in known or k == "pending_tombstones"}
        _check_fields(cls, data, "")
        pending = data.pop("pending_tombstones", [])
        if not isinstance(pending, list) or not all(_is_int(i) for i in pending):
            raise ValueError("field pending_tombstones is not a list of integers")
        data["shards"] = [ShardInfo(**shard) for shard in data.get("shards", [])]
        manifest = cls(**data)
        manifest.tombstones = np.unique(np.asarray(pending, dtype=np.int64))
        return manifest


def _check_fields(cls: type, data: dict, where: str) -> None:
    """Raise ``ValueError`` for a required field of ``cls`` missing from ``data`` or a field whose
    value does not fit its annotation; ``where`` prefixes the field's name (``shards[2].``)."""
    hints = _hints(cls)
    for spec in fields(cls):
        if spec.name in data:
            value = data[spec.name]
            if not _fits(value, hints[spec.name], f"{where}{spec.name}"):
                raise ValueError(f"field {where}{spec.name} is {_kind(value)}, expected {_expected(hints[spec.name])}")
        elif spec.default is MISSING and spec.default_factory is MISSING:
            raise ValueError(f"field {where}{spec.name} is missing")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _fits(value: object, hint: Any, name: str) -> bool:
    """Whether a JSON value fits an annotation (nested shard entries are checked field by field)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg, name) for arg in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is int:
        return _is_int(value)
    if hint is float:
        return _is_int(value) or isinstance(value, float)
    if hint is str:
        return isinstance(value, str)
    if hint is dict:
        return isinstance(value, dict)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(item, get_args(hint)[1], name) for item in value.values())
    if origin is list:
        if not isinstance(value, list):
            return False
        for at, item in enumerate(value):
            if not isinstance(item, dict):
                raise ValueError(f"field {name}[{at}] is {_kind(item)}, expected an object")
            _check_fields(get_args(hint)[0], item, f"{name}[{at}].")
        return True
    raise TypeError(f"no check for annotation {hint}")  # a new field type: extend _fits


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: object) -> str:
    names = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    shown = json.dumps(value)
    return "null" if value is None else f"{names.get(type(value), type(value).__name__)} ({shown[:40]})"


def _expected(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", dict: "an object", type(None): "null"}
    args = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    return " or ".join(names.get(arg, names.get(get_origin(arg), "a list")) for arg in args)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def manifest_path(index_dir: Path) -> Path:
    return Path(index_dir) / MANIFEST_NAME


def exists(index_dir: Path) -> bool:
    return manifest_path(index_dir).is_file()


def check_not_orphaned(index_dir: Path) -> None:
    """Refuse a folder whose shard files lost their manifest: a damaged index, which a new
    index built there would overwrite, not an empty folder."""
    shards = Path(index_dir) / SHARDS_DIR
    if not exists(index_dir) and shards.is_dir() and any(entry.is_file() for entry in shards.iterdir()):
        raise IndexFormatError(
            f"{index_dir} holds shard files but no {MANIFEST_NAME}: the index is damaged; restore its "
            "manifest from a backup, or move the folder away and index again"
        )


def not_found(index_dir: Path) -> IndexNotFoundError:
    """The error for a folder without a manifest (refusing one whose shards lost theirs)."""
    check_not_orphaned(index_dir)
    return IndexNotFoundError(f"no index at {index_dir}; create one with `mmsearch index PATH` or pass --index")


def load(index_dir: Path, salvaged: list[str] | None = None) -> Manifest:
    """Read and, if needed, migrate the manifest of ``index_dir``. With a ``salvaged`` list
    (``repair``), an unreadable deletions file is dropped and said there instead of raising:
    the ids it deleted are lost, so those items come back."""
    path = manifest_path(index_dir)
    if not path.is_file():
        raise not_found(index_dir)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise IndexFormatError(f"{path} is damaged: not a JSON object")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        shown = "missing" if version is None else f"{_kind(version)}, expected a positive integer"
        raise IndexFormatError(f"{path} is damaged: field format_version is {shown}")
    if version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has format version {version}; this mmsearch reads up to {FORMAT_VERSION}, upgrade mmsearch"
        )
    while version < FORMAT_VERSION:
        data = MIGRATIONS[version](data)
        version = data["format_version"]
    try:
        manifest = Manifest.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise IndexFormatError(f"{path} is damaged: {exc}") from exc
    if manifest.deletions:
        deletions = Path(index_dir) / SHARDS_DIR / manifest.deletions
        try:
            manifest.tombstones = manifest.written = _read_deletions(deletions)
        except (OSError, ValueError) as exc:
            if salvaged is None:
                raise ShardDamagedError(deletions, str(exc)) from None
            manifest.deletions = None
            salvaged.append(
                f"{deletions}: unreadable ({one_line(exc, 120)}); the items it deleted are back: remove them again"
            )
    return manifest


def _read_deletions(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if len(data) % 8:
        raise ValueError(f"{len(data)} bytes is not a whole number of int64 ids")
    return np.frombuffer(data, dtype="<i8").astype(np.int64)


def failures_problem(index_dir: Path, manifest: Manifest) -> str | None:
    """Why the failure table the manifest names is unusable, or ``None``."""
    if not manifest.failures:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(index_dir) / SHARDS_DIR / manifest.failures
    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowException) as exc:
        return f"{path}: unreadable ({one_line(exc, 120)})"
    return None


def commit(index_dir: Path, manifest: Manifest, before_write: Callable[[], None] | None = None) -> None:
    """Bump the generation and atomically replace the manifest, writing the deletions file
    first when the deleted ids changed (the set, not only their number, for hidden rows of a
    file still arriving give way to others). ``before_write`` runs once the new generation
    names its files, before the manifest is replaced: the writer records there which files
    it no longer names (a deletions file superseded here included)."""
    manifest.generation += 1
    manifest.updated_at = _now()
    tombstones = np.unique(manifest.tombstones)
    if not np.array_equal(tombstones, manifest.written) or (len(tombstones) and not manifest.deletions):
        manifest.deletions = f"deletions-{manifest.generation:06d}.i64" if len(tombstones) else None
        if manifest.deletions:
            target = Path(index_dir) / SHARDS_DIR / manifest.deletions
            atomic_write(target, lambda tmp: tmp.write_bytes(tombstones.astype("<i8").tobytes()))
    manifest.tombstones = manifest.written = tombstones
    if before_write is not None:
        before_write()
    atomic_write_bytes(manifest_path(index_dir), manifest.to_json())
