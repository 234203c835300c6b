"""SQL over one generation's metadata with DuckDB, sandboxed and safe across threads.

The engine reads its own Parquet files into Arrow tables first; DuckDB then only
sees those in-memory tables, on connections whose external access, extension
loading and configuration are switched off and locked before any user text runs.
So ``read_text('/etc/passwd')``, ``glob``, URLs or ``INSTALL`` are refused, yet the
views ``items`` (live rows) and ``failures`` work. Each thread gets its own locked
connection over the same immutable Arrow tables, so concurrent readers never share
a DuckDB connection. Rows are fetched by id through a sorted id array: O(k log n)
per query, no scan.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache, cached_property, lru_cache

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.errors import FilterError
from mmsearch.store import filters
from mmsearch.store.rows import RowReader
from mmsearch.store.schema import FAILURE_SCHEMA, ITEM_SCHEMA

READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT}  # EXPLAIN ANALYZE would run a COPY
SANDBOX = (
    "SET memory_limit = '2GB'",
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET lock_configuration = true",
)
FILTER_CACHE_SIZE = 32
USER_SQL_TIMEOUT_S = 30.0  # user SQL that runs longer (e.g. a cross join of ranges) is interrupted


def one_line(error: Exception) -> str:
    """DuckDB errors span lines (with a caret diagram); keep the explanation only."""
    kept = []
    for line in (line.strip() for line in str(error).splitlines()):
        if line.startswith("LINE "):
            break
        if line:
            kept.append(line)
    return " ".join(kept)


class Catalog:
    """The live items and the failures of one generation, queryable with SQL."""

    def __init__(self, items: pa.Table, failures: pa.Table | None = None) -> None:
        """``items``: every live row (tombstones already removed), with ``id`` and any of the
        other item columns (those left out read as typed nulls in SQL and in rows: an index
        holds ~20 columns that are null in every row, and materialised they cost more memory
        than the rest of its metadata); ``failures``: failed files."""
        self.items = items
        self.failures = failures if failures is not None else FAILURE_SCHEMA.empty_table()
        ids = items.column("id").combine_chunks().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if np.all(ids[1:] > ids[:-1]):  # ids are assigned in order: the usual case, no copy needed
            self._order: np.ndarray | None = None
            self._sorted_ids = ids
        else:
            self._order = np.argsort(ids, kind="stable")
            self._sorted_ids = ids[self._order]
        self._local = threading.local()
        self.ids_where = lru_cache(maxsize=FILTER_CACHE_SIZE)(self._ids_where)
        self.ids_of_modality = lru_cache(maxsize=None)(self._ids_of_modality)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """This thread's sandboxed connection (created on first use)."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = duckdb.connect()
            con.register("stored_items", self.items)
            con.execute(self._items_view)
            con.register("failures", self.failures)
            for statement in SANDBOX:
                con.execute(statement)
            self._local.con = con
        return con

    @cached_property
    def _items_view(self) -> str:
        """The ``items`` view over ``stored_items``: the columns held back (null in every row)
        read as NULLs of their type, so SQL sees the whole schema."""
        types = _sql_types()
        columns = ", ".join(
            name if name in self.items.column_names else f"CAST(NULL AS {types[name]}) AS {name}"
            for name in ITEM_SCHEMA.names
        )
        return f"CREATE VIEW items AS SELECT {columns} FROM stored_items"

    def __len__(self) -> int:
        return self.items.num_rows

    def _ids_where(self, where: str) -> np.ndarray:
        """Ids of live items matching a SQL boolean expression over ``items`` (cached).

        ``where`` runs alone, as the one expression of a statement whose parse tree
        :mod:`mmsearch.store.filters` vetted: it cannot smuggle in other SQL, and it
        calls only functions that cannot blow up memory.
        """
        statement = filters.statement(where)
        try:
            with self._time_limit():
                table = self.con.sql(statement).to_arrow_table()
        except duckdb.InterruptException:
            raise FilterError(f"--where filter stopped after {USER_SQL_TIMEOUT_S:g} s") from None
        except duckdb.Error as exc:
            raise FilterError(f"invalid --where filter: {one_line(exc)}") from None
        ids = table.column("id").to_numpy().astype(np.int64)
        ids.setflags(write=False)
        return ids

    def _ids_of_modality(self, modality: str) -> np.ndarray:
        """Ids of live items of one modality (cached): the engine's own restriction, kept
        apart from the user's filter and intersected with it."""
        mask = pc.fill_null(pc.equal(self.items.column("modality"), modality), False)
        ids = self.items.column("id").to_numpy()[mask.to_numpy(zero_copy_only=False)].astype(np.int64)
        ids.setflags(write=False)
        return ids

    def positions(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Row numbers in ``items`` of live ``ids`` (unknown ids are left out)."""
        wanted = np.asarray(ids, dtype=np.int64)
        at = np.searchsorted(self._sorted_ids, wanted)
        at = np.minimum(at, max(len(self._sorted_ids) - 1, 0))
        found = self._sorted_ids[at] == wanted if len(self._sorted_ids) else np.zeros(len(wanted), bool)
        return at[found] if self._order is None else self._order[at[found]]

    def rows(self, ids: Sequence[int]) -> dict[int, dict]:
        """Metadata rows keyed by id, read by position (no scan)."""
        return {row["id"]: row for row in self._reader(self.positions(ids))}

    @cached_property
    def _reader(self) -> RowReader:
        return RowReader(self.items, ITEM_SCHEMA.names)

    def ids_under(self, paths: Sequence[str]) -> np.ndarray:
        """Ids of live items at or below ``paths``."""
        mask = paths_under(self.items.column("path"), paths)
        return self.items.column("id").to_numpy()[mask].astype(np.int64)

    def failures_outside(self, paths: Sequence[str]) -> tuple[list[dict], int]:
        """Failure rows not below ``paths``, and how many rows were left out."""
        mask = paths_under(self.failures.column("path"), paths)
        return self.failures.filter(pa.array(~mask)).to_pylist(), int(mask.sum())

    def query(self, statement: str) -> pa.Table:
        """Run one read-only SQL statement over ``items`` and ``failures``."""
        try:
            statements = self.con.extract_statements(statement)
            if len(statements) != 1 or statements[0].type not in READ_ONLY_STATEMENTS:
                raise FilterError("invalid SQL: only a single read-only SELECT statement is allowed")
            with self._time_limit():
                return self.con.sql(statement).to_arrow_table()
        except duckdb.InterruptException:
            raise FilterError(f"SQL stopped after {USER_SQL_TIMEOUT_S:g} s") from None
        except duckdb.Error as exc:
            raise FilterError(f"invalid SQL: {one_line(exc)}") from None

    @contextmanager
    def _time_limit(self) -> Iterator[None]:
        """Interrupt this thread's connection if user SQL outlives ``USER_SQL_TIMEOUT_S``."""
        timer = threading.Timer(USER_SQL_TIMEOUT_S, self.con.interrupt)
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def table(self, statement: str) -> pa.Table:
        """Run trusted internal SQL."""
        return self.con.sql(statement).to_arrow_table()

    @cached_property
    def incomplete_files(self) -> int:
        """Files left part-done: some part of theirs lacks rows, because an ingest was
        interrupted (the next ``index`` run embeds what is missing) or a part failed (see the
        failures). Rows brought as vectors have no file to finish."""
        per_part = (
            "SELECT path, count(*) AS n, min(pieces) AS pieces, min(coalesce(parts, 1)) AS parts"
            " FROM items WHERE pieces IS NOT NULL GROUP BY path, coalesce(part, 0)"
        )
        short = f"SELECT path FROM ({per_part}) GROUP BY path HAVING count(*) FILTER (WHERE n = pieces) < min(parts)"
        return int(self.table(f"SELECT count(*) AS files FROM ({short})")["files"][0].as_py())


@cache
def _sql_types() -> dict[str, str]:
    """DuckDB's type of each items column, as it reads the Arrow schema (once per process)."""
    con = duckdb.connect()
    try:
        con.register("item_types", ITEM_SCHEMA.empty_table())
        return dict(con.sql("SELECT column_name, column_type FROM (DESCRIBE item_types)").fetchall())
    finally:
        con.close()


def paths_under(paths: pa.ChunkedArray | pa.Array, roots: Sequence[str]) -> np.ndarray:
    """Boolean mask of ``paths`` equal to or below any of ``roots`` (vectorised)."""
    mask = np.zeros(len(paths), dtype=bool)
    for root in roots:
        root = root.rstrip("/") or "/"
        hit = pc.or_(pc.equal(paths, root), pc.starts_with(paths, root.rstrip("/") + "/"))
        mask |= hit.to_numpy(zero_copy_only=False)
    return mask
