"""An mmsearch encoder plugin: images by their mean colour, texts by the colour words they name.

Installed, it serves model specs ``colours:rgb`` (``mmsearch index ./photos --model colours:rgb``).
"""

from __future__ import annotations

import numpy as np

from mmsearch.errors import ModelError
from mmsearch.models.base import Encoder, ImageInput

COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0), "white": (1, 1, 1)}


class ColourEncoder(Encoder):
    """Three dimensions, red, green and blue: a toy space, but a real plugin."""

    modalities = frozenset({"image", "text"})
    image_input = ImageInput(size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # pixels arrive in [0, 1]
    dim = 3

    def __init__(self, name: str, device: str) -> None:
        if name != "rgb":
            raise ModelError(f"the colours plugin knows only colours:rgb, not colours:{name}")
        self.space_id = "colours:rgb@1"  # change it whenever the vectors would change

    def _embed_image_batch(self, pixels: np.ndarray) -> np.ndarray:
        return pixels.mean(axis=(2, 3))  # (n, 3, 16, 16) → (n, 3); the base class normalises

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        named = [[COLOURS[word] for word in text.lower().split() if word in COLOURS] for text in texts]
        return np.array([np.sum(words, axis=0) if words else np.zeros(3) for words in named], dtype=np.float32)
