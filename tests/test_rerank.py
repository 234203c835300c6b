"""Two-stage search: the re-ranker interface and registry, the shipped demo re-ranker on a
small generated world (through ``Index.search``, the CLI and the server), a BLIP ITM model
loaded with transformers' real loaders (a tiny random one: real weights cannot be fetched
here), and the calibration helpers on synthetic arrays."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest

from conftest import run_cli
from mmsearch import Index, world
from mmsearch.errors import ModelError, UserInputError
from mmsearch.rerank import autoscore, registry, stage
from mmsearch.rerank.base import Candidate, Query, Reranker
from mmsearch.rerank.cache import FeatureCache, item_key
from mmsearch.rerank.calibration import (
    PerModality,
    Platt,
    expected_calibration_error,
    fit_per_modality,
    fit_platt,
    sigmoid,
)

SEED = 7
SCENES = 48


# -- calibration and auto thresholds: pure NumPy -------------------------------------------------


def test_platt_fit_recovers_the_generating_scale_and_bias() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, 20_000)
    labels = (rng.random(len(logits)) < sigmoid(0.5 * logits - 1.0)).astype(float)
    platt = fit_platt(logits, labels)
    assert platt.scale == pytest.approx(0.5, abs=0.05)
    assert platt.bias == pytest.approx(-1.0, abs=0.08)
    assert expected_calibration_error(platt(logits), labels) < 0.02
    assert expected_calibration_error(Platt()(logits), labels) > 0.1  # the raw logits are overconfident


def test_platt_stays_finite_on_separable_data_and_rejects_bad_labels() -> None:
    platt = fit_platt(np.array([-2.0, -1.0, 1.0, 2.0]), np.array([0, 0, 1, 1]))
    assert np.isfinite([platt.scale, platt.bias]).all() and platt.scale > 0
    with pytest.raises(ValueError):
        fit_platt(np.array([0.0, 1.0]), np.array([0, 2]))
    with pytest.raises(ValueError):
        fit_platt(np.array([]), np.array([]))


def test_per_modality_calibration_fits_and_applies_each_modality_its_own_scaling() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, 20_000)
    modalities = np.where(np.arange(len(logits)) % 2, "audio", "image")
    truth = {"image": (0.5, -1.0), "audio": (1.5, 1.0)}  # sound logits sit lower for the same odds
    scale = np.where(modalities == "image", 0.5, 1.5)
    bias = np.where(modalities == "image", -1.0, 1.0)
    labels = (rng.random(len(logits)) < sigmoid(scale * logits + bias)).astype(float)
    calibration = fit_per_modality(logits, labels, modalities)
    assert sorted(calibration.scalings) == ["audio", "image"]
    for modality, (a, b) in truth.items():
        assert calibration.scaling(modality).scale == pytest.approx(a, abs=0.08)
        assert calibration.scaling(modality).bias == pytest.approx(b, abs=0.1)
    probs = np.empty_like(logits)
    for modality in truth:
        inside = modalities == modality
        probs[inside] = calibration(logits[inside], modality)
    pooled = fit_platt(logits, labels)(logits)
    assert expected_calibration_error(probs, labels) < 0.02 < expected_calibration_error(pooled, labels)
    assert calibration(np.array([0.0]), "audio")[0] == pytest.approx(sigmoid(np.array([1.0]))[0], abs=0.03)
    assert PerModality.from_dict(calibration.to_dict()) == calibration  # what rerank.json stores


def test_single_scaling_format_still_reads_and_unknown_modalities_fail() -> None:
    old = PerModality.from_dict({"scale": 2.0, "bias": -1.0})
    for modality in ("image", "audio"):
        assert old(np.array([1.0]), modality)[0] == pytest.approx(sigmoid(np.array([1.0]))[0])
    with pytest.raises(KeyError, match="video"):
        PerModality({"image": Platt()}).scaling("video")
    with pytest.raises(ValueError):
        fit_per_modality(np.zeros(3), np.zeros(3), np.array(["image"]))


def test_feature_cache_evicts_least_recently_used_within_its_byte_bound() -> None:
    cache = FeatureCache(max_bytes=3 * 80)
    row = (np.zeros(16, dtype=np.float32), np.zeros(4, dtype=np.float32))  # 80 bytes
    keys = [(f"/x/{i}.png", "digest", 0.0) for i in range(4)]
    for key in keys[:3]:
        cache.put(key, row)
    assert cache.get(keys[0]) is not None  # now the most recently used
    cache.put(keys[3], row)
    assert len(cache) == 3 and cache.nbytes == 240
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None and cache.get(keys[3]) is not None
    cache.put(("/x/big.png", "digest", 0.0), (np.zeros(100, dtype=np.float32),))  # larger than the bound
    assert len(cache) == 3 and cache.nbytes <= cache.max_bytes
    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    cache.put(keys[1], (batch[0],))
    stored = cache.get(keys[1])
    assert stored is not None and stored[0].base is None and not stored[0].flags.writeable  # its own copy
    assert FeatureCache(0).get(keys[0]) is None
    with pytest.raises(ValueError):
        FeatureCache(-1)


def test_expected_calibration_error_by_hand() -> None:
    probs = np.array([0.9, 0.9, 0.1, 0.1])
    assert expected_calibration_error(probs, np.array([1, 1, 0, 0])) == pytest.approx(0.1)
    assert expected_calibration_error(probs, np.array([0, 0, 1, 1])) == pytest.approx(0.9)
    assert expected_calibration_error(np.array([1.0]), np.array([1])) == 0.0  # p = 1 falls in the top bin


def test_auto_threshold_is_median_plus_z_robust_sigmas() -> None:
    rng = np.random.default_rng(1)
    sample = rng.normal(size=(500, 8)).astype(np.float32)
    query = rng.normal(size=(1, 8)).astype(np.float32)
    scores = (query @ sample.T)[0]
    median = np.median(scores)
    sigma = 1.4826 * np.median(np.abs(scores - median))
    assert autoscore.thresholds(query, sample, z=3.0)[0] == pytest.approx(median + 3 * sigma, rel=1e-4)
    assert autoscore.thresholds(query, sample[:0])[0] == -np.inf  # nothing to compare with: keep all


def test_auto_sample_is_fixed_and_bounded() -> None:
    ids = np.arange(10_000, dtype=np.int64)[::-1]
    first = autoscore.sample_ids(ids, 100)
    assert len(first) == 100 and np.array_equal(first, autoscore.sample_ids(ids, 100))
    assert np.all(np.diff(first) > 0) and np.isin(first, ids).all()
    assert np.array_equal(autoscore.sample_ids(np.array([5, 3]), 100), [3, 5])


# -- a world indexed with the demo model ---------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("rerank")
    rows = world.generate_world(root / "world", SCENES, SEED, sounds=True)
    index = Index.create(root / "index", model="demo")
    index.add([root / "world" / "images", root / "world" / "sounds"], workers=0)
    images = [r for r in rows if r["file"].startswith("images/")]
    singles = Counter((r["colour"], r["shape"]) for r in images if r["count"] == 1)
    shown = {(r["colour"], r["shape"]) for r in images}
    absent = [(c, s) for s in world.SHAPES for c in world.COLOURS if (c, s) not in shown]
    return {"root": root, "index": index, "rows": rows, "present": singles.most_common(), "absent": absent}


@pytest.fixture(scope="module")
def index(built: dict) -> Index:
    return built["index"]


def test_reranked_hits_carry_match_prob_best_first(index: Index) -> None:
    hits = index.search("a red circle on a grey background", k=8, rerank=True)
    assert len(hits) == 8
    probs = [hit.match_prob for hit in hits]
    assert all(p is not None and 0.0 <= p <= 1.0 for p in probs)
    assert probs == sorted(probs, reverse=True)
    assert {hit.modality for hit in hits} == {"image"}
    assert "match_prob" in hits[0].to_dict() and "match_prob" not in index.search("a red circle", k=1)[0].to_dict()


def test_rerank_picks_the_true_matches_and_min_prob_keeps_only_them(built: dict) -> None:
    index = built["index"]
    (colour, shape), _ = built["present"][0]  # the class with the most single-object images
    query = world.class_query(colour, shape)
    truth = {r["file"] for r in built["rows"] if (r["colour"], r["shape"]) == (colour, shape) and r["count"] == 1}
    kept = index.search(query, k=20, min_prob=0.5)
    assert kept and all(hit.match_prob >= 0.5 for hit in kept)
    found = {str(Path(hit.path).relative_to(built["root"] / "world")) for hit in kept}
    assert found <= truth and len(found) >= len(truth) - 1


def test_min_prob_returns_nothing_for_an_absent_thing(built: dict) -> None:
    for colour, shape in built["absent"][:3]:
        assert built["index"].search(world.class_query(colour, shape), min_prob=0.5) == []


def test_text_to_audio_is_reranked_too(index: Index) -> None:
    hits = index.search("two red circles", modality="audio", k=5, rerank=True)
    assert len(hits) == 5 and {hit.modality for hit in hits} == {"audio"}
    assert [h.match_prob for h in hits] == sorted((h.match_prob for h in hits), reverse=True)


def test_what_the_demo_reranker_cannot_judge_is_a_user_error(index: Index, built: dict) -> None:
    image = next(built["root"].glob("world/images/*.png"))
    with pytest.raises(UserInputError, match="image→image"):
        index.search(image=image, rerank=True)
    with pytest.raises(UserInputError, match="arithmetic"):
        index.search(query='"a red circle" - "a square"', rerank=True)
    with pytest.raises(UserInputError, match="rerank depth"):
        index.search("a red circle", rerank=True, rerank_depth=0)
    with pytest.raises(UserInputError, match="min_prob"):
        index.search("a red circle", min_prob=1.5)
    with pytest.raises(UserInputError, match="unknown re-ranker"):
        index.search("a red circle", rerank="nosuch:thing")


def test_min_score_auto_keeps_hits_that_stand_out(built: dict) -> None:
    index = built["index"]
    (colour, shape), _ = built["present"][0]
    query = world.class_query(colour, shape)
    everything = index.search(query, k=SCENES)
    auto = index.search(query, k=SCENES, min_score="auto")
    assert 0 < len(auto) < len(everything)
    assert [h.id for h in auto] == [h.id for h in everything[: len(auto)]]
    (batch,) = index.search_batch(index.embed_terms(embed_terms(query)), k=SCENES, modality="image", min_score="auto")
    assert [h.id for h in batch] == [h.id for h in auto]
    with pytest.raises(UserInputError, match="auto"):
        index.search("a red circle", min_score="high")


def embed_terms(text: str):
    from mmsearch.search.query import Term

    return [Term(1.0, "text", text)]


# -- the interface and registry -------------------------------------------------------------------


class Counting(Reranker):
    """Prefers later items; remembers how many candidates it was shown."""

    pairs = frozenset({("text", "image")})
    seen: ClassVar[list[int]] = []

    def _match_probs(self, query: Query, candidates: Sequence[Candidate]) -> np.ndarray:
        Counting.seen.append(len(candidates))
        return np.array([c.id for c in candidates], dtype=float) / 1000.0


@registry.register("counting")
def counting(name: str, device: str) -> Counting:
    """A re-ranker registered in this process."""
    return Counting()


def test_registry_defaults_and_registration(index: Index) -> None:
    assert registry.default_reranker("demo") == "demo"
    with pytest.raises(UserInputError, match="--reranker"):
        registry.default_reranker("ViT-B-32:laion2b_s34b_b79k")
    with pytest.raises(UserInputError, match="names no model"):
        registry.load_reranker("blip:")
    with pytest.raises(UserInputError, match="built in"):
        registry.register("demo")
    assert index.reranker("counting:x").spec == "counting:x"
    Counting.seen.clear()
    hits = index.search("a blue square", k=3, rerank="counting:x", rerank_depth=20)
    assert Counting.seen == [20]  # the depth is how many candidates are judged
    vector_top = [h.id for h in index.search("a blue square", k=20)]
    assert [h.id for h in hits] == sorted(vector_top, reverse=True)[:3]
    Counting.seen.clear()
    index.search("a blue square", k=30, rerank="counting:x", rerank_depth=5)
    assert Counting.seen == [30]  # never fewer candidates than results asked for


def test_an_unreadable_candidate_scores_zero_and_never_stops_the_query(tmp_path: Path) -> None:
    reranker = registry.load_reranker("demo")
    good = tmp_path / "good.png"
    world.render(world.Scene("circle", "red", "grey", 1, "large", 3)).save(good)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    candidates = [Candidate(1, str(tmp_path / "broken.png"), "image"), Candidate(2, str(good), "image")]
    probs = reranker.match_probs(Query("text", "a red circle"), candidates)
    assert probs[0] == 0.0 and probs[1] > 0.5
    with pytest.raises(UserInputError, match="text→text"):
        reranker.match_probs(Query("text", "a red circle"), [Candidate(3, "x.csv", "text", "a red circle")])


@pytest.fixture(scope="module")
def demo_reranker():
    from mmsearch.rerank.demo import DemoReranker

    return DemoReranker()


def test_cache_hit_gives_the_cold_probabilities_and_a_changed_file_is_judged_afresh(
    demo_reranker, tmp_path: Path
) -> None:
    scenes = [
        world.Scene("circle", "red", "grey", 1, "large", 3),
        world.Scene("square", "blue", "black", 2, "small", 5),
    ]
    candidates = []
    for i, scene in enumerate(scenes * 2):  # two files with the same bytes: one key, the features of either
        world.render(scene).save(tmp_path / f"{i}.png")
        candidates.append(Candidate(i, str(tmp_path / f"{i}.png"), "image"))
    query = Query("text", "a red circle")
    cache = demo_reranker.cache
    cache.clear()
    cold = demo_reranker.match_probs(query, candidates)
    assert (cache.hits, cache.misses, len(cache)) == (0, 4, 2)
    warm = demo_reranker.match_probs(query, candidates)
    assert cache.hits == 4 and np.array_equal(cold, warm)
    assert cold[0] > 0.5 > cold[1] and cold[0] == cold[2]

    world.render(scenes[1]).save(tmp_path / "0.png")  # same path, new content
    assert item_key(candidates[0]) == item_key(candidates[1]) != item_key(candidates[2])
    edited = demo_reranker.match_probs(query, candidates)
    assert (cache.hits, cache.misses) == (8, 4)  # the edited file now has the bytes of 1.png: a hit
    assert edited[0] == cold[1] and edited[0] < 0.5
    cache.clear()
    assert np.allclose(demo_reranker.match_probs(query, candidates), edited, atol=1e-6)  # as if never cached


def test_cache_key_trusts_the_catalog_only_while_the_file_is_unchanged(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    world.render(world.Scene("circle", "red", "grey", 1, "large", 3)).save(image)
    found = image.stat()
    stamp = (found.st_size, found.st_mtime_ns // 1000)
    recorded = Candidate(1, str(image), "image", content_hash="recorded", stamp=stamp)
    assert item_key(recorded) == ("recorded", 0.0)  # the catalog's hash, without reading the file
    assert item_key(replace(recorded, offset_s=2.0)) == ("recorded", 2.0)
    real = item_key(Candidate(1, str(image), "image"))
    assert real is not None and real[0] != "recorded"
    assert item_key(replace(recorded, stamp=(stamp[0] + 1, stamp[1]))) == real  # size moved: hash the file
    assert item_key(replace(recorded, stamp=(stamp[0], stamp[1] - 1))) == real  # mtime moved: hash the file
    image.unlink()
    assert item_key(recorded) is None  # gone: no features, the candidate scores 0


def test_indexed_candidates_hit_by_catalog_hash_renames_hit_and_edits_miss(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    red, blue = (
        world.Scene("circle", "red", "grey", 1, "large", 3),
        world.Scene("square", "blue", "black", 2, "small", 5),
    )
    for name, scene in (("red.png", red), ("blue.png", blue), ("red2.png", red)):
        world.render(scene).save(folder / name)
    index = Index.create(tmp_path / "index", model="demo")
    index.add([folder])
    for hit in index.search("a red circle", k=3):  # what the catalog recorded is what the file has
        found = Path(hit.path).stat()
        assert stage.candidate_of(hit).stamp == (found.st_size, found.st_mtime_ns // 1000)
        assert stage.candidate_of(hit).content_hash == hit.metadata["content_hash"]
    cache = index.reranker().cache
    ask = {"k": 3, "rerank": True, "rerank_depth": 3}
    cold = {Path(h.path).name: h.match_prob for h in index.search("a red circle", **ask)}
    assert (cache.hits, cache.misses, len(cache)) == (0, 3, 2)  # red.png and red2.png share their bytes
    assert cold["red.png"] == cold["red2.png"] > 0.5 > cold["blue.png"]

    (folder / "red.png").rename(folder / "moved.png")
    index.add([folder])
    renamed = {Path(h.path).name: h.match_prob for h in index.search("a red circle", **ask)}
    assert (cache.hits, cache.misses) == (3, 3) and renamed["moved.png"] == cold["red.png"]

    world.render(blue).save(folder / "moved.png")  # edited, not yet re-indexed: judged on what is there now
    edited = {Path(h.path).name: h.match_prob for h in index.search("a red circle", **ask)}
    assert edited["moved.png"] == pytest.approx(cold["blue.png"], abs=1e-6) and edited["moved.png"] < 0.5
    assert edited["red2.png"] == pytest.approx(cold["red2.png"], abs=1e-6)
    (folder / "moved.png").unlink()
    gone = {Path(h.path).name: h.match_prob for h in index.search("a red circle", **ask)}
    assert gone["moved.png"] == 0.0 and len(cache) == 2  # no stale features for a file that is gone


@pytest.mark.parametrize("keys", [7, 16, 20])  # padded to 16, as it is, padded to 32
def test_matcher_attention_is_multihead_attention_with_the_same_weights(keys: int) -> None:
    import torch

    from mmsearch.rerank.cross import attend

    torch.manual_seed(0)
    layer = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    query, memory = torch.randn(3, 5, 16), torch.randn(3, keys, 16)
    valid = torch.rand(3, keys) > 0.3
    valid[:, 0] = True
    expected = layer(query, memory, memory, key_padding_mask=~valid, need_weights=False)[0]
    assert torch.allclose(attend(layer, query, memory, valid), expected, atol=1e-6)
    assert torch.allclose(attend(layer, query, memory), layer(query, memory, memory, need_weights=False)[0], atol=1e-6)


@pytest.mark.parametrize("pool", ["mean", "softmin"])
def test_padded_text_tokens_never_change_a_judgement(pool: str) -> None:
    """A batch of texts pads the shorter ones; a single text has no padding and skips the mask."""
    import torch

    from mmsearch.rerank.cross import CrossConfig, CrossMatcher

    torch.manual_seed(1)
    matcher = CrossMatcher(CrossConfig(pool=pool)).eval()
    text, padding = torch.randn(1, 5, 96), torch.randn(1, 3, 96)
    memory, cosine = torch.randn(4, 16, 64), torch.rand(4)
    with torch.no_grad():
        alone = matcher.judge(text, torch.ones(1, 5, dtype=torch.bool), memory, cosine)
        padded = matcher.judge(torch.cat([text, padding], 1), torch.arange(8)[None] < 5, memory, cosine)
    assert alone.shape == (4,) and torch.allclose(alone, padded, atol=1e-5)


def test_soft_min_is_the_score_when_all_agree_and_follows_the_lowest_otherwise() -> None:
    import torch

    from mmsearch.rerank.cross import soft_min

    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    agree = torch.tensor([[2.0, 2.0, 2.0, -50.0], [2.0, 2.0, 2.0, 2.0]])  # padding never counts
    assert torch.allclose(soft_min(agree, valid), torch.tensor([2.0, 2.0]))
    one_wrong = torch.tensor([[6.0, 6.0, -6.0, 9.0], [6.0, 6.0, 6.0, -6.0]])
    out = soft_min(one_wrong, valid)
    assert (out < -6.0 + torch.log(valid.sum(1).float()) + 1e-4).all() and (out > -6.0).all()
    assert out[0] < out[1] + 1e-6 and out[1] > out[0] - 1.0  # four tokens dilute one veto a little more than three


def test_stem_sees_the_image_the_pooled_cells_came_from() -> None:
    import torch

    from mmsearch.rerank.cross import CrossConfig, CrossMatcher, region_pixels
    from mmsearch.rerank.demo import _cells, image_dim

    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 64, 64)
    tokens = torch.cat([torch.randn(3, 16, 4 * 96), _cells(pixels, 4, 16)], dim=-1)
    assert torch.equal(region_pixels(tokens, 4 * 96, 16), pixels)

    config = CrossConfig(cells=16, image_dim=image_dim(16, False), stem=4, context_layers=2, pool="softmin")
    matcher = CrossMatcher(config).eval()
    text, valid = torch.randn(1, 6, 96), torch.tensor([[True] * 5 + [False]])
    with torch.no_grad():
        memory = matcher.encode_item(tokens, "image")
        shared = matcher.judge(text, valid, memory, torch.zeros(3))
        each = matcher.judge(text.expand(3, -1, -1), valid.expand(3, -1), memory, torch.zeros(3))
        assert shared.shape == (3,) and torch.allclose(shared, each, atol=1e-5)
        stemless = CrossMatcher(replace(config, stem=0)).eval()
        stemless.load_state_dict({k: v for k, v in matcher.state_dict().items() if not k.startswith("stem.")})
        assert not torch.allclose(stemless.encode_item(tokens, "image"), memory, atol=1e-4)  # the stem adds in
        frames = torch.randn(3, 16, config.audio_dim)  # sounds have no pixels: the stem stays out
        assert torch.allclose(stemless.encode_item(frames, "audio"), matcher.encode_item(frames, "audio"), atol=1e-6)


def test_image_tokens_follow_the_matchers_config(demo_reranker) -> None:
    """Finer region pixels, the whole-image part (the same embedding and coarse pixels in every
    region token) and an earlier ViT block's patches widen the tokens as ``image_dim`` says; the
    shipped layout is their prefix."""
    import torch

    from mmsearch.preprocess import square_crop
    from mmsearch.rerank.cross import CrossConfig
    from mmsearch.rerank.demo import image_dim

    towers = demo_reranker.towers
    scenes = [
        world.Scene("circle", "red", "white", 1, "small", 3),
        world.Scene("circle", "red", "black", 1, "large", 3),
    ]
    pixels = towers.image_pixels(np.stack([square_crop(world.render(s), towers.image_input.size) for s in scenes]))
    plain, embeddings = towers.images(pixels)
    assert plain.shape == (2, 16, image_dim(4, False))
    shipped = demo_reranker.matcher.config
    assert towers.images(pixels, shipped)[0].shape == (2, 16, shipped.image_dim)
    config = CrossConfig(cells=4, whole_image=True, image_dim=image_dim(4, True))
    whole, same = towers.images(pixels, config)
    assert whole.shape == (2, 16, config.image_dim) and torch.equal(same, embeddings)
    assert torch.equal(whole[..., : plain.shape[-1]], plain)
    extra = whole[..., plain.shape[-1] :]
    assert torch.equal(extra, extra[:, :1].expand_as(extra))  # one whole-image part, in every region
    assert torch.allclose(extra[:, 0, : embeddings.shape[-1]], embeddings)
    assert not torch.allclose(extra[0, 0], extra[1, 0])  # white vs black background, small vs large
    early = towers.images(pixels, CrossConfig(early_layer=1, image_dim=image_dim(4, False, 1)))[0]
    assert early.shape[-1] == image_dim(4, False, 1) == plain.shape[-1] + 4 * 96
    assert torch.allclose(early[..., : plain.shape[-1]], plain, atol=1e-5)  # one pass yields both layers
    assert not torch.allclose(early[..., plain.shape[-1] :], plain[..., : 4 * 96], atol=1e-2)
    fine = towers.images(pixels, CrossConfig(cells=8, image_dim=image_dim(8, False)))[0]
    assert fine.shape[-1] == image_dim(8, False) and torch.allclose(
        fine[..., -192:].unflatten(-1, (3, 4, 2, 4, 2)).mean((-3, -1)).flatten(-3), plain[..., -48:], atol=1e-5
    )


def test_demo_reranker_encodes_a_text_query_once_for_both_stages(index: Index) -> None:
    reranker = index.reranker()
    query = "two small blue squares on a black background"
    shared = reranker.query_vector(Query("text", query), index.manifest.model)
    assert shared is not None and np.allclose(shared, index.embed_terms(embed_terms(query)), atol=1e-5)
    assert reranker.text(query) is reranker.text(query)  # the judge reuses the tokens encoded for the vector stage
    assert reranker.query_vector(Query("text", query), "ViT-B-32:laion2b_s34b_b79k") is None
    reranked = index.search(query, k=20, rerank=True, rerank_depth=20)
    assert {h.id for h in reranked} == {h.id for h in index.search(query, k=20)}


def test_cache_serves_concurrent_searches(demo_reranker, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    candidates = []
    for i, colour in enumerate(("red", "green", "blue")):
        world.render(world.Scene("circle", colour, "grey", 1, "large", i)).save(tmp_path / f"{i}.png")
        candidates.append(Candidate(i, str(tmp_path / f"{i}.png"), "image"))
    demo_reranker.cache.clear()
    query = Query("text", "a green circle")
    alone = demo_reranker.match_probs(query, candidates)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: demo_reranker.match_probs(query, candidates), range(8)))
    assert all(np.allclose(a, alone, atol=1e-6) for a in answers) and len(demo_reranker.cache) == 3


# -- BLIP through transformers' real loaders --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BLIP ITM model and processor, saved as save_pretrained saves any model."""
    import torch
    from transformers import BertTokenizerFast, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("blip")
    words = "a an the two red green blue circle square circles on background grey black white".split()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    torch.manual_seed(0)
    text = dict(
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=32,
        encoder_hidden_size=32,
        bos_token_id=2,
        pad_token_id=0,
        sep_token_id=3,
    )
    vision = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=16
    )
    model = BlipForImageTextRetrieval(BlipConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(folder)
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    ).save_pretrained(folder)
    return folder


def test_blip_reranks_through_from_pretrained(tiny_blip: Path, index: Index) -> None:
    spec = f"blip:{tiny_blip}"
    hits = index.search("a red circle", k=5, rerank=spec, rerank_depth=10)
    assert len(hits) == 5 and all(0.0 <= h.match_prob <= 1.0 for h in hits)
    assert [h.match_prob for h in hits] == sorted((h.match_prob for h in hits), reverse=True)
    again = registry.load_reranker(spec).match_probs(
        Query("text", "a red circle"), [Candidate(h.id, h.path, h.modality) for h in hits]
    )
    assert np.allclose(again, [h.match_prob for h in hits], atol=1e-5)  # deterministic, same weights
    with pytest.raises(UserInputError, match="text→audio"):
        index.search("a red circle", modality="audio", rerank=spec)


def test_blip_missing_folder_is_one_line(tmp_path: Path) -> None:
    for missing in (str(tmp_path / "nothing"), "./nothing-here", "~/nothing-here"):
        with pytest.raises(UserInputError) as refused:
            registry.load_reranker(f"blip:{missing}")
        assert str(refused.value) == f"no such re-ranker checkpoint folder: {missing}"
    (tmp_path / "empty").mkdir()  # a folder that holds no model: transformers' own complaint, in one line
    with pytest.raises(ModelError, match="could not load BLIP model") as caught:
        registry.load_reranker(f"blip:{tmp_path / 'empty'}")
    assert "\n" not in str(caught.value)


# -- the CLI and the server ----------------------------------------------------------------------


def test_cli_rerank_with_a_missing_checkpoint_folder_is_one_line(built: dict) -> None:
    folder = str(built["index"].path)
    done = run_cli("query", "a red circle", "--rerank", "--reranker", "blip:/nonexistent", "--index", folder)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == ["mmsearch: error: no such re-ranker checkpoint folder: /nonexistent"]


def test_cli_rerank_json_and_min_prob(built: dict) -> None:
    folder = str(built["index"].path)
    done = run_cli("query", "a red circle on a grey background", "--rerank", "--json", "-k", "5", "--index", folder)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert [h["match_prob"] for h in hits] == sorted((h["match_prob"] for h in hits), reverse=True)
    colour, shape = built["absent"][0]
    query = world.class_query(colour, shape)
    done = run_cli("query", query, "--min-prob", "0.5", "--min-score", "auto", "--json", "--index", folder)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    done = run_cli("query", "a red circle", "--min-score", "lots", "--index", folder)
    assert done.returncode != 0 and "Traceback" not in done.stderr and "'auto'" in done.stderr


def test_server_takes_the_same_fields(built: dict) -> None:
    from mmsearch.serve.app import create_app
    from mmsearch.serve.server import ServerThread
    from mmsearch.serve.settings import ServeSettings

    settings = ServeSettings(thumb_cache=built["root"] / "thumbs")
    running = ServerThread(create_app(Index.open(built["index"].path), settings)).start().wait_ready()
    try:
        with httpx.Client(base_url=running.url, timeout=60) as api:
            answer = api.get("/api/search", params={"q": "a red circle", "rerank": "true", "k": 4}).json()
            probs = [hit["match_prob"] for hit in answer["results"]]
            assert len(probs) == 4 and probs == sorted(probs, reverse=True)
            colour, shape = built["absent"][0]
            body = {"q": world.class_query(colour, shape), "min_prob": 0.5, "rerank_depth": 20}
            assert api.post("/api/search", json=body).json()["results"] == []
            present = world.class_query(*built["present"][0][0])
            auto = api.post("/api/search", json={"q": present, "min_score": "auto", "k": 48}).json()["results"]
            assert auto and all("match_prob" not in hit for hit in auto)
            wrong = api.post("/api/search", json={"like_id": 1, "rerank": True})
            assert wrong.status_code == 400 and "text query" in wrong.json()["error"]
    finally:
        running.stop()


def test_features_prepared_at_ingest_judge_without_reading_files(tmp_path: Path) -> None:
    world.generate_world(tmp_path / "world", 12, SEED + 1, sounds=True)
    folders = [str(tmp_path / "world" / "images"), str(tmp_path / "world" / "sounds")]
    folder = str(tmp_path / "index")
    done = run_cli("index", *folders, "--index", folder, "--model", "demo", "--rerank-features", "--json")
    assert done.returncode == 0, done.stderr
    prepared = json.loads(done.stdout)["rerank_features"]
    index = Index.open(folder)
    distinct = "SELECT count(DISTINCT (content_hash, offset_s)) AS n FROM items WHERE modality IN ('image', 'audio')"
    assert prepared["computed"] == index.sql(distinct)["n"][0].as_py() > 12
    assert prepared["stored"] == 0 and prepared["unreadable"] == 0
    assert index.info()["rerank_features_bytes"] > prepared["computed"] * 4608  # fp32 features, plus keys

    query = "a red circle"
    stored = [(h.id, h.match_prob) for h in index.search(query, k=6, rerank=True, rerank_depth=12)]
    assert len(index.reranker().cache) == 0  # every candidate came from the index's store: nothing computed
    from_files = Index.open(folder).reranker()
    from_files.use_store(None)
    judged = stage.rerank(from_files, Query("text", query), index.search(query, k=12), 6)
    assert len(from_files.cache) == 12  # these were computed from the files
    assert [i for i, _ in stored] == [hit.id for hit in judged]
    assert np.allclose([p for _, p in stored], [hit.match_prob for hit in judged], atol=1e-6)

    again = json.loads(run_cli("index", *folders, "--index", folder, "--rerank-features", "--json").stdout)
    assert again["rerank_features"] | {"stored": prepared["computed"], "computed": 0} == again["rerank_features"]

    images = index.sql("SELECT count(DISTINCT content_hash) AS n FROM items WHERE modality = 'image'")["n"][0].as_py()
    for image in (tmp_path / "world" / "images").iterdir():
        image.unlink()
    pruned = run_cli("index", *folders, "--index", folder, "--rerank-features", "--json")
    assert json.loads(pruned.stdout)["rerank_features"]["dropped"] == images  # the removed images' features
    sounds = Index.open(folder)
    sounds.search("a red circle", modality="audio", k=3, rerank=True)
    assert len(sounds.reranker().cache) == 0  # the sounds' features survived the rewrite


def test_rerank_features_need_a_reranker_for_the_model(tmp_path: Path) -> None:
    index = Index.create(tmp_path / "vectors", dim=8)
    with pytest.raises(UserInputError, match="no default re-ranker"):
        index.prepare_rerank()
    (tmp_path / "notes").mkdir()
    done = run_cli("index", str(tmp_path / "notes"), "--index", str(index.path), "--rerank-features")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "--rerank-features: no default re-ranker for an index built with None" in done.stderr
