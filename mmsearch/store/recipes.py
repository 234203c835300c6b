"""FAISS index recipes: how a shard's vectors are indexed, as FAISS factory strings.

A shard's index is the *bare* FAISS index built from a factory string (``"Flat"``,
``"IVF1024,Flat"``, ``"HNSW32,Flat"``, ``"IVF1024,SQ8,RFlat"`` ...) with inner product
on L2-normalised float32 vectors (cosine). Row ``i`` of the index is row ``i`` of the
shard's Parquet file; deletions and filters reach FAISS as an ``IDSelectorBitmap`` over
row numbers. The factory string is recorded per shard together with the search settings
that :func:`tune` chose when the shard was sealed and the recall@10 it measured.

``auto`` (see :func:`resolve`) stores small shards ``Flat`` (exact, no training; below
``FLAT_MAX_ROWS`` a brute-force scan takes milliseconds) and large ones as an IVF
with about ``4·sqrt(rows)`` lists holding full vectors; with a memory budget it picks the
most accurate code that fits. It never picks HNSW: on 2 cores ``IVF1024,Flat`` reached
recall@10 1.000 at ~100x flat speed and built in 17 s where ``HNSW32,Flat`` reached .977
at the same speed in 26 s, HNSW adds ~270 bytes of links per vector and loses recall
under selective filters (the graph walk starves), and an IVF takes every compressed code.

Old shards recorded the names ``flat`` and ``hnsw`` and wrapped the index in an
``IndexIDMap2``; every function here accepts those names and :func:`unwrap` opens them.

Pitfalls handled here, so callers need not know them:

- A ``SearchParametersIVF`` / ``SearchParametersHNSW`` / ``IndexRefineSearchParameters``
  *replaces* the index's own ``nprobe`` / ``efSearch`` / ``k_factor`` with its defaults
  (1, 16, 1), so :func:`search_params` always fills every setting.
- ``IndexRefine`` ignores ``sel`` on its own parameters: the selector must ride in
  ``base_index_params``; the refine stage only re-scores what the base returned.
- IVF and refine indexes reject a plain ``SearchParameters``. Flat PQ, fast-scan (other
  than IVF fast-scan), additive-quantizer and NSG indexes reject every parameter object,
  so they cannot be filtered and :func:`resolve` refuses them (``IVF1,PQ16x4fs`` is a
  filterable exhaustive PQ). HNSW honours a selector, but a very selective one starves
  the graph walk (few or no results): score a small allowed set exactly instead.
- ``PQ`` codes default to polysemous training, which is slow (30 s vs 8 s for 20k × 32)
  and only serves Hamming filtering; ``auto`` uses RaBitQ or 4-bit fast-scan PQ.
- Python objects passed inside parameter objects must outlive the search; the objects
  returned by :func:`search_params` hold references to everything they point to.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import faiss
import numpy as np

from mmsearch.errors import UserInputError

FLAT_MAX_ROWS = 50_000  # below this, auto stores shards exact (Flat)
MAX_NLIST = 65_536
MIN_POINTS_PER_LIST = 39  # faiss warns below 39 training points per centroid
TRAIN_MAX_ROWS = 100_000  # training sample cap (raised to 64 points per list for large nlist)
TRAIN_SEED = 0
IVF_ID_BYTES = 8  # an IVF stores each vector's int64 id next to its code
DIRECT_MAP_BYTES = 8  # make_direct_map(): one int64 (list, offset) per vector, for reconstruct by row
DEFAULT_NPROBE = 16
DEFAULT_EF_SEARCH = 128
DEFAULT_K_FACTOR = 4.0
EF_SEARCH_SWEEP = (16, 32, 64, 128, 256, 512, 1024)
K_FACTOR_SWEEP = (1, 2, 4, 8, 16, 32)
PLATEAU_STEPS = 3  # a sweep that misses the target stops after this many steps without gain
QUERY_NOISE = 0.3  # norm of the Gaussian perturbation of tuning queries (cosine ~0.96 with the source)

LEGACY = {"flat": "Flat", "hnsw": "HNSW32,Flat"}
EXAMPLES = "auto, flat, hnsw, Flat, IVF1024,Flat, HNSW32,Flat, IVF1024,SQ8, IVF1024,SQ8,RFlat, IVF1024,PQ64x4fs"
RECIPES_HELP = (
    "auto (Flat below 50,000 rows per shard, else IVF), flat, hnsw, or a FAISS factory string "
    "such as IVF1024,Flat / HNSW32,Flat / IVF1024,SQ8,RFlat / IVF1024,PQ64x4fs"
)

# Index types whose search() refuses an IDSelector (measured on faiss 1.15): unusable for shards.
_UNFILTERABLE = (
    faiss.IndexPQ,
    faiss.IndexFastScan,  # IndexPQFastScan, IndexRaBitQFastScan, additive fast-scan (not the IVF ones)
    faiss.IndexAdditiveQuantizer,
    faiss.IndexNSG,
    faiss.IndexIVFAdditiveQuantizer,
    faiss.IndexIVFAdditiveQuantizerFastScan,
)
_TRANSFORM = re.compile(r"^(PCA|PCAR|PCAW|PCAWR|OPQ|RR|ITQ|L2norm|Pad)\d*(_\d+)?$")


@dataclass(frozen=True)
class Tuning:
    """Search settings chosen at seal time and the recall@k they measured (1.0: exact)."""

    params: dict[str, float]
    recall: float


# --------------------------------------------------------------------------- names


def _canonical(recipe: str) -> str:
    recipe = recipe.strip()
    return LEGACY.get(recipe, recipe)


def _split(factory: str) -> list[str]:
    """Top-level comma-separated components (``Refine(...)`` may hold commas)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(factory):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(factory[start:i].strip())
            start = i + 1
    parts.append(factory[start:].strip())
    return parts


def _structure(factory: str) -> tuple[str, bool, int | None]:
    """(core kind: "exact" | "ivf" | "hnsw" | "other", has a refine stage, nlist if parsable)."""
    factory = _canonical(factory)
    if factory == "Flat":
        return "exact", False, None
    parts = _split(factory)
    refine = parts[-1] == "RFlat" or parts[-1].startswith("Refine(")
    core = next((p for p in parts if not _TRANSFORM.match(p)), "")
    if core.startswith(("IVF", "IMI")):
        m = re.match(r"IVF(\d+)", core)
        return "ivf", refine, int(m.group(1)) if m else None
    if core.startswith("HNSW"):
        return "hnsw", refine, None
    return "other", refine, None


def is_exact(factory: str) -> bool:
    """True for exhaustive exact search (``Flat``, legacy ``flat``): nothing to tune."""
    return _canonical(factory) == "Flat"


def _faiss_message(exc: BaseException) -> str:
    """The useful part of a FAISS exception, on one line."""
    text = " ".join(str(exc).split())
    text = re.split(r"\.(?:cpp|h):\d+: ", text)[-1]
    m = re.match(r"Error: '(.*)' failed(?:: (.*))?$", text)
    if m:
        text = m.group(2) or f"{m.group(1)} does not hold"
    return text[:160] or type(exc).__name__


def _invalid(recipe: str, reason: str) -> UserInputError:
    return UserInputError(f"invalid index recipe {recipe!r}: {reason}; use one of {EXAMPLES} or another factory string")


@lru_cache(maxsize=256)
def _check(factory: str, dim: int) -> None:
    """Build ``factory`` on an empty ``dim``-dimensional instance; raise UserInputError if unusable."""
    if not factory:
        raise _invalid(factory, "empty")
    if "IDMap" in factory:
        raise _invalid(factory, "IDMap wrappers are not allowed (row numbers are the shard's ids)")
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:
        raise _invalid(factory, _faiss_message(exc)) from None
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise _invalid(factory, "does not support inner product")
    if isinstance(_layers(index)[-1], _UNFILTERABLE):
        raise _invalid(factory, "FAISS takes no row filter (search parameters) for this index type")


def _empty(factory: str, dim: int) -> faiss.Index:
    _check(factory, dim)
    return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)


# --------------------------------------------------------------------------- structure of built indexes


def _layers(index: faiss.Index) -> list[faiss.Index]:
    """The chain of wrappers down to the core index (IDMap, pre-transforms and refine are walked)."""
    chain = [faiss.downcast_index(index)]
    while True:
        top = chain[-1]
        if isinstance(top, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            chain.append(faiss.downcast_index(top.index))
        elif isinstance(top, faiss.IndexRefine):
            chain.append(faiss.downcast_index(top.base_index))
        else:
            return chain


def _refine(index: faiss.Index) -> faiss.IndexRefine | None:
    return next((layer for layer in _layers(index) if isinstance(layer, faiss.IndexRefine)), None)


@contextlib.contextmanager
def _gpu_clustering(ivf: faiss.IndexIVF | None) -> Iterator[None]:
    """Run an IVF's k-means assignments on the GPUs when faiss-gpu sees any (they are nearly
    all of the training time); the trained index stays a CPU index, which honours selectors.
    Without GPUs nothing changes."""
    gpus = faiss.get_num_gpus() if ivf is not None and hasattr(faiss, "get_num_gpus") else 0
    if not gpus:
        yield
        return
    assert ivf is not None
    assign = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.metric_type))
    ivf.clustering_index = assign
    try:
        yield
    finally:
        ivf.clustering_index = None  # type: ignore[assignment]  # SWIG takes None as a null pointer


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    core = _layers(index)[-1]
    return core if isinstance(core, faiss.IndexIVF) else None


def _hnsw(index: faiss.Index) -> faiss.IndexHNSW | None:
    core = _layers(index)[-1]
    return core if isinstance(core, faiss.IndexHNSW) else None


def _min_train_rows(index: faiss.Index) -> int:
    """Fewest training points the index can be trained on at all (0: needs no training)."""
    if index.is_trained:
        return 0
    need = 1
    for layer in _layers(index):
        if isinstance(layer, faiss.IndexIVF):
            need = max(need, layer.nlist)
        if isinstance(layer, faiss.IndexPreTransform) and any(
            # ``chain`` is a SWIG vector, typed as a list by faiss's stubs
            isinstance(layer.chain.at(i), faiss.OPQMatrix)  # type: ignore[attr-defined]
            for i in range(layer.chain.size())  # type: ignore[attr-defined]
        ):
            need = max(need, 256)
        pq = getattr(layer, "pq", None)
        if pq is not None:
            need = max(need, pq.ksub)
    return need


# --------------------------------------------------------------------------- memory


def _code_bytes(index: faiss.Index, *, direct_map: bool) -> float:
    # Never rebind ``index``: the caller's proxy may be the only owner of the C++ object.
    index_ = faiss.downcast_index(index)
    if isinstance(index_, faiss.IndexPreTransform):
        return _code_bytes(index_.index, direct_map=direct_map)
    if isinstance(index_, faiss.IndexRefine):
        return _code_bytes(index_.base_index, direct_map=False) + _code_bytes(index_.refine_index, direct_map=False)
    if isinstance(index_, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return 8 + _code_bytes(index_.index, direct_map=direct_map)
    if isinstance(index_, faiss.IndexIVF):
        return index_.code_size + IVF_ID_BYTES + (DIRECT_MAP_BYTES if direct_map else 0)
    if isinstance(index_, faiss.IndexHNSW):
        m = index_.hnsw.nb_neighbors(1)  # type: ignore[attr-defined]  # missing from faiss's stubs
        # int32 links: 2M at level 0, M per upper level, expected 1/(M-1) upper levels;
        # plus the int32 level and the size_t offset of each vector.
        links = 4 * (2 * m + m / max(m - 1, 1)) + 4 + 8
        return links + _code_bytes(index_.storage, direct_map=False)
    if isinstance(index_, faiss.IndexFlat):
        return 4 * index_.d
    return float(getattr(index_, "code_size", 4 * index_.d))


def bytes_per_vector(factory: str, dim: int) -> float:
    """Estimated bytes of index memory per stored vector (excluding per-shard constants such
    as IVF centroids or PCA matrices, which are small against the vectors).

    ``Flat`` = 4·dim (float32); ``SQfp16`` = 2·dim; ``SQ8`` = dim; ``SQ4`` = dim/2;
    ``PQ{m}`` = m; ``PQ{m}x4fs`` = m/2; ``RaBitQ{b}`` = b·dim/8 + 8 (+12 when b > 1).
    An IVF adds 8 bytes (the int64 id stored with each code in its inverted list) plus 8
    for the direct map that lets a vector be read back by row (not built under a refine
    stage, which reads back from its own codes). A refine stage adds its own codes
    (``RFlat``: 4·dim). HNSW adds ~8·M+16 bytes of graph links. E.g. dim 512: ``Flat``
    2048, ``IVF,Flat`` 2064, ``IVF,SQ8`` 528, ``IVF,RaBitQ`` 88, ``IVF,SQ8,RFlat`` 2568,
    ``HNSW32,Flat`` ~2320.
    """
    return _code_bytes(_empty(_canonical(factory), dim), direct_map=True)


# --------------------------------------------------------------------------- choosing a recipe


def _pow2_round(x: float) -> int:
    return 1 << max(0, round(math.log2(max(x, 1.0))))


def _pow2_floor(x: float) -> int:
    return 1 << max(0, math.floor(math.log2(max(x, 1.0))))


def nlist_for(rows: int) -> int:
    """About 4·sqrt(rows) lists, a power of two, at least 39 training points per list, at most 65536."""
    return max(1, min(_pow2_round(4 * math.sqrt(max(rows, 1))), _pow2_floor(rows / MIN_POINTS_PER_LIST), MAX_NLIST))


CODECS = ("Flat", "SQfp16", "SQ8", "SQ6", "RaBitQ4", "RaBitQ2", "RaBitQ")  # most accurate first


def _pq_codecs(dim: int) -> list[str]:
    """4-bit fast-scan PQ at 1/2 and 1/4 bit per dimension: the last resort under tiny budgets."""
    return [f"PQ{dim // sub}x4fs" for sub in (8, 16) if dim % sub == 0 and (dim // sub) % 2 == 0]


def _auto(rows: int, dim: int, budget: float | None) -> str:
    def fits(factory: str) -> bool:
        return budget is None or bytes_per_vector(factory, dim) <= budget

    if rows < FLAT_MAX_ROWS:
        # Exhaustive scans need no ids, lists or real training, and all of these take a
        # selector (flat PQ does not, so budgets below the 1-bit RaBitQ go to an IVF).
        for codec in CODECS:
            if fits(codec):
                return codec
    nlist = nlist_for(rows)
    ladder = [f"IVF{nlist},{codec}" for codec in (*CODECS, *_pq_codecs(dim))]
    for factory in ladder:
        if fits(factory):
            if rows < _min_train_rows(_empty(factory, dim)):
                return "Flat"  # a handful of rows: whatever the budget, they weigh nothing
            return factory
    smallest = ladder[-1]
    raise UserInputError(
        f"memory budget of {budget:g} bytes per vector is too small for dimension {dim}: "
        f"the smallest auto recipe {smallest} needs {bytes_per_vector(smallest, dim):g}"
    )


def resolve(recipe: str, rows: int, dim: int, max_bytes_per_vector: float | None = None) -> str:
    """The factory string for a shard of ``rows`` vectors of dimension ``dim``.

    ``recipe`` is ``auto``, a legacy name (``flat`` → ``Flat``, ``hnsw`` → ``HNSW32,Flat``)
    or a FAISS factory string, validated by building it empty at ``dim`` (unusable →
    :class:`UserInputError`). An explicit recipe that needs training is stored ``Flat`` on a
    shard too small to train it: fewer rows than it has centroids (IVF lists, 2**nbits PQ
    codewords), or fewer than 39 per centroid while below ``FLAT_MAX_ROWS``, where exact
    search is cheap anyway. ``max_bytes_per_vector`` only shapes ``auto``.

    ``auto``:

    - ``rows < FLAT_MAX_ROWS``: ``Flat`` (4·dim bytes per vector: exact; a single-query scan of
      50k × 512 takes ~10-40 ms on 2 cores, and no training or tuning is needed).
    - larger shards: ``IVF{n},Flat`` with n = :func:`nlist_for` (≈4·sqrt(rows) as a power of
      two, ≥39 training points per list, ≤65536): 4·dim + 16 bytes per vector (8-byte id in
      its inverted list, 8-byte direct-map entry for reads by row). Distances are exact, so
      recall is limited only by nprobe, which :func:`tune` raises until it reaches the target.

    Under ``max_bytes_per_vector`` the first code that fits, most accurate first (bytes at
    dim 512, exhaustive / in an IVF, with recall@10 measured on synthetic clustered data):
    ``Flat`` 2048/2064, ``SQfp16`` (2·dim) 1024/1040 (~1e-3 relative error: as Flat),
    ``SQ8`` (dim) 512/528 (.98), ``SQ6`` (¾·dim) 384/400 (.96), ``RaBitQ4`` (dim/2 + 20)
    276/292 (.945; SQ4, 16 bytes less, measured .91), ``RaBitQ2`` (dim/4 + 20) 148/164 (.84),
    ``RaBitQ`` (dim/8 + 8) 72/88 (.72); then, in an IVF only, ``PQ{dim/8}x4fs`` 32/48 and
    ``PQ{dim/16}x4fs`` 16/32 (fast-scan PQ trains 16-centroid codebooks in seconds; flat PQ
    takes no filter). Below that, :class:`UserInputError`. RaBitQ needs no codebook training
    and beat fast-scan PQ at equal bytes (.72 vs .69 at 1 bit per dimension).

    No refine stage is chosen under a budget: re-ranking needs a second, more precise copy
    of each vector, which costs more than spending the same bytes on one better code. Note
    that compressed codes reconstruct only approximately: rebuilding a merged shard from
    them loses precision each time.
    """
    text = recipe.strip()
    if text == "auto":
        return _auto(rows, dim, max_bytes_per_vector)
    factory = _canonical(text)
    index = _empty(factory, dim)
    need = _min_train_rows(index)
    if need and (rows < need or (rows < FLAT_MAX_ROWS and rows < MIN_POINTS_PER_LIST * need)):
        return "Flat"
    return factory


def check_budget(recipe: str, max_memory: int | None) -> None:
    """Refuse a memory budget where it has no effect (it shapes ``auto`` only)."""
    if max_memory is not None and recipe.strip() != "auto":
        raise UserInputError(f"a memory budget shapes the auto recipe only, not {recipe!r}; drop one of them")
    if max_memory is not None and max_memory < 1:
        raise UserInputError("the memory budget must be at least 1 byte")


def check_recipe(recipe: str, dim: int | None = None) -> str:
    """Validate a ``--recipe`` value before any shard exists; returns it. Without ``dim``, a
    factory string passes if it builds at one of the common embedding dimensions (the real
    check is :func:`resolve`, at the index's dimension)."""
    text = recipe.strip()
    if text == "auto" or text in LEGACY:
        return text
    first: UserInputError | None = None
    for candidate in [dim] if dim else [512, 768, 1024, 384, 256, 1152, 1280, 640, 128, 64]:
        try:
            _check(text, candidate)
            return text
        except UserInputError as exc:
            first = first or exc
    raise first  # type: ignore[misc]


# --------------------------------------------------------------------------- build


def _train_rows(rows: int, nlist: int) -> int:
    return min(rows, max(TRAIN_MAX_ROWS, 64 * nlist))


def build(factory: str, vectors: np.ndarray) -> faiss.Index:
    """An inner-product index from ``factory``, trained on a seeded sample of ``vectors``
    (at most 100k rows, or 64 per IVF list), holding all of them in row order.

    IVF indexes get a direct map (reconstruct by row) unless a refine stage holds the
    vectors; default search settings are nprobe 16, efSearch 128, k_factor 4 until
    :func:`tune` replaces them.
    """
    factory = _canonical(factory)
    if factory == "auto":
        raise ValueError("resolve('auto', rows, dim) before building")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be 2-D, got shape {x.shape}")
    rows, dim = x.shape
    index = _empty(factory, dim)
    if not index.is_trained:
        ivf = _ivf(index)
        n = _train_rows(rows, ivf.nlist if ivf is not None else 1)
        sample = x if n >= rows else x[np.sort(np.random.default_rng(TRAIN_SEED).choice(rows, n, replace=False))]
        with _gpu_clustering(ivf):
            index.train(sample)
    if rows:
        index.add(x)
    ivf = _ivf(index)
    if ivf is not None:
        if _refine(index) is None:
            ivf.make_direct_map()
        ivf.nprobe = min(DEFAULT_NPROBE, ivf.nlist)
    hnsw = _hnsw(index)
    if hnsw is not None:
        hnsw.hnsw.efSearch = DEFAULT_EF_SEARCH
    refine = _refine(index)
    if refine is not None:
        refine.k_factor = DEFAULT_K_FACTOR
    return index


# --------------------------------------------------------------------------- search parameters


def search(
    index: faiss.Index, queries: np.ndarray, k: int, params: faiss.SearchParameters | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` (``k`` ≥ 1) through FAISS's SWIG method itself: its Python wrapper
    re-checks and re-converts queries that the engine hands over ready (float32, C order, the
    index's width), and those numpy calls cost µs a query on a search's cold caches."""
    if queries.dtype != np.float32 or not queries.flags.c_contiguous or queries.shape[1] != index.d:
        return index.search(queries, k, params=params)  # the wrapper converts, or says what is wrong
    scores = np.empty((len(queries), k), np.float32)
    rows = np.empty((len(queries), k), np.int64)
    index.search_c(len(queries), faiss.swig_ptr(queries), k, faiss.swig_ptr(scores), faiss.swig_ptr(rows), params)  # type: ignore[attr-defined]  # the SWIG method behind the wrapper
    return scores, rows


def search_params(
    factory: str, params: dict[str, float] | None = None, selector: faiss.IDSelector | None = None
) -> faiss.SearchParameters | None:
    """The parameter object for one search of a ``factory`` index: the tuned ``params``
    (``nprobe``, ``efSearch``, ``k_factor``; missing ones get the build defaults, since a
    parameter object overrides the index's own values) and ``selector`` (row bitmap).
    ``None`` when there is nothing to pass. The returned object keeps the selector and any
    nested parameter object alive (``referenced_objects``) for as long as it lives.
    """
    params = dict(params or {})
    kind, refine, nlist = _structure(factory)
    if not params and selector is None:
        return None
    # faiss's stubs lack SearchParametersHNSW, the SWIG keyword arguments and ``referenced_objects``
    # (a plain attribute on the proxy that keeps its members alive).
    base: faiss.SearchParameters
    if kind == "ivf":
        nprobe = int(params.get("nprobe", DEFAULT_NPROBE if nlist is None else min(DEFAULT_NPROBE, nlist)))
        base = faiss.SearchParametersIVF(nprobe=max(1, nprobe))  # type: ignore[call-arg]
    elif kind == "hnsw":
        ef_search = int(params.get("efSearch", DEFAULT_EF_SEARCH))
        base = faiss.SearchParametersHNSW(efSearch=ef_search)  # type: ignore[attr-defined]
    else:
        base = faiss.SearchParameters()
    if selector is not None:
        base.sel = selector
    base.referenced_objects = [selector]  # type: ignore[attr-defined]
    if not refine:
        return base
    k_factor = float(params.get("k_factor", DEFAULT_K_FACTOR))
    outer = faiss.IndexRefineSearchParameters(k_factor=k_factor)  # type: ignore[call-arg]
    outer.base_index_params = base
    if selector is not None:
        outer.sel = selector  # ignored by IndexRefine itself; set so nobody reads it as unfiltered
    outer.referenced_objects = [base, selector]  # type: ignore[attr-defined]
    return outer


# --------------------------------------------------------------------------- tuning


def _apply(index: faiss.Index, params: dict[str, float]) -> None:
    if "nprobe" in params and (ivf := _ivf(index)) is not None:
        ivf.nprobe = int(params["nprobe"])
    if "efSearch" in params and (hnsw := _hnsw(index)) is not None:
        hnsw.hnsw.efSearch = int(params["efSearch"])
    if "k_factor" in params and (refine := _refine(index)) is not None:
        refine.k_factor = float(params["k_factor"])


def _queries(vectors: np.ndarray, n: int, seed: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), min(n, len(vectors)), replace=False)
    q = vectors[rows] + rng.standard_normal((len(rows), vectors.shape[1])).astype(np.float32) * (
        noise / math.sqrt(vectors.shape[1])
    )
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.ascontiguousarray(q, dtype=np.float32)


def recall_at_k(vectors: np.ndarray, queries: np.ndarray, labels: np.ndarray, kth_score: np.ndarray) -> float:
    """Share of the k returned rows whose exact score reaches the k-th exact score (ties count)."""
    k = labels.shape[1]
    valid = labels >= 0
    scores = np.einsum("qd,qkd->qk", queries, vectors[np.where(valid, labels, 0)])
    hits = (valid & (scores >= kth_score[:, None] - 1e-5)).sum(axis=1)
    return float(np.minimum(hits, k).mean() / k)


def nprobe_steps(nlist: int) -> list[int]:
    """The nprobe values :func:`tune` tries: 1, 2, 3, 4, 6, 8, 12, ... (steps of 1.5x and 4/3x,
    not 2x: on clustered data recall@10 creeps up slowly, e.g. .944, .955, .963 at nprobe
    32, 48, 64, so a doubling ladder pays 64 where 48 reaches .95), then ``nlist``."""
    steps = sorted({v for i in range(int(math.log2(max(nlist, 1))) + 1) for v in (1 << i, 3 << i >> 1) if v <= nlist})
    return [*steps, *([nlist] if steps[-1] != nlist else [])]


def tune(
    index: faiss.Index,
    factory: str,
    vectors: np.ndarray,
    *,
    k: int = 10,
    target: float = 0.95,
    queries: int = 200,
    seed: int = 0,
    noise: float = QUERY_NOISE,
) -> Tuning:
    """Measure recall@k of ``index`` on ``queries`` of its own vectors (perturbed by a little
    Gaussian noise, so a query is not only its own nearest neighbour) against exact search
    over ``vectors``, and pick the cheapest settings that reach ``target``: nprobe (see
    :func:`nprobe_steps`) for IVF, efSearch (16 … 1024) for HNSW, then k_factor (1 … 32) for a
    refine stage. If nothing reaches the target, the settings with the best measured recall
    (cheapest among equals; a sweep stops after 3 doublings without gain). The choice is
    also set on ``index`` as its defaults.

    ``noise`` is the norm of the perturbation. Queries far from every stored vector (text
    against images: the modality gap) need more nprobe/efSearch than perturbed stored
    vectors: on near-uniform synthetic data, settings tuned to .95 at noise 0.3 gave .91 at
    noise 0.6 and .83 at 1.0. Raise ``noise`` or ``target`` where queries are like that.
    """
    if is_exact(factory):
        return Tuning({}, 1.0)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(x) == 0:
        return Tuning({}, 1.0)
    k = min(k, len(x))
    q = _queries(x, queries, seed, noise)
    exact_scores, _ = faiss.knn(q, x, k, faiss.METRIC_INNER_PRODUCT)
    kth = exact_scores[:, k - 1]
    measured: dict[tuple[tuple[str, float], ...], float] = {}

    def recall(settings: dict[str, float]) -> float:
        key = tuple(sorted(settings.items()))
        if key not in measured:
            _, labels = index.search(q, k, params=search_params(factory, settings))
            measured[key] = recall_at_k(x, q, labels, kth)
        return measured[key]

    ivf, hnsw, refine = _ivf(index), _hnsw(index), _refine(index)
    if ivf is not None:
        primary = ("nprobe", nprobe_steps(ivf.nlist))
    elif hnsw is not None:
        primary = ("efSearch", [ef for ef in EF_SEARCH_SWEEP if ef >= k] or [k])
    else:
        primary = None
    fixed = {"k_factor": float(K_FACTOR_SWEEP[-1])} if refine is not None else {}

    def sweep(name: str, values: list[float], others: dict[str, float]) -> dict[str, float]:
        """Cheapest value reaching the target; else the cheapest with the best recall seen."""
        best, best_recall, stale = values[0], -1.0, 0  # the first recall (>= 0) always beats -1
        for value in values:
            r = recall({**others, name: value})
            if r >= target:
                return {**others, name: value}
            if r > best_recall + 1e-9:
                best, best_recall, stale = value, r, 0
            else:
                stale += 1
                if stale == PLATEAU_STEPS:  # the code's precision, not the search, limits recall
                    break
        return {**others, name: best}

    chosen = dict(fixed)
    if primary is not None:
        chosen = sweep(primary[0], [float(v) for v in primary[1]], fixed)
    if refine is not None:
        others = {n: v for n, v in chosen.items() if n != "k_factor"}
        chosen = sweep("k_factor", [float(v) for v in K_FACTOR_SWEEP], others)
    result = Tuning(dict(sorted(chosen.items())), recall(chosen))
    _apply(index, result.params)
    return result


# --------------------------------------------------------------------------- reading back


def unwrap(index: faiss.Index) -> tuple[faiss.Index, np.ndarray | None]:
    """For a shard of the previous format (``IndexIDMap2`` around ``IndexFlatIP`` or
    ``IndexHNSWFlat``): the inner index and the int64 id of each of its rows. The inner
    index keeps the wrapper (its owner) alive. ``(index, None)`` when not wrapped."""
    outer = faiss.downcast_index(index)
    if not isinstance(outer, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return index, None
    inner = faiss.downcast_index(outer.index)
    # ``index`` may be the only proxy that owns the wrapper (``referenced_objects``: not in faiss's stubs)
    inner.referenced_objects = [index, outer]  # type: ignore[attr-defined]
    return inner, faiss.vector_to_array(outer.id_map).astype(np.int64)


def reconstruct(index: faiss.Index, rows: np.ndarray) -> np.ndarray:
    """The stored vectors of row numbers ``rows`` as float32 (exact for Flat, IVF-Flat,
    HNSW-Flat and refine-Flat recipes; decoded approximations for compressed codes)."""
    inner, _ = unwrap(index)
    keys = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
    if len(keys) == 0:
        return np.empty((0, inner.d), dtype=np.float32)
    if keys.min() < 0 or keys.max() >= inner.ntotal:
        raise IndexError(f"row numbers must lie in [0, {inner.ntotal}); got {keys.min()}..{keys.max()}")
    return np.ascontiguousarray(inner.reconstruct_batch(keys), dtype=np.float32)
