"""The encoder contract shared by every model.

An encoder maps inputs of one or more modalities into one embedding *space*,
identified by ``space_id``. Subclasses implement only the per-batch methods;
batching and normalisation live here so every model behaves the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageInput:
    """How a model wants its pixels: picklable, so decode workers can preprocess."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows of unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class Encoder(ABC):
    """Turns batches of inputs into L2-normalised float32 vectors of one space."""

    spec: str
    space_id: str
    dim: int
    modalities: frozenset[str]
    image_input: ImageInput
    batch_size: int = 64

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """Embed preprocessed images shaped ``(n, 3, size, size)``."""
        return self._batched(self._embed_image_batch, pixels)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed strings."""
        return self._batched(self._embed_text_batch, list(texts))

    def _batched(self, embed, items) -> np.ndarray:
        if len(items) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [embed(items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        return l2_normalise(np.concatenate(parts))

    @abstractmethod
    def _embed_image_batch(self, pixels: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _embed_text_batch(self, texts: list[str]) -> np.ndarray: ...
