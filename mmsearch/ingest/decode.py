"""Decoding: turn one file into model-ready input plus metadata, in a worker process.

Runs without torch so worker processes start fast. A file that cannot be decoded
yields a result carrying the reason instead of raising: one bad file never stops
a batch.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmsearch.ingest.preprocess import square_crop

EXIF_ORIENTATION = 0x0112
EXIF_MODEL = 0x0110
EXIF_DATETIME = 0x0132
EXIF_IFD = 0x8769
EXIF_DATETIME_ORIGINAL = 0x9003
TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


@dataclass
class Decoded:
    """The outcome of decoding one file: input and metadata, or an error reason."""

    path: str
    content_hash: str | None = None
    crop: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


def decode_image(path: str, size: int) -> Decoded:
    """Read, hash and decode an image; never raises for a bad file."""
    started = time.perf_counter()
    result = Decoded(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        result.content_hash = hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as image:
            result.meta = image_metadata(image)
            image.draft("RGB", (size, size))
            result.crop = square_crop(ImageOps.exif_transpose(image), size)
    except UnidentifiedImageError:
        result.error = "not a readable image (unknown format or corrupt header)"
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        result.crop = None
    result.seconds = time.perf_counter() - started
    return result


def image_metadata(image: Image.Image) -> dict:
    """Format, oriented size, EXIF capture time and camera model."""
    exif = image.getexif()
    width, height = image.size
    if exif.get(EXIF_ORIENTATION) in TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    taken = exif.get_ifd(EXIF_IFD).get(EXIF_DATETIME_ORIGINAL) or exif.get(EXIF_DATETIME)
    camera = exif.get(EXIF_MODEL, "")
    return {
        "format": image.format,
        "width": width,
        "height": height,
        "taken_at": _exif_time(taken),
        "camera": str(camera).strip("\x00 ") or None,
    }


def _exif_time(value: object) -> datetime | None:
    try:
        return datetime.strptime(str(value).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
