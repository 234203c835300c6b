"""Candidate inputs re-read from their files with the ingest decoders (same pixels and
windows the vector stage embedded), each with the sha256 of the bytes it came from, so a
cache stores what was actually read under the right key. A file that is gone or broken
yields ``None``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from mmsearch.ingest.decode import Decoded, DecodeOptions, decode
from mmsearch.rerank.base import Candidate


class Read(NamedTuple):
    payload: np.ndarray
    content_hash: str


def image_crops(candidates: Sequence[Candidate], size: int) -> list[Read | None]:
    """``(size, size, 3)`` uint8 centre crops, as the vector stage saw them."""
    options = DecodeOptions(image_size=size)
    crops: list[Read | None] = []
    for candidate in candidates:
        decoded = decode(candidate.path, "image", options)
        if decoded.error or decoded.content_hash is None:
            crops.append(None)
        else:
            crops.append(Read(np.array(decoded.pieces[0].payload), decoded.content_hash))  # writable, for torch
    return crops


def audio_windows(candidates: Sequence[Candidate], sample_rate: int, window_s: float) -> list[Read | None]:
    """The window of each candidate's recording that the vector stage embedded."""
    options = DecodeOptions(sample_rate=sample_rate, window_s=window_s)
    windows: list[Read | None] = []
    decoded: Decoded | None = None  # windows of one recording in a row share one decode of it
    for candidate in candidates:
        if decoded is None or decoded.path != candidate.path:
            decoded = decode(candidate.path, "audio", options)
        pieces = [p for p in decoded.pieces if abs(p.meta.get("offset_s", 0.0) - candidate.offset_s) < 1e-3]
        if not pieces or decoded.content_hash is None:
            windows.append(None)
        else:
            windows.append(Read(np.asarray(pieces[0].payload), decoded.content_hash))
    return windows
