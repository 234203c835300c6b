"""Candidate inputs re-read from their files with the ingest decoders (same pixels and
windows the vector stage embedded). A file that is gone or broken yields ``None``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmsearch.ingest.decode import DecodeOptions, decode
from mmsearch.rerank.base import Candidate


def image_crops(candidates: Sequence[Candidate], size: int) -> list[np.ndarray | None]:
    """``(size, size, 3)`` uint8 centre crops, as the vector stage saw them."""
    options = DecodeOptions(image_size=size)
    crops: list[np.ndarray | None] = []
    for candidate in candidates:
        decoded = decode(candidate.path, "image", options)
        crops.append(None if decoded.error else np.array(decoded.pieces[0].payload))  # writable, for torch
    return crops


def audio_windows(candidates: Sequence[Candidate], sample_rate: int, window_s: float) -> list[np.ndarray | None]:
    """The window of each candidate's recording that the vector stage embedded."""
    options = DecodeOptions(sample_rate=sample_rate, window_s=window_s)
    windows: list[np.ndarray | None] = []
    for candidate in candidates:
        decoded = decode(candidate.path, "audio", options)
        pieces = [p for p in decoded.pieces if abs(p.meta.get("offset_s", 0.0) - candidate.offset_s) < 1e-3]
        windows.append(np.asarray(pieces[0].payload) if pieces else None)
    return windows
