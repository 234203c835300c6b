"""The encoder contract every model follows, built-in or plugin.

An encoder maps inputs of one or more modalities into one embedding *space*,
identified by ``space_id``; ``modalities`` says which inputs it accepts. Subclasses set
the attributes and override only the per-batch hooks of their modalities
(``_embed_image_batch``, ``_embed_text_batch``, ``_embed_audio_batch``); batching,
dispatch and normalisation live here so every model behaves the same. Decoding happens
elsewhere (worker processes) from the picklable input specs, so an encoder never sees files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmsearch.errors import ModelError
from mmsearch.preprocess import normalise

MODALITIES = ("image", "text", "audio")


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


@dataclass(frozen=True)
class AudioPart:
    """An ear for a model without one: embeds waveforms into the model's own space."""

    audio_input: AudioInput
    audio_space_id: str
    embed: Callable[[np.ndarray], np.ndarray]


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows of unit length (zero rows stay zero). Each row is first divided by
    its largest magnitude, so its squared norm lies in [1, dim] whatever its scale: a tiny row
    (1e-30, whose squared norm underflows in float32) keeps its direction, a huge one's does
    not overflow, and no float64 copy of a large batch is made."""
    rows = np.asarray(vectors)
    if rows.dtype not in (np.float32, np.float64):
        rows = rows.astype(np.float64)
    peak = np.abs(rows).max(axis=1, keepdims=True)
    scaled = (rows / np.where(peak > 0, peak, 1)).astype(np.float32, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", scaled, scaled))[:, None]  # np.linalg.norm: ~3x the call overhead
    return scaled / np.where(norms > 0, norms, 1)


def finite_rows(vectors: np.ndarray) -> np.ndarray:
    """Which rows hold no NaN or Inf (a bool per row): one non-finite vector in an index makes
    every score of a search over it NaN."""
    return np.isfinite(vectors).all(axis=1)


def usable_rows(vectors: np.ndarray) -> np.ndarray:
    """Which rows are finite and non-zero (a zero vector has no direction to normalise)."""
    return finite_rows(vectors) & (np.abs(vectors).sum(axis=1) > 0)


class Encoder:
    """Turns batches of inputs into L2-normalised float32 vectors of one space.

    Set ``space_id`` (changes whenever the weights do: an index refuses vectors of another
    space), ``dim``, ``modalities`` and the input spec of each modality (``image_input``
    for images, ``audio_input`` for sounds). The registry sets ``spec``.
    """

    spec: str
    space_id: str
    dim: int
    modalities: frozenset[str] = frozenset()
    image_input: ImageInput | None = None
    audio_input: AudioInput | None = None
    audio_space_id: str | None = None  # identifies the audio tower when there is one
    batch_size: int = 64
    device: str = "cpu"
    audio_part: AudioPart | None = None
    crops_on_device: bool = False  # embed_crops also takes a torch uint8 tensor already on ``device``

    def embed(self, modality: str, payloads: Sequence[Any]) -> np.ndarray:
        """Embed decoded pieces of one modality: uint8 crops, strings or waveforms."""
        if modality not in self.modalities:
            raise ModelError(f"model {self.spec!r} cannot embed {modality}")
        if modality == "image":
            return self.embed_crops(np.stack(payloads))
        if modality == "text":
            return self.embed_texts(payloads)
        return self.embed_audio(np.stack(payloads))

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """Embed normalised images shaped ``(n, 3, size, size)``."""
        return self._batched(self._embed_image_batch, pixels)

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """Embed uint8 crops ``(n, size, size, 3)``, as decode workers ship them."""
        return self._batched(self._embed_crop_batch, crops)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed strings."""
        return self._batched(self._embed_text_batch, list(texts))

    def embed_audio(self, waves: np.ndarray) -> np.ndarray:
        """Embed mono waveforms shaped ``(n, samples)`` at ``audio_input.sample_rate``."""
        return self._batched(self._embed_audio_batch, waves)

    def attach_audio(self, part: AudioPart) -> None:
        """Give the model an ear (see :mod:`mmsearch.models.audio`): sounds join its space."""
        self.audio_part = part
        self.modalities = self.modalities | {"audio"}
        self.audio_input = part.audio_input
        self.audio_space_id = part.audio_space_id

    def _batched(self, embed: Callable[[Any], np.ndarray], items: Any) -> np.ndarray:
        if len(items) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [embed(items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        return l2_normalise(np.concatenate(parts))

    def _embed_crop_batch(self, crops: np.ndarray) -> np.ndarray:
        """Normalise on the host, then embed; torch encoders override this to normalise on
        their device (a quarter of the bytes to copy, no float pass on the host)."""
        spec = self.image_spec()
        return self._embed_image_batch(normalise(crops, spec.mean, spec.std))

    def image_spec(self) -> ImageInput:
        """How this model wants its pixels; an error for a model that declares none."""
        if self.image_input is None:
            raise ModelError(f"model {self.spec!r} embeds images but declares no image_input")
        return self.image_input

    def _embed_image_batch(self, pixels: np.ndarray) -> np.ndarray:
        raise ModelError(f"model {self.spec!r} cannot embed image")

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        raise ModelError(f"model {self.spec!r} cannot embed text")

    def _embed_audio_batch(self, waves: np.ndarray) -> np.ndarray:
        if self.audio_part is None:
            raise ModelError(f"model {self.spec!r} cannot embed audio")
        return self.audio_part.embed(waves)
