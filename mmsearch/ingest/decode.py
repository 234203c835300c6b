"""Decoding: turn one file into model-ready pieces plus metadata, in a worker process.

An image is one piece; a text file is split into passages; a caption table gives a
piece per row; an audio file gives a piece per fixed window; a video gives a piece
per sampled frame and per soundtrack window (:mod:`mmsearch.ingest.video`). Runs without torch so
worker processes start fast. A file that cannot be decoded yields a result carrying
the reason instead of raising: one bad file never stops a batch. Whatever the
libraries say while decoding (Python warnings, text C code writes to file
descriptor 2) is kept as the file's ``notes`` instead of reaching the terminal.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import itertools
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cache

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmsearch.errors import one_line
from mmsearch.hashing import file_digest
from mmsearch.ingest import device_jpeg
from mmsearch.ingest.discover import DECODER_OF_FORMAT, HEAD_BYTES, RAW_EXTENSIONS, RAW_HINT, sniff
from mmsearch.ingest.sources import FetchError, is_remote, read_bytes
from mmsearch.preprocess import square_crop

EXIF_ORIENTATION = 0x0112
EXIF_MODEL = 0x0110
EXIF_DATETIME = 0x0132
EXIF_IFD = 0x8769
EXIF_DATETIME_ORIGINAL = 0x9003
TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
TEXT_COLUMN_GUESSES = ("text", "caption", "description", "title")
IMAGE_FORMAT_NAMES = {"HEIF": "heic", "MPO": "jpeg"}  # MPO: a camera JPEG carrying extra frames
AUDIO_FORMAT_NAMES = {"WAVEX": "wav", "RF64": "wav"}
NOTES_CHARS = 300


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
    max_pixels: int = 100_000_000  # the most pixels decoded at once (~300 MB of RGB) after any reduced decode
    video_every: float = 2.0  # seconds between sampled video frames (shot changes add more)
    soundtrack: bool = True  # decode a video's sound (only when the model embeds audio)
    jpeg_on_device: bool = False  # leave local JPEGs' pixels to the encoder's device (see device_jpeg)

    def fingerprint(self) -> str:
        """Identifies the settings, so a failure is retried when they change (where pixels are
        decoded is no such setting: a file either path cannot read fails in both)."""
        settings = asdict(self)
        del settings["jpeg_on_device"]
        return json.dumps(settings, sort_keys=True)


@dataclass(frozen=True)
class Part:
    """Which share of a file one decode job takes.

    A large file is decoded, embedded and committed in parts: memory stays bounded, the
    workers share one long film, and a crash loses only the parts in flight. A decoder
    cuts its file on a grid of units (passages, rows, audio windows, sampling marks), so a
    part may hold fewer units than planned or none; ``used`` says how many parts really
    hold something (recorded with the rows, so an empty part is not awaited on a rerun).
    """

    index: int = 0
    count: int = 1

    def used(self, units: int) -> int:
        """Parts that hold at least one of ``units`` grid units."""
        return max(1, min(self.count, units))

    def units(self, units: int) -> range:
        """This part's grid units out of ``units``: contiguous, in order, empty past ``used``."""
        used = self.used(units)
        if self.index >= used:
            return range(0)
        return range(units * self.index // used, units * (self.index + 1) // used)

    def span(self, total: float, step: float) -> tuple[float, float]:
        """This part's [start, end) of ``total`` seconds cut on a grid of ``step`` seconds
        (the last part runs to infinity, so nothing past a rounded duration is lost)."""
        units = max(1, math.ceil(total / step))
        taken = self.units(units)
        if not taken:
            return (0.0, 0.0)
        end = math.inf if taken.stop == units else taken.stop * step
        return (taken.start * step, end)


WHOLE = Part()


@dataclass
class Piece:
    """One future vector: the model input and its own metadata (e.g. an offset).

    ``modality`` names the encoder input when it is not the file's own (a video's frames
    are images, its soundtrack windows audio)."""

    payload: np.ndarray | str | device_jpeg.DeferredJpeg
    meta: dict = field(default_factory=dict)
    modality: str | None = None


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
    part: int = 0  # which part of the file this is (see ``Part``)
    parts: int = 1  # parts the file is cut into


def decode(
    path: str, decoder: str, options: DecodeOptions, part: Part = WHOLE, content_hash: str | None = None
) -> Decoded:
    """Read (a local path or a URL, see ``sources``), hash and decode ``part`` of a file with
    the named decoder; never raises for a bad file. ``content_hash``, when the caller has it
    (the parts of one file share it), spares hashing the file again."""
    started = time.perf_counter()
    result = Decoded(path, decoder, part=part.index, parts=part.count)
    notes: list[str] = []
    try:
        if decoder in OPENED_BY_PATH or (part.count > 1 and decoder in SEEKABLE):  # never read whole
            data, result.content_hash = b"", content_hash or file_digest(path)
        else:
            data = read_bytes(path)
            result.content_hash = content_hash or hashlib.sha256(data).hexdigest()
        with _quiet(notes):
            result.meta, result.pieces = DECODERS[decoder](data, path, options, part)
        result.parts = result.meta.pop("parts", part.count)
        if not result.pieces and part.index < result.parts:  # parts past those used hold nothing by design
            raise DecodeError("nothing to index " + ("(empty file)" if result.parts == 1 else "(the file ends early?)"))
    except (DecodeError, FetchError) as exc:
        result.error = str(exc)
    except Exception as exc:  # any decoder failure is a per-file outcome, never a crash
        result.error = one_line(f"{type(exc).__name__}: {exc}", 300)
    if result.error is not None and result.parts > 1:
        result.error = f"part {part.index + 1} of {result.parts}: {result.error}"
    said = _joined(notes)
    if result.error is not None:
        result.pieces = []
        result.error = result.error if said is None else _joined([f"{result.error} ({said})"])
    else:
        result.meta["notes"] = said
    result.seconds = time.perf_counter() - started
    return result


def _joined(notes: list[str]) -> str | None:
    """Distinct notes in order, one short line."""
    text = "; ".join(dict.fromkeys(" ".join(n.split()) for n in notes if n.strip()))
    return (text[: NOTES_CHARS - 3] + "..." if len(text) > NOTES_CHARS else text) or None


@contextmanager
def _quiet(notes: list[str]) -> Iterator[None]:
    """Collect Python warnings and file-descriptor-2 output into ``notes`` instead of printing them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with _fd2_captured(notes):
                yield
        finally:
            notes[:0] = [
                str(w.message) if w.category is UserWarning else f"{w.category.__name__}: {w.message}" for w in caught
            ]


_FD2_LOCK = threading.Lock()


@contextmanager
def _fd2_captured(notes: list[str]) -> Iterator[None]:
    """Point file descriptor 2 at a temporary file while C libraries (libtiff, libsndfile's
    mpg123, libheif, LibRaw) run, then restore it and keep what they wrote.

    Only one thread redirects at a time: a second thread decoding meanwhile runs without
    capture rather than having the descriptor swapped under it (what other threads write
    to fd 2 during a decode lands in its notes). Without a usable fd 2 nothing is redirected.
    """
    if not _FD2_LOCK.acquire(blocking=False):
        yield
        return
    try:
        _flush_stderr()  # earlier Python output belongs on the terminal, not in the notes
        saved = os.dup(2)
    except OSError:
        _FD2_LOCK.release()
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                _flush_stderr()
                os.dup2(saved, 2)
                sink.seek(0)
                notes.extend(sink.read(4 * NOTES_CHARS).decode("utf-8", "replace").splitlines())
    finally:
        os.close(saved)
        _FD2_LOCK.release()


def _flush_stderr() -> None:
    with suppress(AttributeError, OSError, ValueError):  # no, or a closed, sys.stderr
        sys.stderr.flush()


def _not_readable(kind: str, data: bytes) -> str:
    """Why a file is not a readable ``kind``, naming what its content is when known."""
    found = sniff(data[:HEAD_BYTES])
    if found is None:
        return f"not a readable {kind} file (unknown format or corrupt header)"
    if DECODER_OF_FORMAT[found] != kind:
        return f"not a readable {kind} file: its content is {found.upper()} {DECODER_OF_FORMAT[found]}"
    return f"not a readable {kind} file (damaged {found.upper()})"


# -- images ---------------------------------------------------------------------------


def decode_image(data: bytes, path: str, options: DecodeOptions, part: Part) -> tuple[dict, list[Piece]]:
    """One square crop, EXIF orientation applied, never decoding more than ``max_pixels``."""
    if path.lower().endswith(RAW_EXTENSIONS):
        meta, image = _raw_image(data, path, options)
    else:
        image, meta = open_image(data, options)
        if options.jpeg_on_device and not is_remote(path) and device_jpeg.deferrable(image):
            with image:
                orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
            return meta, [Piece(device_jpeg.DeferredJpeg(path, orientation))]
        with image:
            image = ImageOps.exif_transpose(image)
    with image:
        return meta, [Piece(square_crop(image, options.image_size))]


@cache
def _register_heif() -> None:
    """Teach Pillow HEIC/HEIF (Pillow reads AVIF itself), on the first HEIC file: the import is not free."""
    import pillow_heif

    pillow_heif.register_heif_opener()


_bomb_lock = threading.Lock()
_bomb_users = 0  # threads inside _pillow_bomb_check_off
_bomb_limit: int | None = None  # Pillow's limit, restored when the last one leaves


@contextmanager
def _pillow_bomb_check_off() -> Iterator[None]:
    """Pillow warns about, then refuses, images over ~90/180 MP at open; ``open_image`` applies
    its own limit after reduced decoding instead, so a huge but draftable JPEG is not lost."""
    global _bomb_users, _bomb_limit
    with _bomb_lock:
        if _bomb_users == 0:
            _bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        _bomb_users += 1
    try:
        yield
    finally:
        with _bomb_lock:
            _bomb_users -= 1
            if _bomb_users == 0:
                Image.MAX_IMAGE_PIXELS = _bomb_limit


def open_image(data: bytes, options: DecodeOptions) -> tuple[Image.Image, dict]:
    """The image set up to decode near the model size, and the metadata of the full image.

    JPEGs are drafted (libjpeg decodes at 1/2 to 1/8 scale) and HEIC/HEIF files use an
    embedded thumbnail when one is large enough, so a huge photo is never decoded in
    full. Whatever would still decode to more than ``max_pixels`` is refused before any
    pixel is decoded.
    """
    if sniff(data[:HEAD_BYTES]) == "heic":
        _register_heif()
    with _pillow_bomb_check_off():
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise DecodeError(_not_readable("image", data)) from None
    meta = image_metadata(image)
    image.draft("RGB", (options.image_size, options.image_size))
    width, height = image.size
    if width * height > options.max_pixels:
        image.close()
        raise DecodeError(
            f"image too large: {meta['width']}×{meta['height']} would decode to {width * height / 1e6:.0f} MP,"
            f" over the {options.max_pixels / 1e6:g} MP limit (max_pixels)"
        )
    return image, meta


def image_metadata(image: Image.Image) -> dict:
    """Format, oriented size, EXIF capture time and camera model."""
    exif = image.getexif()
    width, height = image.size
    if exif.get(EXIF_ORIENTATION) in TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    taken = exif.get_ifd(EXIF_IFD).get(EXIF_DATETIME_ORIGINAL) or exif.get(EXIF_DATETIME)
    return {
        "format": IMAGE_FORMAT_NAMES.get(image.format or "", (image.format or "").lower()) or None,
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


def _raw_image(data: bytes, path: str, options: DecodeOptions) -> tuple[dict, Image.Image]:
    """A camera RAW file: its embedded preview when it is large enough for the model
    (fast, and what the camera rendered), else a half-size demosaic."""
    try:
        import rawpy
    except ImportError:
        raise DecodeError(f"RAW images need rawpy: {RAW_HINT}") from None
    try:
        raw = rawpy.imread(io.BytesIO(data))
    except rawpy.LibRawError as exc:
        raise DecodeError(f"not a readable RAW file ({type(exc).__name__})") from None
    with raw:
        sizes = raw.sizes
        flip, quarter_turn = RAW_FLIPS.get(sizes.flip), sizes.flip in (5, 6)
        meta = {
            **_tiff_tags(data),
            "format": os.path.splitext(path)[1].lstrip(".").lower(),
            "width": sizes.height if quarter_turn else sizes.width,
            "height": sizes.width if quarter_turn else sizes.height,
        }
        preview = _raw_preview(raw, options)
        if preview is None:
            if (sizes.width // 2) * (sizes.height // 2) > options.max_pixels:
                raise DecodeError(f"RAW image too large: {sizes.width}×{sizes.height} at half size is over max_pixels")
            return meta, Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
        if flip is None:
            return meta, preview
        with preview:  # previews are stored unrotated: LibRaw's flip says how the camera was held
            return meta, preview.transpose(flip)


RAW_FLIPS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def _raw_preview(raw, options: DecodeOptions) -> Image.Image | None:
    """The embedded preview, opened for reduced decoding, if its shorter side covers the model input."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        image, _ = open_image(thumb.data, options)
    else:
        image = Image.fromarray(thumb.data)
    if min(image.size) >= options.image_size:
        return image
    image.close()
    return None


def _tiff_tags(data: bytes) -> dict:
    """Capture time and camera from a TIFF-based RAW's header, when Pillow can read it."""
    try:
        with _pillow_bomb_check_off(), Image.open(io.BytesIO(data)) as header:
            found = image_metadata(header)
    except Exception:  # not TIFF-based (CR3, RAF…) or a header Pillow rejects: no tags, no failure
        return {"taken_at": None, "camera": None}
    return {"taken_at": found["taken_at"], "camera": found["camera"]}


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


def decode_text(data: bytes, path: str, options: DecodeOptions, part: Part) -> tuple[dict, list[Piece]]:
    """Plain text or Markdown: one piece per passage, with its character offset in the file.

    A part decodes only its own byte range, cut at blank lines (which passages never
    cross), so its passages and offsets are exactly the whole file's there; a text without
    blank lines is not cut."""
    fmt = "markdown" if path.lower().endswith((".md", ".markdown")) else "text"
    ranges = _paragraph_ranges(data, part.count)
    if part.index >= len(ranges):
        return {"format": fmt, "parts": len(ranges)}, []
    start, end = ranges[part.index]
    bom = start > 0 and data.startswith(codecs.BOM_UTF8)
    before = _chars(data, start) - bom  # the BOM is no character of the text
    text = _utf8(data[start:end])
    pieces = [
        Piece(chunk, {"text": chunk, "char_offset": before + offset})
        for offset, chunk in passages(text, options.passage_chars)
    ]
    return {"format": fmt, "parts": len(ranges)}, pieces


BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
VISIBLE = re.compile(rb"\S")


def _paragraph_ranges(data: bytes, count: int) -> list[tuple[int, int]]:
    """``count`` byte ranges of about equal size covering ``data``, each starting after a
    blank line; a range of only whitespace joins the one before (fewer parts when blank
    lines or words are scarce)."""
    cuts = [0]
    for nominal in (len(data) * k // count for k in range(1, count)):
        found = BLANK_LINE.search(data, max(nominal, cuts[-1]))
        cuts.append(found.end() if found else len(data))
    cuts.append(len(data))
    ranges = [(0, cuts[1])]
    for start, end in itertools.pairwise(cuts[1:]):
        if VISIBLE.search(data, start, end) and VISIBLE.search(data, *ranges[-1]):
            ranges.append((start, end))
        else:  # nothing to read on one side: one range
            ranges[-1] = (ranges[-1][0], end)
    return ranges


def _chars(data: bytes, end: int) -> int:
    """Characters in the UTF-8 bytes ``data[:end]``: every byte that does not continue one."""
    head = np.frombuffer(data, dtype=np.uint8, count=end)
    return int(np.count_nonzero((head & 0xC0) != 0x80))


def _table(data: bytes, path: str):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    lower = path.lower()
    source = pa.BufferReader(data)
    if lower.endswith(".csv"):
        return pcsv.read_csv(source)
    if lower.endswith(".parquet"):
        return pq.read_table(source)
    return pjson.read_json(source)


def decode_table(data: bytes, path: str, options: DecodeOptions, part: Part) -> tuple[dict, list[Piece]]:
    """A caption/document table: one piece per row with text (of ``part``'s share); the id
    column becomes ``source_id`` and the other columns are kept as JSON in ``extra``.

    Rows become Python objects only for the part's share, so a million-row table costs
    a part its Arrow columns, not a million dicts."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = _table(data, path)
    columns = table.column_names
    column = options.text_column or next((c for c in TEXT_COLUMN_GUESSES if c in columns), None)
    if column not in columns:
        wanted = repr(options.text_column) if options.text_column else f"(none of {', '.join(TEXT_COLUMN_GUESSES)})"
        raise DecodeError(f"no text column {wanted} (columns: {', '.join(columns)}); pass --text-column")
    if options.id_column and options.id_column not in columns:
        raise DecodeError(f"no id column {options.id_column!r} (columns: {', '.join(columns)})")
    texts = pc.utf8_trim_whitespace(pc.cast(table.column(column), pa.string()))
    numbers = pc.indices_nonzero(pc.fill_null(pc.greater(pc.utf8_length(texts), 0), False)).to_numpy()
    used, taken = part.used(len(numbers)), part.units(len(numbers))
    share = numbers[taken.start : taken.stop]
    pieces = []
    for number, row in zip(share.tolist(), table.take(pa.array(share, pa.int64())).to_pylist()):
        text = row[column]
        extra = {k: v for k, v in row.items() if k not in (column, options.id_column)}
        meta = {"text": str(text), "row": number, "extra": json.dumps(extra, default=str)}
        if options.id_column:
            meta["source_id"] = str(row[options.id_column])
        pieces.append(Piece(str(text), meta))
    return {"format": os.path.splitext(path)[1].lstrip(".").lower(), "parts": used}, pieces


# -- audio ----------------------------------------------------------------------------


def decode_audio(data: bytes, path: str, options: DecodeOptions, part: Part) -> tuple[dict, list[Piece]]:
    """Mono, resampled to the model's rate, cut into fixed windows (the last one padded).

    A part reads only the source frames of its windows (a seek, then one read), so a
    three-hour recording never sits in memory whole; ``data`` is empty when the file
    is to be opened by path."""
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data) if data else path) as sound:
            rate, fmt = sound.samplerate, sound.format
            window = round(options.window_s * options.sample_rate)
            units = window_count(math.ceil(sound.frames * options.sample_rate / rate), window)
            taken = part.units(units)
            first = round(taken.start * options.window_s * rate)
            last = sound.frames if taken.stop == units else round(taken.stop * options.window_s * rate)
            if taken:
                sound.seek(first)
            samples = sound.read(max(0, last - first) if taken else 0, dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as exc:
        head = data or _head(path)
        raise DecodeError(f"{_not_readable('audio', head)}: {exc.error_string}") from None
    if not len(samples) and not taken.start:  # a file with no samples (a lone header) has no sound to embed
        raise DecodeError("no audio samples")
    wave = resample(samples.mean(axis=1), rate, options.sample_rate)
    meta = {"format": AUDIO_FORMAT_NAMES.get(fmt, fmt.lower()), "parts": part.used(units)}
    # the header's length is an estimate (MP3) or a lie (a truncated file): windows of what was read
    read = window_count(len(wave), window) if len(wave) or not taken.start else 0
    start_s = taken.start * options.window_s
    return meta, windows(wave, options, start_s=start_s, count=min(len(taken), read)) if taken else []


def _head(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(HEAD_BYTES)


def window_count(samples: int, window: int) -> int:
    """How many windows of ``window`` samples cut a wave of ``samples``: a sliver at the end
    (under a quarter window) adds noise, not content, unless it is all there is."""
    count = max(1, math.ceil(samples / window))
    if count > 1 and samples - (count - 1) * window < window // 4:
        count -= 1
    return count


def windows(wave: np.ndarray, options: DecodeOptions, start_s: float = 0.0, count: int | None = None) -> list[Piece]:
    """Fixed windows of a mono wave at the model's rate, with their offsets (the last one
    padded); the wave starts ``start_s`` into its file and holds ``count`` windows (by
    default as many as :func:`window_count` gives)."""
    window = round(options.window_s * options.sample_rate)
    count = window_count(len(wave), window) if count is None else count
    pieces = []
    for number in range(count):
        chunk = wave[number * window : (number + 1) * window]
        padded = np.zeros(window, dtype=np.float32)
        padded[: len(chunk)] = chunk
        meta = {
            "offset_s": start_s + number * window / options.sample_rate,
            "duration_s": len(chunk) / options.sample_rate,
        }
        pieces.append(Piece(padded, meta))
    return pieces


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling with soxr (naive interpolation would alias)."""
    if rate == target or len(wave) == 0:
        return wave.astype(np.float32)
    import soxr

    return soxr.resample(wave, rate, target).astype(np.float32)


# -- video ----------------------------------------------------------------------------


def decode_video(data: bytes, path: str, options: DecodeOptions, part: Part) -> tuple[dict, list[Piece]]:
    """Sampled frames and soundtrack windows (PyAV, imported only when a video comes)."""
    from mmsearch.ingest import video

    return video.decode_video(path, options, part)


OPENED_BY_PATH = frozenset({"video"})
SEEKABLE = frozenset({"audio"})  # a part of such a file is read by path, from its share's offset
DECODERS: dict[str, Callable[[bytes, str, DecodeOptions, Part], tuple[dict, list[Piece]]]] = {
    "image": decode_image,
    "text": decode_text,
    "table": decode_table,
    "audio": decode_audio,
    "video": decode_video,
}
