"""Compare re-ranker weight sets on a validation world, to choose one without the benchmark's world.

Scores every (query, top-50 candidate) pair the way ``benchmarks/rerank.py`` does (same
queries, same candidates, same ``min_prob`` rules), but from the towers' features of the
rendered scenes instead of an index, so one weight set takes seconds, not minutes. Use a
world seed the benchmark does not (training uses 0, calibration 4711, the benchmark 20261125):
the default 2024 is the training script's held-out world, which only ever printed P@10.

    python benchmarks/rerank_validate.py mmsearch/models/demo /tmp/rr/run1 /tmp/rr/run2
    python benchmarks/rerank_validate.py --image-queries 120 --image-absent 60 DIR   # fewer queries

Reported per folder (``rerank.json`` + ``rerank.safetensors``) and direction: precision,
recall and absent-thing queries left empty at ``min_prob`` 0.5, and the best recall at any
threshold that leaves at least 95% of absent-thing queries empty (the issue's two targets at
once). Writes benchmarks/results/rerank-validate.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_rerank as training
from rerank import QUERIES, kept_at, queries

from mmsearch import world
from mmsearch.rerank.demo import DemoTowers, load_matcher

RESULTS = Path(__file__).parent / "results"
DEPTH = 50
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.01), 2)
EMPTY_TARGET = 0.95


def judged(matcher, calibration, items: training.Items, texts: training.Texts, asked: list[str]) -> list[tuple]:
    """Per query, as ``benchmarks/rerank.py`` judges it: (true matches among the items, the
    top-``DEPTH`` candidates' match_prob, their labels)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(asked), 32):
            part = asked[start : start + 32]
            pairs = training.mine(items, texts, part, DEPTH, np.random.default_rng(0), train=False)
            logits = training.logits_of(matcher, items, texts, part, pairs).numpy()
            probs = calibration(logits, items.modality).reshape(len(part), DEPTH)
            labels = pairs[:, 2].reshape(len(part), DEPTH) > 0.5
            out += [
                (int(items.matches(text).sum()), p.tolist(), y.tolist())
                for text, p, y in zip(part, probs, labels, strict=True)
            ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", type=Path, help="folders holding rerank.json and rerank.safetensors")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--images", type=int, default=1000, help="validation world size (plus half as many sounds)")
    parser.add_argument("--image-queries", type=int, default=QUERIES["image"][0])
    parser.add_argument("--image-absent", type=int, default=QUERIES["image"][1])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    towers = DemoTowers("cpu")
    texts = training.Texts(towers)
    rng, sound_rng = np.random.default_rng(args.seed), np.random.default_rng([args.seed, 1])
    scenes = {
        "image": [world.sample_scene(rng) for _ in range(args.images)],
        "audio": [world.sample_scene(sound_rng) for _ in range(args.images // 2)],
    }
    counts = {"image": (args.image_queries, args.image_absent), "audio": QUERIES["audio"]}
    features: dict[tuple, dict[str, training.Items]] = {}
    rows = []
    for folder in args.weights:
        matcher, calibration = load_matcher(folder / "rerank.json", folder / "rerank.safetensors", "cpu")
        config = matcher.config
        key = (config.cells, config.whole_image, config.early_layer)
        if key not in features:
            features[key] = {m: training.Items(towers, scenes[m], m, config) for m in scenes}
        for offset, (modality, items) in enumerate(features[key].items()):
            present, absent = counts[modality]
            asked = queries(modality, present, args.seed + 1 + offset)
            asked += queries(modality, absent, args.seed + 11 + offset, lambda t, i=items: not i.matches(t).any())
            per_query = judged(matcher, calibration, items, texts, asked)
            sweep = {float(t): kept_at(per_query, t) for t in THRESHOLDS}
            best = max(
                ((s["recall"], t) for t, s in sweep.items() if s["absent_empty"] >= EMPTY_TARGET), default=(0.0, None)
            )
            row = {
                "weights": str(folder),
                "direction": f"text→{modality}",
                "queries_present": sum(1 for total, _, _ in per_query if total),
                "queries_absent": sum(1 for total, _, _ in per_query if not total),
                **{k: round(v, 3) for k, v in kept_at(per_query, 0.5).items()},
                "best_recall_with_absent_empty": round(best[0], 3),
                "at_min_prob": best[1],
            }
            rows.append(row)
            print(row, flush=True)
    report = {"command": "python benchmarks/rerank_validate.py " + " ".join(sys.argv[1:]), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rerank-validate.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    size = f"{args.images} images, {args.images // 2} sounds"
    lines = [
        f"# Re-ranker weights on a validation world (seed {args.seed}, {size})",
        "",
        f"Command: `{report['command']}`",
        "",
        "| weights | direction | queries (present / absent) | precision at 0.5 | recall at 0.5 | absent empty at 0.5 "
        f"| best recall with ≥ {EMPTY_TARGET:.0%} absent empty (at min_prob) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['weights']} | {r['direction']} | {r['queries_present']} / {r['queries_absent']} "
            f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['absent_empty']:.3f} "
            f"| {r['best_recall_with_absent_empty']:.3f} ({r['at_min_prob']}) |"
        )
    (RESULTS / "rerank-validate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
