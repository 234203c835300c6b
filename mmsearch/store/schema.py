"""The metadata schema: one Parquet row per vector, and one per failed file.

Columns for every modality are present from the start (null where they do not
apply) so adding a modality never needs a migration.
"""

from __future__ import annotations

import pyarrow as pa

ITEM_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("modality", pa.string()),
        ("path", pa.string()),
        ("content_hash", pa.string()),
        ("pieces", pa.int32()),  # vectors the file yields: fewer live rows means an interrupted add
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


def conform_items(table: pa.Table) -> pa.Table:
    """A stored items table in the current schema: columns added since it was written are null."""
    if table.schema.equals(ITEM_SCHEMA):
        return table
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in ITEM_SCHEMA
    ]
    return pa.Table.from_arrays(columns, schema=ITEM_SCHEMA)


def items_table(rows: list[dict]) -> pa.Table:
    """Build an items table from row dicts; missing columns become null, unknown keys are ignored."""
    return pa.Table.from_pylist(rows, schema=ITEM_SCHEMA)
