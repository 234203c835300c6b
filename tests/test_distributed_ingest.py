"""Distributed ingest on a real local Ray runtime: the same index as the single-process
path, a killed job that leaves the index intact and is resumed, URL lists, bad addresses."""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import MIXED_FILES, live_rows, run_cli, write_image, write_mixed
from mmsearch import Index
from mmsearch.distributed import staging

MODEL = "demo"  # image, text and audio (the shipped audio tower)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mixed(tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def single_process(tmp_path_factory: pytest.TempPathFactory, mixed: Path) -> Index:
    idx = Index.create(tmp_path_factory.mktemp("local") / "index", MODEL, shard_size=32, device="cpu")
    idx.add([mixed])
    return idx


def test_same_index_as_the_single_process_run(tmp_path: Path, ray_runtime, mixed: Path, single_process) -> None:
    idx = Index.create(tmp_path / "index", MODEL, shard_size=32, device="cpu")
    summary = idx.add([mixed], ray="auto")
    assert summary.found == MIXED_FILES and summary.embedded == MIXED_FILES - 1
    assert [path for path, _ in summary.failed] == [str(mixed / "images" / "broken.png")]
    assert summary.segments >= summary.vectors // 32 and set(next(iter(summary.nodes.values()))) == {
        "decode",
        "encode",
        "write",
    }
    expected, got = live_rows(single_process), live_rows(idx)
    assert sorted(got) == sorted(expected)
    assert {row["modality"] for row, _ in got.values()} == {"image", "text", "audio"}
    for key, (row, vector) in got.items():
        assert row == expected[key][0]
        assert float(vector @ expected[key][1]) >= 0.999, key
    assert (
        idx.sql("SELECT path, reason FROM failures").to_pylist()
        == single_process.sql("SELECT path, reason FROM failures").to_pylist()
    )
    assert idx.verify() == []
    again = idx.add([mixed], ray="auto")
    assert (again.unchanged, again.embedded, again.previously_failed) == (MIXED_FILES - 1, 0, 1)
    assert not (idx.path / staging.STAGING_DIR).exists() or not any((idx.path / staging.STAGING_DIR).iterdir())


def test_segments_sealed_by_workers_honour_the_memory_budget(tmp_path: Path, ray_runtime, mixed: Path) -> None:
    # the demo model's 128-d vectors: Flat 512 B, SQfp16 256, SQ8 128; 200 B per file leaves SQ8
    idx = Index.create(tmp_path / "index", MODEL, shard_size=32, device="cpu", max_memory=200 * MIXED_FILES)
    idx.add([mixed], ray="auto")
    assert {shard.recipe for shard in idx.manifest.shards} == {"SQ8"}
    assert idx.search("a red circle", k=3)


def _staged_sidecars(index_dir: Path) -> list[Path]:
    return list((index_dir / staging.STAGING_DIR).glob(f"*/shards/*{staging.SIDECAR_SUFFIX}"))


def test_a_killed_job_leaves_the_index_intact_and_the_rerun_adopts_its_segments(
    tmp_path: Path, ray_runtime, mixed: Path
) -> None:
    idx = Index.create(tmp_path / "index", MODEL, shard_size=8, device="cpu")  # ~40 segments
    generation = idx.manifest.generation
    address = ray_runtime.get_runtime_context().gcs_address
    job = subprocess.Popen(
        [sys.executable, "-m", "mmsearch.cli", "index", str(mixed), "--index", str(idx.path), "--ray", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while not _staged_sidecars(idx.path) and job.poll() is None:
            time.sleep(0.02)  # polling the disk for the first sealed segment
    finally:
        job.kill()
        _, stderr = job.communicate(timeout=60)
    assert _staged_sidecars(idx.path), stderr.decode()

    killed = Index.open(idx.path)
    assert killed.manifest.generation == generation and killed.sql("SELECT count(*) AS n FROM items")[
        "n"
    ].to_pylist() == [0]
    assert killed.verify() == []

    summary = killed.add([mixed], ray="auto")
    assert summary.resumed > 0 and summary.embedded > 0, "the job was not killed mid-way"
    assert summary.resumed + summary.embedded == MIXED_FILES - 1 and len(summary.failed) == 1
    counts = killed.sql("SELECT path, count(*) AS n, min(pieces) AS pieces FROM items GROUP BY path").to_pylist()
    assert len(counts) == MIXED_FILES - 1 and all(row["n"] == row["pieces"] for row in counts)
    assert killed.verify() == []
    assert _staged_sidecars(idx.path) == []


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving ``tmp_path/site``."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", site
    finally:
        server.shutdown()
        server.server_close()


def test_url_list_from_a_local_http_server(tmp_path: Path, ray_runtime, http_root) -> None:
    base, site = http_root
    urls = [f"{base}/{write_image(site / f'p{n}.png', (40 * n, 90, 200), (48, 40), seed=n).name}" for n in range(5)]
    (site / "readme.txt").write_text("a caption served over HTTP")
    listed = [*urls, f"{base}/readme.txt", f"{base}/missing.jpg"]
    pq.write_table(pa.table({"url": listed, "caption": ["x"] * len(listed)}), tmp_path / "urls.parquet")

    results = {}
    for mode in (None, "auto"):  # the local path reads lists too
        idx = Index.create(tmp_path / f"index-{mode}", MODEL, device="cpu")
        summary = idx.add([tmp_path / "urls.parquet"], url_column="url", ray=mode)
        assert summary.found == len(listed) and summary.embedded == len(listed) - 1
        assert summary.failed == [(f"{base}/missing.jpg", "HTTP 404 File not found")]
        results[mode] = idx.sql("SELECT path, modality, size, width FROM items ORDER BY path").to_pylist()
        rerun = idx.add([tmp_path / "urls.parquet"], url_column="url", ray=mode)
        assert (rerun.unchanged, rerun.embedded, rerun.previously_failed) == (len(listed) - 1, 0, 1)
    assert results[None] == results["auto"]
    assert [row["path"] for row in results["auto"]] == sorted(listed[:-1])
    assert {row["modality"] for row in results["auto"]} == {"image", "text"}


def test_a_bad_ray_address_is_one_line(tmp_path: Path, photos: Path) -> None:
    done = run_cli("index", str(photos), "--index", str(tmp_path / "index"), "--ray", "127.0.0.1:9")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "127.0.0.1:9" in done.stderr, done.stderr
    assert not (tmp_path / "index").exists()


def test_resume_adopts_complete_files_and_hides_the_rest(tmp_path: Path) -> None:
    from mmsearch.ingest.discover import FoundFile
    from mmsearch.store.schema import items_table
    from mmsearch.store.shard import SHARDS_DIR, seal

    folder = tmp_path / "job"
    (folder / SHARDS_DIR).mkdir(parents=True)
    files = {p: FoundFile(p, "text", 10, 5_000_000) for p in ("/a.txt", "/b.txt", "/c.txt")}

    def rows(start: int, spec: list[tuple[str, int]]) -> list[dict]:
        return [{"id": start + n, "path": p, "size": 10, "mtime": 5000, "pieces": k} for n, (p, k) in enumerate(spec)]

    vectors = np.eye(4, dtype=np.float32)
    first = seal(
        folder, "seg-a", "flat", vectors[:3], items_table(rows(100, [("/a.txt", 2), ("/a.txt", 2), ("/b.txt", 2)]))
    )
    staging.write_sidecar(folder, first)
    stale = seal(folder, "seg-b", "flat", vectors[:1], items_table(rows(103, [("/gone.txt", 1)])))
    staging.write_sidecar(folder, stale)
    seal(folder, "seg-c", "flat", vectors[:1], items_table(rows(104, [("/b.txt", 2)])))  # killed before its sidecar

    found = staging.sealed(folder)
    assert sorted(info.name for info in found) == ["seg-a", "seg-b"]
    assert sorted(p.name for p in (folder / SHARDS_DIR).iterdir()) == sorted(
        f"{name}{ext}" for name in ("seg-a", "seg-b") for ext in (".faiss", ".parquet", ".json")
    )
    resumed = staging.resume(folder, found, files)
    assert resumed.files == {"/a.txt"}  # /b.txt lost its second piece, /gone.txt is not planned
    assert [info.name for info in resumed.segments] == ["seg-a"]
    assert resumed.hidden == [102] and resumed.next_id == 104
