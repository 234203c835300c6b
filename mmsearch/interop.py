"""Embeddings in and out in the layout of clip-retrieval and the LAION datasets.

```
OUT/img_emb/img_emb_0.npy      float32 (rows, dim), unit vectors   (text_emb/, audio_emb/ likewise)
OUT/metadata/metadata_0.parquet  one row per vector, same order
OUT/mmsearch.json              model spec, space id, dim, and the list of chunks
```

Chunk numbers are shared by the three embedding folders: ``metadata_N`` goes with
whichever of ``img_emb_N``/``text_emb_N``/``audio_emb_N`` exists (image chunks come
first, so an image-only index is exactly clip-retrieval's layout). Export writes into a
temporary folder renamed at the end; both directions stream (export appends rows to each
chunk file, import reads memory-mapped arrays and Parquet batches), so their memory does not
grow with the index.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmsearch.errors import ModelMismatchError, UserInputError, one_line
from mmsearch.index import Index
from mmsearch.models.base import usable_rows
from mmsearch.store.atomic import fsync_dir
from mmsearch.store.manifest import Manifest
from mmsearch.store.schema import ITEM_SCHEMA
from mmsearch.store.shard import Shard, parquet_path
from mmsearch.store.snapshot import Snapshot

FORMAT = "clip-retrieval"
DESCRIPTOR = "mmsearch.json"
FOLDERS = {"image": "img_emb", "text": "text_emb", "audio": "audio_emb"}
DEFAULT_CHUNK_ROWS = 1_000_000
PATH_ALIASES = ("image_path", "url", "audio_path", "key")  # where other tools keep what mmsearch calls path
TEXT_ALIASES = ("caption",)
EXPORTED_COLUMNS = [name for name in ITEM_SCHEMA.names if name != "id"]  # the importing index assigns ids


@dataclass(frozen=True)
class Chunk:
    """One embeddings file and the metadata file aligned with it."""

    number: int
    modality: str
    rows: int
    embeddings: str  # relative to the export folder
    metadata: str


@dataclass
class ExportSummary:
    """What ``export`` wrote."""

    out: str
    format: str
    rows: int
    by_modality: dict[str, int]
    chunks: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImportSummary:
    """What ``import`` added; ``skipped`` counts rows whose vectors were zero or not finite,
    ``already_indexed`` rows whose path (in their modality) was live in the index before the import."""

    index: str
    source: str
    rows: int = 0
    skipped: int = 0
    already_indexed: int = 0
    chunks: int = 0
    by_modality: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# -- export -----------------------------------------------------------------------------------


def export(
    index: Index, out: str | Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS, progress: bool = False
) -> ExportSummary:
    """Write the live items of ``index`` (one committed generation) to ``out``, which must not exist."""
    started = time.perf_counter()
    out = Path(out)
    if chunk_rows < 1:
        raise UserInputError("chunk rows must be at least 1")
    if out.exists():
        raise UserInputError(f"{out} already exists; export into a new folder")
    if not out.parent.is_dir():
        missing = f"folder {out.parent} does not exist"
        raise UserInputError(f"{out.parent} is not a folder" if out.parent.exists() else missing)
    snap = index.refresh()
    for shard in snap.shards:
        shard.check_intact()
    counts = _live_counts(snap)
    if not counts:
        raise UserInputError(f"index {index.path} holds no items: nothing to export")
    plan = _plan_chunks(counts, chunk_rows)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_chunks(snap, tmp, plan, progress)
        manifest = snap.manifest
        descriptor = {
            "format": FORMAT,
            "model": manifest.model,
            "space_id": manifest.space_id,
            "audio_space_id": manifest.audio_space_id,
            "dim": manifest.dim,
            "metric": manifest.metric,
            "dtype": "float32",
            "normalised": True,
            "rows": sum(counts.values()),
            "by_modality": counts,
            "chunks": [asdict(chunk) for chunk in plan],
            "source": {"index": str(index.path), "generation": manifest.generation},
        }
        (tmp / DESCRIPTOR).write_text(json.dumps(descriptor, indent=1))
        for path in tmp.rglob("*"):
            _fsync(path)
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportSummary(str(out), FORMAT, sum(counts.values()), counts, len(plan), time.perf_counter() - started)


def _live_columns(snap: Snapshot, columns: list[str]) -> Iterator[pa.Table]:
    """Each shard's live rows, reading only ``columns`` (no catalog: it would hold every column)."""
    for info in snap.manifest.shards:
        table = pq.read_table(parquet_path(snap.dir, info.name), columns=["id", *columns])
        yield table.filter(~np.isin(table.column("id").to_numpy(), snap.tombstones))


def _live_counts(snap: Snapshot) -> dict[str, int]:
    """Live rows per modality."""
    counts: dict[str, int] = {}
    for table in _live_columns(snap, ["modality"]):
        modalities = table.column("modality").to_numpy(zero_copy_only=False)
        for modality, count in zip(*np.unique(modalities, return_counts=True)):
            counts[str(modality)] = counts.get(str(modality), 0) + int(count)
    return {m: counts[m] for m in FOLDERS if m in counts}


def _live_paths(snap: Snapshot, modalities: set[str]) -> dict[str, pa.Array]:
    """The distinct live paths of each of ``modalities`` (Arrow column operations, no row loop)."""
    found: dict[str, list[pa.Array]] = {modality: [] for modality in modalities}
    for table in _live_columns(snap, ["modality", "path"]):
        for modality, arrays in found.items():
            paths = table.filter(pc.equal(table.column("modality"), modality)).column("path")
            arrays.append(pc.unique(paths.cast(pa.string())))
    return {modality: pc.unique(pa.chunked_array(arrays, pa.string())) for modality, arrays in found.items()}


def _plan_chunks(counts: dict[str, int], chunk_rows: int) -> list[Chunk]:
    plan: list[Chunk] = []
    for modality, total in counts.items():
        folder = FOLDERS[modality]
        for start in range(0, total, chunk_rows):
            n = len(plan)
            rows = min(chunk_rows, total - start)
            plan.append(Chunk(n, modality, rows, f"{folder}/{folder}_{n}.npy", f"metadata/metadata_{n}.parquet"))
    return plan


class _ChunkWriter:
    """Fills the planned chunks of one modality in order: a ``.npy`` file (header first, rows
    appended) and a Parquet writer per chunk, so only the rows in flight are in memory."""

    def __init__(self, root: Path, chunks: list[Chunk], dim: int) -> None:
        self.root, self.chunks, self.dim = root, list(chunks), dim
        self._array: BinaryIO | None = None
        self._meta: pq.ParquetWriter | None = None
        self._left = 0

    def write(self, vectors: np.ndarray, table: pa.Table) -> None:
        done = 0
        while done < len(vectors):
            if self._array is None:
                self._open()
            assert self._array is not None and self._meta is not None
            take = min(len(vectors) - done, self._left)
            self._array.write(np.ascontiguousarray(vectors[done : done + take], dtype="<f4").tobytes())
            self._meta.write_table(table.slice(done, take))
            self._left -= take
            done += take
            if not self._left:
                self._close()

    def _open(self) -> None:
        chunk = self.chunks.pop(0)
        for name in (chunk.embeddings, chunk.metadata):
            (self.root / name).parent.mkdir(parents=True, exist_ok=True)
        self._array = open(self.root / chunk.embeddings, "wb")  # noqa: SIM115 - stays open across write() calls
        header = {"descr": "<f4", "fortran_order": False, "shape": (chunk.rows, self.dim)}
        np.lib.format.write_array_header_1_0(self._array, header)
        schema = ITEM_SCHEMA.remove(ITEM_SCHEMA.get_field_index("id"))
        self._meta = pq.ParquetWriter(self.root / chunk.metadata, schema, compression="zstd")
        self._left = chunk.rows

    def _close(self) -> None:
        assert self._array is not None and self._meta is not None
        self._array.close()
        self._array = None
        self._meta.close()
        self._meta = None


def _write_chunks(snap: Snapshot, root: Path, plan: list[Chunk], progress: bool) -> None:
    from tqdm import tqdm

    dim = snap.manifest.dim
    writers = {m: _ChunkWriter(root, [c for c in plan if c.modality == m], dim) for m in FOLDERS}
    with tqdm(total=sum(c.rows for c in plan), unit="row", disable=not progress, file=sys.stderr) as bar:
        for info in snap.manifest.shards:
            shard = Shard(snap.dir, info)  # not the snapshot's: its index and ids are freed after use
            rows = np.flatnonzero(~np.isin(shard.ids, snap.tombstones))
            if not len(rows):
                continue
            table = shard.table().take(pa.array(rows))
            vectors = shard.vectors(rows)
            modality = table.column("modality")
            for name, writer in writers.items():
                mine = pc.equal(modality, name).to_numpy(zero_copy_only=False)
                if mine.any():
                    writer.write(vectors[mine], table.filter(pa.array(mine)).select(EXPORTED_COLUMNS))
            bar.update(len(rows))


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
    elif path.is_dir():
        fsync_dir(path)


# -- import -----------------------------------------------------------------------------------


@dataclass
class Source:
    """Chunks found in an export folder, a clip-retrieval/LAION folder or a ``.npy`` + ``.parquet`` pair."""

    root: Path
    chunks: list[Chunk]
    dim: int
    model: str | None = None
    space_id: str | None = None
    audio_space_id: str | None = None

    @property
    def rows(self) -> int:
        return sum(chunk.rows for chunk in self.chunks)


def read_source(path: str | Path, modality: str = "image") -> Source:
    """Find and check the chunks at ``path`` (shapes and row counts, from file headers only).

    ``modality`` is what the vectors of a plain ``.npy`` + ``.parquet`` pair are.
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"nothing to import at {path}: no such file or folder")
    declared: dict = {}
    if path.is_file() or not (path / DESCRIPTOR).is_file():
        chunks = _pair(path, modality) if path.is_file() or not _has_layout(path) else _layout(path)
        root = path.parent if path.is_file() else path
    else:
        root = path
        try:
            declared = json.loads((path / DESCRIPTOR).read_text())
            chunks = [Chunk(**c) for c in declared["chunks"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise UserInputError(f"{path / DESCRIPTOR} is not a valid export descriptor: {one_line(exc)}") from None
    if not chunks:
        raise UserInputError(f"no embeddings found at {path} (expected img_emb/, text_emb/ or a .npy + .parquet pair)")
    checked = [_check_chunk(root, chunk) for chunk in chunks]
    chunks = [replace(chunk, rows=rows) for chunk, (rows, _) in zip(chunks, checked)]
    dims = {dim for _, dim in checked}
    if len(dims) > 1:
        raise UserInputError(f"the embeddings at {path} have different dimensions: {sorted(dims)}")
    dim = dims.pop()
    if declared.get("dim") not in (None, dim):
        raise UserInputError(f"{path / DESCRIPTOR} declares dim {declared['dim']}, but the arrays have {dim}")
    return Source(root, chunks, dim, declared.get("model"), declared.get("space_id"), declared.get("audio_space_id"))


def _has_layout(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in FOLDERS.values())


def _layout(folder: Path) -> list[Chunk]:
    """clip-retrieval's folders: ``{img,text,audio}_emb/*_N.npy`` with ``metadata/metadata_N.parquet``."""
    chunks = []
    for modality, name in FOLDERS.items():
        for npy in sorted((folder / name).glob("*.npy"), key=_number):
            number = _number(npy)
            metadata = folder / "metadata" / f"metadata_{number}.parquet"
            if not metadata.is_file():
                raise UserInputError(f"{npy} has no metadata file {metadata}")
            chunks.append(Chunk(number, modality, -1, str(npy.relative_to(folder)), str(metadata.relative_to(folder))))
    return chunks


def _number(npy: Path) -> int:
    match = re.search(r"(\d+)$", npy.stem)
    if match is None:
        raise UserInputError(f"{npy}: expected a numbered chunk like img_emb_0.npy")
    return int(match.group(1))


def _pair(path: Path, modality: str) -> list[Chunk]:
    """A ``.npy`` file and the ``.parquet`` of the same name, or the only pair in a folder."""
    if path.is_file():
        if path.suffix != ".npy":
            raise UserInputError(f"{path}: give a .npy file (with a .parquet of the same name) or a folder")
        npy, parquet = path, path.with_suffix(".parquet")
    else:
        arrays, tables = sorted(path.glob("*.npy")), sorted(path.glob("*.parquet"))
        if len(arrays) != 1 or len(tables) != 1:
            raise UserInputError(
                f"{path}: expected img_emb/ and metadata/ folders, an {DESCRIPTOR}, "
                f"or one .npy and one .parquet file (found {len(arrays)} and {len(tables)})"
            )
        (npy,), (parquet,) = arrays, tables
    if not parquet.is_file():
        raise UserInputError(f"{npy} has no metadata file {parquet}")
    return [Chunk(0, modality, -1, npy.name, parquet.name)]


def _check_chunk(root: Path, chunk: Chunk) -> tuple[int, int]:
    """The chunk's rows and dimension, after checking that its files exist and are aligned."""
    if chunk.modality not in FOLDERS:
        raise UserInputError(f"unknown modality {chunk.modality!r} in {chunk.embeddings}")
    npy, parquet = root / chunk.embeddings, root / chunk.metadata
    try:
        array = np.load(npy, mmap_mode="r")
        rows = pq.ParquetFile(parquet).metadata.num_rows
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise UserInputError(f"cannot read chunk {chunk.number}: {one_line(exc)}") from None
    if array.ndim != 2:
        raise UserInputError(f"{npy}: expected a 2-d array of vectors, not shape {array.shape}")
    if rows != len(array) or chunk.rows not in (-1, rows):
        raise UserInputError(f"misaligned rows: {npy} holds {len(array)} vectors but {parquet} has {rows} rows")
    return rows, int(array.shape[1])


def check_space(source: Source, target: Manifest, where: Path) -> None:
    """Refuse vectors of another dimension, or of another space than ``target``'s model when
    the source declares its space. A vector-only target (no model) takes any space."""
    if source.dim != target.dim:
        raise UserInputError(f"the source's vectors have {source.dim} dimensions, the index at {where} {target.dim}")
    if target.model is None or source.space_id is None:
        return
    audio = any(chunk.modality == "audio" for chunk in source.chunks)
    pairs = ((source.space_id, target.space_id), (source.audio_space_id if audio else None, target.audio_space_id))
    for theirs, ours in pairs:
        if theirs is not None and theirs != ours:
            raise ModelMismatchError(
                f"the source holds vectors of space {theirs} ({source.model}), the index at {where} "
                f"holds {ours} ({target.model}); import into an index of that model or a vector-only one (--dim)"
            )


def target_index(
    path: Path,
    source: Source,
    *,
    model: str | None = None,
    dim: int | None = None,
    shard_size: int = 100_000,
    recipe: str = "auto",
    device: str | None = None,
) -> Index:
    """The index to import into: the one at ``path``, else a new one of ``model`` (default: the
    model the source declares) or a vector-only one of ``dim`` (default for the export of a
    vector-only index). A new model index is created
    only after its space is checked against the source's, so a refused import leaves nothing."""
    from mmsearch.models import registry
    from mmsearch.store import manifest as manifest_io

    if model is not None and dim is not None:
        raise UserInputError("give --model or --dim, not both")
    if manifest_io.exists(path):
        index = Index.open(path, model)
        if dim is not None and dim != index.manifest.dim:
            raise UserInputError(f"the index at {path} has {index.manifest.dim} dimensions, not {dim}")
        check_space(source, index.manifest, path)
        return index
    if dim is None and model is None and source.model is None and source.space_id is not None:
        dim = source.dim  # exported from a vector-only index: make another
    if dim is not None:
        if dim != source.dim:
            raise UserInputError(f"--dim {dim}, but the source's vectors have {source.dim} dimensions")
        return Index.create(path, dim=dim, shard_size=shard_size, recipe=recipe)
    spec = model or source.model
    if spec is None:
        raise UserInputError(
            f"no index at {path} and the source names no model: give --model SPEC or --dim {source.dim}"
        )
    encoder = registry.load_encoder(spec, device)
    spec_of = Manifest(
        encoder.spec, encoder.space_id, encoder.dim, recipe, shard_size, audio_space_id=encoder.audio_space_id
    )
    check_space(source, spec_of, path)
    return Index.create(path, encoder=encoder, shard_size=shard_size, recipe=recipe, device=device)


def import_into(
    index: Index, source: Source, *, batch_rows: int | None = None, progress: bool = False
) -> ImportSummary:
    """Add every chunk of ``source`` to ``index`` through :meth:`Index.add_vectors`, a batch at a time.

    ``batch_rows`` defaults to the index's shard size: each batch then seals one full shard and
    no small segments are left to merge (a merge holds up to ten segments in memory). Rows whose
    path is already live in the index in their modality (an earlier import of the same source)
    are skipped, so importing again adds nothing twice; rows sharing a path within the source
    (a text's passages) are all imported.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    check_space(source, index.manifest, index.path)
    batch_rows = batch_rows or index.manifest.shard_size
    if batch_rows < 1:
        raise UserInputError("batch rows must be at least 1")
    summary = ImportSummary(str(index.path), str(source.root), chunks=len(source.chunks))
    known = _live_paths(index.refresh(), {chunk.modality for chunk in source.chunks})
    with tqdm(total=source.rows, unit="row", disable=not progress, file=sys.stderr) as bar:
        for modality, vectors, table in _batches(source, batch_rows, known, summary):
            index.add_vectors(vectors, table, modality=modality)
            summary.rows += len(vectors)
            summary.by_modality[modality] = summary.by_modality.get(modality, 0) + len(vectors)
            bar.update(len(vectors))
    summary.seconds = time.perf_counter() - started
    return summary


def _batches(
    source: Source, batch_rows: int, known: dict[str, pa.Array], summary: ImportSummary
) -> Iterator[tuple[str, np.ndarray, pa.Table]]:
    """(modality, vectors, items) batches of exactly ``batch_rows`` good rows (fewer at the end of
    a modality), across chunk boundaries; at most two batches are in memory. Rows whose vectors
    are zero or not finite are counted in ``summary.skipped`` and left out, rows whose path is in
    ``known[modality]`` in ``summary.already_indexed``."""
    vectors: list[np.ndarray] = []
    tables: list[pa.Table] = []
    pending, current = 0, None
    for chunk, piece, table in _pieces(source, batch_rows):
        good = usable_rows(piece)
        if not good.all():
            piece, table = piece[good], table.filter(pa.array(good))
            summary.skipped += int((~good).sum())
        if current is not None and chunk.modality != current and pending:
            yield current, np.concatenate(vectors), pa.concat_tables(tables, promote_options="permissive")
            vectors, tables, pending = [], [], 0
        current = chunk.modality
        items = _as_items(table, chunk.modality)
        new = pc.invert(pc.is_in(items.column("path"), value_set=known[chunk.modality])).to_numpy(zero_copy_only=False)
        if not new.all():
            piece, items = piece[new], items.filter(pa.array(new))
            summary.already_indexed += int((~new).sum())
        vectors.append(piece)
        tables.append(items)
        pending += len(piece)
        while pending >= batch_rows:
            joined, rows = np.concatenate(vectors), pa.concat_tables(tables, promote_options="permissive")
            yield current, joined[:batch_rows], rows.slice(0, batch_rows)
            vectors, tables, pending = [joined[batch_rows:]], [rows.slice(batch_rows)], pending - batch_rows
    if current is not None and pending:
        yield current, np.concatenate(vectors), pa.concat_tables(tables, promote_options="permissive")


def _pieces(source: Source, batch_rows: int) -> Iterator[tuple[Chunk, np.ndarray, pa.Table]]:
    """Aligned (vectors, metadata) slices of each chunk, read through a memory map and Parquet batches."""
    for chunk in source.chunks:
        array = np.load(source.root / chunk.embeddings, mmap_mode="r")
        start = 0
        for batch in pq.ParquetFile(source.root / chunk.metadata).iter_batches(batch_size=batch_rows):
            stop = start + batch.num_rows
            yield chunk, np.array(array[start:stop], dtype=np.float32), pa.Table.from_batches([batch])
            start = stop


def _as_items(table: pa.Table, modality: str) -> pa.Table:
    """Other tools' column names in mmsearch's: ``image_path``/``url`` -> ``path``, ``caption``
    -> ``text``, an ``id`` -> ``source_id`` (the index assigns its own ids)."""
    renames = {}
    names = table.column_names
    if "path" not in names:
        alias = next((a for a in PATH_ALIASES if a in names), None)
        if alias is None:
            raise UserInputError(f"the metadata has no path column (nor {', '.join(PATH_ALIASES)}): {names[:8]}")
        renames[alias] = "path"
    if "text" not in names and modality == "text":
        renames.update({a: "text" for a in TEXT_ALIASES[:1] if a in names})
    if "id" in names:
        renames["id"] = "source_id" if "source_id" not in names else "original_id"
    if renames:
        table = table.rename_columns([renames.get(name, name) for name in names])
    if "path" in table.column_names and not pa.types.is_string(table.schema.field("path").type):
        table = table.set_column(table.column_names.index("path"), "path", table.column("path").cast(pa.string()))
    return table
