"""The real CLI, run as a subprocess: output formats, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from mmsearch.store.lock import WriterLock


@pytest.fixture
def cli_index(tmp_path: Path, photos: Path, random_checkpoint: str) -> tuple[Path, Path]:
    index = tmp_path / "idx"
    result = run_cli("index", str(photos), "--index", str(index), "--model", random_checkpoint, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["embedded"] == 12 and summary["failed"] == []
    return index, photos


def test_query_outputs(cli_index: tuple[Path, Path]) -> None:
    index, photos = cli_index
    table = run_cli("query", "a red circle", "--index", str(index), "-k", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "1"

    listed = run_cli("query", "--image", str(photos / "blue.png"), "--index", str(index), "-k", "4", "-f")
    assert listed.stdout.splitlines()[0] == str(photos / "blue.png")
    assert len(listed.stdout.splitlines()) == 4

    hits = json.loads(
        run_cli("query", "x", "--index", str(index), "--where", "format = 'jpeg'", "-k", "20", "--json").stdout
    )
    assert len(hits) == 6 and {h["format"] for h in hits} == {"jpeg"}
    assert [h["rank"] for h in hits] == list(range(1, 7))


def test_info_sql_and_default_index_from_environment(cli_index: tuple[Path, Path]) -> None:
    index, _ = cli_index
    env = {"MMSEARCH_INDEX": str(index)}
    info = json.loads(run_cli("info", "--json", env=env).stdout)
    assert info["vectors"] == 12 and info["by_modality"] == {"image": 12}
    rows = json.loads(
        run_cli("sql", "SELECT format, count(*) AS n FROM items GROUP BY 1 ORDER BY 1", "--json", env=env).stdout
    )
    assert rows == [{"format": "jpeg", "n": 6}, {"format": "png", "n": 6}]


def test_index_and_query_meet_in_default_location(tmp_path: Path, photos: Path, random_checkpoint: str) -> None:
    (tmp_path / "indexes").mkdir()
    env = {"MMSEARCH_INDEX": ""}
    assert run_cli("index", str(photos), "--model", random_checkpoint, env=env, cwd=tmp_path).returncode == 0
    assert (tmp_path / "indexes" / "default" / "manifest.json").is_file()
    assert len(run_cli("query", "red", "-f", env=env, cwd=tmp_path).stdout.splitlines()) == 10


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["index", "/no/such/folder"], "path not found: /no/such/folder", 2),
        (["query", "x", "--where", "nope = 1"], "invalid --where filter", 2),
        (["sql", "DELETE FROM items"], "only a single read-only SELECT", 2),
        (["query", "--image", "/no/such.png"], "file not found: /no/such.png", 2),
        (["query", "x", "--index", "/no/index/here"], "no index at /no/index/here", 1),
    ],
)
def test_user_errors_are_one_line(cli_index: tuple[Path, Path], args: list[str], message: str, code: int) -> None:
    index, _ = cli_index
    if "--index" not in args:
        args = [*args, "--index", str(index)]
    result = run_cli(*args)
    assert result.returncode == code
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_model_weights_unavailable_is_one_line(tmp_path: Path, photos: Path) -> None:
    result = run_cli("index", str(photos), "--index", str(tmp_path / "i"), "--model", "ViT-B-32:laion2b_s34b_b79k")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mmsearch: error: could not fetch weights") and "--model demo" in last
    assert "Traceback" not in result.stderr


def test_second_writer_gets_clear_message(cli_index: tuple[Path, Path]) -> None:
    index, photos = cli_index
    with WriterLock(index):
        result = run_cli("index", str(photos), "--index", str(index))
    assert result.returncode == 3
    assert "another mmsearch process" in result.stderr and "Traceback" not in result.stderr


def test_remove_and_compact_commands(cli_index: tuple[Path, Path]) -> None:
    index, photos = cli_index
    assert run_cli("remove", str(photos / "nested"), "--index", str(index)).stdout.strip() == "removed 6 items"
    assert run_cli("compact", "--index", str(index)).returncode == 0
    info = json.loads(run_cli("info", "--index", str(index), "--json").stdout)
    assert (info["vectors"], info["tombstones"]) == (6, 0)


def test_verify_detects_a_damaged_shard(cli_index: tuple[Path, Path]) -> None:
    index, _ = cli_index
    ok = run_cli("verify", "--index", str(index))
    assert ok.returncode == 0 and "all shard files match" in ok.stdout
    parquet = next((index / "shards").glob("0*.parquet"))
    data = bytearray(parquet.read_bytes())
    data[len(data) // 2] ^= 0xFF
    parquet.write_bytes(bytes(data))
    result = run_cli("verify", "--index", str(index), "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"ok": False, "problems": [f"{parquet}: checksum mismatch"]}
