"""SQL over an index's metadata with DuckDB.

The view ``items`` holds every live row (all shards' Parquet files minus tombstoned
ids) and ``failures`` every file that could not be ingested. User SQL is accepted
only as a single read-only statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from mmsearch.errors import FilterError
from mmsearch.store.schema import FAILURE_SCHEMA, ITEM_SCHEMA

READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT}  # EXPLAIN ANALYZE would run a COPY


def _one_line(error: Exception) -> str:
    """DuckDB errors span lines (with a caret diagram); keep the explanation only."""
    lines = [line.strip() for line in str(error).splitlines()]
    kept = []
    for line in lines:
        if line.startswith("LINE "):
            break
        if line:
            kept.append(line)
    return " ".join(kept)


class Catalog:
    """An in-memory DuckDB connection with views over one manifest generation."""

    def __init__(self, parquet_files: Sequence[Path], tombstones: Sequence[int], failures_file: Path | None) -> None:
        self.con = duckdb.connect()
        self.con.register("_tombstones", pa.table({"id": pa.array(list(tombstones), pa.int64())}))
        self._view("_all_items", parquet_files, ITEM_SCHEMA)
        self.con.execute("CREATE VIEW items AS SELECT * FROM _all_items WHERE id NOT IN (SELECT id FROM _tombstones)")
        self._view("failures", [failures_file] if failures_file else [], FAILURE_SCHEMA)

    def _view(self, name: str, files: Sequence[Path], schema: pa.Schema) -> None:
        if files:
            listed = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
            self.con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listed}])")
        else:
            self.con.register(f"_{name}_empty", schema.empty_table())
            self.con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_empty")

    def ids_where(self, where: str) -> np.ndarray:
        """Ids of live items matching a SQL boolean expression over ``items``.

        DuckDB parses ``where`` as one expression, so it cannot smuggle in a statement.
        """
        try:
            table = self.con.table("items").filter(where).project("id").to_arrow_table()
        except duckdb.Error as exc:
            raise FilterError(f"invalid --where filter: {_one_line(exc)}") from None
        return table.column("id").to_numpy().astype(np.int64)

    def rows(self, ids: Sequence[int]) -> dict[int, dict]:
        """Metadata rows keyed by id."""
        table = self.con.sql(
            "SELECT * FROM items WHERE list_contains($ids, id)", params={"ids": list(map(int, ids))}
        ).to_arrow_table()
        return {row["id"]: row for row in table.to_pylist()}

    def _under(self, paths: Sequence[str]) -> tuple[str, dict[str, str]]:
        """A SQL condition (and its parameters) for rows at or below any of ``paths``."""
        params = {f"p{i}": path.rstrip("/") for i, path in enumerate(paths)}
        condition = " OR ".join(f"path = ${name} OR starts_with(path, ${name} || '/')" for name in params)
        return f"({condition})", params

    def ids_under(self, paths: Sequence[str]) -> np.ndarray:
        """Ids of live items at or below ``paths``."""
        condition, params = self._under(paths)
        table = self.con.sql(f"SELECT id FROM items WHERE {condition}", params=params).to_arrow_table()
        return table.column("id").to_numpy().astype(np.int64)

    def failures_outside(self, paths: Sequence[str]) -> tuple[list[dict], int]:
        """Failure rows not below ``paths``, and how many rows were left out."""
        condition, params = self._under(paths)
        kept = self.con.sql(f"SELECT * FROM failures WHERE NOT {condition}", params=params).fetchall()
        total = self.con.sql("SELECT count(*) FROM failures").fetchall()[0][0]
        columns = FAILURE_SCHEMA.names
        return [dict(zip(columns, row)) for row in kept], total - len(kept)

    def query(self, statement: str) -> pa.Table:
        """Run one read-only SQL statement over ``items`` and ``failures``."""
        try:
            statements = self.con.extract_statements(statement)
            if len(statements) != 1 or statements[0].type not in READ_ONLY_STATEMENTS:
                raise FilterError("invalid SQL: only a single read-only SELECT statement is allowed")
            return self.con.sql(statement).to_arrow_table()
        except duckdb.Error as exc:
            raise FilterError(f"invalid SQL: {_one_line(exc)}") from None

    def table(self, statement: str) -> pa.Table:
        """Run trusted internal SQL."""
        return self.con.sql(statement).to_arrow_table()
