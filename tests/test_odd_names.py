"""Paths the CLI must not trip over: file names that are not valid UTF-8 (reported as failed,
the rest indexed) and empty path arguments (a usage error, never "the current folder").
Every check runs the real CLI in a subprocess on real files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import run_cli

BAD = os.fsdecode(b"bad\xffname.txt")  # what os.listdir gives for these bytes
BAD_DIR = os.fsdecode(b"dir\xff")
REASON = "file name is not valid UTF-8"


def escaped(path: Path) -> str:
    return str(path).replace("\udcff", "\\xff")


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A folder of two good text files, one badly named and one in a badly named folder,
    indexed once with the demo model."""
    root = tmp_path_factory.mktemp("odd")
    folder = root / "odd"
    (folder / BAD_DIR).mkdir(parents=True)
    (folder / "good.txt").write_text("a red apple on a table")
    (folder / "sea.txt").write_text("waves on the sea")
    (folder / BAD).write_text("a blue car")
    (folder / BAD_DIR / "inner.txt").write_text("a green tree")
    index = root / "idx"
    result = run_cli("index", str(folder), "--index", str(index), "--model", "demo", "--json")
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    return {"root": root, "folder": folder, "index": index, "summary": json.loads(result.stdout)}


def sql(index: Path, statement: str) -> list[dict]:
    result = run_cli("sql", statement, "--index", str(index), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_bad_names_are_reported_and_the_rest_indexed(odd: dict) -> None:
    folder, summary = odd["folder"], odd["summary"]
    bad = {escaped(folder / BAD), escaped(folder / BAD_DIR / "inner.txt")}
    assert summary["embedded"] == 2 and summary["found"] == 2
    assert {(f["path"], f["reason"]) for f in summary["failed"]} == {(path, REASON) for path in bad}
    assert sorted(row["path"] for row in sql(odd["index"], "SELECT path FROM items")) == [
        str(folder / "good.txt"),
        str(folder / "sea.txt"),
    ]
    failures = sql(odd["index"], "SELECT path, reason FROM failures")
    assert {(row["path"], row["reason"]) for row in failures} == {(path, REASON) for path in bad}


def test_reindexing_or_naming_a_bad_file_reports_it_again(odd: dict) -> None:
    folder, index = odd["folder"], odd["index"]
    again = run_cli("index", str(folder), "--index", str(index))
    no_traceback(again)
    assert again.returncode == 0
    assert "2 unchanged, 0 removed, 2 failed" in again.stdout.splitlines()[0]
    assert f"  failed: {escaped(folder / BAD)}: {REASON}" in again.stdout.splitlines()

    direct = run_cli("index", str(folder / BAD), "--index", str(index), "--json")
    no_traceback(direct)
    assert direct.returncode == 1  # the only file named failed: nothing under the path is indexed
    assert json.loads(direct.stdout)["failed"] == [{"path": escaped(folder / BAD), "reason": REASON}]
    assert len(sql(index, "SELECT path FROM items")) == 2
    assert len(sql(index, "SELECT path FROM failures")) == 2  # recorded once each


def test_remove_of_a_bad_name_drops_its_failure_then_says_nothing_is_there(odd: dict, tmp_path: Path) -> None:
    index = shutil.copytree(odd["index"], tmp_path / "idx")
    bad = odd["folder"] / BAD
    removed = run_cli("remove", str(bad), "--index", str(index))
    no_traceback(removed)
    assert removed.returncode == 0 and removed.stdout.strip() == "removed 0 items"
    assert [row["path"] for row in sql(index, "SELECT path FROM failures")] == [
        escaped(odd["folder"] / BAD_DIR / "inner.txt")
    ]

    again = run_cli("remove", str(bad), "--index", str(index))
    no_traceback(again)
    assert again.returncode == 2
    assert again.stderr.strip() == f"mmsearch: error: nothing indexed under {escaped(bad)}"


@pytest.mark.parametrize(
    "args",
    [
        ["remove", "", "--index", "idx"],
        ["remove", "  ", "--index", "idx"],
        ["remove", "somewhere", "--index", ""],
        ["index", "../elsewhere", "--index", ""],
        ["index", ""],
        ["query", "red", "--index", " "],
        ["query", "--image", ""],
        ["info", "-i", ""],
        ["export", ""],
    ],
)
def test_empty_paths_are_usage_errors_not_the_current_folder(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "idx").mkdir()
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmsearch: error: "), result.stderr
    assert "an empty path" in lines[0]
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # nothing written, nothing removed
    assert not any((tmp_path / "idx").iterdir())


def test_a_fifo_and_a_broken_link_are_failures_and_the_rest_is_indexed(tmp_path: Path) -> None:
    """Neither is opened (opening a FIFO would block the run): each is listed as failed with
    why, recorded in the failures table, and the good file is indexed."""
    folder = tmp_path / "odd"
    (folder / "sub").mkdir(parents=True)
    (folder / "good.txt").write_text("a red apple on a table")
    os.mkfifo(folder / "pipe.txt")
    (folder / "sub" / "gone.png").symlink_to(folder / "nowhere.png")
    index = tmp_path / "idx"
    result = run_cli("index", str(folder), "--index", str(index), "--model", "demo")
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("1 embedded (1 vectors), 0 reused, 0 unchanged, 0 removed, 2 failed")
    assert f"  failed: {folder / 'pipe.txt'}: a named pipe (FIFO), not a regular file" in lines
    link = f"  failed: {folder / 'sub' / 'gone.png'}: broken symbolic link (No such file or directory)"
    assert link in lines
    assert [row["path"] for row in sql(index, "SELECT path FROM items")] == [str(folder / "good.txt")]
    assert {row["path"] for row in sql(index, "SELECT path FROM failures")} == {
        str(folder / "pipe.txt"),
        str(folder / "sub" / "gone.png"),
    }

    alone = run_cli("index", str(folder / "pipe.txt"), "--index", str(index))
    assert alone.returncode == 2
    assert alone.stderr.strip().endswith("(a named pipe (FIFO), not a regular file)")
