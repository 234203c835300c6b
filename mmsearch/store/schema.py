"""The metadata schema: one Parquet row per vector, and one per failed file.

Columns for every modality are present from the start (null where they do not
apply) so adding a modality never needs a migration.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence

import pyarrow as pa

ITEM_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("modality", pa.string()),
        ("path", pa.string()),
        ("content_hash", pa.string()),
        ("pieces", pa.int32()),  # vectors the row's part of the file yields: fewer live rows means an interrupted add
        ("part", pa.int32()),  # which part of its file the row comes from (large files are embedded in parts)
        ("parts", pa.int32()),  # parts the file is cut into (null in rows from before parts: one)
        ("size", pa.int64()),
        ("mtime", pa.timestamp("us", tz="UTC")),
        ("format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("taken_at", pa.timestamp("s")),
        ("camera", pa.string()),
        ("offset_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("text", pa.string()),
        ("char_offset", pa.int64()),
        ("row", pa.int64()),
        ("source_id", pa.string()),
        ("extra", pa.string()),
        ("notes", pa.string()),  # decoder warnings worth keeping (e.g. corrupt EXIF), not printed
        ("track", pa.string()),  # a video's row: "frame" (an image vector) or "sound" (an audio window)
        ("fps", pa.float64()),  # video frame rate
        ("duration", pa.float64()),  # seconds of the whole video (duration_s is the row's own span)
    ]
)

FAILURE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("modality", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.timestamp("us", tz="UTC")),
        ("reason", pa.string()),
        ("options", pa.string()),
    ]
)


def conform_items(table: pa.Table, names: Collection[str] | None = None) -> pa.Table:
    """A stored items table in the current schema: columns added since it was written are
    null. ``names``: keep only these columns (in schema order)."""
    fields = [f for f in ITEM_SCHEMA if names is None or f.name in names]
    if table.schema.equals(ITEM_SCHEMA) and len(fields) == len(ITEM_SCHEMA):
        return table
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in fields
    ]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def items_table(rows: list[dict]) -> pa.Table:
    """Build an items table from row dicts; missing columns become null, unknown keys are ignored."""
    return pa.Table.from_pylist(rows, schema=ITEM_SCHEMA)


# Written only by the ingest, which hashed the file it read: a caller's value is dropped, so a row
# that claims a file it never read (``/etc/passwd`` with its size and mtime) is never served.
INGEST_ONLY = frozenset({"content_hash"})


def vector_rows(metadata: Sequence[dict] | pa.Table, count: int, modality: str) -> pa.Table:
    """Items rows for vectors brought by the caller: a ``path`` per row is required,
    known columns are cast to the schema (``INGEST_ONLY`` ones are left null), unknown
    ones are kept as JSON in ``extra``."""
    from mmsearch.errors import UserInputError

    table = metadata if isinstance(metadata, pa.Table) else pa.Table.from_pylist(list(metadata))
    if table.num_rows != count:
        raise UserInputError(f"{table.num_rows} metadata rows for {count} vectors")
    if "path" not in table.column_names or table.column("path").null_count:
        raise UserInputError("every metadata row needs a path (a file, a URL or an external id)")
    if "id" in table.column_names:
        raise UserInputError("metadata must not carry an id column: the index assigns ids")
    unknown = [name for name in table.column_names if name not in ITEM_SCHEMA.names]
    columns = {}
    for f in ITEM_SCHEMA:
        if f.name == "modality":
            columns[f.name] = pa.array([modality] * count, f.type)
        elif f.name == "extra" and unknown:
            rows = table.select(unknown).to_pylist()
            columns[f.name] = pa.array([json.dumps(row, default=str) for row in rows], f.type)
        elif f.name in table.column_names and f.name not in INGEST_ONLY:
            try:
                columns[f.name] = table.column(f.name).cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise UserInputError(f"metadata column {f.name!r} must be {f.type}: {exc}") from None
        else:
            columns[f.name] = pa.nulls(count, f.type)
    return pa.table(columns, schema=ITEM_SCHEMA)
