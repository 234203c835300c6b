"""Storage building blocks: atomic writes and manifest versioning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmsearch.errors import IndexFormatError, IndexNotFoundError
from mmsearch.store import manifest
from mmsearch.store.atomic import atomic_write, atomic_write_bytes


def test_atomic_write_keeps_old_content_when_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "file"
    atomic_write_bytes(target, b"old")

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_manifest_round_trip_and_generation(tmp_path: Path) -> None:
    m = manifest.Manifest(model="demo", space_id="s", dim=4, recipe="auto", shard_size=10)
    manifest.commit(tmp_path, m)
    manifest.commit(tmp_path, m)
    loaded = manifest.load(tmp_path)
    assert loaded.generation == 2 and loaded.model == "demo"


def test_manifest_from_the_future_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(IndexFormatError, match="upgrade mmsearch"):
        manifest.load(tmp_path)


def test_missing_index(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="no index"):
        manifest.load(tmp_path / "nothing")


def test_deletions_are_rewritten_when_the_set_changes_at_the_same_size(tmp_path: Path) -> None:
    m = manifest.Manifest(model=None, space_id="s", dim=4, recipe="auto", shard_size=10)
    (tmp_path / "shards").mkdir()
    m.tombstones = np.array([1, 2, 3])
    manifest.commit(tmp_path, m)
    m.tombstones = np.array([4, 5, 6])  # three rows become visible, three others are hidden
    manifest.commit(tmp_path, m)
    assert manifest.load(tmp_path).tombstones.tolist() == [4, 5, 6]
    m.tombstones = np.array([4, 5, 6])
    name = m.deletions
    manifest.commit(tmp_path, m)
    assert m.deletions == name  # unchanged: not written again


def test_shards_without_a_manifest_are_a_damaged_index_never_built_over(tmp_path: Path) -> None:
    from conftest import run_cli
    from mmsearch import Index

    path = tmp_path / "idx"
    Index.create(path, dim=4).add_vectors(np.eye(4, dtype=np.float32), [{"path": str(i)} for i in range(4)])
    manifest.manifest_path(path).unlink()
    before = {p.name: p.read_bytes() for p in (path / manifest.SHARDS_DIR).iterdir()}
    for attempt in (lambda: Index.create(path, dim=4), lambda: Index.open(path), lambda: Index.open_or_create(path)):
        with pytest.raises(IndexFormatError, match=r"holds shard files but no manifest\.json"):
            attempt()
    done = run_cli("info", "--index", str(path))
    assert done.returncode != 0 and "holds shard files but no manifest.json" in done.stderr
    assert "Traceback" not in done.stderr
    assert {p.name: p.read_bytes() for p in (path / manifest.SHARDS_DIR).iterdir()} == before


def test_a_manifest_that_is_not_a_json_object_is_called_damaged(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(IndexFormatError, match="damaged: not a JSON object"):
        manifest.load(tmp_path)


SHARD = {"name": "000001", "rows": 3, "recipe": "Flat", "faiss_sha256": "f", "parquet_sha256": "p"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dim": "x"}, 'field dim is a string ("x"), expected an integer'),
        ({"dim": True}, "field dim is true/false (true), expected an integer"),
        ({"shards": 5}, "field shards is an integer (5), expected a list"),
        ({"shards": [{k: v for k, v in SHARD.items() if k != "rows"}]}, "field shards[0].rows is missing"),
        ({"shards": [SHARD, "x"]}, 'field shards[1] is a string ("x"), expected an object'),
        ({"shards": [SHARD | {"params": {"nprobe": "8"}}]}, "field shards[0].params is an object"),
        ({"model": 3}, "field model is an integer (3), expected a string or null"),
        ({"retired": []}, "field retired is a list ([]), expected an object"),
        ({"space_id": None}, "field space_id is null, expected a string"),
        ({"pending_tombstones": ["a"], "format_version": 2}, "field pending_tombstones is not a list of integers"),
    ],
)
def test_a_manifest_field_of_the_wrong_type_is_damage_named_in_one_line(
    tmp_path: Path, change: dict, message: str
) -> None:
    good = manifest.Manifest(model="demo", space_id="s", dim=4, recipe="auto", shard_size=10)
    data = json.loads(good.to_json()) | {"shards": [SHARD]} | change
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexFormatError) as raised:
        manifest.load(tmp_path)
    assert str(raised.value).startswith(f"{tmp_path / 'manifest.json'} is damaged: {message}")
    assert "\n" not in str(raised.value)


def test_info_on_a_manifest_with_a_wrongly_typed_field_is_one_line(tmp_path: Path) -> None:
    from conftest import run_cli

    good = manifest.Manifest(model=None, space_id="s", dim=4, recipe="auto", shard_size=10)
    (tmp_path / "manifest.json").write_text(json.dumps(json.loads(good.to_json()) | {"dim": "x"}))
    done = run_cli("info", "--index", str(tmp_path))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f'mmsearch: error: {tmp_path / "manifest.json"} is damaged: field dim is a string ("x"), expected an integer'
    ]
