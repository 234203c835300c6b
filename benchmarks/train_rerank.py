"""Train the demo re-ranker (``mmsearch/models/demo/rerank.*``) on the synthetic world.

The demo towers stay frozen: their token features for a training world are computed
once, then a small :class:`~mmsearch.rerank.cross.CrossMatcher` learns to judge
(caption, image) and (caption, sound) pairs. Pairs are mined the way the re-ranker is
used: for each query, candidates come from the vector stage's top ``--depth`` (where the
bi-encoder errs: same colour wrong shape, wrong count, wrong background), plus a random
true match, a near miss (wrong in exactly one attribute the query names) and a random
item. One Platt scaling per candidate modality is then fitted on a
held-out world's top-``--depth`` candidates (exactly the pairs seen at query time) and
shipped in ``rerank.json`` with the architecture; ``--calibrate-only`` refits just that on
the shipped weights.

    python benchmarks/train_rerank.py                    # the shipped weights (≈ 28 min on 2 busy cores)
    python benchmarks/train_rerank.py --calibrate-only   # refit the calibration only (≈ 1 min)
    python benchmarks/train_rerank.py --steps 50 --images 500 --sounds 200 --out-dir /tmp/rr   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mmsearch import world
from mmsearch.preprocess import square_crop
from mmsearch.rerank.calibration import PerModality, Platt, expected_calibration_error, fit_per_modality, fit_platt
from mmsearch.rerank.cross import CrossConfig, CrossMatcher, save_config
from mmsearch.rerank.demo import DemoTowers, image_dim, load_matcher

ATTRIBUTES = ("shape", "colour", "background", "count", "size")
VALUES: dict[str, tuple] = {
    "shape": world.SHAPES,
    "colour": tuple(world.COLOURS),
    "background": tuple(world.BACKGROUNDS),
    "count": tuple(world.COUNTS),
    "size": world.SIZES,
}


class Items:
    """Frozen features and attributes of a world's images or sounds."""

    def __init__(
        self, towers: DemoTowers, scenes: list[world.Scene], modality: str, config: CrossConfig, chunk: int = 256
    ) -> None:
        self.modality = modality
        self.attributes = {a: np.array([getattr(s, a) for s in scenes], dtype=object) for a in ATTRIBUTES}
        tokens, embeddings = [], []
        for start in range(0, len(scenes), chunk):
            part = scenes[start : start + chunk]
            if modality == "image":
                crops = np.stack([square_crop(world.render(s), towers.image_input.size) for s in part])
                t, e = towers.images(towers.image_pixels(crops), config)
            else:
                t, e = towers.sounds(torch.from_numpy(np.stack([world.render_sound(s) for s in part])))
            tokens.append(t.half())
            embeddings.append(e)
        self.tokens = torch.cat(tokens)
        self.embeddings = torch.cat(embeddings)

    def matches(self, text: str) -> np.ndarray:
        """Which items ``text`` truly describes (an unmentioned attribute matches anything)."""
        return self.mismatches(text) == 0

    def mismatches(self, text: str) -> np.ndarray:
        """How many of the attributes ``text`` pins down each item gets wrong."""
        said = world.parse_caption(text, self.modality)
        wrong = np.zeros(len(self.embeddings), dtype=np.int64)
        for attribute, value in said.items():
            wrong += self.attributes[attribute] != value
        return wrong


class Texts:
    """Frozen text-token features, computed once per distinct caption."""

    def __init__(self, towers: DemoTowers) -> None:
        self.towers, self.cache = towers, {}

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            words, valid, embeddings = self.towers.texts(missing)
            for i, text in enumerate(missing):
                n = int(valid[i].sum())
                self.cache[text] = (words[i, :n], embeddings[i])
        length = max(len(self.cache[t][0]) for t in texts)
        words = torch.zeros(len(texts), length, self.towers.clip.ln_final.normalized_shape[0])
        valid = torch.zeros(len(texts), length, dtype=torch.bool)
        for i, text in enumerate(texts):
            w = self.cache[text][0]
            words[i, : len(w)], valid[i, : len(w)] = w, True
        return words, valid, torch.stack([self.cache[t][1] for t in texts])


def query_text(modality: str, rng: np.random.Generator) -> str:
    scene = world.sample_scene(rng)
    phrasings = world.captions(scene, rng) if modality == "image" else world.sound_captions(scene)
    return str(phrasings[rng.integers(len(phrasings))])


def mine(
    items: Items,
    texts: Texts,
    queries: list[str],
    depth: int,
    rng: np.random.Generator,
    train: bool,
    near_misses: bool = False,
):
    """(query index, item index, label) triples: the vector stage's top ``depth`` per query
    (in training: 4 of them, one random true match and one random item; with ``near_misses``
    also an item that is wrong in exactly one of the attributes the query pins down)."""
    _, _, q = texts.batch(queries)
    scores = q @ items.embeddings.T
    top = torch.topk(scores, depth, dim=1).indices.numpy()
    pairs = []
    for i, text in enumerate(queries):
        wrong = items.mismatches(text)
        truth = wrong == 0
        chosen = list(rng.choice(top[i], 4, replace=False)) if train else list(top[i])
        if train:
            for pool in (np.flatnonzero(truth), np.flatnonzero(wrong == 1) if near_misses else []):
                if len(pool):
                    chosen.append(int(rng.choice(pool)))
            chosen.append(int(rng.integers(len(truth))))
        pairs += [(i, int(j), float(truth[j])) for j in chosen]
    return np.array(pairs)


def balanced_weights(pairs: np.ndarray) -> torch.Tensor:
    """Per-pair loss weights under which each query's true pairs weigh as much as its false
    ones (a query with only one kind keeps weight 1 a pair); the mean weight is 1."""
    query, label = pairs[:, 0].astype(np.int64), pairs[:, 2] > 0.5
    weights = np.ones(len(pairs))
    for q in np.unique(query):
        rows = query == q
        true, false = (rows & label).sum(), (rows & ~label).sum()
        if true and false:
            weights[rows & label] = rows.sum() / (2 * true)
            weights[rows & ~label] = rows.sum() / (2 * false)
    return torch.from_numpy(weights).float()


def logits_of(matcher: CrossMatcher, items: Items, texts: Texts, queries: list[str], pairs: np.ndarray) -> torch.Tensor:
    return judged(matcher, items, texts, queries, pairs)[0]


def judged(
    matcher: CrossMatcher, items: Items, texts: Texts, queries: list[str], pairs: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs' match logits and their items' encoded tokens."""
    words, valid, q = texts.batch(queries)
    qi, ii = torch.from_numpy(pairs[:, 0].astype(np.int64)), torch.from_numpy(pairs[:, 1].astype(np.int64))
    cosine = (q[qi] * items.embeddings[ii]).sum(-1)
    memory = matcher.encode_item(items.tokens[ii].float(), items.modality)
    return matcher.judge(words[qi], valid[qi], memory, cosine), memory


class AttributeHead(torch.nn.Module):
    """Training only: predicts each item's attributes from its encoded tokens, so that the
    item encoder must represent them (a count is the number of objects, not the area they
    cover); not part of the shipped matcher."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleDict({a: torch.nn.Linear(width, len(v)) for a, v in VALUES.items()})

    def loss(self, memory: torch.Tensor, items: Items, rows: np.ndarray) -> torch.Tensor:
        pooled = memory.mean(1)
        losses = []
        for attribute, vocabulary in VALUES.items():
            if attribute == "background" and items.modality == "audio":
                continue
            target = torch.tensor([vocabulary.index(v) for v in items.attributes[attribute][rows]])
            losses.append(torch.nn.functional.cross_entropy(self.heads[attribute](pooled), target))
        return torch.stack(losses).mean()


def evaluate(matcher, items: Items, texts: Texts, queries: list[str], depth: int, k: int = 10) -> dict:
    """Held-out logits/labels of every top-``depth`` pair, and P@k before/after re-ranking."""
    rng = np.random.default_rng(0)
    logits, labels, before, after = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(queries), 32):
            part = queries[start : start + 32]
            pairs = mine(items, texts, part, depth, rng, train=False)
            out = logits_of(matcher, items, texts, part, pairs).numpy().reshape(len(part), depth)
            truth = pairs[:, 2].reshape(len(part), depth)
            logits.append(out.ravel())
            labels.append(truth.ravel())
            before += truth[:, :k].mean(1).tolist()
            order = np.argsort(-out, axis=1, kind="stable")[:, :k]
            after += np.take_along_axis(truth, order, 1).mean(1).tolist()
    return {
        "logits": np.concatenate(logits),
        "labels": np.concatenate(labels),
        "p_at_k_vector": float(np.mean(before)),
        "p_at_k_reranked": float(np.mean(after)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--sounds", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=4500)
    parser.add_argument("--batch", type=int, default=32, help="queries per step (7 pairs each)")
    parser.add_argument("--audio-every", type=int, default=3, help="every N-th step trains on sounds")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--depth", type=int, default=50, help="vector-stage candidates per held-out query")
    parser.add_argument(
        "--mine-top", type=int, default=50, help="training negatives: from this top of the vector stage"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=2024)
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--eval-sounds", type=int, default=500)
    parser.add_argument("--eval-queries", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cells", type=int, default=16, help="each image region's pixels pooled to N x N (16: all)")
    parser.add_argument(
        "--whole-image",
        action="store_true",
        help="every image region token also carries the tower's embedding and the whole image pooled to 4x4",
    )
    parser.add_argument(
        "--early-layer", type=int, help="every image region token also carries its patches after this ViT block"
    )
    parser.add_argument(
        "--near-misses",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each query also gets an item wrong in exactly one attribute it names",
    )
    parser.add_argument(
        "--stem", type=int, default=32, help="a conv stem of this many channels, 0 for none (needs --cells 16)"
    )
    parser.add_argument(
        "--aux-weight", type=float, default=0.0, help="weight of predicting items' attributes from their tokens"
    )
    parser.add_argument("--context-layers", type=int, default=1, help="self-attention layers over item tokens")
    parser.add_argument(
        "--pool", choices=("mean", "softmin"), default="softmin", help="how text tokens become one logit"
    )
    parser.add_argument(
        "--balance",
        action="store_true",
        help="weigh each query's true and false pairs equally in the loss (no base rate by how specific a query is)",
    )
    parser.add_argument(
        "--calibrate-only",
        action="store_true",
        help="keep the weights in --out-dir; refit the per-modality calibration on a --calibration-seed world",
    )
    parser.add_argument("--calibration-seed", type=int, default=4711, help="(not 0, 2024 or the benchmark's 20261125)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "mmsearch/models/demo")
    args = parser.parse_args()
    if args.stem and args.cells != 16:
        parser.error("--stem reads each region's full-resolution pixels: it needs --cells 16")
    if args.calibrate_only:
        calibrate_only(args)
        return
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    towers = DemoTowers("cpu")
    dim = image_dim(args.cells, args.whole_image, args.early_layer)
    config = CrossConfig(
        cells=args.cells,
        whole_image=args.whole_image,
        early_layer=args.early_layer,
        image_dim=dim,
        context_layers=args.context_layers,
        stem=args.stem,
        pool=args.pool,
    )
    rng = np.random.default_rng(args.seed)
    train = {
        "image": Items(towers, [world.sample_scene(rng) for _ in range(args.images)], "image", config),
        "audio": Items(towers, [world.sample_scene(rng) for _ in range(args.sounds)], "audio", config),
    }
    texts = Texts(towers)
    print(f"features: {time.perf_counter() - started:.0f} s", flush=True)

    matcher = CrossMatcher(config)
    aux = AttributeHead(config.width)
    trained = [*matcher.parameters(), *(aux.parameters() if args.aux_weight else [])]
    decay = [p for p in trained if p.ndim >= 2]
    rest = [p for p in trained if p.ndim < 2]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=args.lr
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))),
    )
    training = time.perf_counter()
    for step in range(args.steps):
        modality = "audio" if step % args.audio_every == args.audio_every - 1 else "image"
        items = train[modality]
        queries = [query_text(modality, rng) for _ in range(args.batch)]
        pairs = mine(items, texts, queries, args.mine_top, rng, train=True, near_misses=args.near_misses)
        logits, memory = judged(matcher, items, texts, queries, pairs)
        labels = torch.from_numpy(pairs[:, 2]).float()
        weights = balanced_weights(pairs) if args.balance else None
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, weight=weights)
        if args.aux_weight:
            loss = loss + args.aux_weight * aux.loss(memory, items, pairs[:, 1].astype(np.int64))
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} {modality} loss {loss.item():.4f} {time.perf_counter() - training:.0f} s", flush=True)
    train_s = time.perf_counter() - training

    matcher.eval()
    calibration, figures = calibrate(matcher, towers, texts, args, args.eval_seed)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.half().contiguous() for k, v in matcher.state_dict().items()}, args.out_dir / "rerank.safetensors")
    training_notes = {
        "command": "python benchmarks/train_rerank.py " + " ".join(sys.argv[1:]),
        "parameters": sum(p.numel() for p in matcher.parameters()),
        "train_seconds": round(train_s),
        "total_seconds": round(time.perf_counter() - started),
        "held_out": figures,
    }
    save_config(
        config, {"calibration": calibration.to_dict(), "training": training_notes}, args.out_dir / "rerank.json"
    )
    print(training_notes, flush=True)


def calibrate(matcher: CrossMatcher, towers: DemoTowers, texts: Texts, args, seed: int) -> tuple[PerModality, dict]:
    """One Platt scaling per modality, fitted on every top-``--depth`` pair of a world drawn
    with ``seed``; and the held-out figures (P@10, ECE raw / one pooled scaling / per modality)."""
    world_rng = np.random.default_rng(seed)
    held_out = {
        "image": Items(
            towers, [world.sample_scene(world_rng) for _ in range(args.eval_images)], "image", matcher.config
        ),
        "audio": Items(
            towers, [world.sample_scene(world_rng) for _ in range(args.eval_sounds)], "audio", matcher.config
        ),
    }
    figures: dict = {}
    logits, labels, modalities = [], [], []
    for modality, items in held_out.items():
        query_rng = np.random.default_rng([seed, 1])
        queries = [query_text(modality, query_rng) for _ in range(args.eval_queries)]
        result = evaluate(matcher, items, texts, queries, args.depth)
        logits.append(result["logits"])
        labels.append(result["labels"])
        modalities.append(np.full(len(result["logits"]), modality))
        figures[f"text→{modality}"] = {
            "p@10 vector": round(result["p_at_k_vector"], 3),
            "p@10 re-ranked": round(result["p_at_k_reranked"], 3),
        }
    x, y, m = np.concatenate(logits), np.concatenate(labels), np.concatenate(modalities)
    calibration = fit_per_modality(x, y, m)
    calibrated = np.empty_like(x)
    for modality in held_out:
        calibrated[m == modality] = calibration(x[m == modality], modality)
    figures["ece raw"] = round(expected_calibration_error(Platt()(x), y), 4)
    figures["ece pooled platt"] = round(expected_calibration_error(fit_platt(x, y)(x), y), 4)
    figures["ece per-modality platt"] = round(expected_calibration_error(calibrated, y), 4)
    for modality in held_out:
        inside = m == modality
        figures[f"ece text→{modality}"] = round(expected_calibration_error(calibrated[inside], y[inside]), 4)
    print(figures, flush=True)
    return calibration, figures


def calibrate_only(args) -> None:
    """Refit the shipped matcher's calibration on a fresh world; the weights are not touched."""
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    config_path = args.out_dir / "rerank.json"
    towers = DemoTowers("cpu")
    matcher, _ = load_matcher(config_path, args.out_dir / "rerank.safetensors", "cpu")
    calibration, figures = calibrate(matcher, towers, Texts(towers), args, args.calibration_seed)
    settings = json.loads(config_path.read_text())
    settings["calibration"] = calibration.to_dict()
    settings["calibration_fit"] = {
        "command": "python benchmarks/train_rerank.py " + " ".join(sys.argv[1:]),
        "world_seed": args.calibration_seed,
        "images": args.eval_images,
        "sounds": args.eval_sounds,
        "queries_per_modality": args.eval_queries,
        "depth": args.depth,
        "seconds": round(time.perf_counter() - started),
        "held_out": figures,
    }
    config_path.write_text(json.dumps(settings, indent=2) + "\n")
    print(settings["calibration"], flush=True)


if __name__ == "__main__":
    main()
