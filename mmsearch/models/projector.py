"""A linear projector from one embedding space into another, fitted by ridge regression.

It lets an audio model with its own text tower (CLAP) join an open_clip space: embed
the same captions with both text towers, fit the map, then apply it to the audio
model's sound embeddings. Pairs of (sound, caption) can be added to the fit.
The fitted map is cached as an artifact keyed by both spaces' ids.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsearch.config import cache_dir
from mmsearch.models.base import l2_normalise
from mmsearch.store.atomic import atomic_write_bytes


def artifact_path(source_id: str, target_id: str) -> Path:
    """Where the projector between two spaces is cached: keyed by both ids, so a new
    version of either model never picks up a stale map."""
    key = hashlib.sha256(f"{source_id}\n{target_id}".encode()).hexdigest()[:24]
    return cache_dir() / "projectors" / f"{key}.npz"


@dataclass(frozen=True)
class Projector:
    """``x ↦ normalise(x @ weight + bias)`` from ``source_id``'s space to ``target_id``'s."""

    weight: np.ndarray
    bias: np.ndarray
    source_id: str
    target_id: str
    pairs: int

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        return l2_normalise(np.asarray(vectors, dtype=np.float32) @ self.weight + self.bias)

    def save(self) -> Path:
        """Write the artifact atomically to its keyed cache path."""
        path = artifact_path(self.source_id, self.target_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            weight=self.weight,
            bias=self.bias,
            ids=np.array([self.source_id, self.target_id]),
            pairs=self.pairs,
        )
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, source_id: str, target_id: str) -> Projector | None:
        """The cached projector between the two spaces, or ``None`` if none was fitted."""
        path = artifact_path(source_id, target_id)
        if not path.is_file():
            return None
        with np.load(path) as data:
            return cls(data["weight"], data["bias"], source_id, target_id, int(data["pairs"]))


def fit(source: np.ndarray, target: np.ndarray, source_id: str, target_id: str, ridge: float = 1e-2) -> Projector:
    """Least-squares map from ``source`` rows to ``target`` rows with an L2 penalty."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    x, y = source - source_mean, target - target_mean
    gram = x.T @ x + ridge * len(x) * np.eye(x.shape[1])
    weight = np.linalg.solve(gram, x.T @ y)
    bias = target_mean - source_mean @ weight
    return Projector(weight.astype(np.float32), bias.astype(np.float32), source_id, target_id, len(source))
