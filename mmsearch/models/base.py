"""The encoder contract shared by every model.

An encoder maps inputs of one or more modalities into one embedding *space*,
identified by ``space_id``; ``modalities`` says which inputs it accepts. Subclasses
implement only the per-batch methods; batching, dispatch and normalisation live
here so every model behaves the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mmsearch.errors import ModelError
from mmsearch.ingest.preprocess import normalise


@dataclass(frozen=True)
class ImageInput:
    """How a model wants its pixels: picklable, so decode workers can preprocess."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class AudioInput:
    """How a model wants its sound: mono at ``sample_rate``, in windows of ``window_s``."""

    sample_rate: int
    window_s: float


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows of unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class Encoder:
    """Turns batches of inputs into L2-normalised float32 vectors of one space."""

    spec: str
    space_id: str
    audio_space_id: str | None = None  # identifies the audio tower when there is one
    dim: int
    modalities: frozenset[str] = frozenset()
    image_input: ImageInput | None = None
    audio_input: AudioInput | None = None
    batch_size: int = 64

    def embed(self, modality: str, payloads: Sequence) -> np.ndarray:
        """Embed decoded pieces of one modality: uint8 crops, strings or waveforms."""
        if modality not in self.modalities:
            raise ModelError(f"model {self.spec!r} cannot embed {modality}")
        if modality == "image":
            spec = self.image_input
            return self.embed_images(normalise(np.stack(payloads), spec.mean, spec.std))
        if modality == "text":
            return self.embed_texts(payloads)
        return self.embed_audio(np.stack(payloads))

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """Embed normalised images shaped ``(n, 3, size, size)``."""
        return self._batched(self._embed_image_batch, pixels)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed strings."""
        return self._batched(self._embed_text_batch, list(texts))

    def embed_audio(self, waves: np.ndarray) -> np.ndarray:
        """Embed mono waveforms shaped ``(n, samples)`` at ``audio_input.sample_rate``."""
        return self._batched(self._embed_audio_batch, waves)

    def _batched(self, embed: Callable, items) -> np.ndarray:
        if len(items) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [embed(items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        return l2_normalise(np.concatenate(parts))

    def _embed_image_batch(self, pixels: np.ndarray) -> np.ndarray:
        raise ModelError(f"model {self.spec!r} cannot embed image")

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        raise ModelError(f"model {self.spec!r} cannot embed text")

    def _embed_audio_batch(self, waves: np.ndarray) -> np.ndarray:
        raise ModelError(f"model {self.spec!r} cannot embed audio")
