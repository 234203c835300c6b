"""Ingest throughput, search latency/recall and CLI start-up, each against a baseline
measured in the same run (these machines are noisy: read the ratios).

* ingest: a generated world of large PNGs (no reduced-size decode possible, so
  decoding dominates with the small demo model) indexed with decode in-process
  (baseline) vs in worker processes; files/s and seconds per stage;
* search: random unit vectors in 4 shards, the exact ``flat`` recipe (baseline) vs
  ``hnsw``; mean latency per query and recall@10 against exact;
* start-up: ``mmsearch --help`` vs a bare ``python -c pass`` (baseline), and a full
  ``mmsearch query`` (model load included).

    python benchmarks/performance.py      # ≈ 3-5 min on 2 cores

Writes benchmarks/results/performance.json and performance.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mmsearch import Index, world
from mmsearch.models.base import l2_normalise
from mmsearch.search import searcher
from mmsearch.store.manifest import Manifest
from mmsearch.store.shard import Shard
from mmsearch.store.writer import ShardWriter

RESULTS = Path(__file__).parent / "results"
SEED = 7


def ingest(root: Path, files: int) -> list[dict]:
    world.generate_world(root / "world", files, SEED, size=1024, image_format="png")
    rows = []
    for workers in (0, os.cpu_count() or 1):
        index = Index.create(root / f"ingest-{workers}", model="demo")
        summary = index.add([root / "world" / "images"], workers=workers)
        rows.append(
            {
                "case": f"ingest {files} PNGs (1024 px), {workers or 'no'} decode workers",
                "value": round(files / summary.seconds["total"], 1),
                "unit": "files/s",
                "stages_s": summary.seconds,
            }
        )
    rows[1]["ratio"] = round(rows[1]["value"] / rows[0]["value"], 2)
    return rows


def synthetic_index(path: Path, recipe: str, vectors: np.ndarray, shard_size: int) -> list[Shard]:
    manifest = Manifest(
        model="synthetic", space_id="synthetic", dim=vectors.shape[1], recipe=recipe, shard_size=shard_size
    )
    with ShardWriter(path, manifest) as writer:
        ids = writer.next_ids(len(vectors))
        writer.append(vectors, [{"id": int(i), "modality": "image", "path": f"/v/{i}"} for i in ids])
        writer.commit()
    return [Shard(path, info) for info in writer.manifest.shards]


def search(root: Path, count: int, dim: int, queries: int) -> list[dict]:
    rng = np.random.default_rng(SEED)
    vectors = l2_normalise(rng.normal(size=(count, dim)))
    probes = l2_normalise(vectors[rng.choice(count, queries)] + 0.3 * rng.normal(size=(queries, dim)))
    rows, exact = [], []
    for recipe in ("flat", "hnsw"):
        started = time.perf_counter()
        shards = synthetic_index(root / recipe, recipe, vectors, count // 4)
        built = time.perf_counter() - started
        searcher.search(shards, probes[0], 10)  # load shards
        started = time.perf_counter()
        results = [[i for _, i in searcher.search(shards, q, 10)] for q in probes]
        latency = (time.perf_counter() - started) / queries * 1000
        if recipe == "flat":
            exact = results
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(results, exact)])
        rows.append(
            {
                "case": f"search {count:,} vectors ({dim}-d, 4 shards), recipe {recipe}",
                "value": round(latency, 3),
                "unit": "ms/query",
                "recall@10": round(float(recall), 4),
                "build_s": round(built, 1),
            }
        )
    rows[1]["ratio"] = round(rows[1]["value"] / rows[0]["value"], 3)
    return rows


def timed(command: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        best = min(best, time.perf_counter() - started)
    return best


def startup(root: Path) -> list[dict]:
    cli = [sys.executable, "-m", "mmsearch.cli"]
    bare = timed([sys.executable, "-c", "pass"], 5)
    help_s = timed([*cli, "--help"], 5)
    query_s = timed([*cli, "query", "a red circle", "--index", str(root / "ingest-0"), "-k", "5"], 3)
    return [
        {"case": "python -c pass (baseline)", "value": round(bare * 1000), "unit": "ms"},
        {"case": "mmsearch --help", "value": round(help_s * 1000), "unit": "ms", "ratio": round(help_s / bare, 1)},
        {"case": "mmsearch query (loads torch + model)", "value": round(query_s * 1000), "unit": "ms"},
    ]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = ingest(root, 400) + search(root, 200_000, 128, 200) + startup(root)
    report = {"command": "python benchmarks/performance.py", "cpus": os.cpu_count(), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "performance.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Performance",
        "",
        f"Command: `{report['command']}` ({report['cpus']} CPUs)",
        "",
        "| case | value | ratio to baseline | notes |",
        "| --- | ---: | ---: | --- |",
    ]
    for row in rows:
        notes = {k: v for k, v in row.items() if k not in ("case", "value", "unit", "ratio")}
        lines.append(f"| {row['case']} | {row['value']} {row['unit']} | {row.get('ratio', '')} | {notes or ''} |")
    (RESULTS / "performance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
