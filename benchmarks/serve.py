"""Benchmark `mmsearch serve`: latency and throughput of a warm server on loopback.

A bounded load generator (a fixed number of requests, keep-alive connections, one
thread per client) against `mmsearch serve` started as a real process:

* the demo index (a generated world: images, sounds and their captions) for text,
  vector and batch queries, at 1 client and at 16 concurrent clients; each text
  query is a different text, so the server's text cache never answers;
* the encode time of those texts alone (the demo encoder in this process), which a
  warm text query cannot beat;
* `mmsearch query --server` wall time against a cold `mmsearch query`;
* a vector-only index built with `add_vectors` (clustered 512-d vectors, the `auto`
  recipe) for vector queries at scale.

Targets from the issue: warm text p50 <= 1.2 x encode p50 + 10 ms; vector p50 <= 10 ms
on the large index; `query --server` wall <= 0.1 x cold wall. Results go to
benchmarks/results/serve.json and serve.md. The client shares the machine's cores with
the server, so the 16-client figures are what one machine does end to end.

    python benchmarks/serve.py                      # 200,000 vectors for the large index
    python benchmarks/serve.py --vectors 1000000    # the issue's 1M (minutes to build)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np

from mmsearch import Index, world
from mmsearch.serve.server import wait_ready

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 20261126
Request = tuple[str, str, bytes | None, dict[str, str]]  # method, path, body, headers
JSON = {"Content-Type": "application/json"}


def distinct_texts(count: int) -> list[str]:
    """Different captions of the world's vocabulary (4 x 3 x 2 x 8 x 6 = 1,152 at most)."""
    texts = []
    for prefix in world.PREFIXES:
        for number, word in world.COUNTS.items():
            for size in world.SIZES:
                for colour in world.COLOURS:
                    for shape in world.SHAPES:
                        noun = shape if number == 1 else shape + ("es" if shape.endswith("s") else "s")
                        article = "a" if number == 1 else word
                        texts.append(f"{prefix} {article} {size} {colour} {noun}")
    rng = np.random.default_rng(SEED)
    return [texts[i] for i in rng.permutation(len(texts))[:count]]


def clustered(n: int, dim: int, rng: np.random.Generator, clusters: int = 1000) -> np.ndarray:
    """Unit vectors around random centres: real embeddings cluster, uniform noise does not."""
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    vectors = centres[rng.integers(clusters, size=n)] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# -- the server -------------------------------------------------------------------------------


class Served:
    """`mmsearch serve --port 0` as a process; its URL read from its first line."""

    def __init__(self, index: Path) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "mmsearch.cli", "serve", "--index", str(index), "--port", "0"]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        first = self.process.stderr.readline()
        if " at http://" not in first:
            raise RuntimeError(f"mmsearch serve did not start: {first}{self.process.stderr.read()}")
        self.url = first.split(" at ", 1)[1].split()[0]
        threading.Thread(target=self.process.stderr.read, daemon=True).start()  # keep the pipe drained
        wait_ready(self.url, timeout=300, alive=lambda: self.process.poll() is None)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def load(url: str, requests: list[Request], clients: int) -> dict:
    """Send ``requests`` from ``clients`` threads over keep-alive connections; latencies in ms."""
    parts = urlsplit(url)
    pending: queue.Queue[Request] = queue.Queue()
    for request in requests:
        pending.put(request)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        connection.connect()
        # http.client sends a POST's headers and body in two writes: without TCP_NODELAY, Nagle's
        # algorithm holds the body until the server's delayed ACK (40 ms) and measures that instead.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mine, bad = [], []
        while True:
            try:
                method, path, body, headers = pending.get_nowait()
            except queue.Empty:
                break
            started = time.perf_counter()
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            mine.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                bad.append(f"{response.status} {data[:200]!r}")
        connection.close()
        with lock:
            latencies.extend(mine)
            failures.extend(bad)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    ordered = sorted(latencies)
    return {
        "requests": len(requests),
        "clients": clients,
        "p50_ms": round(ordered[len(ordered) // 2], 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "qps": round(len(requests) / wall, 1),
    }


def text_requests(texts: list[str]) -> list[Request]:
    return [("GET", "/api/search?" + urlencode({"q": text, "k": 10}), None, {}) for text in texts]


def vector_requests(vectors: np.ndarray) -> list[Request]:
    return [
        ("POST", "/api/search", json.dumps({"vector": [round(float(x), 6) for x in v], "k": 10}).encode(), JSON)
        for v in vectors
    ]


def batch_requests(texts: list[str], size: int) -> list[Request]:
    batches = [texts[i : i + size] for i in range(0, len(texts) - size + 1, size)]
    return [
        ("POST", "/api/search/batch", json.dumps({"queries": [{"q": t, "k": 10} for t in b]}).encode(), JSON)
        for b in batches
    ]


def timed(function: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        out.append((time.perf_counter() - started) * 1000)
    return out


def cli_wall(args: list[str], repeat: int) -> float:
    """Median wall seconds of ``mmsearch ARGS`` run as a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def once() -> None:
        result = subprocess.run([sys.executable, "-m", "mmsearch.cli", *args], capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)

    return statistics.median(timed(once, repeat)) / 1000


# -- the cases --------------------------------------------------------------------------------


def demo_cases(folder: Path, scale: float) -> dict:
    world_dir, index_dir = folder / "world", folder / "index"
    print(f"generating and indexing a demo world in {folder} ...", flush=True)
    world.generate_world(world_dir, 480, SEED, sounds=True)
    index = Index.create(index_dir, model="demo")
    index.add([world_dir])
    info = index.info()

    texts = distinct_texts(1152)
    encoder = index.encoder
    import torch

    torch.set_num_threads(1)  # as the server encodes (mmsearch serve --threads 1)
    encoder.embed_texts(["warm up"])
    encode_ms = [timed(lambda t=t: encoder.embed_texts([t]), 1)[0] for t in texts[:300]]
    encode_p50 = round(statistics.median(encode_ms), 2)
    ids = index.sql("SELECT id FROM items ORDER BY id LIMIT 3000").column("id").to_pylist()
    vectors = index.vectors(ids)  # stored vectors as queries

    n = lambda count: max(20, int(count * scale))  # noqa: E731
    server = Served(index_dir)
    try:
        load(server.url, text_requests(distinct_texts(50)), 4)  # warm the connections, not the text cache
        rows = {
            "text, 1 client": load(server.url, text_requests(texts[: n(300)]), 1),
            "text, 16 clients": load(server.url, text_requests(texts[n(300) : n(300) + n(800)]), 16),
            "vector, 1 client": load(server.url, vector_requests(vectors[: n(400)]), 1),
            "vector, 16 clients": load(server.url, vector_requests(vectors[: n(2000)]), 16),
            "batch of 16 texts, 1 client": load(server.url, batch_requests(texts[: n(480)], 16), 1),
            "batch of 16 texts, 16 clients": load(server.url, batch_requests(texts[n(160) :], 16)[: n(60)], 16),
        }
        query = ["query", "a red circle", "-k", "10"]
        remote_wall = cli_wall([*query, "--server", server.url], 5)
    finally:
        server.stop()
    cold_wall = cli_wall([*query, "--index", str(index_dir)], 3)
    return {
        "index": {"vectors": info["vectors"], "by_modality": info["by_modality"], "dim": info["dim"]},
        "encode_ms_p50": encode_p50,
        "encode_ms_p99": round(sorted(encode_ms)[int(len(encode_ms) * 0.99)], 2),
        "load": rows,
        "cli": {"query_server_wall_s": round(remote_wall, 3), "query_cold_wall_s": round(cold_wall, 3)},
    }


def large_cases(folder: Path, count: int, scale: float) -> dict:
    dim = 512
    rng = np.random.default_rng(SEED)
    print(f"building a {count:,}-vector index with add_vectors ...", flush=True)
    index = Index.create(folder / "large", dim=dim, shard_size=max(count, 1))
    started = time.perf_counter()
    chunk = 100_000
    centres_rng = np.random.default_rng(SEED + 1)
    data = clustered(count, dim, centres_rng)
    for start in range(0, count, chunk):
        index.add_vectors(
            data[start : start + chunk], [{"path": f"vec:{i}"} for i in range(start, min(start + chunk, count))]
        )
    build_s = time.perf_counter() - started
    queries = data[rng.integers(count, size=3000)] + 0.05 * rng.normal(size=(3000, dim)).astype(np.float32)
    del data
    n = lambda c: max(20, int(c * scale))  # noqa: E731
    server = Served(folder / "large")
    try:
        load(server.url, vector_requests(queries[:50]), 4)
        rows = {
            "vector, 1 client": load(server.url, vector_requests(queries[: n(400)]), 1),
            "vector, 16 clients": load(server.url, vector_requests(queries[: n(2000)]), 16),
        }
    finally:
        server.stop()
    shards = index.refresh().manifest.shards
    return {
        "vectors": count,
        "dim": dim,
        "build_s": round(build_s, 1),
        "recipe": [str(getattr(shard, "recipe", "?")) for shard in shards],
        "load": rows,
    }


# -- report ------------------------------------------------------------------------------------


def table_row(name: str, row: dict) -> str:
    cells = [name.split(",")[0], row["clients"], row["requests"], row["p50_ms"], row["p99_ms"], row["qps"]]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown(result: dict, command: str) -> str:
    demo, large = result["demo"], result["large"]
    modalities = ", ".join(f"{k} {v}" for k, v in demo["index"]["by_modality"].items())
    lines = [
        "# `mmsearch serve` benchmark",
        "",
        f"Command: `{command}`  ",
        f"Machine: {result['machine']}; the load generator runs on the same cores as the server."
        f" Load average (1 min) at start and end: {result['load_average'][0]}, {result['load_average'][1]}"
        " (above 2, other work shared these cores and every figure is slower than on a quiet machine).",
        "",
        f"Demo index: {demo['index']['vectors']:,} vectors ({modalities}), {demo['index']['dim']}-d, demo model."
        " Every text query is a different caption (no cache hits).",
        "",
        "| requests | clients | count | p50 ms | p99 ms | QPS |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [table_row(name, row) for name, row in demo["load"].items()]
    lines += [
        "",
        "Text encode alone (demo encoder, one text, in-process, 1 torch thread as in the server):"
        f" p50 {demo['encode_ms_p50']} ms, p99 {demo['encode_ms_p99']} ms.",
        "",
        f"Large index: {large['vectors']:,} clustered {large['dim']}-d vectors added with `add_vectors`"
        f" in {large['build_s']} s (recipe per shard: {', '.join(large['recipe'])}).",
        "",
        "| requests | clients | count | p50 ms | p99 ms | QPS |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [table_row(name, row) for name, row in large["load"].items()]
    cli = demo["cli"]
    lines += [
        "",
        f'`mmsearch query "a red circle"`: {cli["query_server_wall_s"]} s with `--server`, '
        f"{cli['query_cold_wall_s']} s cold (median wall of fresh processes).",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "| --- | --- | :---: |",
    ]
    for target in result["targets"]:
        lines.append(f"| {target['target']} | {target['measured']} | {'yes' if target['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def targets(demo: dict, large: dict) -> list[dict]:
    text_p50 = demo["load"]["text, 1 client"]["p50_ms"]
    bound = 1.2 * demo["encode_ms_p50"] + 10
    vector_p50 = large["load"]["vector, 1 client"]["p50_ms"]
    cli = demo["cli"]
    ratio = cli["query_server_wall_s"] / cli["query_cold_wall_s"]
    return [
        {
            "target": "warm text query p50 <= 1.2 x encode p50 + 10 ms",
            "measured": f"{text_p50} ms vs {bound:.1f} ms",
            "met": text_p50 <= bound,
        },
        {
            "target": f"vector query p50 <= 10 ms at {large['vectors']:,} vectors",
            "measured": f"{vector_p50} ms",
            "met": vector_p50 <= 10,
        },
        {
            "target": "`query --server` wall <= 0.1 x cold `query` wall",
            "measured": f"{cli['query_server_wall_s']} s / {cli['query_cold_wall_s']} s = {ratio:.3f}",
            "met": ratio <= 0.1,
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=200_000, help="size of the add_vectors index")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts (0.1 for a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mmsearch-serve-bench-") as folder:
        demo = demo_cases(Path(folder), args.scale)
        print(json.dumps(demo, indent=2), flush=True)
        large = large_cases(Path(folder), args.vectors, args.scale)
        print(json.dumps(large, indent=2), flush=True)
    result = {
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}",
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "demo": demo,
        "large": large,
    }
    result["targets"] = targets(demo, large)
    command = "python " + " ".join(["benchmarks/serve.py", *sys.argv[1:]])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(result | {"command": command}, indent=2) + "\n")
    (args.out / "serve.md").write_text(markdown(result, command))
    print(markdown(result, command))


if __name__ == "__main__":
    main()
