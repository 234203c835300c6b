"""Distributed ingest on one machine: the local path (baseline) vs ``--ray`` on a local
Ray runtime, the same generated JPEG photos and the demo model, in one run.

On one small machine Ray can only add overhead (a runtime, an actor that loads the model,
Ray Data scheduling): this measures that overhead, and the per-stage seconds show where
the time goes. Ray pays off with GPUs on several nodes, which this box does not have.

    python benchmarks/ingest_ray.py               # 400 photos, ≈ 2 min on 2 cores
    python benchmarks/ingest_ray.py --files 4000  # a bigger run

Writes benchmarks/results/ingest_ray.json and ingest_ray.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mmsearch import Index, world
from mmsearch.distributed.runtime import connect

RESULTS = Path(__file__).parent / "results"
SEED = 11


def run(root: Path, files: int) -> list[dict]:
    world.generate_world(root / "world", files, SEED, size=512, image_format="jpg")
    photos = root / "world" / "images"
    rows = []
    for mode in (None, "local"):
        index = Index.create(root / f"index-{mode}", model="demo", device="cpu")
        started = time.perf_counter()
        if mode is not None:
            connect(mode, num_cpus=os.cpu_count())
        summary = index.add([photos], ray=mode)
        seconds = time.perf_counter() - started
        rows.append(
            {
                "case": f"{files} JPEGs (512 px), " + ("local path (baseline)" if mode is None else "--ray local"),
                "value": round(files / seconds, 1),
                "unit": "files/s",
                "seconds": round(seconds, 2),
                "stages_s": summary.seconds,
                "nodes": getattr(summary, "nodes", None),
            }
        )
    rows[1]["ratio"] = round(rows[1]["value"] / rows[0]["value"], 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(Path(tmp), args.files)
    command = "python benchmarks/ingest_ray.py" + (f" --files {args.files}" if args.files != 400 else "")
    report = {"command": command, "cpus": os.cpu_count(), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest_ray.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Distributed ingest on one machine",
        "",
        f"Command: `{command}` ({report['cpus']} CPUs; seconds include the Ray runtime start)",
        "",
        "| case | value | seconds | ratio to baseline | seconds per stage |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in row["stages_s"].items())
        lines.append(
            f"| {row['case']} | {row['value']} {row['unit']} | {row['seconds']} | {row.get('ratio', '')} | {stages} |"
        )
    (RESULTS / "ingest_ray.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
