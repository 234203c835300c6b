"""Search quality of the demo model on a held-out synthetic world, through the public API.

Generates a world with a seed the model never saw in training, indexes it with
``mmsearch.Index`` (images, the captions table and, when the model has an ear, the
sounds), then scores every query direction with ground truth from the generator:

* text→X: one query per shape×colour class ("a red circle"); relevant = same
  colour and shape (and a single object, as the query says); text[zh]→X: the same
  queries in Chinese ("一个红色的圆形");
* image→X / audio→X: a fixed sample of items as queries; relevant = same colour
  and shape; the query item itself is excluded;
* zero-shot image→class: top-1 over the class captions, in each language.

Each direction is measured on the default recipe (``auto``: exact flat shards at
this size) and on ``hnsw`` (what ``auto`` picks for shards of 50k+ vectors).

    python benchmarks/quality.py            # ≈ 2-4 min on 2 cores
    python benchmarks/quality.py --images 500 --queries 100   # quicker look

Writes benchmarks/results/quality.json and quality.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mmsearch import Index, world
from mmsearch.evaluation import Scorer

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="held-out world size")
    parser.add_argument("--queries", type=int, default=300, help="item queries per file direction")
    parser.add_argument("--seed", type=int, default=20261125, help="world seed (training used others)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--model", default="demo", help="model spec to measure (default: the shipped demo)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        world.generate_world(root / "world", args.images, args.seed, sounds=True)
        generated = time.perf_counter() - started
        rows, timings = [], {"generate_s": round(generated, 1)}
        for recipe in ("auto", "hnsw"):
            started = time.perf_counter()
            index = Index.create(root / recipe, model=args.model, recipe=recipe)
            index.add([root / "world"])
            timings[f"index_{recipe}_s"] = round(time.perf_counter() - started, 1)
            scorer = Scorer(index, root / "world", k=args.k, queries=args.queries, seed=args.seed)
            started = time.perf_counter()
            for direction in scorer.directions(world.LANGUAGES):
                rows.append({"recipe": recipe, **scorer.score(direction)})
            rows += [{"recipe": recipe, **scorer.zero_shot(language=language)} for language in world.LANGUAGES]
            timings[f"score_{recipe}_s"] = round(time.perf_counter() - started, 1)

    report = {
        "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "world": {"images": args.images, "seed": args.seed, "classes": len(world.CLASSES)},
        "k": args.k,
        "rows": rows,
        "seconds": timings,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (RESULTS / "quality.md").write_text(table)
    print(table)


def markdown(report: dict) -> str:
    k = report["k"]
    lines = [
        f"# Search quality: {report['model']} model, held-out world ({report['world']['images']} images, "
        f"seed {report['world']['seed']})",
        "",
        f"Command: `{report['command'].strip()}`",
        "",
        f"| recipe | direction | queries | precision@{k} | recall@{k} |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in report["rows"]:
        recall = "" if row.get("recall") is None else f"{row['recall']:.3f}"
        lines.append(f"| {row['recipe']} | {row['direction']} | {row['queries']} | {row['precision']:.3f} | {recall} |")
    lines += ["", "Seconds: " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
