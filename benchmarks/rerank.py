"""Two-stage search on a held-out synthetic world: the vector stage alone vs. re-ranked.

Generates a world with a seed neither the demo model nor its re-ranker saw, indexes its
images and sounds with ``mmsearch.Index`` (demo model), then asks compositional queries
(count + colour + shape, with size and background for images: "two red circles on a
black background") drawn from another seed. Ground truth comes from the generator
(``world.parse_caption``: an unmentioned attribute matches anything). Reported:

* P@10 and nDCG@10 of the vector stage alone and re-ranked (depth 50), per direction
  (text→image, text→audio), over queries with at least one true match in the index;
* ``min_prob=0.5`` (with further queries for things the index lacks, ``--image-absent``):
  precision and recall of what is kept, the share of present-thing
  queries that keep something, and the share of absent-thing queries (no true match in the
  index) answered with an empty list; the same for the vector stage's ``min_score="auto"``;
* expected calibration error of ``match_prob`` over every judged (query, candidate) pair;
  how well ``match_prob`` and the cosine rank those pairs (AUC), and the ``min_prob=0.5``
  recall by what a query pins down (colour+count+shape, +size, +background);
* latency per query, vector stage alone vs. re-ranked at depth 20/50/100 with the
  re-ranker's feature cache empty (cold), at depth 50 warm (the same queries again), cold
  with the features prepared at ingest (``--rerank-features``), and where the cold
  re-ranking time goes (re-reading files vs. the towers vs. the matcher).

    python benchmarks/rerank.py                         # ≈ 3 min on 2 quiet cores
    python benchmarks/rerank.py --images 300 --image-queries 40 --image-absent 20 --audio-absent 20   # a quick look
    python benchmarks/rerank.py --threads 1             # one torch thread: on a shared box, less contention
    python benchmarks/rerank.py --images 2000 --image-queries 400    # a bigger run
    python benchmarks/rerank.py --images 5000 --image-absent 10 --audio-absent 0 --name rerank-5000  # denser world

Writes benchmarks/results/rerank.json and rerank.md (``--name``: NAME.json and NAME.md).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mmsearch import Index, world
from mmsearch.rerank.calibration import expected_calibration_error

RESULTS = Path(__file__).parent / "results"
DEPTH = 50
K = 10
SWEEP = (0.1, 0.2, 0.3, 0.5, 0.7)  # min_prob thresholds reported besides 0.5
DRAWS = 20_000  # scenes drawn in a row without a new query before ``queries`` gives up
# Per direction: compositional queries, then further ones for things the index lacks. Enough
# absent-thing image queries that one answered moves the emptiness share by under half a
# point; sounds have fewer distinct descriptions (no background), about 240 absent ones.
QUERIES = {"image": (240, 240), "audio": (120, 60)}


class Truth:
    """Attributes of every indexed item, by path."""

    def __init__(self, folder: Path, rows: list[dict]) -> None:
        self.rows = {str((folder / row["file"]).resolve()): row for row in rows}

    def relevant(self, query: str, path: str, modality: str) -> bool:
        return fits(self.rows[str(Path(path).resolve())], world.parse_caption(query, modality))

    def count(self, query: str, modality: str) -> int:
        prefix, asked = ("images/" if modality == "image" else "sounds/"), world.parse_caption(query, modality)
        return sum(fits(row, asked) for row in self.rows.values() if row["file"].startswith(prefix))


def fits(row: dict, named: dict) -> bool:
    return all(row[key] == value for key, value in named.items())


def queries(modality: str, n: int, seed: int, keep: Callable[[str], bool] = lambda text: True) -> list[str]:
    """Distinct compositional queries that ``keep`` accepts: what a scene shows, with its
    count (and size, background). Gives up, naming how many it found, when ``DRAWS`` scenes
    in a row add none (there are only so many distinct queries, fewer that a world lacks)."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    fruitless = 0
    while len(out) < n:
        fruitless += 1
        if fruitless > DRAWS:
            raise SystemExit(f"only {len(out)} distinct {modality} queries of this kind exist here; ask for fewer")
        scene = world.sample_scene(rng)
        forms = world.captions(scene, rng)[:4] if modality == "image" else world.sound_captions(scene)[:3]
        text = str(forms[rng.integers(len(forms))])
        if text not in out and keep(text):
            out.append(text)
            fruitless = 0
    return out


def auc(scores: list[float], labels: list[bool]) -> float:
    """The probability that a random true match outscores a random false one (ties count half)."""
    x, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # mid-ranks
    positives = y.sum()
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * (~y).sum()))


def form(query: str, modality: str) -> str:
    """What a query pins down, e.g. ``colour+count+shape+size``."""
    return "+".join(sorted(world.parse_caption(query, modality)))


def ndcg(labels: list[bool], total: int, k: int = K) -> float:
    gains = sum(1 / math.log2(i + 2) for i, hit in enumerate(labels[:k]) if hit)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(k, total)))
    return gains / ideal if ideal else 0.0


def quality(index: Index, truth: Truth, modality: str, texts: list[str]) -> tuple[dict, list, list]:
    """Ranking quality and thresholds for one direction; also the (prob, label) pairs."""
    present = {"p_vector": [], "p_rerank": [], "p_ideal": [], "ndcg_vector": [], "ndcg_rerank": []}
    kept_relevant = kept = relevant_in_index = relevant_in_candidates = 0
    present_answered = auto_present_answered = 0
    auto_kept = auto_kept_relevant = 0
    absent_empty = auto_absent_empty = absent = 0
    probs, labels, cosines = [], [], []
    by_form: dict[str, list[int]] = {}  # form -> [true matches kept at 0.5, true matches in the index]
    judged_queries: list[tuple[int, list[float], list[bool]]] = []  # (true matches in index, probs, labels)
    for text in texts:
        total = truth.count(text, modality)
        plain = index.search(text, modality=modality, k=DEPTH)
        judged = index.search(text, modality=modality, k=DEPTH, rerank=True, rerank_depth=DEPTH)
        auto = index.search(text, modality=modality, k=DEPTH, min_score="auto")
        plain_labels = [truth.relevant(text, h.path, modality) for h in plain]
        judged_labels = [truth.relevant(text, h.path, modality) for h in judged]
        probs += [h.match_prob for h in judged]
        cosines += [h.score for h in judged]
        labels += judged_labels
        judged_queries.append((total, [h.match_prob for h in judged], judged_labels))
        above = [label for h, label in zip(judged, judged_labels) if h.match_prob >= 0.5]
        auto_labels = [truth.relevant(text, h.path, modality) for h in auto]
        if total == 0:
            absent += 1
            absent_empty += not above
            auto_absent_empty += not auto
            continue
        present["p_vector"].append(sum(plain_labels[:K]) / K)
        present["p_rerank"].append(sum(judged_labels[:K]) / K)
        present["p_ideal"].append(min(K, total) / K)  # the ceiling: fewer than 10 true matches exist
        present["ndcg_vector"].append(ndcg(plain_labels, total))
        present["ndcg_rerank"].append(ndcg(judged_labels, total))
        kept += len(above)
        kept_relevant += sum(above)
        counts = by_form.setdefault(form(text, modality), [0, 0])
        counts[0] += sum(above)
        counts[1] += total
        relevant_in_index += total
        relevant_in_candidates += sum(judged_labels)
        present_answered += bool(above)
        auto_kept += len(auto)
        auto_kept_relevant += sum(auto_labels)
        auto_present_answered += bool(auto)
    n_present = len(present["p_vector"])
    ece = expected_calibration_error(np.array(probs), np.array(labels, dtype=float))
    row = {
        "direction": f"text→{modality}",
        "queries_present": n_present,
        "queries_absent": absent,
        **{key: round(statistics.fmean(values), 3) for key, values in present.items()},
        "min_prob_precision": round(kept_relevant / max(kept, 1), 3),
        "min_prob_recall": round(kept_relevant / max(relevant_in_index, 1), 3),
        "min_prob_recall_of_candidates": round(kept_relevant / max(relevant_in_candidates, 1), 3),
        "min_prob_present_answered": round(present_answered / max(n_present, 1), 3),
        "min_prob_absent_empty": round(absent_empty / max(absent, 1), 3),
        "auto_precision": round(auto_kept_relevant / max(auto_kept, 1), 3),
        "auto_recall": round(auto_kept_relevant / max(relevant_in_index, 1), 3),
        "auto_present_answered": round(auto_present_answered / max(n_present, 1), 3),
        "auto_absent_empty": round(auto_absent_empty / max(absent, 1), 3),
        "ece": round(ece, 4),
        "judged_pairs": len(probs),
        "auc_match_prob": round(auc(probs, labels), 4),
        "auc_cosine": round(auc(cosines, labels), 4),
        "recall_by_form": {
            k: {"recall": round(v[0] / max(v[1], 1), 3), "true": v[1]} for k, v in sorted(by_form.items())
        },
        "sweep": {str(t): sweep(judged_queries, t) for t in SWEEP},
    }
    return row, probs, labels


def sweep(judged: list[tuple[int, list[float], list[bool]]], threshold: float) -> dict:
    """:func:`kept_at`, rounded for the report."""
    return {key: round(value, 3) for key, value in kept_at(judged, threshold).items()}


def kept_at(judged: list[tuple[int, list[float], list[bool]]], threshold: float) -> dict[str, float]:
    """Precision, recall and the share of absent-thing queries left empty at one ``min_prob``;
    ``judged``: per query, (true matches in the index, candidates' probabilities, their labels)."""
    kept = kept_relevant = relevant = absent = absent_empty = 0
    for total, probs, labels in judged:
        above = [label for p, label in zip(probs, labels, strict=True) if p >= threshold]
        if total == 0:
            absent += 1
            absent_empty += not above
            continue
        kept += len(above)
        kept_relevant += sum(above)
        relevant += total
    return {
        "precision": kept_relevant / max(kept, 1),
        "recall": kept_relevant / max(relevant, 1),
        "absent_empty": absent_empty / max(absent, 1),
    }


def latency(index: Index, texts: list[str], depths: list[int]) -> dict:
    """Median milliseconds per query (k=10): the vector stage alone; re-ranked at each depth
    with the re-ranker's feature cache emptied before every query (cold: every candidate is
    re-read and re-encoded); and at depth 50 warm (the same queries again in the same process,
    as a server or a library user asking again would). The re-ranker's memory of recent query
    texts is emptied before every query, cold or warm: each query pays for encoding its text
    once, as the vector stage alone does."""
    reranker = index.reranker()
    cache = getattr(reranker, "cache", None)

    def timed(cold: bool = False, **options) -> float:
        for text in texts[:3]:
            index.search(text, k=K, **options)  # models loaded, pages cached
        seconds = []
        for text in texts:
            if cold and cache is not None:
                cache.clear()
            if hasattr(reranker, "forget_texts"):
                reranker.forget_texts()
            started = time.perf_counter()
            index.search(text, k=K, **options)
            seconds.append(time.perf_counter() - started)
        return statistics.median(seconds) * 1000

    base = timed()
    out = {"vector_ms": round(base, 2)}
    for depth in depths:
        ms = timed(cold=True, rerank=True, rerank_depth=depth)
        out[f"depth_{depth}_ms"] = round(ms, 2)
        out[f"depth_{depth}_ratio"] = round(ms / base, 2)
    if cache is not None:
        cache.clear()
        for text in texts:
            index.search(text, k=K, rerank=True, rerank_depth=DEPTH)  # the first pass fills the cache
        ms = timed(rerank=True, rerank_depth=DEPTH)
        out["warm_ms"] = round(ms, 2)
        out["warm_ratio"] = round(ms / base, 2)
        out["cache_items"] = len(cache)
        out["cache_bytes"] = cache.nbytes
    started = time.perf_counter()
    prepared = index.prepare_rerank()  # what `mmsearch index --rerank-features` adds to the ingest
    out["prepare_s"] = round(time.perf_counter() - started, 2)
    out["prepared_items"] = prepared.computed
    folder = Path(prepared.folder)
    out["prepared_bytes"] = sum(f.stat().st_size for f in folder.iterdir()) if folder.is_dir() else 0
    for depth in depths:
        ms = timed(cold=True, rerank=True, rerank_depth=depth)  # the cache emptied: features from the index
        out[f"prepared_{depth}_ms"] = round(ms, 2)
        out[f"prepared_{depth}_ratio"] = round(ms / base, 2)
    return out


def breakdown(index: Index, texts: list[str], repeats: int = 10) -> dict:
    """Where re-ranking 50 images goes: re-reading and decoding files, the frozen towers, the
    matcher's item encoder (what the cache keeps), the rest of the matcher; and what a warm
    query pays instead to look them up: the catalog's content hashes, checked against one
    ``stat`` per file (the old key, hashing each file's bytes, is timed beside it)."""
    import torch

    from mmsearch.hashing import file_digest
    from mmsearch.rerank.cache import item_key
    from mmsearch.rerank.inputs import image_crops
    from mmsearch.rerank.stage import candidate_of

    reranker = index.reranker()
    towers, matcher = reranker.towers, reranker.matcher  # type: ignore[attr-defined]
    parts: dict[str, list[float]] = {
        "decode_ms": [],
        "towers_ms": [],
        "item_encoder_ms": [],
        "matcher_ms": [],
        "key_ms": [],
        "hash_ms": [],
    }
    for text in texts[:repeats]:
        hits = index.search(text, k=DEPTH)
        candidates = [candidate_of(h) for h in hits]
        clock = [time.perf_counter()]
        crops = np.stack([read.payload for read in image_crops(candidates, towers.image_input.size)])
        clock.append(time.perf_counter())
        with torch.inference_mode():
            tokens, embeddings = towers.images(towers.image_pixels(crops), matcher.config)
            clock.append(time.perf_counter())
            memory = matcher.encode_item(tokens, "image")
            clock.append(time.perf_counter())
        reranker.logits(text, memory, embeddings)  # type: ignore[attr-defined]
        clock.append(time.perf_counter())
        [item_key(c) for c in candidates]
        clock.append(time.perf_counter())
        [file_digest(c.path) for c in candidates]
        clock.append(time.perf_counter())
        for key, start, stop in zip(parts, clock[:-1], clock[1:], strict=True):
            parts[key].append((stop - start) * 1000)
    out: dict = {key: round(statistics.median(values), 2) for key, values in parts.items()}
    out["candidates"] = DEPTH
    out["cached_bytes_per_image"] = int((memory[0].numel() + embeddings[0].numel()) * 4)  # fp32
    out["vector_bytes_per_item"] = int(index.manifest.dim * 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="held-out world size (plus half as many sounds)")
    for modality, (present, absent) in QUERIES.items():
        parser.add_argument(
            f"--{modality}-queries", type=int, default=present, help=f"compositional text→{modality} queries"
        )
        parser.add_argument(
            f"--{modality}-absent", type=int, default=absent, help="further queries for things absent from the index"
        )
    parser.add_argument("--latency-queries", type=int, default=20)
    parser.add_argument("--seed", type=int, default=20261125, help="world seed (training used 0 and 2024)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default, one per core)"
    )
    parser.add_argument("--name", default="rerank", help="results file stem: benchmarks/results/NAME.{json,md}")
    args = parser.parse_args()
    np.seterr(all="ignore")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        rows = world.generate_world(root / "world", args.images, args.seed, sounds=True)
        index = Index.create(root / "index", model="demo")
        index.add([root / "world" / "images", root / "world" / "sounds"])
        timings = {"build_s": round(time.perf_counter() - started, 1)}
        truth = Truth(root / "world", rows)
        results, probs, labels = [], [], []
        started = time.perf_counter()
        for offset, modality in enumerate(("image", "audio")):
            texts = queries(modality, getattr(args, f"{modality}_queries"), args.seed + 1 + offset)
            texts += queries(
                modality,
                getattr(args, f"{modality}_absent"),
                args.seed + 11 + offset,
                lambda t, m=modality: not truth.count(t, m),
            )
            row, p, y = quality(index, truth, modality, texts)
            results.append(row)
            probs += p
            labels += y
            print(row, flush=True)
        timings["quality_s"] = round(time.perf_counter() - started, 1)
        texts = queries("image", args.latency_queries, args.seed + 3)
        speed = latency(index, texts, [20, 50, 100])
        parts = breakdown(index, texts)

    report = {
        "command": "python benchmarks/rerank.py " + " ".join(sys.argv[1:]),
        "world": {"images": args.images, "sounds": args.images // 2, "seed": args.seed},
        "depth": DEPTH,
        "k": K,
        "rows": results,
        "ece": round(expected_calibration_error(np.array(probs), np.array(labels, dtype=float)), 4),
        "judged_pairs": len(probs),
        "latency": speed,
        "breakdown": parts,
        "seconds": timings,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    table = markdown(report)
    (RESULTS / f"{args.name}.md").write_text(table)
    print(table)


def emptied(row: dict, share: float, digits: int) -> str:
    """A share of absent-thing queries left empty, or a dash where the direction had none."""
    return f"{share:.{digits}f}" if row["queries_absent"] else "–"


def markdown(report: dict) -> str:
    w = report["world"]
    lines = [
        f"# Re-ranking: demo model + demo re-ranker, held-out world ({w['images']} images, {w['sounds']} sounds, "
        f"seed {w['seed']})",
        "",
        f"Command: `{report['command'].strip()}`",
        "",
        f"Compositional queries; re-ranked = the vector stage's top {report['depth']} re-scored.",
        "",
        "| direction | queries (present / absent) | P@10 vector | P@10 re-ranked | P@10 ceiling | nDCG@10 vector "
        "| nDCG@10 re-ranked |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['direction']} | {r['queries_present']} / {r['queries_absent']} | {r['p_vector']:.3f} | "
            f"{r['p_rerank']:.3f} | {r['p_ideal']:.3f} | {r['ndcg_vector']:.3f} | {r['ndcg_rerank']:.3f} |"
        )
    lines += [
        "",
        "Thresholds: `--min-prob 0.5` (re-ranker) and `--min-score auto` (vector stage alone).",
        "",
        "| direction | threshold | precision | recall | present queries answered | absent queries empty |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['direction']} | min_prob 0.5 | {r['min_prob_precision']:.3f} | {r['min_prob_recall']:.3f} "
            f"({r['min_prob_recall_of_candidates']:.3f} of those in the top {report['depth']}) | "
            f"{r['min_prob_present_answered']:.3f} | {emptied(r, r['min_prob_absent_empty'], 3)} |"
        )
        lines.append(
            f"| {r['direction']} | min_score auto | {r['auto_precision']:.3f} | {r['auto_recall']:.3f} | "
            f"{r['auto_present_answered']:.3f} | {emptied(r, r['auto_absent_empty'], 3)} |"
        )
    lines += [
        "",
        "Other `--min-prob` thresholds (precision / recall / absent queries empty):",
        "",
        "| direction | " + " | ".join(f"min_prob {t}" for t in SWEEP) + " |",
        "| --- |" + " ---: |" * len(SWEEP),
    ]
    for r in report["rows"]:
        cells = (r["sweep"][str(t)] for t in SWEEP)
        lines.append(
            f"| {r['direction']} | "
            + " | ".join(
                f"{c['precision']:.2f} / {c['recall']:.2f} / {emptied(r, c['absent_empty'], 2)}" for c in cells
            )
            + " |"
        )
    lines += [
        "",
        "Where the misses are: how well `match_prob` and the vector stage's cosine rank the judged pairs "
        "(AUC), and recall at `--min-prob 0.5` by what the query pins down (true matches in the index):",
        "",
        "| direction | AUC match_prob | AUC cosine | recall at 0.5 by query form |",
        "| --- | ---: | ---: | --- |",
    ]
    for r in report["rows"]:
        forms = "; ".join(f"{k} {v['recall']:.2f} ({v['true']})" for k, v in r["recall_by_form"].items())
        lines.append(f"| {r['direction']} | {r['auc_match_prob']:.3f} | {r['auc_cosine']:.3f} | {forms} |")
    s, b = report["latency"], report["breakdown"]
    lines += [
        "",
        f"Expected calibration error of match_prob over {report['judged_pairs']} judged pairs (10 bins): "
        f"**{report['ece']:.4f}** ("
        + ", ".join(f"{r['direction']} {r['ece']:.4f} over {r['judged_pairs']}" for r in report["rows"])
        + ")",
        "",
        "| latency per query (median, k=10) | ms | × vector stage |",
        "| --- | ---: | ---: |",
        f"| vector stage alone | {s['vector_ms']:.1f} | 1.00 |",
        *(
            f"| re-ranked, depth {d}, cold | {s[f'depth_{d}_ms']:.1f} | {s[f'depth_{d}_ratio']:.2f} |"
            for d in (20, 50, 100)
        ),
        f"| re-ranked, depth {report['depth']}, warm | {s['warm_ms']:.1f} | {s['warm_ratio']:.2f} |",
        *(
            f"| re-ranked, depth {d}, cold, features prepared at ingest | {s[f'prepared_{d}_ms']:.1f} | "
            f"{s[f'prepared_{d}_ratio']:.2f} |"
            for d in (20, 50, 100)
            if f"prepared_{d}_ms" in s
        ),
        "",
        "Cold: the re-ranker's feature cache emptied before each query. Warm: the same queries run again in the "
        f"same process ({s['cache_items']:,} items cached, {s['cache_bytes'] / 2**20:.1f} MiB). Both encode each "
        "query's text anew (once, for both stages). Prepared: cold again, with the features the index keeps "
        "(`mmsearch index --rerank-features`, here `Index.prepare_rerank()`: "
        f"{s.get('prepared_items', 0):,} items in {s.get('prepare_s', 0):.1f} s, "
        f"{s.get('prepared_bytes', 0) / 2**20:.1f} MiB on disk), read instead of re-reading and re-encoding files.",
        "",
        f"Re-ranking {b['candidates']} images cold (median ms): re-read + decode {b['decode_ms']:.1f}, frozen towers "
        f"{b['towers_ms']:.1f}, matcher item encoder {b['item_encoder_ms']:.1f}, rest of the matcher "
        f"{b['matcher_ms']:.1f}. Warm, the first three are replaced by a cache look-up keyed by the catalog's "
        f"content hash, trusted while each file's size and mtime are the recorded ones ({b['key_ms']:.2f} to "
        f"stat the 50 files; reading and hashing them, the old key, took {b['hash_ms']:.1f}); a cached item weighs "
        f"{b['cached_bytes_per_image']:,} bytes "
        f"({b['cached_bytes_per_image'] / b['vector_bytes_per_item']:.0f}× "
        f"the {b['vector_bytes_per_item']}-byte vector).",
        "",
        "Seconds: " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
