"""Import and export stream: peak memory does not grow with the number of rows.

Generates a clip-retrieval layout (``img_emb/img_emb_N.npy`` float32 + ``metadata/metadata_N.parquet``)
of 64-d vectors, then in fresh processes measures peak RSS and rows/s of

* ``mmsearch import`` of 1/10 of the rows (baseline) and of all of them,
* ``mmsearch export`` of both imported indexes,
* loading the same arrays and metadata whole with numpy/pyarrow (what a non-streaming
  import would hold at least).

    python benchmarks/interop.py                 # 1,000,000 × 64, ≈ 3-5 min on 2 cores
    python benchmarks/interop.py --rows 200000   # quicker

Writes benchmarks/results/interop.json and interop.md. Shards use the exact ``flat`` recipe
so the figures are the import path's, not FAISS training's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
SEED = 11
DIM = 64
CHUNK = 250_000

# Runs a command's main and reports the process's peak RSS (KiB on Linux) on the last line of stderr.
PEAK = """
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
finally:
    print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""

LOAD_WHOLE = """
import sys
from pathlib import Path
import numpy as np, pyarrow.parquet as pq
root = Path(sys.argv[1])
vectors = np.concatenate([np.load(p) for p in sorted((root / "img_emb").glob("*.npy"))])
table = pq.read_table(root / "metadata")
print(vectors.shape, table.num_rows)
"""


def source(folder: Path, rows: int) -> None:
    """``rows`` clustered unit vectors in chunks of 250,000, with aligned metadata."""
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    centres = np.random.default_rng(SEED).standard_normal((1000, DIM)).astype(np.float32)
    for n, start in enumerate(range(0, rows, CHUNK)):
        count = min(CHUNK, rows - start)
        rng = np.random.default_rng(SEED + n)
        vectors = centres[rng.integers(0, 1000, count)] + 0.3 * rng.standard_normal((count, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        np.save(folder / "img_emb" / f"img_emb_{n}.npy", vectors)
        ids = np.arange(start, start + count)
        table = pa.table({"url": [f"https://images.example/{i}.jpg" for i in ids], "width": ids % 2000})
        pq.write_table(table, folder / "metadata" / f"metadata_{n}.parquet")


def measured(args: list[str], script: str | None = None) -> dict:
    """Wall time and peak RSS of a fresh Python process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", script] if script else [sys.executable, "-c", PEAK, "mmsearch.cli"]
    started = time.perf_counter()
    done = subprocess.run([*command, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{args}: {done.stderr.strip()[-2000:]}")
    peak = None
    for line in done.stderr.splitlines():
        if line.startswith("peak_rss_kib"):
            peak = int(line.split()[1]) / 1024
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(peak, 1) if peak else None, "stdout": done.stdout}


def whole_load(folder: Path) -> dict:
    script = (
        "import resource\n"
        + LOAD_WHOLE
        + ("print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    )
    return measured([str(folder)], script)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    rows, small = args.rows, args.rows // 10
    work = Path(tempfile.mkdtemp(prefix="mmsearch-interop-"))
    try:
        source(work / "big", rows)
        source(work / "small", small)
        cases = []
        for folder, n in ((work / "small", small), (work / "big", rows)):
            index = work / f"index-{n}"
            run = measured(
                ["import", str(folder), "--index", str(index), "--dim", str(DIM), "--recipe", "flat", "--json"]
            )
            assert json.loads(run["stdout"])["rows"] == n
            cases.append({"case": f"mmsearch import {n:,} rows", "rows": n, **_rate(run, n)})
        for n in (small, rows):
            run = measured(["export", str(work / f"out-{n}"), "--index", str(work / f"index-{n}"), "--json"])
            cases.append({"case": f"mmsearch export {n:,} rows", "rows": n, **_rate(run, n)})
        run = whole_load(work / "big")
        cases.append(
            {"case": f"numpy + pyarrow load of all {rows:,} rows (not streamed)", "rows": rows, **_rate(run, rows)}
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data_mib = rows * DIM * 4 / 2**20
    result = {
        "rows": rows,
        "dim": DIM,
        "vector_data_mib": round(data_mib, 1),
        "cases": cases,
        "rss_ratio_all_over_tenth": {
            "import": round(cases[1]["peak_rss_mib"] / cases[0]["peak_rss_mib"], 2),
            "export": round(cases[3]["peak_rss_mib"] / cases[2]["peak_rss_mib"], 2),
        },
        "machine": f"{os.cpu_count()} cores",
        "command": "python benchmarks/interop.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "interop.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "interop.md").write_text(report(result))
    print(report(result))


def _rate(run: dict, rows: int) -> dict:
    return {"wall_s": run["wall_s"], "rows_s": round(rows / run["wall_s"]), "peak_rss_mib": run["peak_rss_mib"]}


def report(r: dict) -> str:
    lines = [
        "# Import and export in bounded memory",
        "",
        f"`{r['command'].strip()}` — {r['rows']:,} × {r['dim']} float32 vectors ({r['vector_data_mib']:.0f} MiB) "
        f"in chunks of {CHUNK:,}, {r['machine']}; each case a fresh process.",
        "",
        "| case | wall s | rows/s | peak RSS MiB |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {c['case']} | {c['wall_s']} | {c['rows_s']:,} | {c['peak_rss_mib']} |" for c in r["cases"]),
        "",
        f"Peak RSS for all rows / for a tenth of them: import {r['rss_ratio_all_over_tenth']['import']}×, "
        f"export {r['rss_ratio_all_over_tenth']['export']}×.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
