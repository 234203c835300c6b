"""What the query-vector check (``mmsearch.checks.query_vectors``) adds to ``Index.search(vector=...)``.

Baseline, measured in the same run: ``np.atleast_2d``, what ``search`` did with a vector before the
check. For context, a whole ``search(vector=...)`` over a flat index of ``--rows`` vectors. Fixed seed;
the median of ``--repeats`` timings of ``--number`` calls each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from rerun import command_line, publish

from mmsearch import Index, checks


def per_call_us(call, number: int, repeats: int) -> float:
    return statistics.median(timeit.repeat(call, number=number, repeat=repeats)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(args.dim).astype(np.float32)
    baseline = per_call_us(lambda: np.atleast_2d(vector), args.number, args.repeats)
    checked = per_call_us(lambda: checks.query_vectors(vector, args.dim, batch=False), args.number, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        idx = Index.create(Path(folder) / "index", dim=args.dim, recipe="Flat")
        idx.add_vectors(rng.standard_normal((args.rows, args.dim)).astype(np.float32), [{"path": "x"}] * args.rows)
        search = per_call_us(lambda: idx.search(vector=vector, k=10), max(1, args.number // 100), args.repeats)
    report = {
        "command": command_line("query_check.py", parser, args),
        "dim": args.dim,
        "rows": args.rows,
        "atleast_2d_us": round(baseline, 3),
        "check_us": round(checked, 3),
        "added_us": round(checked - baseline, 3),
        "search_us": round(search, 1),
        "added_share_of_search": round((checked - baseline) / search, 5),
    }
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"| per query, float32 vector of dim {args.dim} | µs |",
        "| --- | ---: |",
        f"| `np.atleast_2d` (before) | {baseline:.2f} |",
        f"| `checks.query_vectors` (now) | {checked:.2f} |",
        f"| added by the check | {checked - baseline:.2f} |",
        f"| whole `search(vector=..., k=10)`, flat index of {args.rows:,} rows | {search:.1f} |",
        f"| check's share of that search | {100 * (checked - baseline) / search:.2f}% |",
    ]
    publish("query_check", report, lines)


if __name__ == "__main__":
    main()
