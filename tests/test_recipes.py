"""Index recipes on synthetic unit vectors: choice, validation, build, tuning, filters, read-back."""

from __future__ import annotations

import gc
import itertools

import faiss
import numpy as np
import pytest

from mmsearch.errors import UserInputError
from mmsearch.store import recipes

ROWS, DIM = 20_000, 32
TUNED = ("IVF128,Flat", "HNSW32,Flat", "IVF128,SQ8,RFlat", "IVF128,PQ8x4fs,Refine(SQ8)")
FILTERED = ("Flat", "flat", "hnsw", "SQ8", "IVF128,Flat", "IVF128,SQ8", *TUNED[1:])


def unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def clustered(rows: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return unit(centres[rng.integers(0, clusters, rows)] + 0.6 * rng.standard_normal((rows, dim)))


def perturbed(x: np.ndarray, n: int, seed: int, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = x[rng.choice(len(x), n, replace=False)]
    return unit(picked + noise / np.sqrt(x.shape[1]) * rng.standard_normal(picked.shape))


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1)[:, :k]


def overlap(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(ROWS, DIM, 200, seed=1)


@pytest.fixture(scope="module")
def built(data: np.ndarray) -> dict[str, faiss.Index]:
    cache: dict[str, faiss.Index] = {}

    def get(recipe: str) -> faiss.Index:
        if recipe not in cache:
            cache[recipe] = recipes.build(recipe, data)
        return cache[recipe]

    return get  # type: ignore[return-value]


# --------------------------------------------------------------------------- choosing


def test_auto_is_flat_for_small_shards_and_ivf_with_about_4_sqrt_rows_lists_above() -> None:
    assert recipes.resolve("auto", 0, 512) == "Flat"
    assert recipes.resolve("auto", recipes.FLAT_MAX_ROWS - 1, 512) == "Flat"
    assert recipes.resolve("auto", recipes.FLAT_MAX_ROWS, 512) == "IVF1024,Flat"  # 4·sqrt(50k) ≈ 894
    assert recipes.resolve("auto", 200_000, 512) == "IVF2048,Flat"  # ≈ 1789
    assert recipes.resolve("auto", 1_000_000, 768) == "IVF4096,Flat"  # 4000
    assert recipes.resolve("auto", 10**12, 512) == "IVF65536,Flat"  # capped
    for rows in (100, 5_000, 50_000, 77_777, 3_000_000):
        nlist = recipes.nlist_for(rows)
        assert nlist & (nlist - 1) == 0 and 1 <= nlist <= 65_536
        assert nlist == 1 or rows >= recipes.MIN_POINTS_PER_LIST * nlist


def test_auto_under_a_memory_budget_takes_the_most_accurate_code_that_fits() -> None:
    big = 200_000
    assert recipes.resolve("auto", big, 512, max_bytes_per_vector=1e9) == "IVF2048,Flat"
    assert recipes.resolve("auto", big, 512, max_bytes_per_vector=1500) == "IVF2048,SQfp16"
    assert recipes.resolve("auto", big, 512, max_bytes_per_vector=600) == "IVF2048,SQ8"
    assert recipes.resolve("auto", big, 512, max_bytes_per_vector=450) == "IVF2048,SQ6"
    assert recipes.resolve("auto", big, 512, max_bytes_per_vector=300) == "IVF2048,RaBitQ4"
    assert recipes.resolve("auto", big, 512, max_bytes_per_vector=100) == "IVF2048,RaBitQ"
    assert recipes.resolve("auto", big, 512, max_bytes_per_vector=40) == "IVF2048,PQ32x4fs"
    assert recipes.resolve("auto", 10_000, 512, max_bytes_per_vector=600) == "SQ8"  # small: exhaustive
    assert recipes.resolve("auto", 10_000, 512, max_bytes_per_vector=40) == "IVF256,PQ32x4fs"
    for budget in (33, 48, 64, 90, 200, 290, 530, 1100, 2100):
        for rows in (10_000, 200_000):
            chosen = recipes.resolve("auto", rows, 512, max_bytes_per_vector=budget)
            assert recipes.bytes_per_vector(chosen, 512) <= budget, (budget, rows, chosen)
    with pytest.raises(UserInputError, match="too small"):
        recipes.resolve("auto", big, 512, max_bytes_per_vector=20)


def test_legacy_names_map_to_factory_strings() -> None:
    assert recipes.resolve("flat", 10**6, DIM) == "Flat"
    assert recipes.resolve("hnsw", 10**6, DIM) == "HNSW32,Flat"
    assert recipes.is_exact("flat") and recipes.is_exact("Flat")
    for inexact in ("hnsw", "HNSW32,Flat", "IVF64,Flat", "SQ8", "IVF64,SQ8,RFlat"):
        assert not recipes.is_exact(inexact), inexact
    assert "auto" in recipes.RECIPES_HELP and "\n" not in recipes.RECIPES_HELP


@pytest.mark.parametrize("bad", ["IVF1024,Fla", "banana", "PQ7", "IDMap,Flat", "PQ8", "IVF64,RQ2x4", "auto2"])
def test_an_unusable_factory_string_is_a_one_line_user_error(bad: str) -> None:
    with pytest.raises(UserInputError) as caught:
        recipes.resolve(bad, 100_000, DIM)
    message = str(caught.value)
    assert "\n" not in message and repr(bad) in message and "IVF1024,Flat" in message


def test_check_recipe_accepts_what_some_common_dimension_builds() -> None:
    assert recipes.check_recipe(" auto ") == "auto" and recipes.check_recipe("hnsw") == "hnsw"
    assert recipes.check_recipe("IVF1024,PQ48x4fs") == "IVF1024,PQ48x4fs"  # 768 / 48
    with pytest.raises(UserInputError, match="PQ48"):
        recipes.check_recipe("IVF1024,PQ48x4fs", dim=512)
    with pytest.raises(UserInputError, match="banana"):
        recipes.check_recipe("banana")


def test_an_explicit_recipe_too_big_for_its_shard_is_stored_flat() -> None:
    assert recipes.resolve("IVF1024,Flat", 500, DIM) == "Flat"  # fewer rows than lists
    assert recipes.resolve("IVF1024,Flat", 30_000, DIM) == "Flat"  # < 39 per list, small enough for exact
    assert recipes.resolve("IVF1024,Flat", 100_000, DIM) == "IVF1024,Flat"
    assert recipes.resolve("IVF65536,Flat", 60_000, DIM) == "Flat"
    assert recipes.resolve("HNSW32,Flat", 10, DIM) == "HNSW32,Flat"  # needs no training


def test_bytes_per_vector_follows_the_code_size() -> None:
    d = 512
    sizes = [recipes.bytes_per_vector(f, d) for f in ("Flat", "SQfp16", "SQ8", "IVF64,PQ64x4fs")]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    assert recipes.bytes_per_vector("flat", d) == 4 * d
    assert recipes.bytes_per_vector("IVF64,Flat", d) == 4 * d + 16  # id + direct map
    assert recipes.bytes_per_vector("IVF64,SQ8,RFlat", d) == d + 8 + 4 * d  # refine holds the floats
    assert recipes.bytes_per_vector("HNSW32,Flat", d) > 4 * d + 8 * 32


# --------------------------------------------------------------------------- build and tune


@pytest.mark.parametrize("recipe", TUNED)
def test_build_and_tune_reach_the_target_recall(recipe: str, data: np.ndarray, built) -> None:
    index = built(recipe)
    assert index.ntotal == ROWS and index.metric_type == faiss.METRIC_INNER_PRODUCT
    tuning = recipes.tune(index, recipe, data, k=10, target=0.97, queries=200)
    assert tuning.recall >= 0.97 and tuning.params
    queries = perturbed(data, 300, seed=99)  # not the tuning sample
    _, found = index.search(queries, 10, params=recipes.search_params(recipe, tuning.params))
    assert overlap(found, brute_force(data, queries, 10)) >= 0.95


@pytest.mark.parametrize("recipe", ["IVF64,Flat", "RR32,IVF64,Flat"])  # bare and behind a random rotation
def test_tune_takes_the_cheapest_setting_that_reaches_the_target(recipe: str) -> None:
    x = unit(np.random.default_rng(3).standard_normal((4_000, DIM)))  # uniform: hard for an IVF
    index = recipes.build(recipe, x)
    low = recipes.tune(index, recipe, x, target=0.5)
    high = recipes.tune(index, recipe, x, target=0.99)
    assert 1 <= low.params["nprobe"] < high.params["nprobe"] <= 64
    assert 0.5 <= low.recall < 0.99 <= high.recall
    assert faiss.extract_index_ivf(index).nprobe == high.params["nprobe"]  # recorded on the index too
    half = recipes.tune(index, recipe, x, target=0.99, seed=1)
    smaller = {"nprobe": half.params["nprobe"] / 2}
    queries = perturbed(x, 200, seed=7)
    _, found = index.search(queries, 10, params=recipes.search_params(recipe, smaller))
    assert overlap(found, brute_force(x, queries, 10)) < 0.99  # one step cheaper misses the target


def test_tune_reports_the_best_it_measured_when_the_target_is_out_of_reach() -> None:
    x = unit(np.random.default_rng(4).standard_normal((4_000, DIM)))
    index = recipes.build("IVF16,PQ4x4fs", x)  # 2 bytes per vector: far from exact
    tuning = recipes.tune(index, "IVF16,PQ4x4fs", x, target=0.999)
    assert 0 < tuning.recall < 0.999 and 1 <= tuning.params["nprobe"] <= 16
    assert recipes.tune(recipes.build("Flat", x), "Flat", x) == recipes.Tuning({}, 1.0)


# --------------------------------------------------------------------------- filters


def _filtered_params(recipe: str, allowed: np.ndarray) -> faiss.SearchParameters:
    """Selector and bitmap go out of scope here: the returned object must keep them alive."""
    selector = faiss.IDSelectorBitmap(np.packbits(allowed, bitorder="little"))
    return recipes.search_params(recipe, {}, selector)


@pytest.mark.parametrize("recipe", FILTERED)
def test_a_row_bitmap_is_honoured_by_every_recipe(recipe: str, data: np.ndarray, built) -> None:
    index = built(recipes.resolve(recipe, ROWS, DIM))
    rows = np.arange(ROWS)
    queries = data[rows % 3 != 0][:60]  # each query's own row is filtered out
    _, unfiltered = index.search(queries, 10)
    assert (unfiltered % 3 != 0).any()  # the filter has something to remove

    params = _filtered_params(recipe, rows % 3 == 0)
    gc.collect()
    _, found = index.search(queries, 10, params=params)
    assert (found >= 0).sum() >= 0.9 * found.size and (found[found >= 0] % 3 == 0).all()

    few = np.array([5, 1_000, 7_000, 12_345, 19_999])
    allowed = np.zeros(ROWS, dtype=bool)
    allowed[few] = True
    _, found = index.search(data[few - 1], 10, params=_filtered_params(recipe, allowed))
    assert set(found[found >= 0].tolist()) <= set(few.tolist())
    if recipes.is_exact(recipe):
        assert all(set(row[row >= 0]) == set(few) for row in found)


def test_search_params_fill_every_setting() -> None:
    selector = faiss.IDSelectorBitmap(np.packbits(np.ones(8, dtype=bool), bitorder="little"))
    assert recipes.search_params("Flat", {}, None) is None
    assert recipes.search_params("flat", {}, selector).sel is not None
    ivf = recipes.search_params("IVF64,Flat", {}, selector)
    assert isinstance(ivf, faiss.SearchParametersIVF) and ivf.nprobe == recipes.DEFAULT_NPROBE
    assert recipes.search_params("IVF8,Flat", {}, selector).nprobe == 8
    assert recipes.search_params("IVF64,Flat", {"nprobe": 32}).nprobe == 32
    hnsw = recipes.search_params("hnsw", {}, selector)
    assert isinstance(hnsw, faiss.SearchParametersHNSW) and hnsw.efSearch == recipes.DEFAULT_EF_SEARCH
    refine = recipes.search_params("IVF64,SQ8,RFlat", {"nprobe": 4, "k_factor": 8}, selector)
    assert isinstance(refine, faiss.IndexRefineSearchParameters) and refine.k_factor == 8
    assert refine.base_index_params is not None and refine.base_index_params.sel is not None


# --------------------------------------------------------------------------- reading back


@pytest.mark.parametrize("recipe", ["Flat", "IVF128,Flat", "HNSW32,Flat", "IVF128,SQ8,RFlat"])
def test_reconstruct_returns_the_stored_vectors_exactly(recipe: str, data: np.ndarray, built) -> None:
    rows = np.array([0, 17, 9_999, ROWS - 1, 17])
    np.testing.assert_array_equal(recipes.reconstruct(built(recipe), rows), data[rows])


def test_reconstruct_decodes_compressed_codes_and_checks_rows(data: np.ndarray, built) -> None:
    index = built("IVF128,SQ8")
    rows = np.arange(0, ROWS, 997)
    decoded = recipes.reconstruct(index, rows)
    assert decoded.dtype == np.float32 and decoded.shape == (len(rows), DIM)
    assert 0 < np.abs(decoded - data[rows]).max() < 0.05
    assert recipes.reconstruct(index, np.array([], dtype=np.int64)).shape == (0, DIM)
    with pytest.raises(IndexError):
        recipes.reconstruct(index, np.array([ROWS]))


@pytest.mark.parametrize("inner_type", [faiss.IndexFlatIP, faiss.IndexHNSWFlat])
def test_unwrap_opens_a_shard_of_the_previous_format(inner_type, data: np.ndarray, tmp_path) -> None:
    x = data[:500]
    ids = np.arange(500, dtype=np.int64) * 7 + 3
    inner = faiss.IndexFlatIP(DIM) if inner_type is faiss.IndexFlatIP else faiss.IndexHNSWFlat(DIM, 16, 1)
    wrapped = faiss.IndexIDMap2(inner)
    wrapped.add_with_ids(x, ids)
    faiss.write_index(wrapped, str(tmp_path / "old.faiss"))
    del wrapped, inner

    opened, got_ids = recipes.unwrap(faiss.read_index(str(tmp_path / "old.faiss")))
    gc.collect()  # the wrapper read from disk owns the inner index; unwrap must keep it alive
    assert isinstance(opened, inner_type) and opened.ntotal == 500
    np.testing.assert_array_equal(got_ids, ids)
    _, rows = opened.search(x[42:43], 1)
    assert rows[0, 0] == 42  # row numbers, not ids
    np.testing.assert_array_equal(recipes.reconstruct(opened, np.array([42])), x[42:43])

    flat = faiss.IndexFlatIP(DIM)
    same, none = recipes.unwrap(flat)
    assert same is flat and none is None


def test_nprobe_steps_are_finer_than_doublings() -> None:
    assert recipes.nprobe_steps(1) == [1]
    assert recipes.nprobe_steps(64) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert recipes.nprobe_steps(100)[-3:] == [64, 96, 100]  # nlist itself (exhaustive) comes last
    steps = recipes.nprobe_steps(4096)
    assert steps == sorted(set(steps)) and max(b / a for a, b in itertools.pairwise(steps[1:])) <= 1.5  # from 2 on
