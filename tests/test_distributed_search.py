"""Search over Ray actors (local runtime, 2 CPUs, 3 actors) returns exactly what a local
search returns: plain, filtered, per modality, batched, after deletions, after a new
generation is committed, and for a text query on a model index."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from mmsearch import Index
from mmsearch.distributed import placement
from mmsearch.errors import FilterError, UserInputError
from mmsearch.store.manifest import ShardInfo

DIM = 24
ACTORS = 3


def unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def same(a: list, b: list) -> None:
    """Identical ids, paths and scores, hit by hit."""
    assert [[(h.id, h.path) for h in hits] for hits in a] == [[(h.id, h.path) for h in hits] for hits in b]
    scores_a = np.array([h.score for hits in a for h in hits])
    scores_b = np.array([h.score for hits in b for h in hits])
    np.testing.assert_array_equal(scores_a, scores_b)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory, ray_runtime):
    """A local Index and a RayIndex over the same folder: 8 shards, two modalities, an IVF shard."""
    from mmsearch.distributed.search import RayIndex

    path = tmp_path_factory.mktemp("dist") / "index"
    local = Index.create(path, dim=DIM, shard_size=60)
    local.add_vectors(unit(300, 1), [{"path": f"img/{i}", "width": i % 50} for i in range(300)])
    local.add_vectors(unit(120, 2), [{"path": f"txt/{i}", "width": i} for i in range(120)], modality="text")
    assert len(local.manifest.shards) >= 7
    remote = RayIndex.open(path, actors=ACTORS)
    yield local, remote
    remote.close()


def test_shards_are_spread_over_the_actors(indexes) -> None:
    local, remote = indexes
    loads = remote.info()["ray"]
    assert len(loads) == ACTORS and all(load["shards"] >= 2 for load in loads)
    assert sum(load["rows"] for load in loads) == 420
    assert remote.info_counts() == local.info_counts() == {"image": 300, "text": 120}


def test_same_results_as_local_search(indexes) -> None:
    local, remote = indexes
    queries = unit(6, 3)
    for options in (
        {},
        {"k": 1},
        {"k": 500},  # more than the index holds: everything, in the same order
        {"modality": "text"},
        {"where": "width < 7"},  # selective: scored exactly on each actor
        {"where": "width >= 3", "modality": "image"},  # broad: over-fetch path
        {"min_score": 0.2},
    ):
        same(remote.search_batch(queries, **options), local.search_batch(queries, **options))
    same([remote.search(vector=queries[0], k=15)], [local.search(vector=queries[0], k=15)])
    ids = [h.id for h in local.search(vector=queries[1], k=5)]
    assert remote.items(ids) == local.items(ids)
    np.testing.assert_array_equal(remote.vectors(ids[::-1]), local.vectors(ids[::-1]))


def test_deletions_and_new_generations_reach_every_actor(indexes) -> None:
    local, remote = indexes
    queries = unit(4, 4)
    before = local.search_batch(queries, k=10)
    removed = [h.id for hits in before for h in hits[:3]]
    local.remove_ids(removed)
    after = remote.search_batch(queries, k=10)
    assert not {h.id for hits in after for h in hits} & set(removed)
    same(after, local.search_batch(queries, k=10))
    local.add_vectors(queries * 2, [{"path": f"new/{i}", "width": 1} for i in range(4)])  # a fresh segment
    found = remote.search_batch(queries, k=3, where="width = 1")
    assert [hits[0].path for hits in found] == [f"new/{i}" for i in range(4)]
    same(found, local.search_batch(queries, k=3, where="width = 1"))
    assert remote.info()["vectors"] == local.info()["vectors"] == 420 - len(set(removed)) + 4
    with pytest.raises(UserInputError, match="no live item"):
        remote.vectors(removed[:1])


def test_a_restarted_actor_is_placed_again(indexes, ray_runtime) -> None:
    local, remote = indexes
    ray_runtime.kill(remote.actors[0], no_restart=False)  # as if its process died
    queries = unit(3, 12)
    same(remote.search_batch(queries, k=10, where="width > 5"), local.search_batch(queries, k=10, where="width > 5"))
    assert ray_runtime.get(remote.actors[0].ready.remote())["pid"] != remote.hosts[0]["pid"]  # it did restart


def test_errors_come_back_in_one_line(indexes) -> None:
    _, remote = indexes
    with pytest.raises(FilterError, match="invalid --where filter") as caught:
        remote.search(vector=unit(1, 5)[0], where="no_such_column > 1")
    assert "\n" not in str(caught.value)
    with pytest.raises(UserInputError, match="SQL is not available"):
        remote.sql("SELECT 1")


def test_a_filter_cannot_lift_the_modality_on_the_actors(indexes) -> None:
    local, remote = indexes
    queries = unit(2, 13)
    for where in ("1=1) OR (1=1", "true /*", "length(repeat('a', 1000000000)) > 0"):
        with pytest.raises(FilterError, match=r"^invalid --where filter: [^\n]*$"):
            remote.search_batch(queries, k=5, modality="text", where=where)
    found = remote.search_batch(queries, k=5, modality="text", where="width >= 0 --")
    assert {h.modality for hits in found for h in hits} == {"text"}
    same(found, local.search_batch(queries, k=5, modality="text", where="width >= 0 --"))


def test_text_query_on_a_model_index(encoder, ray_runtime, tmp_path: Path) -> None:
    from mmsearch.distributed.search import RayIndex

    local = Index.create(tmp_path / "model", encoder=encoder, shard_size=25)
    local.add_vectors(unit(100, 6, encoder.dim), [{"path": f"p{i}.png"} for i in range(100)])
    with RayIndex.open(tmp_path / "model", encoder=encoder, actors=2) as remote:
        same([remote.search("a red circle", k=8)], [local.search("a red circle", k=8)])


def test_placement_is_balanced_and_sticky() -> None:
    def shard(name: str, rows: int) -> ShardInfo:
        return ShardInfo(name, rows, "Flat", "", "")

    first = placement.assign([shard("a", 100), shard("b", 90), shard("c", 20), shard("d", 10)], {}, 2)
    assert first == {"a": 0, "b": 1, "c": 1, "d": 0}
    merged = placement.assign([shard("a", 100), shard("b", 90), shard("e", 30)], first, 2)  # c+d merged into e
    assert merged == {"a": 0, "b": 1, "e": 1}
    assert placement.groups(merged, 3) == [["a"], ["b", "e"], []]
    assert placement.assign([shard("a", 1)], {"a": 5}, 2) == {"a": 0}  # fewer actors than before


def test_cli_serve_on_ray_answers_like_local_search(indexes, ray_runtime, tmp_path: Path) -> None:
    """`mmsearch serve --ray auto` joins the cluster named by RAY_ADDRESS; HTTP answers equal local search."""
    import httpx

    from mmsearch.serve.server import wait_ready

    local, _ = indexes
    env = {**os.environ, "RAY_ADDRESS": ray_runtime.get_runtime_context().gcs_address}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    command = ["serve", "--index", str(local.path), "--port", "0", "--ray", "auto", "--ray-actors", "2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "mmsearch.cli", *command], stderr=subprocess.PIPE, text=True, env=env
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    try:
        assert lines.get(timeout=120).startswith("mmsearch: placing the shards")
        url = lines.get(timeout=120).split(" at ", 1)[1].split()[0]
        wait_ready(url, alive=lambda: process.poll() is None)
        query = unit(1, 8)[0]
        for body in ({"k": 7}, {"k": 5, "where": "width > 20", "modality": "text"}):
            answer = httpx.post(f"{url}/api/search", json={"vector": query.tolist(), **body}, timeout=60).json()
            expected = local.search(vector=query, **body)
            assert [(r["id"], r["path"]) for r in answer["results"]] == [(h.id, h.path) for h in expected]
            assert [r["score"] for r in answer["results"]] == [round(h.score, 6) for h in expected]
        info = httpx.get(f"{url}/api/info", timeout=60).json()
        assert len(info["ray"]) == 2 and info["vectors"] == local.info()["vectors"]
        item = httpx.get(f"{url}/api/items/{expected[0].id}", timeout=60).json()
        assert item["path"] == expected[0].path
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0


def test_cli_serve_refuses_sql_with_ray(tmp_path: Path) -> None:
    done = run_cli("serve", "--index", str(tmp_path), "--ray", "auto", "--allow-sql")
    assert done.returncode == 2 and "--allow-sql and --ray" in done.stderr
