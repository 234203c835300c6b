"""Memory budgets for the ``auto`` recipe (``--max-memory``): parsing, the codes shards are
sealed with, compaction under a new budget, and the real CLI (vectors only, no torch but
in the CLI test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from mmsearch import Index
from mmsearch.errors import UserInputError
from mmsearch.sizes import parse_size
from mmsearch.store import recipes

DIM = 64  # bytes per vector: Flat 256, SQfp16 128, SQ8 64, SQ6 48, RaBitQ4 52, RaBitQ2 36


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rows(n: int) -> list[dict]:
    return [{"path": f"item-{i}"} for i in range(n)]


@pytest.mark.parametrize(
    ("text", "size"),
    [("8G", 8 << 30), ("8GB", 8 << 30), ("8GiB", 8 << 30), ("512m", 512 << 20), ("1.5K", 1536), ("1000", 1000)],
)
def test_memory_sizes_parse_in_powers_of_1024(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "8X", "G", "1.5.5G", "8IB", "0.1"])
def test_bad_memory_sizes_are_one_line_user_errors(text: str) -> None:
    with pytest.raises(UserInputError, match="invalid memory size"):
        parse_size(text)


def test_a_budget_needs_the_auto_recipe(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="auto recipe only"):
        Index.create(tmp_path / "idx", dim=DIM, recipe="Flat", max_memory=1 << 20)
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_shards_take_the_most_accurate_code_within_the_budget(tmp_path: Path) -> None:
    n = 300
    index = Index.create(tmp_path / "idx", dim=DIM, max_memory=n * 100)  # 100 B/vector: SQfp16 (128) does not fit
    ids = index.add_vectors(unit(n), rows(n))
    (shard,) = index.manifest.shards
    assert shard.recipe == "SQ8"
    assert recipes.bytes_per_vector(shard.recipe, DIM) * n <= index.manifest.max_memory
    assert index.info()["max_memory_bytes"] == n * 100
    hits = index.search(vector=unit(1, seed=0)[0], k=3)
    assert hits[0].id == ids[0] and hits[0].score > 0.99  # SQ8 keeps the nearest neighbour first


def test_compact_reseals_every_shard_under_a_new_budget(tmp_path: Path) -> None:
    index = Index.create(tmp_path / "idx", dim=DIM, shard_size=100)
    ids = index.add_vectors(unit(250), rows(250))
    assert {s.recipe for s in index.manifest.shards} == {"Flat"}
    index.remove_ids(ids[:50])
    # 200 live rows under 10,000 bytes: 50 B/vector leaves SQ6 (48); counting the 50 removed rows
    # (40 B/vector) would leave only RaBitQ2.
    assert index.compact(max_memory=10_000) == 50
    assert {s.recipe for s in index.manifest.shards} == {"SQ6"}
    assert sum(s.rows for s in index.manifest.shards) == 200
    assert index.manifest.max_memory == 10_000
    assert index.search(vector=unit(60)[55], k=1)[0].id == ids[55]
    with pytest.raises(UserInputError, match="at least 1 byte"):
        index.compact(max_memory=0)


def test_cli_index_records_a_budget_the_shards_honour(tmp_path: Path, photos: Path, random_checkpoint: str) -> None:
    index = tmp_path / "idx"
    bad = run_cli("index", str(photos), "--index", str(index), "--max-memory", "8 gigs")
    assert bad.returncode != 0 and "invalid memory size '8 gigs'" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not index.exists()

    # 12 photos of the demo architecture (dim 128: Flat 512 B, SQfp16 256, SQ8 128) in 2,400 bytes: SQ8
    made = run_cli(
        "index", str(photos), "--index", str(index), "--model", random_checkpoint, "--max-memory", "2400", "--json"
    )
    assert made.returncode == 0, made.stderr
    info = json.loads(run_cli("info", "--index", str(index), "--json").stdout)
    assert info["max_memory_bytes"] == 2400 and list(info["shard_recipes"]) == ["SQ8"]
    assert len(run_cli("query", "red", "--index", str(index), "-k", "3", "-f").stdout.splitlines()) == 3

    again = run_cli("index", str(photos), "--index", str(index), "--max-memory", "1K")
    assert again.returncode != 0 and "compact --max-memory" in again.stderr

    for hostile in ("0", "-5"):
        refused = run_cli("compact", "--index", str(index), "--shard-size", hostile)
        assert refused.returncode != 0 and "shard size must be at least 1" in refused.stderr
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    compacted = run_cli("compact", "--index", str(index), "--max-memory", "1.2K", "--shard-size", "5", "--json")
    assert compacted.returncode == 0, compacted.stderr
    info = json.loads(run_cli("info", "--index", str(index), "--json").stdout)
    assert info["max_memory_bytes"] == 1228 and list(info["shard_recipes"]) == ["SQ6"]  # 102 B/vector: SQ6 is 96
    assert info["shards"] == 3 and info["shard_size"] == 5 and info["vectors"] == 12
