"""Hardening of `mmsearch serve` through real servers on loopback ports: only the operator's
re-rankers, only ingested files served, thumbnails of vanished files refused, SQL results of
every DuckDB type as JSON, out-of-range ids and bad options refused with one line.

The world and index come from test_serve's module fixture (built once for this module)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from test_serve import built, one_line_error, run_cli, start

from mmsearch import Index

__all__ = ["built"]  # a fixture, used by name


@pytest.fixture(scope="module")
def index(built: dict) -> Index:
    return Index.open(built["index"])


@pytest.fixture(scope="module")
def client(index: Index) -> Iterator[httpx.Client]:
    """A server offering the index's default re-ranker and one more, with SQL."""
    running = start(index, rerankers=("demo:operator",), allow_sql=True)
    with httpx.Client(base_url=running.url, timeout=60) as http:
        yield http
    running.stop()


# -- A1/A2: only the operator's re-rankers ---------------------------------------------------------


def test_clients_name_only_the_operators_rerankers(client: httpx.Client, index: Index) -> None:
    assert client.get("/api/info").json()["server"]["rerankers"] == ["demo", "demo:operator"]
    for spec in ("demo", "demo:operator"):
        answer = client.get("/api/search", params={"q": "a red circle", "k": 3, "reranker": spec})
        assert answer.status_code == 200 and all("match_prob" in hit for hit in answer.json()["results"])
    refusals = set()
    for spec in ("demo:1", "demo:2", "blip:/etc/passwd", "blip:/nonexistent", "blip:/tmp", "nope"):
        got = one_line_error(client.get("/api/search", params={"q": "a red circle", "k": 3, "reranker": spec}), 400)
        assert "offered: demo, demo:operator" in got
        refusals.add(got.replace(repr(spec), "SPEC"))
    post = client.post("/api/search", json={"q": "a red circle", "reranker": "demo:3"})
    queries = [{"q": "red"}, {"q": "a red circle", "reranker": "demo:4"}]
    batch = client.post("/api/search/batch", json={"queries": queries})
    assert "offered" in one_line_error(post, 400) and one_line_error(batch, 400).startswith("query 2: ")
    assert len(refusals) == 1  # the same answer for any path: nothing learnt about the server's disk
    assert set(index._rerankers) == {"demo", "demo:operator"}  # no re-ranker loaded per request


def test_serve_refuses_a_bad_reranker_at_startup(built: dict) -> None:
    result = run_cli("serve", "--index", str(built["index"]), "--port", "0", "--reranker", "nope:x")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown re-ranker 'nope:x'" in lines[0]
