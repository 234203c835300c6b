"""`mmsearch serve` through real uvicorn servers on loopback ports: searches of every kind,
uploads, paging, filters, bad input, the token, media access control, the SQL sandbox over
HTTP, reads while `mmsearch index` and `mmsearch compact` write, and `query --server`.

One small world is generated and indexed with the demo model once for the module; servers
run in threads over their own `Index` objects (one encoder each), except the end-to-end
CLI test, which starts `mmsearch serve` as a process."""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import soundfile
from PIL import Image

from conftest import write_image
from mmsearch import Index, world
from mmsearch.cli import main
from mmsearch.errors import UserInputError
from mmsearch.serve import auth, media
from mmsearch.serve.app import create_app
from mmsearch.serve.encoding import EncoderQueue
from mmsearch.serve.server import ServerThread, wait_ready
from mmsearch.serve.settings import ServeSettings, check_bind
from mmsearch.serve.thumbnails import Thumbnails

TOKEN = "s3cret-token-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SCENES = 24
SEED = 34  # a world with a single red circle and a single blue circle among its scenes


# -- fixtures ---------------------------------------------------------------------------------


def build_world(root: Path) -> Path:
    """24 images, 12 sounds, their captions (indexed as texts), one 8 s recording with
    sounds at 2 s and 6 s, and a folder of images that tests may alter."""
    folder = root / "world"
    world.generate_world(folder, SCENES, SEED, sounds=True)
    rng = np.random.default_rng(SEED)
    scenes = [world.sample_scene(rng) for _ in range(2)]
    soundfile.write(folder / "long.wav", world.compose_recording([None, scenes[0], None, scenes[1]]), world.SAMPLE_RATE)
    for seed, name in enumerate(("swap", "edit", "keep")):
        write_image(folder / "mutable" / f"{name}.png", (128, 128, 128), (128, 128), seed=seed)
    return folder


def truth(folder: Path) -> dict[str, dict]:
    """path -> the scene's attributes, from captions.csv."""
    with open(folder / "captions.csv", newline="", encoding="utf-8") as handle:
        return {str(folder / row["file"]): row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("serve")
    folder = build_world(root)
    index = Index.create(root / "index", model="demo")
    index.add([folder], workers=0)
    return {"root": root, "world": folder, "index": root / "index", "truth": truth(folder)}


def start(index: Index, **settings) -> ServerThread:
    settings.setdefault("thumb_cache", index.path.parent / "thumbs")
    return ServerThread(create_app(index, ServeSettings(**settings))).start().wait_ready()


@pytest.fixture(scope="module")
def server(built: dict) -> Iterator[str]:
    """A token server with the SQL endpoint: the one most tests talk to."""
    running = start(Index.open(built["index"]), token=TOKEN, allow_sql=True)
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def open_server(built: dict) -> Iterator[str]:
    """No token, no SQL, tight upload limits."""
    running = start(Index.open(built["index"]), max_upload_bytes=300_000, max_audio_s=5.0, max_upload_pixels=4_000_000)
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=BEARER, timeout=60) as client:
        yield client


def one_line_error(response: httpx.Response, status: int | tuple[int, ...]) -> str:
    """The response is a 4xx with ``{"error": "<one line>"}`` and nothing else."""
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"]
    assert "Traceback" not in response.text
    return body["error"]


def attributes(built: dict, hit: dict) -> tuple[str, str] | None:
    row = built["truth"].get(hit["path"])
    return (row["colour"], row["shape"]) if row else None


def same_hits(a: list[dict], b: list[dict]) -> bool:
    """The same items in the same order with the same fields; scores equal to float32 noise
    (a query embedded or searched in another batch may differ in the last bits)."""
    if [h["id"] for h in a] != [h["id"] for h in b]:
        return False
    strip = [{k: v for k, v in h.items() if k != "score"} for h in a + b]
    scores_close = all(abs(x["score"] - y["score"]) < 1e-5 for x, y in zip(a, b))
    return strip[: len(a)] == strip[len(a) :] and scores_close


# -- searching ---------------------------------------------------------------------------------


def test_text_search_ranks_matching_images_first_with_links(api: httpx.Client, built: dict) -> None:
    answer = api.get("/api/search", params={"q": "a red circle", "k": 5}).json()
    hits = answer["results"]
    assert answer["modality"] == "image" and answer["k"] == 5 and answer["offset"] == 0
    assert answer["took_ms"] > 0 and answer["generation"] >= 1
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert attributes(built, hits[0]) == ("red", "circle")
    for hit in hits:
        signature = auth.sign(TOKEN, hit["id"])
        assert hit["modality"] == "image" and hit["width"] == 128
        assert hit["media_url"] == f"/api/media/{hit['id']}?sig={signature}"
        assert hit["thumb_url"] == f"/api/thumbs/{hit['id']}?sig={signature}"


def test_answers_equal_the_library(api: httpx.Client, built: dict) -> None:
    index = Index.open(built["index"])
    for query in ('"a red circle" - "red" + "blue"', "two green squares", "a star"):
        local = index.search(query=query, k=8)
        by_get = api.get("/api/search", params={"q": query, "k": 8}).json()["results"]
        by_post = api.post("/api/search", json={"q": query, "k": 8}).json()["results"]
        assert same_hits(by_get, by_post)
        assert [h["id"] for h in by_get] == [h.id for h in local]
        assert all(abs(h["score"] - hit.score) < 1e-5 for h, hit in zip(by_get, local))
    blue = api.get("/api/search", params={"q": '"a red circle" - "red" + "blue"', "k": 1}).json()["results"][0]
    assert attributes(built, blue) == ("blue", "circle")


def test_every_modality_answers_and_audio_hits_carry_their_offset(api: httpx.Client, built: dict) -> None:
    texts = api.get("/api/search", params={"q": "a red circle", "modality": "text", "k": 3}).json()
    assert texts["modality"] == "text" and "red" in texts["results"][0]["text"]
    assert all(h["thumb_url"] is None and h["modality"] == "text" for h in texts["results"])
    sounds = api.get("/api/search", params={"q": "a sound", "modality": "audio", "k": 100}).json()["results"]
    long_windows = sorted(h["offset_s"] for h in sounds if h["path"].endswith("long.wav"))
    assert long_windows == [0.0, 2.0, 4.0, 6.0]
    later = api.get(
        "/api/search", params={"q": "a sound", "modality": "audio", "where": "offset_s > 0", "k": 10}
    ).json()["results"]
    assert later and all(h["offset_s"] > 0 and h["path"].endswith("long.wav") for h in later)


def test_upload_an_image_or_a_sound(api: httpx.Client, built: dict) -> None:
    image = built["world"] / "images" / "img_000003.png"
    answer = api.post("/api/search", files={"file": image.open("rb")}, data={"k": "3"}).json()
    assert answer["modality"] == "image"
    assert answer["results"][0]["path"] == str(image) and answer["results"][0]["score"] > 0.999

    sound = built["world"] / "sounds" / "snd_000002.wav"
    answer = api.post("/api/search", files={"file": ("x.bin", sound.read_bytes())}).json()  # the name is ignored
    assert answer["modality"] == "audio" and answer["results"][0]["path"] == str(sound)

    mixed = api.post(
        "/api/search",
        files=[("file", image.open("rb")), ("file", sound.open("rb"))],
        data={"weight": ["1", "0.5"], "q": "a red circle", "modality": "any", "k": "4"},
    )
    assert mixed.status_code == 200 and len(mixed.json()["results"]) == 4


def test_more_like_this_leaves_the_item_out(api: httpx.Client, built: dict) -> None:
    first = api.get("/api/search", params={"q": "a blue square", "k": 1}).json()["results"][0]
    similar = api.get("/api/search", params={"like_id": first["id"], "k": 5}).json()
    assert similar["modality"] == "image"  # the item's own modality
    assert first["id"] not in [h["id"] for h in similar["results"]] and len(similar["results"]) == 5
    vector = Index.open(built["index"]).vectors([first["id"]])[0]
    by_vector = api.post("/api/search", json={"vector": vector.tolist(), "k": 6, "modality": "image"}).json()
    assert by_vector["results"][0]["id"] == first["id"]
    assert [h["id"] for h in by_vector["results"][1:]] == [h["id"] for h in similar["results"]]


def test_batch_equals_single_queries(api: httpx.Client) -> None:
    queries = [
        {"q": "a red circle", "k": 3},
        {"q": "a yellow star", "k": 2, "modality": "text"},
        {"q": "a red circle", "k": 3, "where": "path LIKE '%img_00001%'"},
        {"like_id": 3, "k": 2},
        {"q": "two purple hearts", "k": 3, "offset": 2},
    ]
    batch = api.post("/api/search/batch", json={"queries": queries})
    assert batch.status_code == 200, batch.text
    answers = batch.json()["answers"]
    assert len(answers) == len(queries)
    for query, answer in zip(queries, answers):
        single = api.post("/api/search", json=query).json()
        assert same_hits(answer["results"], single["results"]) and answer["modality"] == single["modality"]


def test_pages_add_up_to_one_long_page(api: httpx.Client) -> None:
    whole = api.get("/api/search", params={"q": "a circle", "modality": "image", "k": 50}).json()
    assert len(whole["results"]) == SCENES + 3 and whole["next_offset"] is None  # 24 scenes + 3 mutable images
    pages, offset = [], 0
    while offset is not None:
        page = api.get("/api/search", params={"q": "a circle", "modality": "image", "k": 5, "offset": offset}).json()
        pages += page["results"]
        offset = page["next_offset"]
    assert [h["id"] for h in pages] == [h["id"] for h in whole["results"]]


def test_min_score_can_mean_nothing_relevant(api: httpx.Client) -> None:
    answer = api.get("/api/search", params={"q": "a red circle", "min_score": 0.999}).json()
    assert answer["results"] == [] and answer["next_offset"] is None


def test_items_and_thumbnails(api: httpx.Client, built: dict) -> None:
    hit = api.get("/api/search", params={"q": "a green heart", "k": 1}).json()["results"][0]
    item = api.get(f"/api/items/{hit['id']}").json()
    assert {k: v for k, v in item.items()} == {k: v for k, v in hit.items() if k != "score"}
    thumb = api.get(hit["thumb_url"], headers={"Authorization": ""})  # the signed link alone opens it
    assert thumb.status_code == 200 and thumb.headers["content-type"] in ("image/webp", "image/jpeg")
    with Image.open(io.BytesIO(thumb.content)) as picture:
        assert max(picture.size) <= 256
    sound = api.get("/api/search", params={"q": "a sound", "modality": "audio", "k": 1}).json()["results"][0]
    assert "only images and videos have thumbnails" in one_line_error(api.get(f"/api/thumbs/{sound['id']}"), 404)
    assert "no item with id" in one_line_error(api.get("/api/items/987654321"), 404)


def test_media_is_the_indexed_file_with_ranges(api: httpx.Client) -> None:
    hit = api.get("/api/search", params={"q": "a sound", "modality": "audio", "k": 1}).json()["results"][0]
    original = Path(hit["path"]).read_bytes()
    whole = api.get(hit["media_url"])
    assert whole.status_code == 200 and whole.content == original
    assert whole.headers["content-type"] == "audio/wav" and whole.headers["accept-ranges"] == "bytes"
    assert (
        "sandbox" in whole.headers["content-security-policy"] and whole.headers["x-content-type-options"] == "nosniff"
    )
    part = api.get(hit["media_url"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == original[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(original)}"
    tail = api.get(hit["media_url"], headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == original[-10:]
    head = api.head(hit["media_url"])
    assert head.status_code == 200 and head.headers["content-length"] == str(len(original)) and head.content == b""
    outside = api.get(hit["media_url"], headers={"Range": f"bytes={len(original)}-"})
    one_line_error(outside, 416)
    assert outside.headers["content-range"] == f"bytes */{len(original)}"


def test_info_and_health(api: httpx.Client, server: str) -> None:
    info = api.get("/api/info").json()
    assert info["model"] == "demo" and info["by_modality"]["image"] == SCENES + 3
    assert info["server"] == {
        "auth": True,
        "sql": True,
        "query_modalities": ["audio", "image", "text"],
        "max_k": 200,
        "max_offset": 10_000,
        "max_batch": 64,
        "max_upload_bytes": 25 * 1024 * 1024,
        "rerankers": ["demo"],
    }
    health = httpx.get(server + "/api/healthz")  # no token needed
    assert health.status_code == 200 and health.json()["status"] == "ok"


# -- bad input: always a 4xx with one line of JSON -------------------------------------------


BAD_GETS = [
    ({"q": "red", "k": 0}, 400, "k must be between 1 and 200"),
    ({"q": "red", "k": 201}, 400, "k must be between 1 and 200"),
    ({"q": "red", "k": "many"}, 422, "k: Input should be a valid integer"),
    ({"q": "red", "offset": -1}, 400, "offset must be between 0"),
    ({"q": "red", "offset": 10_001}, 400, "offset must be between 0"),
    ({"q": "red", "modality": "smell"}, 422, "modality"),
    ({"q": "red", "min_score": 2}, 422, "min_score"),
    ({"q": "red", "where": "width >>> 3"}, 400, "invalid --where filter"),
    ({"q": "red", "where": "no_such_column = 1"}, 400, "no_such_column"),
    ({"q": "red", "where": "1; DROP TABLE items"}, 400, "invalid --where filter"),
    ({"q": "   "}, 400, "the query text is empty"),
    ({"q": '"red" + ""'}, 400, "empty"),
    ({}, 400, "give a query"),
    ({"like_id": 987654321}, 404, "no item with id 987654321"),
    ({"q": "x" * 2001}, 400, "longer than 2000"),
]


@pytest.mark.parametrize(("params", "status", "message"), BAD_GETS)
def test_bad_search_parameters(api: httpx.Client, params: dict, status: int, message: str) -> None:
    assert message in one_line_error(api.get("/api/search", params=params), status)


BAD_POSTS = [
    ({"vector": [1.0, 2.0]}, 400, "vector must have 128 numbers, not 2"),
    ({"vector": [0.0] * 128}, 400, "vector must be finite and non-zero"),
    ({"q": "red", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ({"q": ["red"]}, 422, "q: Input should be a valid string"),
    ({"q": '"a" - "a"'}, 400, "the query terms cancel out"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_POSTS)
def test_bad_search_bodies(api: httpx.Client, body: dict, status: int, message: str) -> None:
    assert message in one_line_error(api.post("/api/search", json=body), status)


def test_bad_bodies_and_routes(api: httpx.Client) -> None:
    headers = {"Content-Type": "application/json"}
    assert "JSON" in one_line_error(api.post("/api/search", content=b"{not json", headers=headers), 422)
    assert "multipart" in one_line_error(
        api.post("/api/search", content=b"q=red", headers={"Content-Type": "text/plain"}), 415
    )
    nan = b'{"vector": [' + b",".join([b"NaN"] * 128) + b"]}"
    one_line_error(api.post("/api/search", content=nan, headers=headers), (400, 422))
    too_many = {"queries": [{"q": "red"}] * 65}
    assert "at most 64 queries" in one_line_error(api.post("/api/search/batch", json=too_many), 400)
    bad_second = {"queries": [{"q": "red"}, {"q": "red", "k": 0}]}
    assert one_line_error(api.post("/api/search/batch", json=bad_second), 400).startswith("query 2: k must be")
    assert "queries" in one_line_error(api.post("/api/search/batch", json={"queries": []}), 422)
    one_line_error(api.get("/api/nothing-here"), 404)
    one_line_error(api.delete("/api/search"), 405)


def test_bad_uploads(open_server: str, built: dict, tmp_path: Path) -> None:
    with httpx.Client(base_url=open_server, timeout=60) as client:

        def upload(name: str, data: bytes, **fields: str) -> httpx.Response:
            return client.post("/api/search", files={"file": (name, data)}, data=fields)

        assert "not an image or audio file" in one_line_error(upload("notes.png", b"just text"), 400)
        png = (built["world"] / "images" / "img_000001.png").read_bytes()
        assert "cannot read the uploaded image" in one_line_error(upload("cut.png", png[: len(png) // 2]), 400)
        assert "the uploaded file is empty" in one_line_error(upload("empty.png", b""), 400)
        big = io.BytesIO()
        Image.new("RGB", (3000, 3000), (200, 10, 10)).save(big, format="PNG")  # 9 MP, small file
        assert "image too large" in one_line_error(upload("big.png", big.getvalue()), 413)
        long_wav = (built["world"] / "long.wav").read_bytes()  # 8 s, over the 5 s limit
        assert "over the 5 s limit" in one_line_error(upload("long.wav", long_wav), 413)
        over_file_limit = upload("huge.png", png + bytes(300_000))
        assert "larger than the 0.3 MB upload limit" in one_line_error(over_file_limit, 413)
        over_body_limit = upload("huge.png", png + bytes(600_000))  # refused while it streams in
        assert "larger than the 0.3 MB upload limit" in one_line_error(over_body_limit, 413)
        assert "one weight per file" in one_line_error(upload("a.png", png, weight=["1", "2"]), 400)
        assert "weight" in one_line_error(upload("a.png", png, weight="heavy"), 400)


def test_slow_decoding_is_cut_off(built: dict) -> None:
    running = start(Index.open(built["index"]), decode_timeout_s=0.001, warm=False)
    try:
        image = (built["world"] / "images" / "img_000001.png").read_bytes()
        response = httpx.post(running.url + "/api/search", files={"file": ("a.png", image)}, timeout=60)
        assert "took longer than 0.001 s" in one_line_error(response, 422)
    finally:
        running.stop()


# -- security ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/search?q=red",
        "/api/info",
        "/api/items/1",
        "/api/media/1",
        "/api/thumbs/1",
        "/api/search/batch",
        "/api/sql",
    ],
)
def test_every_api_route_needs_the_token(server: str, path: str) -> None:
    method = "POST" if path.endswith(("batch", "sql")) else "GET"
    for headers in ({}, {"Authorization": "Bearer wrong-token-here"}, {"Authorization": f"Basic {TOKEN}"}):
        response = httpx.request(method, server + path, headers=headers, json={})
        assert "needs a token" in one_line_error(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_signed_links_open_one_item_only(api: httpx.Client, server: str) -> None:
    hits = api.get("/api/search", params={"q": "a red circle", "k": 2}).json()["results"]
    a, b = hits[0]["id"], hits[1]["id"]
    assert httpx.get(server + f"/api/media/{a}?sig={auth.sign(TOKEN, a)}").status_code == 200
    one_line_error(httpx.get(server + f"/api/media/{b}?sig={auth.sign(TOKEN, a)}"), 401)
    one_line_error(httpx.get(server + f"/api/media/{a}?sig={auth.sign('another-token', a)}"), 401)
    one_line_error(httpx.get(server + f"/api/items/{a}?sig={auth.sign(TOKEN, a)}"), 401)  # links open media only


TRAVERSALS = [
    "/api/media/../../../../etc/passwd",
    "/api/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/media/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/media/1/../../../etc/passwd",
    "/api/media/-1",
    "/api/media/1e3",
    "/api/media/99999999999999999999999",
    "/api/media/%00",
    "/api/thumbs/..%2f..%2fetc%2fpasswd",
    "/api/items/../../etc/passwd",
    "/../../../../etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2f..%2fetc%2fpasswd",
    "/static/../../etc/passwd",
    "//etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_attempts_reach_nothing(server: str, path: str) -> None:
    """Raw request lines (no client-side normalisation of ``..``)."""
    parts = urlsplit(server)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("GET", path, headers=BEARER)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert 400 <= response.status < 500, (response.status, body[:200])
    assert b"root:" not in body


def test_media_refuses_files_changed_or_swapped_since_indexing(api: httpx.Client, built: dict) -> None:
    mutable = built["world"] / "mutable"
    rows = api.post("/api/sql", json={"sql": "SELECT id, path FROM items WHERE path LIKE '%/mutable/%'"}).json()
    ids = {Path(path).stem: item_id for item_id, path in rows["rows"]}
    assert api.get(f"/api/media/{ids['keep']}").status_code == 200
    (mutable / "swap.png").unlink()
    os.symlink("/etc/passwd", mutable / "swap.png")  # swapped for a link to a secret
    assert "changed since it was indexed" in one_line_error(api.get(f"/api/media/{ids['swap']}"), 404)
    assert "changed since it was indexed" in one_line_error(api.get(f"/api/thumbs/{ids['swap']}"), 404)
    with open(mutable / "edit.png", "ab") as handle:
        handle.write(b"more")
    assert "changed since it was indexed" in one_line_error(api.get(f"/api/media/{ids['edit']}"), 404)
    (mutable / "keep.png").unlink()
    assert "no longer there" in one_line_error(api.get(f"/api/media/{ids['keep']}"), 404)


SQL_ESCAPES = [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "SELECT * FROM 'https://example.com/x.csv'",
    "SELECT * FROM '/etc/passwd'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "ATTACH '/tmp/mmsearch-escape.db' AS x",
    "COPY (SELECT 1) TO '/tmp/mmsearch-escape.csv'",
    "COPY items TO '/tmp/mmsearch-escape.parquet'",
    "SELECT 1; SELECT * FROM read_text('/etc/passwd')",
    "PRAGMA database_list",
    "CREATE TABLE t AS SELECT 1",
]


@pytest.mark.parametrize("statement", SQL_ESCAPES)
def test_sql_endpoint_is_sandboxed(api: httpx.Client, statement: str) -> None:
    response = api.post("/api/sql", json={"sql": statement})
    one_line_error(response, 400)
    assert "root:" not in response.text
    assert not Path("/tmp/mmsearch-escape.csv").exists() and not Path("/tmp/mmsearch-escape.db").exists()


WHERE_ESCAPES = [
    "(SELECT substr(content, 1, 4) FROM read_text('/etc/passwd')) = 'root'",
    "(SELECT count(*) FROM read_csv('/etc/passwd')) > 0",
    "(SELECT count(*) FROM read_blob('/etc/passwd')) > 0",
    "path IN (SELECT file FROM glob('/etc/*'))",
    "(SELECT count(*) FROM 'https://example.com/x.csv') > 0",
    "(SELECT current_setting('enable_external_access')) AND 1 = (SELECT 1 FROM read_text('/etc/hostname'))",
]


@pytest.mark.parametrize("where", WHERE_ESCAPES)
def test_filters_cannot_read_files_or_urls(api: httpx.Client, where: str) -> None:
    response = api.get("/api/search", params={"q": "red", "where": where})
    assert "invalid --where filter" in one_line_error(response, 400)


def test_sql_answers_over_the_metadata(api: httpx.Client) -> None:
    answer = api.post(
        "/api/sql", json={"sql": "SELECT modality, count(*) AS n FROM items GROUP BY 1 ORDER BY 1"}
    ).json()
    assert answer["columns"] == ["modality", "n"] and answer["truncated"] is False
    assert dict(answer["rows"]) == {"audio": 12 + 4, "image": SCENES + 3, "text": SCENES + 12}


def test_open_server_has_no_sql_and_answers_only_to_localhost(open_server: str) -> None:
    assert "--allow-sql" in one_line_error(httpx.post(open_server + "/api/sql", json={"sql": "SELECT 1"}), 404)
    assert httpx.get(open_server + "/api/info").status_code == 200  # no token needed on loopback
    port = urlsplit(open_server).port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert httpx.get(open_server + "/api/info", headers={"Host": host}).status_code == 200
    for host in (f"evil.example:{port}", "attacker.test", f"127.0.0.1.nip.io:{port}"):
        assert "only to localhost" in one_line_error(httpx.get(open_server + "/api/info", headers={"Host": host}), 400)


def test_the_page_is_served_with_a_strict_policy(server: str) -> None:
    page = httpx.get(server + "/")
    assert page.status_code == 200 and '<form id="search"' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    for asset, kind in (("/app.js", "javascript"), ("/style.css", "text/css")):
        response = httpx.get(server + asset)
        assert response.status_code == 200 and kind in response.headers["content-type"]
    docs = httpx.get(server + "/openapi.json").json()
    assert {"/api/search", "/api/search/batch", "/api/media/{item_id}", "/api/thumbs/{item_id}"} <= set(docs["paths"])


def test_bind_rule() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None, False)
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.com"):
        with pytest.raises(UserInputError, match="without --token"):
            check_bind(host, None, False)
        check_bind(host, TOKEN, False)
        check_bind(host, None, True)
    with pytest.raises(UserInputError, match="at least 8"):
        ServeSettings(token="short")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 9)),
        ("bytes=5-", (5, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=90-500", (90, 99)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-5", None),
        ("bytes=-", None),
    ],
)
def test_byte_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert media.byte_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=50-10", "bytes=-0"])
def test_unsatisfiable_byte_ranges(header: str) -> None:
    with pytest.raises(ValueError):
        media.byte_range(header, 100)


# -- the encoder queue ------------------------------------------------------------------------


class SlowTextEncoder:
    """Counts batches; the first call waits until the test releases it."""

    dim = 4

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls: list[list[str]] = []

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.started.set()
        assert self.release.wait(30)
        return np.array([[len(t), 1.0, 0.0, 0.0] for t in texts], dtype=np.float32)


def test_texts_waiting_for_the_encoder_share_one_batch() -> None:
    encoder = SlowTextEncoder()
    jobs = EncoderQueue(lambda: encoder)
    try:
        first = jobs.texts(["a"])
        assert encoder.started.wait(30)  # the worker is now busy with the first job
        waiting = [jobs.texts([f"text {n}", "shared"]) for n in range(5)]
        encoder.release.set()
        assert first.result(30).shape == (1, 4)
        results = [future.result(30) for future in waiting]
        assert encoder.calls == [["a"], ["text 0", "shared", "text 1", "text 2", "text 3", "text 4"]]
        assert all(r.shape == (2, 4) for r in results)
        cached = jobs.texts(["shared", "a"]).result(30)  # answered from the cache
        assert len(encoder.calls) == 2 and cached.shape == (2, 4)
    finally:
        jobs.close()


# -- concurrency and writes --------------------------------------------------------------------


def test_concurrent_clients_get_the_serial_answers(api: httpx.Client, server: str) -> None:
    queries = [f"a {colour} {shape}" for colour in ("red", "green", "blue", "yellow") for shape in ("circle", "star")]

    def ask(q: str) -> list[dict]:
        with httpx.Client(base_url=server, headers=BEARER, timeout=60) as client:
            response = client.get("/api/search", params={"q": q, "k": 5})
            assert response.status_code == 200, response.text
            return response.json()["results"]

    serial = [ask(q) for q in queries]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, queries * 4))
    assert all(same_hits(a, b) for a, b in zip(together, serial * 4))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mmsearch.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_reads_while_index_and_compact_write(built: dict, tmp_path: Path) -> None:
    """Readers keep querying while `mmsearch index`, `remove` and `compact` commit new
    generations: no request fails, and the server follows the generations."""
    index_dir = tmp_path / "index"
    shutil.copytree(built["index"], index_dir)
    running = start(Index.open(index_dir))
    extra = tmp_path / "extra"
    world.generate_world(extra, 12, SEED + 1)
    errors: list[str] = []
    generations: set[int] = set()
    done = threading.Event()
    count = [0]
    lock = threading.Lock()
    most = 20_000  # a bound on the load; readers normally stop once the writers are done

    def read(client: httpx.Client, n: int) -> None:
        kind = n % 5
        if kind == 0:
            r = client.get("/api/search", params={"q": "a red circle", "k": 5})
        elif kind == 1:
            r = client.get("/api/search", params={"q": "a star", "where": "modality = 'image'", "k": 3, "offset": 2})
        elif kind == 2:
            r = client.post(
                "/api/search/batch", json={"queries": [{"q": "a blue square"}, {"q": "a sound", "modality": "audio"}]}
            )
        elif kind == 3:
            r = client.get("/api/search", params={"like_id": 5, "k": 4})
        else:
            r = client.get("/api/info")
        if r.status_code != 200:
            errors.append(f"{r.status_code} {r.text[:200]}")
        elif "generation" in r.json():
            generations.add(r.json()["generation"])

    def reader() -> None:
        with httpx.Client(base_url=running.url, timeout=60) as client:
            while True:
                with lock:
                    if (done.is_set() and count[0] >= 1000) or count[0] >= most:
                        return
                    count[0] += 1
                    n = count[0]
                read(client, n)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for args in (
            ["index", str(extra), "--index", str(index_dir)],
            ["remove", str(extra / "images"), "--index", str(index_dir)],
            ["compact", "--index", str(index_dir)],
        ):
            result = run_cli(*args)
            assert result.returncode == 0, result.stderr
    finally:
        done.set()
        for thread in threads:
            thread.join()
        with httpx.Client(base_url=running.url, timeout=60) as client:
            final = client.get("/api/info").json()
            where = f"path LIKE '{extra}/%'"
            found = client.get("/api/search", params={"q": "a circle", "where": where, "modality": "any", "k": 50})
        running.stop()
    assert errors == [] and count[0] >= 1000
    assert final["tombstones"] == 0 and final["generation"] > min(generations)  # followed the writers' commits
    # the last generation, picked up without a restart: the new captions, not the removed images
    assert [hit["modality"] for hit in found.json()["results"]] == ["text"] * 12


# -- the CLI: mmsearch serve and query --server --------------------------------------------------


def local_query(capsys: pytest.CaptureFixture, *args: str) -> tuple[str, str]:
    """``mmsearch query`` run in this process (torch is loaded already): stdout, stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["query", *args])
    assert exit_info.value.code == 0
    out = capsys.readouterr()
    return out.out, out.err


def test_cli_serve_and_query_forwarding(built: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`mmsearch serve` as a process; `mmsearch query --server` prints what a local query prints."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MMSEARCH_TOKEN": TOKEN, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", "mmsearch.cli", "serve", "--index", str(built["index"]), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    try:
        first = lines.get(timeout=120)
        assert first.startswith(f"mmsearch: serving {built['index']} at http://127.0.0.1:"), first
        url = first.split(" at ", 1)[1].split()[0]
        wait_ready(url, alive=lambda: process.poll() is None)
        assert lines.get(timeout=60).startswith(f"mmsearch: ready: {url}/")
        image = str(built["world"] / "images" / "img_000005.png")
        cases = [
            ["a red circle", "-k", "5"],
            ['"a red circle" - "red" + "blue"', "--json"],
            ["a sound", "--modality", "audio", "-k", "3"],
            ["--image", image, "-k", "4", "--json"],
            [image, "+", "a red circle", "-k", "3", "-f"],
            ["a star", "--where", "width >= 100", "-0"],
        ]
        for args in cases:
            local = local_query(capsys, *args, "--index", str(built["index"]))
            remote = subprocess.run(
                [sys.executable, "-m", "mmsearch.cli", "query", *args, "--server", url],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            assert remote.returncode == 0, remote.stderr
            assert (remote.stdout, remote.stderr) == local, args
        bad = run_cli("query", "red", "--where", "nope >", "--server", url, "--token", TOKEN)
        assert bad.returncode == 2 and bad.stderr.startswith(f"mmsearch: error: {url}: invalid --where filter")
        unauthorised = run_cli("query", "red", "--server", url)
        assert unauthorised.returncode == 2 and "needs a token" in unauthorised.stderr
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0


# Runs the CLI and, at exit, writes which heavy modules the process imported.
LIGHT_RUNNER = """
import atexit, json, sys
out, args = sys.argv[1], sys.argv[2:]
heavy = ("torch", "faiss", "duckdb", "fastapi", "uvicorn", "starlette", "mmsearch.index")
atexit.register(lambda: open(out, "w").write(json.dumps(
    sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy))))
from mmsearch.cli import main
main(args)
"""


def run_light(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    record = tmp_path / "imported.json"
    command = [sys.executable, "-c", LIGHT_RUNNER, str(record), *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    return result, json.loads(record.read_text())


def test_cli_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    result, heavy = run_light(tmp_path, "serve", "--host", "0.0.0.0", "--index", str(tmp_path / "none"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and heavy == []  # refused before loading
    assert result.stderr.startswith("mmsearch: error: refusing to serve on 0.0.0.0 without --token")
    short, heavy = run_light(tmp_path, "serve", "--token", "abc", "--index", str(tmp_path / "none"))
    assert short.returncode == 2 and "--token must be at least 8 characters" in short.stderr and heavy == []
    helped, heavy = run_light(tmp_path, "serve", "--help")
    assert (
        helped.returncode == 0 and heavy == [] and "--allow-sql" in helped.stdout and "MMSEARCH_TOKEN" in helped.stdout
    )
    nothing = run_cli("query", "red", "--server", "http://127.0.0.1:9")
    assert nothing.returncode == 1 and "cannot reach http://127.0.0.1:9" in nothing.stderr


# -- video thumbnails ---------------------------------------------------------------------------

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 40)]  # one per second of the video
THUMB = 64


def solid_video(path: Path, size: tuple[int, int]) -> None:
    """A 4 s H.264 + AAC MP4 at 10 fps whose frames are solid colours, one colour per second,
    with keyframes every 2 s only (no keyframe at a colour change) and B-frames."""
    import av

    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "veryfast", "x264-params": "scenecut=0"}
        video.codec_context.gop_size = 20
        audio = container.add_stream("aac", rate=world.SAMPLE_RATE)
        audio.layout = "mono"
        for number in range(40):
            picture = np.full((height, width, 3), COLOURS[number // 10], dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = number
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        wave = world.render_sound(world.Scene("circle", "red", "white", 1, "large", 1), world.SAMPLE_RATE, 4.0)
        world.mux_sound(container, audio, wave)


def colour_of(picture: bytes) -> int:
    """Which of COLOURS a thumbnail shows (the nearest to its mean)."""
    with Image.open(io.BytesIO(picture)) as image:
        mean = np.asarray(image.convert("RGB")).reshape(-1, 3).mean(0)
    return int(np.argmin([np.abs(mean - colour).sum() for colour in COLOURS]))


@pytest.fixture(scope="module")
def video_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A server with a 64-pixel thumbnail bound over two solid-colour videos (a frame every second)
    and an image; ``gone.mp4`` and ``gone.png`` are there to be deleted."""
    root = tmp_path_factory.mktemp("video-serve")
    folder = root / "videos"
    folder.mkdir()
    solid_video(folder / "solid.mp4", (160, 120))
    solid_video(folder / "gone.mp4", (96, 64))
    write_image(folder / "gone.png", (128, 128, 128), (128, 128))
    index = Index.create(root / "index", model="demo")
    index.add([folder], workers=0, video_every=1.0)
    running = start(Index.open(root / "index"), thumb_size=THUMB)
    yield {"url": running.url, "index": index, "folder": folder, "cache": Thumbnails(root / "thumbs", THUMB)}
    running.stop()


def test_a_video_hit_has_a_thumbnail_of_its_frame(video_server: dict) -> None:
    index, client = video_server["index"], httpx.Client(base_url=video_server["url"], timeout=60)
    rows = index.sql("SELECT id, track, offset_s FROM items WHERE path LIKE '%solid.mp4' ORDER BY track, offset_s")
    frames, sounds = [("frame", t) for t in (0.0, 1.0, 2.0, 3.0)], [("sound", 0.0), ("sound", 2.0)]
    assert [(r["track"], r["offset_s"]) for r in rows.to_pylist()] == frames + sounds
    tags = set()
    for row in rows.to_pylist():  # frames at 1 s and 3 s lie between keyframes: decoded forward to them
        thumb = client.get(f"/api/thumbs/{row['id']}")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(thumb.content)) as picture:
            assert picture.format == "JPEG" and picture.size == (THUMB, THUMB * 120 // 160)
        assert colour_of(thumb.content) == int(row["offset_s"]), row  # the frame on screen at the offset
        tags.add(thumb.headers["etag"])
    assert len(tags) == 4  # one per moment: a frame and a sound window at the same offset share it
    hits = client.get("/api/search", params={"q": "a red circle", "modality": "video", "k": 10}).json()["results"]
    assert hits and all(hit["thumb_url"] == f"/api/thumbs/{hit['id']}" for hit in hits)
    for hit in hits:  # a segment shows its best row's frame
        assert colour_of(client.get(hit["thumb_url"]).content) == int(hit["offset_s"])
    client.close()


def test_a_video_thumbnail_is_served_from_the_cache(video_server: dict) -> None:
    index, url = video_server["index"], video_server["url"]
    item_id = index.sql("SELECT id FROM items WHERE path LIKE '%solid.mp4' AND offset_s = 3").to_pylist()[0]["id"]
    row = index.items([item_id])[item_id]
    cached = video_server["cache"].path_of(row)
    first = httpx.get(f"{url}/api/thumbs/{item_id}", timeout=60)
    assert first.status_code == 200 and cached.read_bytes() == first.content
    marker = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(marker, format="JPEG")
    cached.write_bytes(marker.getvalue())  # a second request that decoded again would not answer this
    assert httpx.get(f"{url}/api/thumbs/{item_id}", timeout=60).content == marker.getvalue()


def test_a_broken_or_vanished_video_answers_as_such_an_image(video_server: dict) -> None:
    index, url, folder = video_server["index"], video_server["url"], video_server["folder"]
    rows = index.sql("SELECT id, path FROM items WHERE path LIKE '%gone%'").to_pylist()
    ids = {Path(r["path"]).name: r["id"] for r in rows}

    def errors() -> list[str]:
        answers = [httpx.get(f"{url}/api/thumbs/{ids[name]}", timeout=60) for name in ("gone.mp4", "gone.png")]
        status = answers[0].status_code
        assert answers[1].status_code == status
        return [one_line_error(a, status).replace(str(ids[n]), "N") for a, n in zip(answers, ("gone.mp4", "gone.png"))]

    for name in ("gone.mp4", "gone.png"):  # garbage of the same size and time: what was indexed, unreadable now
        path = folder / name
        info = path.stat()
        path.write_bytes(b"\0" * info.st_size)
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    broken = errors()
    assert all(error.startswith("cannot make a thumbnail of item N: ") for error in broken), broken
    for name in ("gone.mp4", "gone.png"):
        (folder / name).unlink()
    vanished = errors()
    assert vanished[0] == vanished[1] and "no longer there" in vanished[0]


# -- a vector-only index ----------------------------------------------------------------------


def test_vector_only_index(tmp_path: Path) -> None:
    index = Index.create(tmp_path / "vectors", dim=8)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    ids = index.add_vectors(vectors, [{"path": f"/etc/passwd#{n}" if n else "/etc/passwd"} for n in range(50)])
    running = start(index)
    # Nagle off on accepted connections (inherited from the listener), or each keep-alive response waits 40 ms
    assert running.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    try:
        with httpx.Client(base_url=running.url, timeout=60) as client:
            hit = client.post("/api/search", json={"vector": vectors[7].tolist(), "k": 3}).json()["results"][0]
            assert hit["id"] == ids[7] and hit["score"] > 0.999
            assert "holds vectors only" in one_line_error(client.get("/api/search", params={"q": "red"}), 400)
            first = client.post("/api/search", json={"vector": vectors[0].tolist(), "k": 1}).json()["results"][0]
            assert first["path"] == "/etc/passwd"
            media_answer = client.get(f"/api/media/{first['id']}")
            assert "no indexed file" in one_line_error(media_answer, 404) and "root:" not in media_answer.text
    finally:
        running.stop()
