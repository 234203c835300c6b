"""Vector search at scale: the engine (``Index.add_vectors`` / ``search`` / ``search_batch``)
against raw FAISS on the same vectors, measured side by side in one run (this 2-core
machine is shared and noisy: read the ratios, each taken from interleaved blocks).

Data (fixed seeds): ``--rows`` clustered unit vectors that resemble real embeddings
(``--clusters`` Gaussian clusters of lognormal sizes; queries drawn from the same
mixture, not the database), and a smaller uniform-random worst case.

Per data set, side by side:

* raw FAISS ``IndexFlatIP`` (exact) and raw FAISS with the engine's recipe (the factory
  string and tuned search settings the engine recorded in ``manifest.shards[i]``,
  built with ``faiss.index_factory`` and the same training-sample size);
* the engine with one shard (``shard_size >= rows``: the same FAISS index as the raw one)
  and with the default sharding (``shard_size=100_000``);
* build time, single-query QPS (``Index.search``) and batched QPS (``search_batch``),
  recall@10 against exact search (numpy brute force), bytes per vector on disk, RSS of a
  fresh process after ``Index.open`` and after 1,000 queries;
* filtered QPS and recall@10 at 1 %, 10 % and 50 % selectivity (``width = i % 100``);
* query cost with 10 % of the ids removed (``remove_ids``) against the index before the
  removal (a hard-linked copy, queried in interleaved blocks), and the manifest size;
* a compressed recipe (what ``recipes.resolve`` proposes under an 8 GiB budget for 10M
  vectors) on a smaller index, and the 10M x 512 memory arithmetic from it;
* the no-op re-index of 10,000 small text files with the demo model, timed in a fresh
  process (start-up included).

    python benchmarks/search.py              # 1M x 512, ~25 min on 2 cores
    python benchmarks/search.py --quick      # 100k smoke run, ~5 min

Writes benchmarks/results/search.json and search.md (``--out`` to change the folder).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import faiss

from mmsearch import Index
from mmsearch.store import recipes
from mmsearch.store.shard import MMAP_IVF_MIN_BYTES

SEED = 7
K = 10
GT_K = 100  # exact neighbours kept per query (the 10 live ones after a removal come from these)
GIB = 1024**3
BUDGET_BYTES = 8 * GIB  # memory budget for the 10M arithmetic
TARGET_ROWS = 10_000_000
FILTERS = (("1%", "width = 3"), ("10%", "width < 10"), ("50%", "width < 50"))
WARMUP = 5
PAUSE_S = 0.3  # between timed blocks: lets faiss's OpenMP and numpy's OpenBLAS threads stop spinning


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- data


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


class Mixture:
    """Gaussian clusters around random unit centres, with lognormal cluster sizes.

    A point is ``centre + spread * N(0, I/dim)``, normalised: cosine ~0.7 to its centre,
    ~0.5 to a point of its own cluster, ~0 across clusters.
    """

    def __init__(self, clusters: int, dim: int, seed: int, spread: float = 1.0) -> None:
        rng = np.random.default_rng(seed)
        self.centres = unit(rng.standard_normal((clusters, dim), dtype=np.float32))
        weights = rng.lognormal(0.0, 1.0, clusters)
        self.weights = weights / weights.sum()
        self.spread = spread / np.sqrt(dim)

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        labels = rng.choice(len(self.centres), n, p=self.weights)
        out = np.empty((n, self.centres.shape[1]), np.float32)
        for start in range(0, n, 100_000):
            end = min(n, start + 100_000)
            block = rng.standard_normal((end - start, out.shape[1]), dtype=np.float32)
            block *= self.spread
            block += self.centres[labels[start:end]]
            out[start:end] = unit(block)
        return out


def uniform(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        end = min(n, start + 100_000)
        out[start:end] = unit(rng.standard_normal((end - start, dim), dtype=np.float32))
    return out


def exact_topk(x: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Row numbers of the exact top-``k`` inner products (numpy BLAS, blocks of the database)."""
    rows = np.arange(len(x)) if mask is None else np.flatnonzero(mask)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    block = 50_000
    for start in range(0, len(rows), block):
        idx = rows[start : start + block]
        b = x[start : start + block] if mask is None else x[idx]
        s = q @ b.T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        cand_i = np.concatenate([best_i, idx[part]], 1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def recall(found: list, truth: np.ndarray) -> float:
    return float(np.mean([len(set(map(int, f[:K])) & set(t[:K].tolist())) / K for f, t in zip(found, truth)]))


# --------------------------------------------------------------------------- timing


def interleaved(
    methods: dict[str, tuple[Callable, np.ndarray]], blocks: int = 4, cold: tuple[str, ...] = ()
) -> dict[str, dict]:
    """Run each method over its queries in ``blocks`` rounds, alternating methods within a
    round so that background load hits all of them alike. Returns qps and per-query output.

    Methods named in ``cold`` are first run once over all their queries, timed as
    ``cold_qps`` (an mmap'ed index faults its lists in on first touch), so that the
    interleaved rounds measure the steady state; the others warm up on a few queries.
    """
    out = {name: {"seconds": 0.0, "found": []} for name in methods}
    for name, (fn, queries) in methods.items():
        time.sleep(PAUSE_S)
        started = time.perf_counter()
        for q in queries if name in cold else queries[:WARMUP]:
            fn(q)
        if name in cold:
            out[name]["cold_qps"] = len(queries) / (time.perf_counter() - started)
    for b in range(blocks):
        for name, (fn, queries) in methods.items():
            chunk = np.array_split(queries, blocks)[b]
            time.sleep(PAUSE_S)
            started = time.perf_counter()
            found = [fn(q) for q in chunk]
            out[name]["seconds"] += time.perf_counter() - started
            out[name]["found"] += found
    for name, (_, queries) in methods.items():
        out[name]["qps"] = len(queries) / out[name]["seconds"]
    return out


def batched(fn: Callable, queries: np.ndarray, batch: int) -> tuple[float, list]:
    fn(queries[: min(batch, len(queries))])  # warm-up
    time.sleep(PAUSE_S)
    found, started = [], time.perf_counter()
    for start in range(0, len(queries), batch):
        found += list(fn(queries[start : start + batch]))
    return len(queries) / (time.perf_counter() - started), found


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- engine and raw faiss


def metadata(rows: int) -> pa.Table:
    i = np.arange(rows)
    return pa.table({"path": pa.array([f"vec/{n}" for n in range(rows)]), "width": pa.array(i % 100, pa.int32())})


def engine_build(path: Path, x: np.ndarray, shard_size: int, recipe: str = "auto", profile: bool = False) -> dict:
    table = metadata(len(x))
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    index = Index.create(path, dim=x.shape[1], recipe=recipe, shard_size=shard_size)
    ids = index.add_vectors(x, metadata=table)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    assert np.array_equal(ids, np.arange(len(x))), "a fresh index numbers rows 0..n-1"
    shards = index.manifest.shards
    disk = sum((s.faiss_bytes or 0) + (s.parquet_bytes or 0) for s in shards)
    faiss_bytes = sum(s.faiss_bytes or 0 for s in shards)
    info = {
        "index": index,
        "build_s": seconds,
        "shards": len(shards),
        "recipes": sorted({s.recipe for s in shards}),
        "params": [s.params for s in shards],
        "seal_recall": [s.recall for s in shards],
        "disk_bytes_per_vector": disk / len(x),
        "faiss_bytes_per_vector": faiss_bytes / len(x),
        "parquet_bytes_per_vector": (disk - faiss_bytes) / len(x),
    }
    if profiler:
        info["build_profile"] = build_stages(profiler)
    return info


def build_stages(profiler: cProfile.Profile) -> dict[str, float]:
    """Cumulative seconds of the engine's build stages, from a cProfile of add_vectors."""
    stats = pstats.Stats(profiler).stats  # (file, line, func) -> (cc, nc, tt, ct, callers)

    def cumulative(file: str, func: str) -> float:
        return round(sum(v[3] for (f, _, fn), v in stats.items() if f.endswith(file) and fn == func), 2)

    def builtin(name: str) -> float:
        return round(sum(v[3] for (f, _, fn), v in stats.items() if f == "~" and name in fn), 2)

    return {
        "add_vectors (all)": cumulative("index.py", "add_vectors"),
        "recipes.build (train + add)": cumulative("recipes.py", "build"),
        "recipes.tune": cumulative("recipes.py", "tune"),
        "faiss.knn in tune (exact search)": sum(
            round(v[3], 2) for (f, _, fn), v in stats.items() if fn == "knn" and f.endswith("extra_wrappers.py")
        ),
        "faiss.write_index": builtin("write_index"),
        "parquet write": cumulative("core.py", "write_table"),
        "sha256 of files": cumulative("hashing.py", "file_digest"),
        "l2_normalise": cumulative("base.py", "l2_normalise"),
    }


def train_rows(rows: int, nlist: int) -> int:
    """The engine's training-sample size (recipes.build), so raw FAISS does the same work."""
    cap = getattr(recipes, "TRAIN_MAX_ROWS", 100_000)
    return min(rows, max(cap, 64 * nlist))


def raw_build(x: np.ndarray, factory: str, params: dict[str, float]) -> dict:
    started = time.perf_counter()
    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        n = train_rows(len(x), ivf.nlist if ivf is not None else 1)
        rng = np.random.default_rng(SEED)
        index.train(x if n >= len(x) else x[np.sort(rng.choice(len(x), n, replace=False))])
    index.add(x)
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, float(value))
    return {"index": index, "build_s": time.perf_counter() - started, "factory": factory, "params": params}


def raw_flat(x: np.ndarray) -> dict:
    started = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return {"index": index, "build_s": time.perf_counter() - started}


def engine_single(index: Index, where: str | None = None) -> Callable:
    return lambda q: [hit.id for hit in index.search(vector=q, k=K, where=where)]


def engine_single_rows(index: Index) -> Callable:
    """As a results page uses it: every hit's row read (a hit reads its rows on first use)."""
    return lambda q: [hit.id for hit in index.search(vector=q, k=K) if hit.path]


def engine_batch(index: Index) -> Callable:
    return lambda qs: [[hit.id for hit in hits] for hits in index.search_batch(qs, k=K)]


def raw_single(index: faiss.Index, params: faiss.SearchParameters | None = None) -> Callable:
    return lambda q: index.search(q[None], K, params=params)[1][0]


def raw_batch(index: faiss.Index) -> Callable:
    return lambda qs: list(index.search(qs, K)[1])


def bitmap_params(mask: np.ndarray, nprobe: int) -> faiss.SearchParametersIVF:
    bits = np.packbits(mask, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
    params.referenced_objects = [selector, bits]
    return params


RSS_SCRIPT = r"""
import json, sys, time
import numpy as np
out = {}
def snap(label):
    # VmRSS = RssAnon (heap: what the process owns) + RssFile (mapped file pages, e.g. an mmap'ed index)
    values = {}
    for line in open("/proc/self/status"):
        key = line.split(":")[0]
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            values[key] = int(line.split()[1]) / 1024
    out[f"{label}_mib"] = values["VmRSS"]
    out[f"{label}_anon_mib"] = values["RssAnon"]
    out[f"{label}_file_mib"] = values["RssFile"]
    out["peak_mib"] = values["VmHWM"]
mode, path, qpath, params = sys.argv[1:5]
queries = np.load(qpath)
if mode == "engine":
    from mmsearch.index import Index
    snap("after_import")
    t = time.perf_counter(); index = Index.open(path); out["open_s"] = time.perf_counter() - t
    snap("after_open")
    search = lambda q: index.search(vector=q, k=10)
else:
    import faiss
    snap("after_import")
    t = time.perf_counter(); index = faiss.read_index(path)
    space = faiss.ParameterSpace()
    for name, value in json.loads(params).items():
        space.set_index_parameter(index, name, float(value))
    out["open_s"] = time.perf_counter() - t
    snap("after_open")
    search = lambda q: index.search(q[None], 10)
t = time.perf_counter(); search(queries[0]); out["first_query_s"] = time.perf_counter() - t
snap("after_first_query")
t = time.perf_counter()
for q in queries[:1000]:
    search(q)
out["qps_1000"] = min(1000, len(queries)) / (time.perf_counter() - t)
snap("after_1000_queries")
if mode == "engine":
    t = time.perf_counter(); index.search(vector=queries[0], k=10, where="width < 10")
    out["first_filtered_query_s"] = time.perf_counter() - t
    snap("after_filtered_query")
out["torch_loaded"] = "torch" in sys.modules
print(json.dumps(out))
"""


def fresh_process_rss(mode: str, path: Path, queries_file: Path, params: dict | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, mode, str(path), str(queries_file), json.dumps(params or {})],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in json.loads(done.stdout).items()}


# --------------------------------------------------------------------------- sections


MERGE_LOOP_SCRIPT = r"""
import sys, time
from pathlib import Path
import numpy as np
from mmsearch import Index
from mmsearch.store import writer
n = 10 * getattr(writer, "MERGE_FACTOR", 10)  # exactly MERGE_FACTOR full shards of 10 rows
index = Index.create(Path(sys.argv[1]) / "index", dim=8, shard_size=10)
started = time.perf_counter()
vectors = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
index.add_vectors(vectors, [{"path": str(i)} for i in range(n)])
print(time.perf_counter() - started, len(index.manifest.shards))
"""


def merge_loop_check(timeout_s: float = 15.0) -> dict:
    """Does add_vectors return when it fills exactly MERGE_FACTOR shards? (At 1M rows and the
    default 100k shards it must; in this engine version the size-tiered merge rewrites the
    full tier into the same full tier forever.)"""
    with tempfile.TemporaryDirectory(prefix="mmsearch-merge-") as tmp:
        try:
            done = subprocess.run(
                [sys.executable, "-c", MERGE_LOOP_SCRIPT, tmp],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                cwd=Path(__file__).resolve().parents[1],
            )
        except subprocess.TimeoutExpired:
            files = len(list(Path(tmp).glob("index/shards/*.faiss")))
            return {"returned": False, "timeout_s": timeout_s, "shard_files_written": files}
        if done.returncode:
            return {"returned": False, "error": done.stderr.strip().splitlines()[-1:]}
        seconds, shards = done.stdout.split()
        return {"returned": True, "seconds": round(float(seconds), 2), "shards": int(shards)}


def section_clustered(root: Path, args: argparse.Namespace, report: dict) -> None:
    rows, dim = args.rows, args.dim
    log(f"clustered: generating {rows:,} x {dim} ({args.clusters} clusters) + queries")
    mix = Mixture(args.clusters, dim, SEED)
    x = mix.sample(rows, SEED + 1)
    q = mix.sample(args.queries, SEED + 2)
    qb = mix.sample(args.batch_queries, SEED + 3)
    queries_file = root / "queries.npy"
    np.save(queries_file, mix.sample(1000, SEED + 4))
    width = (np.arange(rows) % 100).astype(np.int32)

    log("clustered: exact ground truth (numpy)")
    started = time.perf_counter()
    gt = exact_topk(x, q, GT_K)
    gt_batch = exact_topk(x, qb, K)
    gt_filtered = {where: exact_topk(x, q, K, mask=eval_filter(where, width)) for _, where in FILTERS}
    report["ground_truth_s"] = round(time.perf_counter() - started, 1)

    sec: dict = {"rows": rows, "dim": dim, "clusters": args.clusters, "queries": len(q)}
    report["clustered"] = sec

    log("clustered: engine, one shard (shard_size >= rows), add_vectors")
    one = engine_build(root / "one", x, shard_size=max(rows, 1), profile=True)
    log(f"  built in {one['build_s']:.1f}s: {one['recipes']} {one['params']} seal recall {one['seal_recall']}")
    one["rss"] = fresh_process_rss("engine", root / "one", queries_file)
    log(f"  fresh process: {one['rss']}")
    info = one["index"].manifest.shards[0]
    factory, params = info.recipe, dict(info.params)

    shard_size = args.shard_size
    if not report["merge_loop"]["returned"] and rows % shard_size == 0 and rows // shard_size >= 10:
        shard_size += 1  # 10 full shards of exactly shard_size rows never finish merging (see merge_loop)
    sec["sharded_shard_size"] = shard_size
    log(f"clustered: engine, default sharding ({shard_size:,} per shard)")
    sharded = engine_build(root / "sharded", x, shard_size=shard_size)
    log(f"  built in {sharded['build_s']:.1f}s: {sharded['shards']} shards {sharded['recipes']}")
    sharded["rss"] = fresh_process_rss("engine", root / "sharded", queries_file)
    log(f"  fresh process: {sharded['rss']}")

    log(f"clustered: raw FAISS {factory} {params}")
    same = raw_build(x, factory, params)
    log(f"  built in {same['build_s']:.1f}s")
    same["rss"] = fresh_process_rss("raw", root / "one" / "shards" / f"{info.name}.faiss", queries_file, params)
    log(f"  fresh process (engine's .faiss file, read by faiss alone): {same['rss']}")
    flat = raw_flat(x)
    log(f"  raw IndexFlatIP built in {flat['build_s']:.1f}s")

    log("clustered: single-query QPS, interleaved")
    nflat = min(args.flat_queries, len(q))
    single = interleaved(
        {
            "raw_flat": (raw_single(flat["index"]), q[:nflat]),
            "raw_same": (raw_single(same["index"]), q),
            "engine_one": (engine_single(one["index"]), q),
            "engine_one_rows": (engine_single_rows(one["index"]), q),
            "engine_sharded": (engine_single(sharded["index"]), q),
        },
        cold=("raw_same", "engine_one", "engine_sharded"),
    )
    sec["engine_one_rows_qps"] = round(single["engine_one_rows"]["qps"], 1)
    log("clustered: batched QPS")
    bsize = args.batch_size
    batch = {
        "raw_same": batched(raw_batch(same["index"]), qb, bsize),
        "engine_one": batched(engine_batch(one["index"]), qb, bsize),
        "engine_sharded": batched(engine_batch(sharded["index"]), qb, bsize),
        "raw_flat": batched(raw_batch(flat["index"]), qb[: min(bsize, args.flat_queries * 2)], bsize),
    }
    methods = {"raw_flat": flat, "raw_same": same, "engine_one": one, "engine_sharded": sharded}
    table = {}
    for name, m in methods.items():
        s = single[name]
        bq, bfound = batch[name]
        table[name] = {
            "build_s": round(m["build_s"], 1),
            "qps_single": round(s["qps"], 1),
            "qps_single_cold": round(s["cold_qps"], 1) if "cold_qps" in s else None,
            "ms_per_query": round(1000 / s["qps"], 3),
            "recall@10_single": round(recall(s["found"], gt), 4),
            "qps_batch": round(bq, 1),
            "recall@10_batch": round(recall(bfound, gt_batch[: len(bfound)]), 4),
            "queries_single": len(s["found"]),
            "queries_batch": len(bfound),
        }
        for key in ("shards", "recipes", "params", "seal_recall", "rss", "build_profile"):
            if key in m:
                table[name][key] = m[key]
        for key in ("disk_bytes_per_vector", "faiss_bytes_per_vector", "parquet_bytes_per_vector"):
            if key in m:
                table[name][key] = round(m[key], 1)
    table["raw_same"]["recipe"] = factory
    table["raw_same"]["params"] = params
    sec["methods"] = table
    for name, row in table.items():
        log(f"  {name}: {row['qps_single']} q/s single, recall {row['recall@10_single']}; batch {row['qps_batch']} q/s")

    log("clustered: per-query profile of Index.search (one shard, cProfile)")
    sec["search_profile"] = search_profile(one["index"], q)
    sec["search_profile_sharded"] = search_profile(sharded["index"], q)
    log("clustered: raw FAISS over the engine's shard files, one nprobe for all shards")
    sec["raw_over_shards"] = raw_over_shards(sharded["index"], q, gt)
    log(f"  {sec['raw_over_shards']}")
    del flat
    gc.collect()

    log("clustered: filtered search")
    nf = min(args.filter_queries, len(q))
    nprobe = int(params.get("nprobe", 1))
    filtered = {}
    for label, where in FILTERS:
        mask = eval_filter(where, width)
        truth = gt_filtered[where][:nf]
        first = {}
        for name, m in (("engine_one", one), ("engine_sharded", sharded)):
            started = time.perf_counter()
            m["index"].search(vector=q[0], k=K, where=where)
            first[name] = round(time.perf_counter() - started, 3)
        runs = interleaved(
            {
                "raw_same_bitmap": (raw_single(same["index"], bitmap_params(mask, nprobe)), q[:nf]),
                "engine_one": (engine_single(one["index"], where), q[:nf]),
                "engine_sharded": (engine_single(sharded["index"], where), q[:nf]),
            },
            cold=("raw_same_bitmap", "engine_one"),
        )
        filtered[label] = {
            "where": where,
            "allowed": int(mask.sum()),
            **{
                name: {"qps": round(r["qps"], 1), "recall@10": round(recall(r["found"], truth), 4)}
                | ({"first_query_s": first[name]} if name in first else {})
                for name, r in runs.items()
            },
        }
        log(f"  {label} {where}: " + ", ".join(f"{n} {v}" for n, v in filtered[label].items() if isinstance(v, dict)))
    sec["filtered"] = filtered
    del same
    gc.collect()

    log("clustered: 10% of the ids removed")
    rng = np.random.default_rng(SEED + 5)
    removed = np.sort(rng.choice(rows, rows // 10, replace=False))
    live = np.ones(rows, bool)
    live[removed] = False
    truth_live = np.array([[i for i in row if live[i]][:K] for row in gt])
    removal = {}
    for name, m in (("engine_one", one), ("engine_sharded", sharded)):
        before_dir = root / f"{name}-before"
        shutil.copytree(m["index"].path, before_dir, copy_function=os.link)  # shards are immutable
        before = Index.open(before_dir)
        started = time.perf_counter()
        count = m["index"].remove_ids(removed.tolist())
        remove_s = time.perf_counter() - started
        after = m["index"]
        started = time.perf_counter()
        after.search(vector=q[0], k=K)
        first_after = time.perf_counter() - started
        runs = interleaved(
            {"before": (engine_single(before), q), "after": (engine_single(after), q)}, cold=("before", "after")
        )
        manifest_file = after.path / "manifest.json"
        deletions = after.manifest.deletions
        removal[name] = {
            "removed": int(count),
            "remove_ids_s": round(remove_s, 2),
            "first_query_after_s": round(first_after, 3),
            "qps_before": round(runs["before"]["qps"], 1),
            "qps_after": round(runs["after"]["qps"], 1),
            "cost_increase": round(runs["before"]["qps"] / runs["after"]["qps"] - 1, 3),
            "recall@10_before": round(recall(runs["before"]["found"], gt), 4),
            "recall@10_after": round(recall(runs["after"]["found"], truth_live), 4),
            "removed_returned": int(sum(not live[i] for f in runs["after"]["found"] for i in f)),
            "manifest_bytes": manifest_file.stat().st_size,
            "deletions_file_bytes": (after.path / "shards" / deletions).stat().st_size if deletions else 0,
        }
        log(f"  {name}: {removal[name]}")
        del before
        gc.collect()
    sec["removal"] = removal
    del one, sharded, x
    gc.collect()


def raw_over_shards(index: Index, q: np.ndarray, gt: np.ndarray, nprobes=(1, 2, 4, 8, 16, 32)) -> dict:
    """Raw FAISS over the engine's own shard files (read into memory) with ONE nprobe for all
    shards, merged exactly: the recall the sharded layout gives per unit of work, to compare
    with the per-shard nprobe the engine's tuner chose (each shard tuned to its local recall)."""
    shards = []
    for info in index.manifest.shards:
        folder = index.path / "shards"
        ids = pq.read_table(folder / f"{info.name}.parquet", columns=["id"]).column("id").to_numpy()
        shards.append((faiss.read_index(str(folder / f"{info.name}.faiss")), ids))
    if not all(faiss.try_extract_index_ivf(i) is not None for i, _ in shards):
        return {}
    out = {}
    for nprobe in nprobes:
        params = faiss.SearchParametersIVF(nprobe=nprobe)

        def search(v: np.ndarray, params: faiss.SearchParametersIVF = params) -> np.ndarray:
            scores, found = [], []
            for shard, ids in shards:
                d, i = shard.search(v[None], K, params=params)
                scores.append(d[0])
                found.append(np.where(i[0] >= 0, ids[np.maximum(i[0], 0)], -1))
            return np.concatenate(found)[np.argsort(-np.concatenate(scores), kind="stable")[:K]]

        run = interleaved({"raw": (search, q)}, blocks=1)["raw"]
        out[str(nprobe)] = {"qps": round(run["qps"], 1), "recall@10": round(recall(run["found"], gt), 4)}
    return out


def eval_filter(where: str, width: np.ndarray) -> np.ndarray:
    op, value = where.split()[1:]
    return {"=": width == int(value), "<": width < int(value)}[op]


PROFILE_GROUPS = {  # substring of "file:line:function" -> group (first match wins)
    "_swigfaiss": "FAISS search (C++)",
    "catalog.py": "metadata rows (catalog.rows: ids to rows, rows.py)",
    "rows.py": "metadata rows (catalog.rows: ids to rows, rows.py)",
    "pyarrow": "metadata rows (catalog.rows: ids to rows, rows.py)",
    "<string>:2:__init__": "Index.search / _search / SearchResult",
    "pathlib.py": "snapshot refresh (pathlib, stat, manifest check)",
    "posix.stat": "snapshot refresh (pathlib, stat, manifest check)",
    "snapshot.py": "snapshot refresh (pathlib, stat, manifest check)",
    "manifest.py": "snapshot refresh (pathlib, stat, manifest check)",
    "genericpath.py": "snapshot refresh (pathlib, stat, manifest check)",
    "thread.py": "thread pool: waiting on shard workers (their FAISS time included)",
    "_base.py": "thread pool: waiting on shard workers (their FAISS time included)",
    "threading.py": "thread pool: waiting on shard workers (their FAISS time included)",
    "lock": "thread pool: waiting on shard workers (their FAISS time included)",
    "base.py": "query normalisation (l2_normalise)",
    "_linalg.py": "query normalisation (l2_normalise)",
    "searcher.py": "shard search + merge (searcher.py)",
    "shard.py": "shard search + merge (searcher.py)",
    "recipes.py": "search parameters (recipes.search_params)",
    "index.py": "Index.search / _search / SearchResult",
}


def search_profile(index: Index, q: np.ndarray) -> dict:
    """Where one Index.search spends its time: cProfile over the queries (profiler
    overhead inflates the Python share; the shares, not the totals, are the point)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for v in q:
        index.search(vector=v, k=K)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values())
    groups: dict[str, float] = {}
    for (f, line, fn), v in stats.stats.items():
        key = f"{f}:{line}:{fn}"
        group = next((g for sub, g in PROFILE_GROUPS.items() if sub in key), "other Python")
        groups[group] = groups.get(group, 0.0) + v[2]
    top = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:12]
    rows = [
        {
            "function": f"{Path(f).name}:{line}:{fn}",
            "calls_per_query": round(v[1] / len(q), 1),
            "tottime_us_per_query": round(v[2] / len(q) * 1e6, 1),
            "share": round(v[2] / total, 3),
        }
        for (f, line, fn), v in top
    ]
    return {
        "profiled_us_per_query": round(total / len(q) * 1e6, 1),
        "groups_us_per_query": {
            g: round(t / len(q) * 1e6, 1) for g, t in sorted(groups.items(), key=lambda item: -item[1])
        },
        "top_tottime": rows,
    }


def section_uniform(root: Path, args: argparse.Namespace, report: dict) -> None:
    rows, dim = args.uniform_rows, args.dim
    log(f"uniform: {rows:,} x {dim} random unit vectors (worst case), queries from the same distribution")
    x = uniform(rows, dim, SEED + 10)
    q = uniform(min(args.queries, 100), dim, SEED + 11)  # an IVF may need to probe most lists here
    gt = exact_topk(x, q, K)
    one = engine_build(root / "uniform", x, shard_size=max(rows, 1))
    info = one["index"].manifest.shards[0]
    log(f"  engine built in {one['build_s']:.1f}s: {info.recipe} {info.params} seal recall {info.recall}")
    same = raw_build(x, info.recipe, dict(info.params))
    flat = raw_flat(x)
    # The engine's own tuning queries: a database vector plus noise of norm 0.3.
    rng = np.random.default_rng(SEED + 12)
    near = unit(
        x[rng.choice(rows, len(q), replace=False)]
        + 0.3 / np.sqrt(dim) * rng.standard_normal((len(q), dim), dtype=np.float32)
    )
    gt_near = exact_topk(x, near, K)
    nflat = min(args.flat_queries, len(q))
    runs = interleaved(
        {
            "raw_flat": (raw_single(flat["index"]), q[:nflat]),
            "raw_same": (raw_single(same["index"]), q),
            "engine_one": (engine_single(one["index"]), q),
        }
    )
    near_found = [engine_single(one["index"])(v) for v in near]
    report["uniform"] = {
        "rows": rows,
        "dim": dim,
        "recipe": info.recipe,
        "params": dict(info.params),
        "seal_recall": info.recall,
        "engine_recall@10_on_perturbed_database_vectors": round(recall(near_found, gt_near), 4),
        "methods": {
            name: {
                "build_s": round(m["build_s"], 1),
                "qps_single": round(runs[name]["qps"], 1),
                "recall@10_single": round(recall(runs[name]["found"], gt), 4),
            }
            for name, m in (("raw_flat", flat), ("raw_same", same), ("engine_one", one))
        },
        "disk_bytes_per_vector": round(one["disk_bytes_per_vector"], 1),
    }
    log(f"  {report['uniform']}")


def section_compressed(root: Path, args: argparse.Namespace, report: dict) -> None:
    dim = args.dim
    budget = BUDGET_BYTES / TARGET_ROWS
    proposal_10m = recipes.resolve("auto", TARGET_ROWS, dim, max_bytes_per_vector=budget)
    per_shard = recipes.resolve("auto", args.shard_size, dim, max_bytes_per_vector=budget)
    rows = min(args.compressed_rows, args.rows)
    log(
        f"compressed: budget {budget:.0f} B/vector -> {proposal_10m} (one 10M shard), {per_shard} per "
        f"{args.shard_size:,} shard"
    )
    mix = Mixture(args.clusters, dim, SEED)
    x = mix.sample(rows, SEED + 1)  # same mixture and queries as the clustered set, fewer rows
    q = mix.sample(args.queries, SEED + 2)
    queries_file = root / "queries.npy"
    gt = exact_topk(x, q, K)
    built = engine_build(root / "compressed", x, shard_size=args.shard_size, recipe=per_shard)
    built["rss"] = fresh_process_rss("engine", root / "compressed", queries_file)
    flat = raw_flat(x)
    nflat = min(args.flat_queries, len(q))
    runs = interleaved(
        {"raw_flat": (raw_single(flat["index"]), q[:nflat]), "engine": (engine_single(built["index"]), q)}
    )
    rss = built["rss"]
    engine_mib = rss["after_1000_queries_mib"] - rss["after_import_mib"]
    out = {
        "budget_bytes_per_vector": round(budget, 1),
        "proposal_for_one_10M_shard": proposal_10m,
        "estimated_bytes_per_vector_10M": recipes.bytes_per_vector(proposal_10m, dim),
        "recipe_per_shard": per_shard,
        "rows": rows,
        "shards": built["shards"],
        "build_s": round(built["build_s"], 1),
        "seal_recall": built["seal_recall"],
        "params": built["params"],
        "qps_single": round(runs["engine"]["qps"], 1),
        "raw_flat_qps_single": round(runs["raw_flat"]["qps"], 1),
        "recall@10": round(recall(runs["engine"]["found"], gt), 4),
        "disk_bytes_per_vector": round(built["disk_bytes_per_vector"], 1),
        "faiss_bytes_per_vector": round(built["faiss_bytes_per_vector"], 1),
        "parquet_bytes_per_vector": round(built["parquet_bytes_per_vector"], 1),
        "rss": rss,
        "rss_bytes_per_vector": round(engine_mib * 2**20 / rows, 1),
    }
    out["at_10M"] = {
        "disk_gib": round(out["disk_bytes_per_vector"] * TARGET_ROWS / GIB, 2),
        "faiss_gib": round(out["faiss_bytes_per_vector"] * TARGET_ROWS / GIB, 2),
        "rss_gib_naive": round(out["rss_bytes_per_vector"] * TARGET_ROWS / GIB, 2),
        "flat_float32_gib": round(4 * dim * TARGET_ROWS / GIB, 2),
        "budget_gib": BUDGET_BYTES / GIB,
    }
    report["compressed"] = out
    log(f"  {out}")


DIAG_SCRIPT = r"""
import json, os, sys, tempfile, time
import numpy as np, faiss
dim = int(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.standard_normal((100_000, dim), dtype=np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
q = x[:200] + 0.01
flat = faiss.IndexFlatIP(dim)
flat.add(x)
out = {"threshold": faiss.cvar.distance_compute_blas_threshold}
for threshold in (out["threshold"], 20):
    faiss.cvar.distance_compute_blas_threshold = threshold
    t = time.perf_counter(); flat.search(q, 10)
    out[f"flat_200_queries_100k_s_threshold_{threshold}"] = round(time.perf_counter() - t, 3)
faiss.cvar.distance_compute_blas_threshold = out["threshold"]
ivf = faiss.index_factory(dim, "IVF1024,Flat", faiss.METRIC_INNER_PRODUCT)
ivf.train(x[:50_000]); ivf.add(x)
faiss.extract_index_ivf(ivf).nprobe = 16
v = x[:1000]
def per_call(fn, n=200):
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - t) / n * 1e6, 1)
out["numpy_q_at_1000xdim_T_us"] = per_call(lambda: q[:1] @ v.T)
out["ivf_search_then_numpy_matmul_us"] = per_call(lambda: (ivf.search(q[:1], 10), q[:1] @ v.T))
out["ivf_search_alone_us"] = per_call(lambda: ivf.search(q[:1], 10))
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "ivf.faiss")
    faiss.write_index(ivf, path)
    indexes = {"in_memory": faiss.read_index(path), "io_flag_mmap": faiss.read_index(path, faiss.IO_FLAG_MMAP)}
    out["mmap_invlists_class"] = type(
        faiss.downcast_InvertedLists(faiss.extract_index_ivf(indexes["io_flag_mmap"]).invlists)
    ).__name__
    for nprobe in (2, 16):
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        times = {name: [] for name in indexes}
        for _ in range(4):  # alternate, median of 4
            for name, index in indexes.items():
                for row in q[:5]:
                    index.search(row[None], 10, params=params)
                t = time.perf_counter()
                for row in q:
                    index.search(row[None], 10, params=params)
                times[name].append((time.perf_counter() - t) / len(q) * 1e6)
        for name, values in times.items():
            out[f"ivf_nprobe{nprobe}_{name}_us"] = round(float(np.median(values)), 1)
    del indexes
print(json.dumps(out))
"""


def section_diagnostics(args: argparse.Namespace, report: dict) -> None:
    """Two facts about this FAISS build that shape the engine's costs, each in a fresh process:
    the BLAS threshold of exhaustive search, and numpy BLAS calls next to FAISS's OpenMP."""
    out = {}
    for label, extra in (("default", {}), ("OPENBLAS_NUM_THREADS=1", {"OPENBLAS_NUM_THREADS": "1"})):
        done = subprocess.run(
            [sys.executable, "-c", DIAG_SCRIPT, str(args.dim)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, **extra},
        )
        out[label] = json.loads(done.stdout)
    report["diagnostics"] = out
    log(f"diagnostics: {out}")


NOOP_SCRIPT = r"""
import json, sys, time
started = time.perf_counter()
from mmsearch import Index
Index  # the lazy import happens here
imported = time.perf_counter() - started
index = Index.open(sys.argv[1])
summary = index.add([sys.argv[2]])
print(json.dumps({"seconds": summary.seconds, "found": summary.found, "unchanged": summary.unchanged,
                  "embedded": summary.embedded, "in_process_s": time.perf_counter() - started,
                  "import_s": imported, "torch_loaded": "torch" in sys.modules}))
"""


def section_noop_reindex(root: Path, args: argparse.Namespace, report: dict) -> None:
    folder = root / "texts"
    folder.mkdir()
    for i in range(args.files):
        (folder / f"note-{i:05d}.txt").write_text(f"note {i}: a short line about item {i % 97}\n")
    log(f"no-op re-index: indexing {args.files:,} text files with the demo model (first time)")
    started = time.perf_counter()
    index = Index.create(root / "texts-index", model="demo")
    summary = index.add([folder])
    first = time.perf_counter() - started
    del index
    runs = []
    for _ in range(args.noop_repeats):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", NOOP_SCRIPT, str(root / "texts-index"), str(folder)],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        wall = time.perf_counter() - started
        runs.append({"wall_s": round(wall, 3)} | json.loads(done.stdout))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - started
    best = min(runs, key=lambda r: r["wall_s"])
    report["noop_reindex"] = {
        "files": args.files,
        "first_index_s": round(first, 1),
        "first_index_seconds": summary.seconds,
        "python_c_pass_s": round(bare, 3),
        "wall_s_runs": [r["wall_s"] for r in runs],
        "wall_s_median": round(float(np.median([r["wall_s"] for r in runs])), 3),
        "best": best,
    }
    log(f"  {report['noop_reindex']}")


# --------------------------------------------------------------------------- report


def heap_bytes_per_row(method: dict, rows: int) -> float:
    """The engine's own heap per row in a fresh process (RssAnon, the largest seen after 1,000
    queries or after a filter, minus after the imports): metadata catalog, ids, masks,
    Arrow/DuckDB buffers and the non-mapped parts of FAISS. Mapped index pages are not in it, and
    the IVF lists a shard under ``MMAP_IVF_MIN_BYTES`` reads into the heap are taken out: they are
    the codes, which the 10M model counts on their own."""
    rss = method["rss"]
    steady = max(rss["after_1000_queries_anon_mib"], rss.get("after_filtered_query_anon_mib", 0.0))
    per_row = (steady - rss["after_import_anon_mib"]) * 2**20 / rows
    codes_in_heap = rows * method["faiss_bytes_per_vector"] / method["shards"] < MMAP_IVF_MIN_BYTES
    return max(0.0, per_row - (method["faiss_bytes_per_vector"] if codes_in_heap else 0.0))


def derive(report: dict) -> None:
    """Numbers computed from the measurements: the 10M model, targets and the limits paragraph."""
    comp, c = report.get("compressed"), report.get("clustered")
    if comp and c and "rss" in c["methods"].get("engine_one", {}):
        base = comp["rss"]["after_import_anon_mib"] * 2**20
        for name in ("engine_one", "engine_sharded"):
            per_row = heap_bytes_per_row(c["methods"][name], int(c["rows"]))
            comp[f"heap_bytes_per_row_{name}"] = round(per_row, 1)
            # process baseline + the compressed codes (one 5 GB shard: mapped, all resident for full speed)
            # + the engine's heap per row
            comp["at_10M"][f"rss_gib_modelled_{name}"] = round(
                (base + TARGET_ROWS * (comp["faiss_bytes_per_vector"] + per_row)) / GIB, 2
            )
    report["targets"] = targets(report)
    report["limits"] = limits(report)


def targets(report: dict) -> list[dict]:
    out = []

    def check(name: str, value: float, op: str, bound: float, detail: str) -> None:
        ok = value >= bound if op == ">=" else value <= bound
        out.append({"target": name, "measured": value, "bound": f"{op} {bound}", "pass": bool(ok), "detail": detail})

    loop = report.get("merge_loop")
    if loop:
        out.append(
            {
                "target": "add_vectors filling exactly 10 (MERGE_FACTOR) shards returns",
                "measured": loop.get("seconds", f"no return in {loop.get('timeout_s')} s"),
                "bound": "returns",
                "pass": bool(loop["returned"]),
                "detail": (
                    f"shard_size=10, 100 rows: {loop.get('shard_files_written')} shard files written before the "
                    "timeout (the size-tiered merge re-seals the full tier into the same full tier forever); the "
                    "sharded 1M case below therefore uses shard_size+1"
                    if not loop["returned"]
                    else f"{loop.get('shards')} shards"
                ),
            }
        )
    c = report.get("clustered")
    if c:
        m = c["methods"]
        one, same, flat = m["engine_one"], m["raw_same"], m["raw_flat"]
        check(
            "Index.search QPS / raw FAISS same recipe (1 shard)",
            round(one["qps_single"] / same["qps_single"], 3),
            ">=",
            0.8,
            f"{one['qps_single']} vs {same['qps_single']} q/s ({same['recipe']}, {same['params']})",
        )
        for name in ("engine_one", "engine_sharded"):
            check(
                f"Index.search QPS / raw flat QPS ({name})",
                round(m[name]["qps_single"] / flat["qps_single"], 2),
                ">=",
                5.0,
                f"{m[name]['qps_single']} vs {flat['qps_single']} q/s at {c['rows']:,} rows",
            )
            check(f"recall@10 unfiltered ({name})", m[name]["recall@10_single"], ">=", 0.95, "clustered queries")
        for label, f in c["filtered"].items():
            for name in ("engine_one", "engine_sharded"):
                check(f"filtered recall@10 {label} ({name})", f[name]["recall@10"], ">=", 0.95, f["where"])
                check(
                    f"filtered QPS / raw flat QPS {label} ({name})",
                    round(f[name]["qps"] / flat["qps_single"], 2),
                    ">=",
                    0.5,
                    f"{f[name]['qps']} vs {flat['qps_single']} q/s",
                )
        for name, r in c["removal"].items():
            check(
                f"query cost with 10% removed ({name})",
                r["cost_increase"],
                "<=",
                0.10,
                f"{r['qps_before']} -> {r['qps_after']} q/s",
            )
            check(f"manifest size after removal ({name}), bytes", r["manifest_bytes"], "<=", 100_000, "")
    n = report.get("noop_reindex")
    if n:
        check(
            f"no-op re-index of {n['files']:,} files, fresh process (s)",
            n["wall_s_median"],
            "<=",
            2.0,
            f"stages {n['best']['seconds']}",
        )
    comp = report.get("compressed")
    if comp:
        a = comp["at_10M"]
        key = "rss_gib_modelled_engine_sharded"
        check(
            "10M x 512 resident memory (GiB, extrapolated)",
            a.get(key, a["rss_gib_naive"]),
            "<=",
            8.0,
            f"{comp['recipe_per_shard']} codes + the default-sharding heap per row"
            if key in a
            else f"{comp['recipe_per_shard']}, naive",
        )
    return out


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(int(mem.split()[1]) / 2**20, 1),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "faiss_distance_compute_blas_threshold": faiss.cvar.distance_compute_blas_threshold,
        "load_average_at_start": os.getloadavg(),
        "engine": engine_version(),
    }


def engine_version() -> str:
    """The commit the engine was measured at, and whether mmsearch/ had uncommitted changes."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "mmsearch"], cwd=repo, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return commit.stdout.strip() + (" + uncommitted changes in mmsearch/" if dirty.stdout.strip() else "")


def fmt(value: object) -> str:
    return "" if value is None else str(value)


def markdown(report: dict) -> str:
    mc = report["machine"]
    lines = [
        "# Search at scale",
        "",
        f"Command: `{report['command']}`"
        + (
            f" (this page re-rendered from its JSON by `{report['rendered_with']}`: same measurements)"
            if report.get("rendered_with")
            else ""
        ),
        "",
        f"Machine: {mc['cpu']}, {mc['cpus']} CPUs, {mc['memory_gib']} GiB RAM, no GPU; Python {mc['python']}, "
        f"FAISS {mc['faiss']} ({mc['faiss_omp_threads']} OpenMP threads, distance_compute_blas_threshold "
        f"{mc['faiss_distance_compute_blas_threshold']}), numpy {mc['numpy']}; engine at "
        f"{mc.get('engine', 'unknown')}. Load average at start "
        f"{', '.join(f'{v:.1f}' for v in mc['load_average_at_start'])}, at end "
        f"{', '.join(f'{v:.1f}' for v in report['load_average_at_end'])} (shared machine: compare ratios, "
        f"which come from interleaved blocks). Total {report['total_s'] / 60:.1f} min.",
        "",
        "## Targets",
        "",
        "| target | measured | bound | result | detail |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for t in report["targets"]:
        lines.append(
            f"| {t['target']} | {t['measured']} | {t['bound']} | {'PASS' if t['pass'] else '**FAIL**'} | "
            f"{t['detail']} |"
        )
    c = report.get("clustered")
    if c:
        lines += [
            "",
            f"## Clustered, {c['rows']:,} x {c['dim']} ({c['clusters']:,} clusters), {c['queries']} single queries",
            "",
            f"engine_one: `shard_size >= rows` (one shard, the same FAISS index as raw_same); engine_sharded: "
            f"`shard_size={c['sharded_shard_size']:,}`"
            + (
                " (the default is 100,000, but 10 full shards of exactly that size never finish merging: see the "
                "first target)."
                if c["sharded_shard_size"] != int(report["args"]["shard_size"])
                else " (the default)."
            ),
            "",
            "| method | build s | single q/s (first pass) | ms/query | recall@10 | batch q/s | batch recall@10 "
            "| disk B/vector | fresh process RSS MiB: import / 1st query / 1,000 queries / + a filter "
            "[heap + mapped] | shards, recipe, params, seal recall |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for name, m in c["methods"].items():
            rss = m.get("rss")
            rss_text = ""
            if rss:
                last = "after_filtered_query" if "after_filtered_query_mib" in rss else "after_1000_queries"
                rss_text = (
                    f"{rss['after_import_mib']:.0f} / {rss['after_first_query_mib']:.0f} / "
                    f"{rss['after_1000_queries_mib']:.0f}"
                    + (f" / {rss['after_filtered_query_mib']:.0f}" if last == "after_filtered_query" else "")
                    + f" [{rss[last + '_anon_mib']:.0f} + {rss[last + '_file_mib']:.0f}]"
                )
            recipe = (
                f"{m['shards']} x {', '.join(m['recipes'])}, nprobe "
                f"{sorted({int(p.get('nprobe', 0)) for p in m['params']})}, seal recall "
                f"{min(m['seal_recall'])}-{max(m['seal_recall'])}"
                if "shards" in m
                else m.get("recipe", "IndexFlatIP") + (f", {m['params']}" if m.get("params") else "")
            )
            cold = f" ({m['qps_single_cold']})" if m.get("qps_single_cold") else ""
            lines.append(
                f"| {name} | {m['build_s']} | {m['qps_single']}{cold} | {m['ms_per_query']} | "
                f"{m['recall@10_single']} | {m['qps_batch']} | {m['recall@10_batch']} | "
                f"{fmt(m.get('disk_bytes_per_vector'))} | {rss_text} | {recipe} |"
            )
        lines += [
            "",
            "Single q/s: steady state in interleaved blocks after a first pass over the same queries (its q/s in "
            "brackets: the engine reads a shard's IVF lists on first use, into memory below 4 GiB, memory-mapped "
            "above). raw_flat uses the first "
            f"{c['methods']['raw_flat']['queries_single']} queries only (it is slow). raw_same's RSS is FAISS alone "
            "reading the engine's .faiss file into memory. Fresh-process q/s over its first 1,000 queries: "
            + ", ".join(f"{n} {m['rss']['qps_1000']:.0f}" for n, m in c["methods"].items() if m.get("rss"))
            + ".",
        ]
        if "engine_one_rows_qps" in c:
            rows_qps, same_qps = c["engine_one_rows_qps"], c["methods"]["raw_same"]["qps_single"]
            lines[-1] += (
                " A hit reads its metadata row on first use: engine_one with every hit's row read (as a results "
                f"page does) answers {rows_qps} q/s, {rows_qps / same_qps:.2f}× raw_same, in the same blocks."
            )
        shards = c.get("raw_over_shards")
        if shards:
            lines += [
                "",
                f"Raw FAISS over the engine's {c['methods']['engine_sharded']['shards']} shard files with one nprobe "
                "for every shard, merged exactly (the engine tunes each shard to its own local recall@10 instead): "
                + ", ".join(f"nprobe {p}: {v['qps']} q/s, recall@10 {v['recall@10']}" for p, v in shards.items())
                + ".",
            ]
        prof = c["methods"]["engine_one"].get("build_profile")
        if prof:
            lines += [
                "",
                "Engine build (one shard), seconds by stage (cProfile cumulative): "
                + ", ".join(f"{k} {v}" for k, v in prof.items())
                + ".",
            ]
        lines += [
            "",
            "### Filtered (single queries)",
            "",
            "| selectivity | where | allowed rows | engine one shard q/s, recall@10 (1st query s) | engine sharded "
            "q/s, recall@10 (1st query s) | raw same recipe + IDSelectorBitmap q/s, recall@10 |",
            "| --- | --- | ---: | --- | --- | --- |",
        ]
        for label, f in c["filtered"].items():
            cells = [
                f"{f[n]['qps']}, {f[n]['recall@10']}"
                + (f" ({f[n]['first_query_s']})" if "first_query_s" in f[n] else "")
                for n in ("engine_one", "engine_sharded", "raw_same_bitmap")
            ]
            lines.append(f"| {label} | `{f['where']}` | {f['allowed']:,} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "### 10 % of the ids removed (before: a hard-linked copy of the index before `remove_ids`, queried in "
            "interleaved blocks)",
            "",
            "| index | removed | remove_ids s | q/s before | q/s after | cost +% | recall@10 before / after | removed "
            "ids returned | manifest bytes | deletions file bytes |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
        ]
        for name, r in c["removal"].items():
            lines.append(
                f"| {name} | {r['removed']:,} | {r['remove_ids_s']} | {r['qps_before']} | {r['qps_after']} | "
                f"{100 * r['cost_increase']:.1f} | {r['recall@10_before']} / {r['recall@10_after']} | "
                f"{r['removed_returned']} | "
                f"{r['manifest_bytes']:,} | {r['deletions_file_bytes']:,} |"
            )
        for key, label in (("search_profile", "one shard"), ("search_profile_sharded", "default sharding")):
            prof = c.get(key)
            if not prof:
                continue
            lines += [
                "",
                f"### Where one `Index.search` goes ({label}; cProfile, {prof['profiled_us_per_query']} µs/query "
                "profiled: the profiler inflates Python, read the shares)",
                "",
                "| group | µs/query |",
                "| --- | ---: |",
            ]
            lines += [f"| {g} | {t} |" for g, t in prof["groups_us_per_query"].items()]
            lines += ["", "| function | calls/query | tottime µs/query | share |", "| --- | ---: | ---: | ---: |"]
            lines += [
                f"| `{r['function']}` | {r['calls_per_query']} | {r['tottime_us_per_query']} | {r['share']} |"
                for r in prof["top_tottime"]
            ]
    u = report.get("uniform")
    if u:
        lines += [
            "",
            f"## Uniform random (worst case), {u['rows']:,} x {u['dim']}, engine one shard: {u['recipe']} "
            f"{u['params']}, "
            f"seal-time recall {u['seal_recall']}",
            "",
            "| method | build s | single q/s | recall@10 |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {n} | {m['build_s']} | {m['qps_single']} | {m['recall@10_single']} |" for n, m in u["methods"].items()
        ]
        lines += [
            "",
            "Engine recall@10 on the kind of query the seal-time tuner uses (a database vector plus noise of norm "
            "0.3): "
            f"{u['engine_recall@10_on_perturbed_database_vectors']}.",
        ]
    comp = report.get("compressed")
    if comp:
        a = comp["at_10M"]
        lines += [
            "",
            f"## Compressed recipe and the 10M x {report['args']['dim']} arithmetic",
            "",
            f"Budget 8 GiB / 10M = {comp['budget_bytes_per_vector']} B/vector. `recipes.resolve('auto', 10_000_000, "
            f"{report['args']['dim']}, max_bytes_per_vector=...)` proposes `{comp['proposal_for_one_10M_shard']}` "
            f"(estimated {comp['estimated_bytes_per_vector_10M']} B/vector); per {report['args']['shard_size']:,}-row "
            "shard "
            f"it proposes `{comp['recipe_per_shard']}`, built here on {comp['rows']:,} clustered rows "
            f"({comp['shards']} shards, "
            f"{comp['build_s']} s, tuned {comp['params'][0]}, seal recall {comp['seal_recall']}).",
            "",
            "| measured | value | at 10M |",
            "| --- | ---: | ---: |",
            f"| recall@10 (single queries) | {comp['recall@10']} | |",
            f"| single q/s (raw flat on the same rows: {comp['raw_flat_qps_single']}) | {comp['qps_single']} | |",
            f"| disk B/vector (faiss {comp['faiss_bytes_per_vector']} + parquet {comp['parquet_bytes_per_vector']}) | "
            f"{comp['disk_bytes_per_vector']} | {a['disk_gib']} GiB (faiss {a['faiss_gib']} GiB) |",
            "| resident B/vector of this index (RSS after 1,000 queries minus RSS after import) | "
            f"{comp['rss_bytes_per_vector']} "
            f"| {a['rss_gib_naive']} GiB (naive) |",
            f"| float32 vectors alone (Flat) | {4 * report['args']['dim']} | {a['flat_float32_gib']} GiB |",
        ]
        for name, label in (("engine_one", "one shard"), ("engine_sharded", "default sharding")):
            if f"rss_gib_modelled_{name}" in a:
                per_row = comp[f"heap_bytes_per_row_{name}"]
                lines.append(
                    f"| engine heap B/row ({label}, {int(c['rows']):,} rows: RssAnon after 1,000 queries or a filter, "
                    f"minus after import) | {per_row} | {per_row * TARGET_ROWS / GIB:.2f} GiB |"
                )
                lines.append(
                    f"| modelled resident ({label}): process baseline + compressed codes (mapped, all resident) + "
                    f"heap per row | | {a[f'rss_gib_modelled_{name}']} GiB |"
                )
    n = report.get("noop_reindex")
    if n:
        lines += [
            "",
            f"## No-op re-index of {n['files']:,} text files (demo model), fresh process",
            "",
            f"First index: {n['first_index_s']} s ({n['first_index_seconds']}). Second `Index.open` + `add` in a fresh "
            f"`python -c`: wall {n['wall_s_runs']} s (median {n['wall_s_median']}; `python -c pass` takes "
            f"{n['python_c_pass_s']} s); best run stages {n['best']['seconds']}, in-process "
            f"{n['best']['in_process_s']:.2f} s (importing mmsearch.index {n['best'].get('import_s', 0):.2f} s), "
            f"unchanged {n['best']['unchanged']:,}, embedded {n['best']['embedded']}, torch imported: "
            f"{n['best']['torch_loaded']}.",
        ]
    d = report.get("diagnostics")
    if d:
        base, one = d["default"], d["OPENBLAS_NUM_THREADS=1"]
        th = base["threshold"]
        lines += [
            "",
            "## Diagnostics (fresh processes)",
            "",
            f"- `faiss.cvar.distance_compute_blas_threshold` is {th} in this FAISS build (FAISS's source default is "
            "20): "
            f"`IndexFlatIP.search` of 200 queries over 100k x {report['args']['dim']} takes "
            f"{base[f'flat_200_queries_100k_s_threshold_{th}']} s, {base['flat_200_queries_100k_s_threshold_20']} s "
            "with the threshold at 20 (BLAS). The engine's seal-time tuner runs `faiss.knn` with 200 queries, so it "
            "takes the slow path.",
            f"- numpy `(1, d) @ (1000, d).T` (the engine's exact scoring of small filtered sets): "
            f"{base['numpy_q_at_1000xdim_T_us']} µs alone, {base['ivf_search_then_numpy_matmul_us']} µs together with "
            "an IVF "
            f"search ({base['ivf_search_alone_us']} µs alone) by default; with OPENBLAS_NUM_THREADS=1: "
            f"{one['numpy_q_at_1000xdim_T_us']}, {one['ivf_search_then_numpy_matmul_us']} and "
            f"{one['ivf_search_alone_us']} µs. "
            "numpy's OpenBLAS threads and FAISS's OpenMP threads spin against each other on 2 cores.",
        ]
        if "ivf_nprobe16_io_flag_mmap_us" in base:
            lines.append(
                "- The same IVF1024,Flat file (100k rows), searched after `read_index` into memory vs opened with "
                f"`IO_FLAG_MMAP` as the engine does above 4 GiB (FAISS then uses `{base['mmap_invlists_class']}`), "
                "warm, median "
                f"of 4 alternated rounds: nprobe 2 {base['ivf_nprobe2_in_memory_us']:.0f} vs "
                f"{base['ivf_nprobe2_io_flag_mmap_us']:.0f} µs, nprobe 16 {base['ivf_nprobe16_in_memory_us']:.0f} vs "
                f"{base['ivf_nprobe16_io_flag_mmap_us']:.0f} µs per query."
            )
    if report.get("limits"):
        lines += ["", "## What limits it", ""] + report["limits"]
    return "\n".join(lines) + "\n"


def recipe_nlist(factory: str) -> int:
    """The number of IVF lists in a factory string (1 for non-IVF recipes)."""
    found = re.search(r"IVF(\d+)", factory)
    return int(found.group(1)) if found else 1


def limits(report: dict) -> list[str]:
    """The "what limits it" paragraph, computed from this run's numbers."""
    out = []
    c = report.get("clustered")
    d = report.get("diagnostics", {}).get("default", {})
    if c:
        m = c["methods"]
        one, same, flat, sharded = m["engine_one"], m["raw_same"], m["raw_flat"], m["engine_sharded"]
        us = {name: 1e6 / row["qps_single"] for name, row in m.items()}
        groups = c.get("search_profile", {}).get("groups_us_per_query", {})
        faiss_share = groups.get("FAISS search (C++)", 0.0) / max(sum(groups.values()), 1e-9)
        heavy = [f"{g} {t:.0f} µs" for g, t in groups.items() if "FAISS" not in g][:4]
        mmap = ""
        one_shard_bytes = one["faiss_bytes_per_vector"] * int(c["rows"]) / one["shards"]
        if "ivf_nprobe16_io_flag_mmap_us" in d and one_shard_bytes >= MMAP_IVF_MIN_BYTES:
            mmap = (
                f" The FAISS part itself is slower than raw FAISS's: the engine opens shards with IO_FLAG_MMAP "
                f"({d['mmap_invlists_class']}), which took {d['ivf_nprobe16_io_flag_mmap_us']:.0f} µs against "
                f"{d['ivf_nprobe16_in_memory_us']:.0f} µs in memory for the same warm IVF file at nprobe 16 "
                "(diagnostics)."
            )
        out.append(
            f"- **Single queries: {one['qps_single'] / same['qps_single']:.2f}x raw FAISS on the same index.** "
            f"Raw FAISS ({same['recipe']}, {same['params']}) answers in {us['raw_same']:.0f} µs, `Index.search` in "
            f"{us['engine_one']:.0f} µs. Under the profiler FAISS is {100 * faiss_share:.0f} % of a query; the rest "
            "is " + ", ".join(heavy) + "." + mmap
        )
        shards = c.get("raw_over_shards", {})
        enough = next((p for p, v in shards.items() if v["recall@10"] >= 0.95), None)
        tuned = sorted({int(p.get("nprobe", 0)) for p in sharded["params"]})
        per_shard = int(c["rows"]) / sharded["shards"]
        scanned = sum(
            per_shard / int(recipe_nlist(r)) * p.get("nprobe", 0)
            for r, p in zip(sharded.get("recipe_per_shard", sharded["recipes"] * sharded["shards"]), sharded["params"])
        )
        scanned_one = int(c["rows"]) / int(recipe_nlist(one["recipes"][0])) * one["params"][0].get("nprobe", 0)
        text = (
            f"- **Default sharding: {sharded['qps_single']} q/s against {one['qps_single']} for one shard.** "
            f"{sharded['shards']} shards of {int(c['sharded_shard_size']):,} rows each have their own "
            f"{', '.join(sharded['recipes'])} quantizer and their own seal-time nprobe ({tuned}), chosen until that "
            f"shard's local top-10 reaches recall .95: about {scanned:,.0f} vectors scanned per query against "
            f"{scanned_one:,.0f} for the one-shard IVF at nprobe {int(one['params'][0].get('nprobe', 0))}, then a "
            "thread-pool "
            "fan-out on 2 cores."
        )
        if enough is not None:
            text += (
                f" Over the same shard files raw FAISS needs nprobe {enough} on every shard for a merged recall@10 of "
                f"{shards[enough]['recall@10']} ({shards[enough]['qps']} q/s, one thread, in memory)."
            )
        out.append(text)
        out.append(
            f"- Batched, the engine reaches {one['qps_batch']} q/s against raw FAISS {same['qps_batch']} q/s "
            f"({one['qps_batch'] / same['qps_batch']:.2f}x); the per-result metadata work does not batch."
        )
        out.append(
            f"- Exact search streams {c['rows'] * c['dim'] * 4 / GIB:.1f} GiB per query: raw flat "
            f"{flat['qps_single']} q/s single, {flat['qps_batch']} q/s batched (this FAISS build keeps batches "
            "below 128,000 queries off BLAS: see the diagnostics)."
        )
        f = c["filtered"]
        worst = min(
            ((label, n, v) for label, v in f.items() for n in ("engine_one", "engine_sharded")),
            key=lambda item: item[2][item[1]]["qps"],
        )
        out.append(
            "- **Filters keep recall** (every engine case >= "
            f"{min(v[n]['recall@10'] for v in f.values() for n in ('engine_one', 'engine_sharded'))}, where a bare "
            "IDSelectorBitmap at the tuned nprobe gets "
            f"{', '.join(str(v['raw_same_bitmap']['recall@10']) for v in f.values())} at 1/10/50 %), and pay for "
            "it in the exact path: a shard whose allowed rows are <= 20,000 reconstructs them from the index and "
            "scores them with numpy on every query. That threshold is per shard, so the sharded index goes exact "
            f"for the 10 % filter too; the slowest case is {worst[0]} on {worst[1]} at {worst[2][worst[1]]['qps']} q/s."
        )
        for name, r in c["removal"].items():
            out.append(
                f"- 10 % removed ({name}): {r['qps_before']} -> {r['qps_after']} q/s "
                f"({100 * r['cost_increase']:+.0f} % per query, recall@10 {r['recall@10_before']} -> "
                f"{r['recall@10_after']}, {r['removed_returned']} removed ids returned); manifest "
                f"{r['manifest_bytes']:,} bytes, the ids in a {r['deletions_file_bytes']:,}-byte deletions file."
            )
        e, r = one.get("rss"), same.get("rss")
        if e and r:
            last = "after_filtered_query" if "after_filtered_query_mib" in e else "after_1000_queries"
            per_row = {n: heap_bytes_per_row(m[n], int(c["rows"])) for n in ("engine_one", "engine_sharded")}
            out.append(
                f"- **Memory.** After 1,000 queries and a filter the one-shard engine process holds "
                f"{e[f'{last}_mib']:.0f} MiB: {e[f'{last}_anon_mib']:.0f} MiB heap + {e[f'{last}_file_mib']:.0f} MiB "
                f"of mapped index pages (FAISS alone, index read into memory: {r['after_1000_queries_mib']:.0f} MiB). "
                f"Its heap peaks {per_row['engine_one']:.0f} B per row above the imports "
                f"({per_row['engine_sharded']:.0f} B with the default sharding): every shard's metadata in Arrow, ids, "
                "sorted id arrays, masks, DuckDB. At 10M rows that is "
                f"{per_row['engine_sharded'] * TARGET_ROWS / GIB:.1f} GiB before any vector."
            )
        prof = one.get("build_profile")
        if prof:
            out.append(
                f"- **Build.** One shard: {one['build_s']} s through `add_vectors` against {same['build_s']} s for raw "
                "FAISS train + add of the same recipe (builds run minutes apart, not interleaved: the load average "
                "moves them more than the code does); stages: " + ", ".join(f"{k} {v} s" for k, v in prof.items()) + "."
            )
    u = report.get("uniform")
    if u:
        e = u["methods"]["engine_one"]
        out.append(
            f"- **Uniform random vectors** (no structure): the tuner picked {u['params']} for {u['recipe']} "
            f"(seal-time recall {u['seal_recall']}), i.e. an exhaustive scan: recall@10 {e['recall@10_single']} at "
            f"{e['qps_single']} q/s, raw same recipe {u['methods']['raw_same']['qps_single']}, raw flat "
            f"{u['methods']['raw_flat']['qps_single']} q/s."
        )
    comp = report.get("compressed")
    if comp:
        a = comp["at_10M"]
        out.append(
            f"- **10M x {report['args']['dim']}** cannot be Flat in 8 GiB ({a['flat_float32_gib']} GiB of float32 "
            f"alone). {comp['recipe_per_shard']} measured {comp['faiss_bytes_per_vector']} B/vector of FAISS codes "
            f"(recall@10 {comp['recall@10']}): {a['faiss_gib']} GiB at 10M"
            + (
                f"; with the default sharding's heap per row, {a['rss_gib_modelled_engine_sharded']} GiB resident "
                f"against the 8 GiB budget: {comp['heap_bytes_per_row_engine_sharded']} B/row of engine heap on top "
                f"of {comp['faiss_bytes_per_vector']} B/row of codes."
                if "rss_gib_modelled_engine_sharded" in a
                else "."
            )
        )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="clustered vectors (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=5_000)
    parser.add_argument("--queries", type=int, default=200, help="single queries (also used for filters, removal)")
    parser.add_argument("--batch-queries", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--flat-queries", type=int, default=30, help="queries for the slow exact baseline")
    parser.add_argument("--filter-queries", type=int, default=100)
    parser.add_argument("--shard-size", type=int, default=100_000, help="the engine's default sharding")
    parser.add_argument("--uniform-rows", type=int, default=200_000)
    parser.add_argument("--compressed-rows", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=10_000, help="text files for the no-op re-index")
    parser.add_argument("--noop-repeats", type=int, default=5)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["clustered", "uniform", "compressed", "reindex", "diagnostics"]
    )
    parser.add_argument("--quick", action="store_true", help="100k smoke run (sharded case: 50k per shard)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: system temp)")
    parser.add_argument("--render", type=Path, default=None, help="only re-render this search.json into --out")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.uniform_rows, args.compressed_rows = 100_000, 50_000, 100_000
        args.shard_size, args.queries, args.batch_queries = 50_000, 100, 500
        args.filter_queries, args.flat_queries, args.clusters = 50, 20, 1_000
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render:  # re-derive and re-render a report from its JSON (no measurement)
        report = json.loads(args.render.read_text())
        report["rendered_with"] = f"python benchmarks/search.py --render {args.render}"
        derive(report)
        write(report, args.out)
        return
    command = "python benchmarks/search.py" + (" " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else "")
    report: dict = {
        "command": command,
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    started = time.perf_counter()
    report["merge_loop"] = merge_loop_check()
    log(f"merge-loop check (add_vectors of exactly MERGE_FACTOR full shards): {report['merge_loop']}")
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="mmsearch-bench-") as tmp:
        root = Path(tmp)
        if "clustered" not in args.skip:
            section_clustered(root, args, report)
        if "uniform" not in args.skip:
            section_uniform(root, args, report)
        if "compressed" not in args.skip:
            if not (root / "queries.npy").exists():
                np.save(root / "queries.npy", Mixture(args.clusters, args.dim, SEED).sample(1000, SEED + 4))
            section_compressed(root, args, report)
        if "reindex" not in args.skip:
            section_noop_reindex(root, args, report)
        if "diagnostics" not in args.skip:
            section_diagnostics(args, report)
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["load_average_at_end"] = os.getloadavg()
    write(report, args.out)


def write(report: dict, out: Path) -> None:
    derive(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = markdown(report)
    (out / "search.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
