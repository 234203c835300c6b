"""``min_score="auto"``: a per-query score threshold read from the index's own scores.

A cosine means nothing absolute: 0.25 is a strong match for one model and noise for
another, and a query's unrelated items do not all score alike. So "auto" asks how far a
hit stands out from what this query scores against this index's items: it scores the
query against a fixed random sample of at most ``SAMPLE`` live items of the returned
modality and keeps hits at least ``Z`` robust standard deviations (1.4826 x the median
absolute deviation) above that sample's median score. Most items match any one query
poorly, so the sample is a picture of "unrelated"; a hit must be an outlier from it.
The sample is drawn once per index generation and modality.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

SAMPLE = 2048
Z = 3.0  # on the demo model (training world, compositional queries): precision .74, recall .53
MAD_TO_SIGMA = 1.4826
_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
_lock = threading.Lock()


def sample_ids(ids: np.ndarray, size: int = SAMPLE, seed: int = 0) -> np.ndarray:
    """A fixed, sorted random subset of ``ids`` (all of them when there are few)."""
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    if len(ids) <= size:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, size, replace=False))


def thresholds(queries: np.ndarray, sample: np.ndarray, z: float = Z) -> np.ndarray:
    """Per query row: median + z x robust sigma of its scores against ``sample`` rows."""
    if not len(sample):
        return np.full(len(queries), -np.inf)
    scores = np.asarray(queries, dtype=np.float32) @ np.asarray(sample, dtype=np.float32).T
    median = np.median(scores, axis=1)
    sigma = MAD_TO_SIGMA * np.median(np.abs(scores - median[:, None]), axis=1)
    return median + z * np.maximum(sigma, 1e-6)


def cached_sample(key: tuple, load: Callable[[], np.ndarray]) -> np.ndarray:
    """The sample for ``key`` (index path, generation, modality), loaded at most once."""
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    vectors = load()
    with _lock:
        _cache[key] = vectors
        while len(_cache) > 16:
            _cache.popitem(last=False)
    return vectors
