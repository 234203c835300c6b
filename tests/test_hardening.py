"""Promises kept under crashes, concurrent readers, damaged files and threads."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_cli
from fakes import CrashAfter, HashEncoder
from mmsearch import Index
from mmsearch.errors import FilterError, IndexFormatError, ShardDamagedError, UserInputError
from mmsearch.store import manifest as manifest_io

FILES = 24
READS = 1_000  # reads (search, filtered search, sql, info) during the writes


def write_texts(folder: Path, count: int = FILES, suffix: str = "") -> dict[str, str]:
    """``count`` one-passage text files; returns path -> content."""
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    for n in range(count):
        path = folder / f"note{n:03d}.txt"
        path.write_text(f"note number {n}{suffix}")
        contents[str(path)] = path.read_text()
    return contents


def versions(idx: Index) -> dict[str, list[str]]:
    """path -> the texts of its live rows."""
    rows = idx.sql("SELECT path, text FROM items ORDER BY path, id").to_pylist()
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row["path"], []).append(row["text"])
    return out


@pytest.fixture
def notes(tmp_path: Path) -> tuple[Index, Path, dict[str, str]]:
    folder = tmp_path / "notes"
    old = write_texts(folder)
    idx = Index.create(tmp_path / "index", encoder=HashEncoder(), shard_size=5)
    idx.add([folder], workers=0)
    return idx, folder, old


@pytest.mark.parametrize("kill_after", range(4))
def test_every_committed_generation_holds_each_file_exactly_once(notes, kill_after: int) -> None:
    idx, folder, old = notes
    new = write_texts(folder, count=16, suffix=" (edited)")  # 16 of 24 files change
    crashing = Index.open(idx.path, encoder=CrashAfter(kill_after))
    generation = idx.manifest.generation
    with pytest.raises(KeyboardInterrupt):
        crashing.add([folder], workers=0)
    after_crash = Index.open(idx.path, encoder=HashEncoder())
    assert kill_after < 2 or after_crash.manifest.generation > generation  # checkpoints were committed
    seen = versions(after_crash)
    assert sorted(seen) == sorted(old)
    for path, texts in seen.items():
        assert texts in ([old[path]], [new.get(path, old[path])])
    after_crash.add([folder], workers=0)
    assert versions(after_crash) == {path: [new.get(path, text)] for path, text in old.items()}


def test_readers_never_fail_while_a_writer_rewrites_everything(notes) -> None:
    idx, folder, _old = notes
    reader = Index.open(idx.path, encoder=HashEncoder())
    errors: list[Exception] = []
    reads = [0]
    counting = threading.Lock()  # three threads add to reads
    done = threading.Event()

    def read_loop() -> None:
        while not done.is_set():
            try:
                reader.search("note number 3", k=3)
                reader.search("note", k=2, where="path LIKE '%note00%'")
                reader.sql("SELECT count(*) FROM items")
                reader.info()
                with counting:
                    reads[0] += 4
            except Exception as exc:  # any failure is what this test looks for
                errors.append(exc)

    writer = Index.open(idx.path, encoder=HashEncoder())
    threads = [threading.Thread(target=read_loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    cycle = 0
    try:
        while cycle < 4 or (reads[0] < READS and cycle < 100):  # the target: 1,000 reads, 0 errors
            write_texts(folder, count=6, suffix=f" v{cycle}")
            writer.add([folder], workers=0)
            writer.remove([folder / "note010.txt"])
            writer.compact()
            writer.add([folder], workers=0)
            cycle += 1
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert errors == [] and reads[0] >= READS


def test_superseded_files_outlive_the_commit_for_readers_of_the_old_generation(notes) -> None:
    idx, _folder, _old = notes
    before = idx.refresh()
    idx.compact()
    assert idx.manifest.generation > before.generation
    assert all(shard.faiss_file.exists() and shard.parquet_file.exists() for shard in before.shards)
    assert set(idx.manifest.retired) >= {shard.faiss_file.name for shard in before.shards}
    assert len(before.catalog) == FILES  # a reader still on the old generation can read all of it


def test_one_index_serves_many_threads(notes) -> None:
    idx, _folder, _old = notes
    shared = Index.open(idx.path, encoder=HashEncoder())

    def work(n: int) -> tuple:
        hits = shared.search(f"note number {n % FILES}", k=3, where=None if n % 2 else "path LIKE '%1%'")
        return (
            [(h.id, round(h.score, 5)) for h in hits],
            shared.sql(f"SELECT count(*) AS n FROM items WHERE text LIKE '%{n % 10}%'").to_pylist(),
            shared.info()["vectors"],
        )

    serial = [work(n) for n in range(100)]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(work, [n % 100 for n in range(800)])) == serial * 8


def test_garbage_parquet_is_one_line_and_index_repairs_it(notes) -> None:
    idx, folder, old = notes
    damaged = idx.manifest.shards[1]
    (idx.path / "shards" / f"{damaged.name}.parquet").write_bytes(b"not parquet at all")
    reader = Index.open(idx.path, encoder=HashEncoder())
    for read in (lambda: reader.search("note", k=3), lambda: reader.sql("SELECT * FROM items"), reader.info):
        with pytest.raises(ShardDamagedError, match="mmsearch repair") as excinfo:
            read()
        assert "\n" not in str(excinfo.value)
    summary = idx.add([folder], workers=0)
    assert len(summary.repaired) == 1 and summary.embedded == damaged.rows
    assert versions(idx) == {path: [text] for path, text in old.items()}
    assert idx.verify() == []


def test_missing_faiss_file_is_noticed_by_the_next_index_run(notes) -> None:
    idx, folder, _old = notes
    (idx.path / "shards" / f"{idx.manifest.shards[0].name}.faiss").unlink()
    with pytest.raises(IndexFormatError, match="damaged or missing"):
        Index.open(idx.path, encoder=HashEncoder()).search("note", k=30)
    summary = idx.add([folder], workers=0)
    assert (summary.unchanged, summary.embedded, len(summary.repaired)) == (FILES - 5, 5, 1)
    assert len(idx.search("note", k=100)) == FILES


def test_repair_drops_shards_whose_checksum_changed(notes) -> None:
    idx, folder, _old = notes
    path = idx.path / "shards" / f"{idx.manifest.shards[2].name}.faiss"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only a checksum sees it
    path.write_bytes(bytes(data))
    assert len(idx.verify()) == 1
    assert len(idx.repair()) == 1 and idx.verify() == [] and idx.info()["vectors"] == FILES - 5
    assert idx.repair() == []
    idx.add([folder], workers=0)
    assert idx.info()["vectors"] == FILES


def test_argument_errors_come_before_the_model_loads(notes) -> None:
    idx, folder, _old = notes
    reader = Index.open(idx.path)  # no encoder: loading the recorded model would fail here
    with pytest.raises(FilterError):
        reader.search("note", where="no_such_column > 1")
    with pytest.raises(UserInputError, match="query file not found"):
        reader.search(image=folder / "missing.png")
    assert reader._encoder is None


def test_huge_k_returns_everything(notes) -> None:
    idx, _folder, _old = notes
    assert len(idx.search("note", k=100_000_000)) == FILES


def test_manifests_written_before_sizes_and_retirement_open(notes) -> None:
    idx, folder, _old = notes
    path = manifest_io.manifest_path(idx.path)
    data = json.loads(path.read_text())
    del data["retired"]
    for shard in data["shards"]:
        del shard["faiss_bytes"], shard["parquet_bytes"]
    path.write_text(json.dumps(data))
    assert Index.open(idx.path, encoder=HashEncoder()).info()["vectors"] == FILES
    assert idx.add([folder], workers=0).unchanged == FILES


def test_repair_command_drops_a_damaged_shard_in_one_line(notes) -> None:
    idx, _folder, _old = notes
    (idx.path / "shards" / f"{idx.manifest.shards[0].name}.parquet").write_bytes(b"garbage")
    broken = run_cli("sql", "SELECT count(*) FROM items", "--index", str(idx.path))
    assert broken.returncode != 0 and broken.stderr.count("\n") == 1 and "mmsearch repair" in broken.stderr
    fixed = run_cli("repair", "--index", str(idx.path), "--json")
    assert fixed.returncode == 0 and len(json.loads(fixed.stdout)["dropped"]) == 1
    assert run_cli("verify", "--index", str(idx.path)).returncode == 0
