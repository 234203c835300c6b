"""The metadata catalog on synthetic tables: sandboxed user SQL, threads, rows by id."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest

from mmsearch.errors import FilterError
from mmsearch.store.catalog import Catalog
from mmsearch.store.schema import ITEM_SCHEMA, items_table


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    rng = np.random.default_rng(7)
    ids = rng.permutation(np.arange(1000, 3000))  # ids in no particular order, as after renames
    rows = [
        {"id": int(i), "modality": ("image", "text")[int(i) % 2], "path": f"/data/{'ab'[int(i) % 3 == 0]}/{i}.png"}
        for i in ids
    ]
    return Catalog(items_table(rows))


ESCAPES = [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM glob('/root/*')",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "SELECT * FROM 'https://example.com/x.csv'",
]


@pytest.mark.parametrize("statement", ESCAPES)
def test_user_sql_cannot_read_files_or_urls(catalog: Catalog, statement: str) -> None:
    with pytest.raises(FilterError, match="invalid SQL"):
        catalog.query(statement)


@pytest.mark.parametrize(
    "statement", ["INSTALL httpfs", "LOAD httpfs", "SET enable_external_access = true", "ATTACH '/tmp/x.db'"]
)
def test_user_sql_cannot_change_the_sandbox(catalog: Catalog, statement: str) -> None:
    with pytest.raises(FilterError):
        catalog.query(statement)
    assert catalog.query("SELECT current_setting('enable_external_access') AS on").to_pylist() == [{"on": False}]


def test_a_filter_cannot_be_a_file_content_oracle(catalog: Catalog) -> None:
    with pytest.raises(FilterError, match="invalid --where"):
        catalog.ids_where("(SELECT substr(content, 1, 4) FROM read_text('/etc/passwd')) = 'root'")
    with pytest.raises(FilterError):
        catalog.ids_where("path = (SELECT 'x' FROM glob('/root/*') LIMIT 1)")


def test_own_tables_still_answer(catalog: Catalog) -> None:
    assert catalog.query("SELECT count(*) AS n FROM items").to_pylist() == [{"n": 2000}]
    assert catalog.query("SELECT count(*) AS n FROM failures").to_pylist() == [{"n": 0}]
    assert len(catalog.ids_where("modality = 'text'")) == 1000


def test_rows_by_id_in_any_order_skip_unknown_ids(catalog: Catalog) -> None:
    rows = catalog.rows([2999, 1000, 5, 1500])
    assert sorted(rows) == [1000, 1500, 2999]
    assert rows[1500]["path"] == "/data/b/1500.png"


def test_rows_hold_every_column_also_the_empty_ones() -> None:
    rows = [{"id": i, "modality": "image", "path": f"/p/{i}.png", "width": 10 * i if i % 2 else None} for i in range(6)]
    table = items_table(rows)
    catalog = Catalog(table)
    got = catalog.rows([5, 2, 9])
    assert sorted(got) == [2, 5]
    assert got == {r["id"]: r for r in table.to_pylist() if r["id"] in (2, 5)}  # same values, Nones included
    assert [list(row) for row in got.values()] == [table.column_names] * 2  # every column, in schema order
    assert got[5]["width"] == 50 and got[2]["width"] is None and got[2]["text"] is None


def test_rows_on_an_empty_catalog() -> None:
    assert Catalog(items_table([])).rows([1, 2]) == {}


def test_ids_under_and_failures_outside() -> None:
    rows = [{"id": 1, "path": "/p/a.png"}, {"id": 2, "path": "/p/ab/c.png"}, {"id": 3, "path": "/pa/d.png"}]
    failures = pa.table({"path": ["/p/x.png", "/q/y.png"]})
    catalog = Catalog(items_table(rows), failures)
    assert catalog.ids_under(["/p"]).tolist() == [1, 2]
    assert catalog.ids_under(["/p/a.png", "/pa/"]).tolist() == [1, 3]
    kept, dropped = catalog.failures_outside(["/p"])
    assert ([row["path"] for row in kept], dropped) == (["/q/y.png"], 1)


def test_many_threads_share_one_catalog(catalog: Catalog) -> None:
    def work(n: int) -> tuple:
        where = f"modality = 'image' AND id % 7 = {n % 7}"
        sql = f"SELECT count(*) AS n FROM items WHERE id % 5 = {n % 5}"
        return (tuple(catalog.ids_where(where).tolist()), catalog.query(sql).to_pylist(), len(catalog.rows([1000 + n])))

    serial = [work(n) for n in range(200)]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(work, range(200))) == serial


def test_runaway_user_sql_is_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmsearch.store.catalog as catalog_module

    monkeypatch.setattr(catalog_module, "USER_SQL_TIMEOUT_S", 0.5)  # a short limit keeps the test fast
    fresh = Catalog(items_table([{"id": 1, "path": "/a"}]))
    with pytest.raises(FilterError, match=r"stopped after 0\.5 s"):
        fresh.query("SELECT count(*) FROM range(1000000) a, range(1000000) b")
    with pytest.raises(FilterError, match="subqueries are not allowed"):  # refused before it runs (test_filters.py)
        fresh.ids_where("(SELECT count(*) FROM range(1000000) a, range(1000000) b) > 0")
    assert fresh.query("SELECT count(*) AS n FROM items").to_pylist() == [{"n": 1}]


def test_columns_left_out_read_as_typed_nulls() -> None:
    rows = [{"id": i, "modality": "image", "path": f"/p/{i}.png", "width": i} for i in (5, 3, 9)]
    narrow = items_table(rows).select(["id", "modality", "path", "width"])  # as a snapshot reads an index
    catalog = Catalog(narrow)
    assert catalog.query("SELECT * FROM items").column_names == ITEM_SCHEMA.names
    types = catalog.query("SELECT typeof(taken_at) AS t, typeof(char_offset) AS c FROM items LIMIT 1").to_pylist()
    assert types == [{"t": "TIMESTAMP_S", "c": "BIGINT"}]
    assert catalog.ids_where("year(taken_at) = 2020 OR width > 4").tolist() == [5, 9]
    got = catalog.rows([9, 3])
    assert list(got[9]) == ITEM_SCHEMA.names and got[9]["text"] is None and got[3]["width"] == 3
