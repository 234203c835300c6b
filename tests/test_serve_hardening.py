"""Hardening of `mmsearch serve` through real servers on loopback ports: only the operator's
re-rankers, only ingested files served, thumbnails of vanished files refused, SQL results of
every DuckDB type as JSON, out-of-range ids and bad options refused with one line.

The world and index come from test_serve's module fixture (built once for this module)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_serve import built, one_line_error, run_cli, run_light, start

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


# -- A4: only files the ingest read are served -----------------------------------------------------


def test_rows_added_as_vectors_never_serve_a_file(tmp_path: Path) -> None:
    """A row that claims /etc/passwd with its exact size and mtime (and even a content hash) is
    not an indexed file: neither its media nor its thumbnail is served."""
    secret = Path("/etc/passwd")
    info = secret.stat()
    claimed = {
        "path": str(secret),
        "size": info.st_size,
        "mtime": datetime.fromtimestamp(info.st_mtime, timezone.utc),
        "format": "png",
        "content_hash": "0" * 64,
    }
    index = Index.create(tmp_path / "vectors", dim=4)
    (item,) = index.add_vectors(np.ones((1, 4), np.float32), [claimed], modality="image")
    row = index.items([item])[item]
    assert row["content_hash"] is None and row["size"] == info.st_size
    running = start(index)
    try:
        with httpx.Client(base_url=running.url, timeout=60) as http:
            for route in ("media", "thumbs"):
                answer = http.get(f"/api/{route}/{item}")
                assert "no indexed file" in one_line_error(answer, 404) and "root:" not in answer.text
    finally:
        running.stop()


# -- B7: no thumbnail of a file that is gone ------------------------------------------------------


def test_a_deleted_files_thumbnail_is_not_served_from_the_cache(client: httpx.Client, built: dict) -> None:
    path = built["world"] / "mutable" / "swap.png"
    found = client.get("/api/search", params={"where": f"path = '{path}'", "q": "grey", "k": 1}).json()["results"]
    (hit,) = found
    assert client.get(hit["thumb_url"]).status_code == 200  # made and cached
    cached = list((built["index"].parent / "thumbs").rglob(f"{hit['content_hash'][:64]}*"))
    path.unlink()
    assert "no longer there" in one_line_error(client.get(hit["media_url"]), 404)
    assert "no longer there" in one_line_error(client.get(hit["thumb_url"]), 404)
    assert cached and all(p.exists() for p in cached)  # refused although the cache still holds it


# -- C2: every SQL result type as JSON, the same as the CLI's ---------------------------------------


SQL_ANSWERS = [
    ("SELECT 1.5::DECIMAL(10,2) AS v", [1.5]),
    ("SELECT 3::DECIMAL(10,2) AS v", [3]),
    ("SELECT 1::HUGEINT AS v", [1]),
    ("SELECT (2::HUGEINT ** 70)::HUGEINT AS v", [str(2**70)]),  # beyond JavaScript's exact integers: a string
    ("SELECT '12:00'::TIME AS v", ["12:00:00"]),
    ("SELECT ['ab'::BLOB] AS v", [["YWI="]]),  # base64
    ("SELECT 'nan'::DOUBLE AS v", [None]),
    ("SELECT 'inf'::DOUBLE AS v", [None]),
    ("SELECT DATE '2024-02-03' AS v", ["2024-02-03"]),
]


@pytest.mark.parametrize(("statement", "row"), SQL_ANSWERS)
def test_sql_types_answer_as_json(client: httpx.Client, statement: str, row: list) -> None:
    answer = client.post("/api/sql", json={"sql": statement})
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"] == [row]


def test_sql_aggregates_and_summaries_answer(client: httpx.Client, index: Index) -> None:
    total = client.post("/api/sql", json={"sql": "SELECT sum(size) AS n FROM items"})
    assert total.status_code == 200 and total.json()["rows"] == [
        [index.sql("SELECT sum(size) FROM items")[0][0].as_py()]
    ]
    assert isinstance(total.json()["rows"][0][0], int)
    summary = client.post("/api/sql", json={"sql": "SUMMARIZE items"})
    assert summary.status_code == 200, summary.text
    names = [row[0] for row in summary.json()["rows"]]
    assert "path" in names and "size" in names


def test_the_cli_answers_sql_alike(client: httpx.Client, built: dict) -> None:
    statement = "SELECT sum(size) AS s, 1.5::DECIMAL(10,2) AS d, '12:00'::TIME AS t, 'ab'::BLOB AS b FROM items"
    cli = run_cli("sql", statement, "--json", "--index", str(built["index"]))
    assert cli.returncode == 0, cli.stderr
    http = client.post("/api/sql", json={"sql": statement}).json()
    assert json.loads(cli.stdout) == [dict(zip(http["columns"], row)) for row in http["rows"]]


# -- C3: item ids outside int64 --------------------------------------------------------------------


@pytest.mark.parametrize("like_id", [2**64, 2**63, -(2**63) - 1, -1])
def test_like_id_outside_int64_is_a_clear_422(client: httpx.Client, like_id: int) -> None:
    answers = [
        client.get("/api/search", params={"like_id": str(like_id)}),
        client.post("/api/search", json={"like_id": like_id}),
        client.post("/api/search/batch", json={"queries": [{"q": "red"}, {"like_id": like_id}]}),
        client.post("/api/search", files={"file": ("", b"")}, data={"like_id": str(like_id)}),
    ]
    for answer in answers:
        message = one_line_error(answer, 422)
        assert "like_id" in message and ("less than or equal to 9223372036854775807" in message or "greater" in message)


def test_the_largest_item_id_is_merely_not_found(client: httpx.Client) -> None:
    assert "no item with id" in one_line_error(client.get("/api/search", params={"like_id": 2**63 - 1}), 404)


# -- C5: bad option values are usage errors -----------------------------------------------------------


@pytest.mark.parametrize("megabytes", ["nan", "inf", "-1", "0"])
def test_a_bad_upload_limit_is_a_usage_error(tmp_path: Path, megabytes: str) -> None:
    result, heavy = run_light(tmp_path, "serve", "--max-upload-mb", megabytes, "--index", str(tmp_path / "none"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and heavy == []  # refused at parse time
    assert result.stderr.strip() == (
        f"mmsearch: error: Invalid value for '--max-upload-mb': must be a positive number, not {float(megabytes):g} "
        "(see mmsearch serve --help)"
    )


# -- smaller: one clear sentence for each mistake ------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "2", "-1.5", "high"])
def test_a_bad_min_score_is_one_sentence(client: httpx.Client, value: str) -> None:
    expected = f"min_score: min_score must be a cosine between -1 and 1, or auto, not '{value}'"
    assert one_line_error(client.get("/api/search", params={"q": "red", "min_score": value}), 422) == expected
    posted = one_line_error(client.post("/api/search", json={"q": "red", "min_score": value}), 422)
    assert posted == expected
    assert client.get("/api/search", params={"q": "red", "min_score": "0.1"}).status_code == 200
    assert client.post("/api/search", json={"q": "red", "min_score": "auto"}).status_code == 200


def test_a_weight_that_is_not_finite_is_named(client: httpx.Client, built: dict) -> None:
    image = (built["world"] / "mutable" / "keep.png").read_bytes()
    for weight in ("nan", "inf"):
        answer = client.post("/api/search", files={"file": ("a.png", image)}, data={"weight": weight})
        assert one_line_error(answer, 400) == f"each weight must be a finite number, not {weight}"


def test_batch_takes_json_as_search_does(client: httpx.Client) -> None:
    body = json.dumps({"queries": [{"q": "red"}]}).encode()
    for headers in ({}, {"Content-Type": "application/json"}):
        assert client.post("/api/search", content=json.dumps({"q": "red"}).encode(), headers=headers).status_code == 200
        assert client.post("/api/search/batch", content=body, headers=headers).status_code == 200
    plain = {"Content-Type": "text/plain"}
    one_line_error(client.post("/api/search", content=body, headers=plain), 415)
    one_line_error(client.post("/api/search/batch", content=body, headers=plain), 415)
    schema = client.get("/openapi.json").json()
    batch = schema["paths"]["/api/search/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["$ref"].rsplit("/", 1)[1] in schema["components"]["schemas"]
    reranker = schema["components"]["schemas"]["SearchBody"]["properties"]["reranker"]["description"]
    assert "serve --reranker" in reranker  # the allow-list is documented where clients look


def test_a_filter_error_in_a_batch_names_its_query(client: httpx.Client) -> None:
    queries = [{"q": "red"}, {"q": "blue", "where": "no_such_column = 1"}]
    message = one_line_error(client.post("/api/search/batch", json={"queries": queries}), 400)
    assert message.startswith("query 2: ") and "no_such_column" in message


def test_health_fails_once_the_index_is_moved_away(built: dict, tmp_path: Path) -> None:
    folder = tmp_path / "index"
    shutil.copytree(built["index"], folder)
    running = start(Index.open(folder))
    try:
        with httpx.Client(base_url=running.url, timeout=60) as http:
            assert http.get("/api/healthz").json()["status"] == "ok"
            folder.rename(tmp_path / "moved")
            assert "the index is not readable" in one_line_error(http.get("/api/healthz"), 503)
    finally:
        running.stop()


def test_a_query_vector_is_judged_by_its_direction_not_its_scale(client: httpx.Client, index: Index) -> None:
    dim = index.manifest.dim
    unit = index.vectors([0])[0]
    expected = client.post("/api/search", json={"vector": unit.tolist(), "k": 3}).json()["results"]
    tiny = client.post("/api/search", json={"vector": (unit * 1e-30).tolist(), "k": 3})  # its norm underflows float32
    assert tiny.status_code == 200 and [h["id"] for h in tiny.json()["results"]] == [h["id"] for h in expected]
    huge = one_line_error(client.post("/api/search", json={"vector": [1e39] * dim}), 400)
    assert "beyond float32's range" in huge and "NaN or Inf samples" not in huge
