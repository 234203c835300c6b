"""Decoding: turn one file into model-ready pieces plus metadata, in a worker process.

An image is one piece; a text file is split into passages; a caption table gives a
piece per row; an audio file gives a piece per fixed window. Runs without torch so
worker processes start fast. A file that cannot be decoded yields a result carrying
the reason instead of raising: one bad file never stops a batch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
TEXT_COLUMN_GUESSES = ("text", "caption", "description", "title")


class DecodeError(Exception):
    """A file-level problem whose message is the recorded failure reason."""


@dataclass(frozen=True)
class DecodeOptions:
    """Everything a worker needs to know (picklable)."""

    image_size: int = 224
    sample_rate: int = 16_000
    window_s: float = 2.0
    passage_chars: int = 300
    text_column: str | None = None
    id_column: str | None = None

    def fingerprint(self) -> str:
        """Identifies the settings, so a failure is retried when they change."""
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class Piece:
    """One future vector: the model input and its own metadata (e.g. an offset)."""

    payload: np.ndarray | str
    meta: dict = field(default_factory=dict)


@dataclass
class Decoded:
    """The outcome of decoding one file: pieces and file metadata, or an error reason."""

    path: str
    decoder: str
    content_hash: str | None = None
    pieces: list[Piece] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


def decode(path: str, decoder: str, options: DecodeOptions) -> Decoded:
    """Read, hash and decode a file with the named decoder; never raises for a bad file."""
    started = time.perf_counter()
    result = Decoded(path, decoder)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        result.content_hash = hashlib.sha256(data).hexdigest()
        result.meta, result.pieces = DECODERS[decoder](data, path, options)
        if not result.pieces:
            raise DecodeError("nothing to index (empty file)")
    except DecodeError as exc:
        result.error = str(exc)
    except Exception as exc:  # any decoder failure is a per-file outcome, never a crash
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    if result.error is not None:
        result.pieces = []
    result.seconds = time.perf_counter() - started
    return result


# -- images ---------------------------------------------------------------------------


def decode_image(data: bytes, path: str, options: DecodeOptions) -> tuple[dict, list[Piece]]:
    """One square crop, EXIF orientation applied, reduced-size JPEG decode."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not a readable image (unknown format or corrupt header)") from None
    with image:
        meta = image_metadata(image)
        image.draft("RGB", (options.image_size, options.image_size))
        return meta, [Piece(square_crop(ImageOps.exif_transpose(image), options.image_size))]


def image_metadata(image: Image.Image) -> dict:
    """Format, oriented size, EXIF capture time and camera model."""
    exif = image.getexif()
    width, height = image.size
    if exif.get(EXIF_ORIENTATION) in TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    taken = exif.get_ifd(EXIF_IFD).get(EXIF_DATETIME_ORIGINAL) or exif.get(EXIF_DATETIME)
    return {
        "format": image.format,
        "width": width,
        "height": height,
        "taken_at": _exif_time(taken),
        "camera": str(exif.get(EXIF_MODEL, "")).strip("\x00 ") or None,
    }


def _exif_time(value: object) -> datetime | None:
    try:
        return datetime.strptime(str(value).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


# -- text -----------------------------------------------------------------------------


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DecodeError("not UTF-8 text") from None


def passages(text: str, max_chars: int) -> list[tuple[int, str]]:
    """Split text into (char offset, passage) chunks of at most ``max_chars``,
    breaking at paragraph, then sentence, then word boundaries."""
    chunks: list[tuple[int, str]] = []
    for match in re.finditer(r"\S(?:.*?\S)?(?=\s*\n\s*\n|\s*$)", text, flags=re.S):
        start, paragraph = match.start(), match.group()
        while paragraph:
            if len(paragraph) <= max_chars:
                chunks.append((start, paragraph))
                break
            cut = max(paragraph.rfind(". ", 0, max_chars) + 1, paragraph.rfind(" ", 0, max_chars))
            cut = cut if cut > 0 else max_chars
            chunks.append((start, paragraph[:cut].strip()))
            rest = paragraph[cut:]
            start += cut + len(rest) - len(rest.lstrip())
            paragraph = rest.lstrip()
    return chunks


def decode_text(data: bytes, path: str, options: DecodeOptions) -> tuple[dict, list[Piece]]:
    """Plain text or Markdown: one piece per passage, with its character offset."""
    text = _utf8(data)
    fmt = "markdown" if path.lower().endswith((".md", ".markdown")) else "text"
    pieces = [
        Piece(chunk, {"text": chunk, "char_offset": offset}) for offset, chunk in passages(text, options.passage_chars)
    ]
    return {"format": fmt}, pieces


def _table_rows(data: bytes, path: str) -> list[dict]:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    lower = path.lower()
    source = pa.BufferReader(data)
    if lower.endswith(".csv"):
        return pcsv.read_csv(source).to_pylist()
    if lower.endswith(".parquet"):
        return pq.read_table(source).to_pylist()
    return pjson.read_json(source).to_pylist()


def decode_table(data: bytes, path: str, options: DecodeOptions) -> tuple[dict, list[Piece]]:
    """A caption/document table: one piece per row of the text column; the id column
    becomes ``source_id`` and the other columns are kept as JSON in ``extra``."""
    rows = _table_rows(data, path)
    columns = list(rows[0]) if rows else []
    column = options.text_column or next((c for c in TEXT_COLUMN_GUESSES if c in columns), None)
    if column not in columns:
        raise DecodeError(f"no text column {column or ''!r} (columns: {', '.join(columns)}); pass --text-column")
    if options.id_column and options.id_column not in columns:
        raise DecodeError(f"no id column {options.id_column!r} (columns: {', '.join(columns)})")
    pieces = []
    for number, row in enumerate(rows):
        text = row.get(column)
        if text is None or not str(text).strip():
            continue
        extra = {k: v for k, v in row.items() if k not in (column, options.id_column)}
        meta = {"text": str(text), "row": number, "extra": json.dumps(extra, default=str)}
        if options.id_column:
            meta["source_id"] = str(row[options.id_column])
        pieces.append(Piece(str(text), meta))
    return {"format": os.path.splitext(path)[1].lstrip(".").lower()}, pieces


# -- audio ----------------------------------------------------------------------------


def decode_audio(data: bytes, path: str, options: DecodeOptions) -> tuple[dict, list[Piece]]:
    """Mono, resampled to the model's rate, cut into fixed windows (the last one padded)."""
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as exc:
        raise DecodeError(f"not a readable audio file ({exc})") from None
    wave = resample(samples.mean(axis=1), rate, options.sample_rate)
    window = round(options.window_s * options.sample_rate)
    pieces = []
    for start in range(0, max(len(wave), 1), window):
        chunk = wave[start : start + window]
        if start and len(chunk) < window // 4:
            break  # a sliver at the end adds noise, not content
        padded = np.zeros(window, dtype=np.float32)
        padded[: len(chunk)] = chunk
        seconds = len(chunk) / options.sample_rate
        pieces.append(Piece(padded, {"offset_s": start / options.sample_rate, "duration_s": seconds}))
    return {"format": soundfile.info(io.BytesIO(data)).format}, pieces


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling with soxr (naive interpolation would alias)."""
    if rate == target or len(wave) == 0:
        return wave.astype(np.float32)
    import soxr

    return soxr.resample(wave, rate, target).astype(np.float32)


DECODERS: dict[str, Callable[[bytes, str, DecodeOptions], tuple[dict, list[Piece]]]] = {
    "image": decode_image,
    "text": decode_text,
    "table": decode_table,
    "audio": decode_audio,
}
