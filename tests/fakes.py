"""A deterministic text-only encoder for storage tests that need many fast ingests.

It is injected through ``Index(encoder=...)``, the way a search product passes its own
model; everything else (discovery, decoding, FAISS, Parquet, DuckDB) is real.
"""

from __future__ import annotations

import hashlib

import numpy as np

from mmsearch.models.base import Encoder


class HashEncoder(Encoder):
    """Texts to pseudo-random unit vectors seeded by their bytes."""

    spec = "hash-test"
    space_id = "hash-test-space"
    dim = 16
    modalities = frozenset({"text"})
    batch_size = 4

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little") for t in texts]
        return np.stack([np.random.default_rng(s).standard_normal(self.dim) for s in seeds]).astype(np.float32)


class CrashAfter(HashEncoder):
    """Raises ``KeyboardInterrupt`` (a kill) when asked for batch number ``batches + 1``."""

    def __init__(self, batches: int) -> None:
        self.remaining = batches

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        if self.remaining == 0:
            raise KeyboardInterrupt
        self.remaining -= 1
        return super()._embed_text_batch(texts)
