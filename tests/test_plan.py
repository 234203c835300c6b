"""The incremental planner on synthetic tables: no files are read except to hash candidates."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from mmsearch.hashing import file_digest
from mmsearch.ingest.discover import FoundFile
from mmsearch.ingest.plan import make_plan
from mmsearch.store.schema import FAILURE_SCHEMA

US = 1_000


def known(rows: list[tuple]) -> pa.Table:
    """(path, id, size, mtime_us, content_hash, pieces[, part, parts]) rows (default: part 0 of 1)."""
    columns = [("path", "string"), ("id", "int64"), ("size", "int64"), ("mtime_us", "int64")]
    counts = [("pieces", "int32"), ("part", "int32"), ("parts", "int32")]
    schema = pa.schema([*columns, ("content_hash", "string"), *counts])
    rows = [(*row, 0, 1) if len(row) == 6 else row for row in rows]
    return pa.table({f.name: pa.array([row[i] for row in rows], f.type) for i, f in enumerate(schema)})


def found(path: str, size: int, mtime_us: int) -> FoundFile:
    return FoundFile(path, "image", size, mtime_us * US)


NO_FAILURES = FAILURE_SCHEMA.append(pa.field("mtime_us", pa.int64())).empty_table()


def test_unchanged_changed_new_and_gone() -> None:
    table = known([("/r/a", 1, 10, 100, "ha", 1), ("/r/b", 2, 20, 200, "hb", 1), ("/r/gone", 3, 30, 300, "hg", 1)])
    plan = make_plan(
        [found("/r/a", 10, 100), found("/r/b", 21, 201), found("/r/new", 5, 5)], table, NO_FAILURES, ["/r"], "o"
    )
    assert plan.unchanged == 1
    assert sorted(f.path for f in plan.embed) == ["/r/b", "/r/new"]
    assert plan.replaces == {"/r/b": [2]}
    assert plan.gone == [3]


def test_gone_only_under_the_roots_and_not_in_unreadable_folders() -> None:
    table = known([("/r/x/1", 1, 1, 1, "h1", 1), ("/r/locked/2", 2, 1, 1, "h2", 1), ("/other/3", 3, 1, 1, "h3", 1)])
    plan = make_plan([], table, NO_FAILURES, ["/r"], "o", unreadable=["/r/locked"])
    assert plan.gone == [1]


def test_a_file_cut_short_by_a_crash_is_redone(tmp_path: Path) -> None:
    rows = tmp_path / "t.csv"
    rows.write_text("text\na\nb\nc")
    size, path = rows.stat().st_size, str(rows)
    table = known([(path, 1, size, 100, file_digest(rows), 3), (path, 2, size, 100, file_digest(rows), 3)])
    plan = make_plan([found(path, size, 100)], table, NO_FAILURES, [str(tmp_path)], "o")
    assert plan.unchanged == 0 and [f.path for f in plan.embed] == [path] and plan.replaces[path] == [1, 2]


def test_renamed_file_reuses_complete_rows_by_content_hash(tmp_path: Path) -> None:
    moved = tmp_path / "moved.png"
    moved.write_bytes(b"same bytes")
    digest = file_digest(moved)
    table = known([("/old/place.png", 7, moved.stat().st_size, 1, digest, 1)])
    plan = make_plan([found(str(moved), moved.stat().st_size, 2)], table, NO_FAILURES, [str(tmp_path)], "o")
    assert [(r.file.path, r.source_ids) for r in plan.reuse] == [(str(moved), [7])]
    assert plan.embed == [] and plan.gone == []


def test_known_failure_is_not_retried_until_it_or_the_options_change() -> None:
    failure = {"path": "/r/bad", "modality": "image", "size": 4, "mtime": None, "reason": "x", "options": "o"}
    failures = pa.Table.from_pylist([{**failure, "mtime_us": 9}], schema=NO_FAILURES.schema)
    same = make_plan([found("/r/bad", 4, 9)], known([]), failures, ["/r"], "o")
    assert same.embed == [] and len(same.known_failures) == 1
    assert [f.path for f in make_plan([found("/r/bad", 4, 9)], known([]), failures, ["/r"], "new").embed] == ["/r/bad"]
    assert [f.path for f in make_plan([found("/r/bad", 5, 9)], known([]), failures, ["/r"], "o").embed] == ["/r/bad"]
