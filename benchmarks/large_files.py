"""Large files in parts, against the same files decoded as one job, measured in the same run.

* a long text of world captions indexed end to end by ``mmsearch index`` (demo model,
  a subprocess per run) cut into parts and as one job: wall time, seconds until its first
  rows are searchable (a reader polls the index), and how much of the file a rerun
  embeds again after the ingest is killed (SIGKILL) half-way;
* a caption table with many rows, decoded alone: peak memory of decoding the whole table
  against one part of it (a fresh process per measurement).

    python benchmarks/large_files.py                    # ≈ 8 min on 2 shared cores
    python benchmarks/large_files.py --passages 100000  # a longer text

Writes benchmarks/results/large_files.json and large_files.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from rerun import command_line, publish

from mmsearch import Index, world
from mmsearch.store import manifest as manifest_io

SEED = 5
POLL_S = 0.2


def write_text(path: Path, passages: int) -> int:
    """Paragraphs of world captions, one passage each; returns the passages written."""
    rng = np.random.default_rng(SEED)
    paragraphs = [" ".join(world.captions(world.sample_scene(rng), rng)[:2]) for _ in range(passages)]
    path.write_text("\n\n".join(paragraphs))
    return passages


def write_table(path: Path, rows: int) -> None:
    rng = np.random.default_rng(SEED)
    captions = [world.caption(world.sample_scene(rng)) for _ in range(1000)]
    with path.open("w") as handle:
        handle.write("id,caption,source\n")
        for n in range(rows):
            handle.write(f"k{n},{captions[n % 1000]},generated\n")


def rows_visible(index: Path) -> int:
    if not manifest_io.exists(index):
        return 0
    return int(Index.open(index).sql("SELECT count(*) AS n FROM items").to_pylist()[0]["n"])


def ingest(folder: Path, index: Path, part_size: int, kill_after_s: float | None = None) -> dict:
    """Run ``mmsearch index`` on ``folder``; poll until its first rows are searchable; with
    ``kill_after_s``, SIGKILL its process group then."""
    command = [sys.executable, "-m", "mmsearch.cli", "index", str(folder), "--index", str(index), "--model", "demo"]
    command += ["--part-size", str(part_size), "--checkpoint-every", "0", "--json"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    first_rows_s = None
    while process.poll() is None:
        elapsed = time.perf_counter() - started
        if kill_after_s is not None and elapsed >= kill_after_s:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return {"killed_at_s": round(elapsed, 1), "rows_kept": rows_visible(index)}
        if first_rows_s is None and rows_visible(index):
            first_rows_s = elapsed
        time.sleep(POLL_S)
    wall = time.perf_counter() - started
    summary = json.loads(process.stdout.read())
    return {"wall_s": round(wall, 1), "first_rows_s": round(first_rows_s or wall, 1), "vectors": summary["vectors"]}


def text_runs(root: Path, passages: int, parts: int) -> list[dict]:
    folder = root / "text"
    folder.mkdir()
    path = folder / "long.txt"
    write_text(path, passages)
    size = path.stat().st_size
    results = []
    for name, part_size in (("one job", size * 2), (f"{parts} parts", size // parts + 1)):
        clean = ingest(folder, root / f"index-{len(results)}", part_size)
        killed_index = root / f"index-killed-{len(results)}"
        killed = ingest(folder, killed_index, part_size, kill_after_s=clean["wall_s"] / 2)
        rerun = ingest(folder, killed_index, part_size)
        results.append(
            {
                "mode": name,
                "passages": passages,
                "megabytes": round(size / 2**20, 2),
                **clean,
                **killed,
                "rerun_vectors": rerun["vectors"],
                "rerun_share": round(rerun["vectors"] / clean["vectors"], 3),
            }
        )
        print(results[-1], flush=True)
    return results


MEMORY_PROBE = """
import resource, sys
from mmsearch.ingest.decode import DecodeOptions, Part, decode
decoded = decode(sys.argv[1], "table", DecodeOptions(), Part(0, int(sys.argv[2])))
assert decoded.error is None, decoded.error
print(len(decoded.pieces), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def table_memory(root: Path, rows: int, parts: int) -> list[dict]:
    path = root / "captions.csv"
    write_table(path, rows)
    results = []
    for count in (1, parts):
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(path), str(count)], capture_output=True, text=True, env=env
        )
        pieces, max_kib = out.stdout.split()
        results.append(
            {"parts": count, "rows": rows, "pieces_in_memory": int(pieces), "peak_mib": round(int(max_kib) / 1024)}
        )
        print(results[-1], flush=True)
    return results


def write(report: dict) -> None:
    text = report["text"]
    whole, split = text
    lines = [
        "# Large files in parts",
        "",
        f"Command: `{report['command']}` ({report['cpus']} CPUs, demo model, `mmsearch index` subprocesses)",
        "",
        f"A text of {whole['passages']} passages ({whole['megabytes']} MB), one job against parts:",
        "",
        "| mode | wall s | first rows searchable after s | rows kept by a kill at half time"
        " | embedded again by the rerun |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in text:
        lines.append(
            f"| {row['mode']} | {row['wall_s']} | {row['first_rows_s']} | {row['rows_kept']} of {row['vectors']}"
            f" (killed at {row['killed_at_s']} s) | {row['rerun_vectors']} ({row['rerun_share']:.0%}) |"
        )
    lines += [
        "",
        f"Parts / one job: wall {split['wall_s'] / whole['wall_s']:.2f}×, first rows after"
        f" {split['first_rows_s'] / whole['first_rows_s']:.2f}× the time, a rerun embeds"
        f" {split['rerun_share'] / max(whole['rerun_share'], 1e-9):.2f}× as much.",
        "",
        f"Decoding a caption table of {report['table'][0]['rows']} rows (a fresh process each):",
        "",
        "| decoded as | pieces in memory | peak RSS MiB |",
        "| --- | ---: | ---: |",
    ]
    for row in report["table"]:
        mode = "one job" if row["parts"] == 1 else f"one of {row['parts']} parts"
        lines.append(f"| {mode} | {row['pieces_in_memory']} | {row['peak_mib']} |")
    publish("large_files", report, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=30_000, help="passages in the long text")
    parser.add_argument("--parts", type=int, default=6, help="parts the text and the table are cut into")
    parser.add_argument("--table-rows", type=int, default=1_000_000, help="rows of the caption table")
    args = parser.parse_args()
    command = command_line("large_files.py", parser, args)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        report = {
            "command": command,
            "cpus": os.cpu_count(),
            "table": table_memory(root, args.table_rows, args.parts * 4),
            "text": text_runs(root, args.passages, args.parts),
        }
    write(report)


if __name__ == "__main__":
    main()
