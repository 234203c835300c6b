"""The metadata schema: one Parquet row per vector, and one per failed file.

Columns for every modality are present from the start (null where they do not
apply) so adding a modality never needs a migration.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.errors import UserInputError, one_line

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
    """Items rows for vectors brought by the caller: a ``path`` string per row is required,
    known columns are cast to the schema (``INGEST_ONLY`` ones are left null), unknown ones
    are kept as JSON in ``extra``.

    A row's own ``extra`` is kept, never dropped: alone, as given (a dict as JSON); beside
    unknown columns, merged with them into one JSON object (a JSON object's keys, any other
    value under the key ``extra``; on a clash the column wins)."""
    table = metadata if isinstance(metadata, pa.Table) else _dict_rows(metadata)
    if table.num_rows != count:
        raise UserInputError(f"{table.num_rows} metadata rows for {count} vectors")
    if count and ("path" not in table.column_names or table.column("path").null_count):
        raise UserInputError("every metadata row needs a path (a file, a URL or an external id)")
    if "id" in table.column_names:
        raise UserInputError("metadata must not carry an id column: the index assigns ids")
    if "modality" in table.column_names:
        other = pc.filter(table.column("modality"), pc.not_equal(table.column("modality").cast(pa.string()), modality))
        if len(other):
            raise UserInputError(
                f"a metadata row says modality {other[0].as_py()!r}, but these vectors are added as {modality!r}: "
                "add each modality in its own call (modality=...)"
            )
    unknown = [name for name in table.column_names if name not in ITEM_SCHEMA.names]
    columns = {}
    for f in ITEM_SCHEMA:
        if f.name == "modality":
            columns[f.name] = pa.array([modality] * count, f.type)
        elif f.name == "extra" and unknown:
            given = table.column("extra").to_pylist() if "extra" in table.column_names else [None] * count
            rows = table.select(unknown).to_pylist()
            columns[f.name] = pa.array([_extra(own, row) for own, row in zip(given, rows)], f.type)
        elif f.name in table.column_names and f.name not in INGEST_ONLY:
            try:
                columns[f.name] = table.column(f.name).cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise UserInputError(f"metadata column {f.name!r} must be {f.type}: {one_line(exc)}") from None
        else:
            columns[f.name] = pa.nulls(count, f.type)
    return pa.table(columns, schema=ITEM_SCHEMA)


def _dict_rows(metadata: object) -> pa.Table:
    """A table of dict rows: the schema's columns as columns (types inferred, cast later), the
    other keys of each row already folded into its ``extra`` (they may differ in type by row)."""
    if isinstance(metadata, (str, bytes, Mapping)) or not isinstance(metadata, Sequence):
        raise UserInputError(
            f"metadata must be a list of dicts (one per vector, each with a path) or a pyarrow Table, "
            f"not {type(metadata).__name__}"
        )
    known: dict[str, None] = {}
    for at, row in enumerate(metadata):
        if not isinstance(row, Mapping):
            raise UserInputError(f"metadata row {at} is a {type(row).__name__}, not a dict with a path")
        if not isinstance(row.get("path"), str):
            raise UserInputError(f"metadata row {at} needs a path string (a file, a URL or an external id)")
        known |= dict.fromkeys(name for name in row if name in ITEM_SCHEMA.names and name != "extra")
    columns = {}
    for name in known:
        try:
            columns[name] = pa.array([row.get(name) for row in metadata])
        except (pa.ArrowException, OverflowError) as exc:
            raise UserInputError(f"metadata column {name!r} mixes types: {one_line(exc)}") from None
    extras = [
        _extra(row.get("extra"), {k: v for k, v in row.items() if k not in ITEM_SCHEMA.names}) for row in metadata
    ]
    if any(extra is not None for extra in extras):
        columns["extra"] = pa.array(extras, pa.string())
    return pa.table(columns) if columns else pa.table({"path": pa.array([], pa.string())})


def _extra(own: object, others: dict) -> str | None:
    """The ``extra`` of a row: its own ``extra`` merged with its unknown columns (see :func:`vector_rows`)."""
    if not others:
        return own if own is None or isinstance(own, str) else json.dumps(own, default=str)
    merged: object = own
    if isinstance(own, str):
        try:
            merged = json.loads(own)
        except ValueError:
            merged = own
    base = merged if isinstance(merged, dict) else ({} if own is None else {"extra": own})
    return json.dumps(base | others, default=str)
