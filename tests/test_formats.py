"""Decoding real files of every supported format: lowercase format names, HEIC/AVIF/RAW,
reduced decoding of huge images, and library noise kept in notes instead of on stderr.

Fast and torch-free; every file is written on the fly.
"""

from __future__ import annotations

import io
import multiprocessing
import struct
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pillow_heif
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
from PIL import Image

from mmsearch.ingest.decode import DecodeOptions, decode, open_image
from mmsearch.ingest.discover import sniff

OPTIONS = DecodeOptions()
RED = (220, 30, 30)


def image_file(path: Path, fmt: str, size: tuple[int, int] = (96, 64), colour=RED, **save) -> Path:
    image = Image.new("RGB", size, colour)
    if fmt == "HEIF":  # written by pillow-heif directly: reading must not rely on an opener registered here
        pillow_heif.from_pillow(image).save(path, **save)
    else:
        image.save(path, fmt, **save)
    return path


def sound_file(path: Path, fmt: str, subtype: str) -> Path:
    wave = 0.5 * np.sin(np.linspace(0, 2_000, 16_000)).astype(np.float32)
    soundfile.write(path, wave, 16_000, format=fmt, subtype=subtype)
    return path


def decoded_colour(path: Path) -> np.ndarray:
    result = decode(str(path), "image", OPTIONS)
    assert result.error is None, result.error
    return result.pieces[0].payload.reshape(-1, 3).mean(axis=0)


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12000×12000 (144 MP) JPEG: over Pillow's bomb warning and our pixel limit at full size."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    image = Image.new("L", (12_000, 12_000), 60)
    image.paste(200, (0, 0, 6_000, 12_000))
    image.save(path, quality=30)
    return path


IMAGES = [  # (suffix, Pillow format, save options, stored format name)
    (".jpg", "JPEG", {}, "jpeg"),
    (".png", "PNG", {}, "png"),
    (".gif", "GIF", {}, "gif"),
    (".webp", "WEBP", {}, "webp"),
    (".tif", "TIFF", {"compression": "tiff_lzw"}, "tiff"),
    (".bmp", "BMP", {}, "bmp"),
    (".avif", "AVIF", {"quality": 90}, "avif"),
    (".heic", "HEIF", {"quality": 90}, "heic"),
]
SOUNDS = [(".wav", "WAV", "PCM_16", "wav"), (".flac", "FLAC", "PCM_16", "flac"), (".ogg", "OGG", "VORBIS", "ogg")]
SOUNDS.append((".mp3", "MP3", "MPEG_LAYER_III", "mp3"))


@pytest.mark.parametrize(("suffix", "fmt", "save", "name"), IMAGES)
def test_images_round_trip_with_lowercase_format_and_are_sniffed(tmp_path: Path, suffix, fmt, save, name) -> None:
    path = image_file(tmp_path / f"a{suffix}", fmt, **save)
    result = decode(str(path), "image", OPTIONS)
    assert result.error is None, result.error
    assert {k: result.meta[k] for k in ("format", "width", "height", "notes")} == {
        "format": name,
        "width": 96,
        "height": 64,
        "notes": None,
    }
    assert np.abs(result.pieces[0].payload.reshape(-1, 3).mean(axis=0) - RED).max() < 12
    assert sniff(path.read_bytes()[:32]) == name


@pytest.mark.parametrize(("suffix", "fmt", "subtype", "name"), SOUNDS)
def test_audio_formats_are_lowercase_and_sniffed(tmp_path: Path, suffix, fmt, subtype, name) -> None:
    path = sound_file(tmp_path / f"a{suffix}", fmt, subtype)
    result = decode(str(path), "audio", OPTIONS)
    assert (result.error, result.meta["format"], result.meta["notes"]) == (None, name, None)
    assert sniff(path.read_bytes()[:32]) == name


def test_id3_tagged_mp3_is_sniffed() -> None:
    assert sniff(b"ID3\x04\x00\x00\x00\x00\x00\x23TIT2") == "mp3"
    assert sniff(b"BMW notes, not a bitmap at all....") is None


def test_text_formats_are_lowercase(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("plain")
    (tmp_path / "b.md").write_text("# title")
    (tmp_path / "c.csv").write_text("caption\nhello\n")
    (tmp_path / "d.jsonl").write_text('{"text": "hello"}\n')
    pq.write_table(pa.table({"caption": ["hello"]}), tmp_path / "e.parquet")
    formats = {
        p.name: decode(str(p), "text" if p.suffix in (".txt", ".md") else "table", OPTIONS).meta["format"]
        for p in sorted(tmp_path.iterdir())
    }
    assert formats == {"a.txt": "text", "b.md": "markdown", "c.csv": "csv", "d.jsonl": "jsonl", "e.parquet": "parquet"}


def test_content_that_contradicts_the_extension_fails_with_a_clear_reason(tmp_path: Path) -> None:
    fake_photo = sound_file(tmp_path / "fake.wav", "WAV", "PCM_16").rename(tmp_path / "fake.jpg")
    assert decode(str(fake_photo), "image", OPTIONS).error == "not a readable image file: its content is WAV audio"
    fake_song = image_file(tmp_path / "fake.png", "PNG").rename(tmp_path / "fake.flac")
    assert decode(str(fake_song), "audio", OPTIONS).error.startswith("not a readable audio file: its content is PNG")
    (tmp_path / "junk.png").write_bytes(b"definitely not an image")
    assert "unknown format" in decode(str(tmp_path / "junk.png"), "image", OPTIONS).error


def test_huge_jpeg_is_decoded_at_reduced_size(huge_jpeg: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(Image.DecompressionBombWarning):  # what plain Pillow says about this file
        Image.open(huge_jpeg).close()
    image, meta = open_image(huge_jpeg.read_bytes(), OPTIONS)
    with image:
        assert image.size == (1_500, 1_500)  # libjpeg will decode at 1/8 scale
        image.load()
        assert image.size == (1_500, 1_500)
    assert (meta["width"], meta["height"]) == (12_000, 12_000)
    result = decode(str(huge_jpeg), "image", OPTIONS)
    assert result.error is None and result.meta["notes"] is None
    left, right = result.pieces[0].payload[:, :100].mean(), result.pieces[0].payload[:, -100:].mean()
    assert left > 150 > 100 > right  # the two halves survive the reduction
    assert capfd.readouterr().err == ""


def test_pixel_limit_refuses_only_what_cannot_be_reduced(tmp_path: Path) -> None:
    small_limit = DecodeOptions(image_size=32, max_pixels=10_000)
    png = image_file(tmp_path / "wide.png", "PNG", (300, 200))
    error = decode(str(png), "image", small_limit).error
    assert error is not None and "image too large" in error and "max_pixels" in error
    jpeg = image_file(tmp_path / "wide.jpg", "JPEG", (300, 200))
    result = decode(str(jpeg), "image", small_limit)  # drafted to 75×50 = 3,750 pixels
    assert (result.error, result.meta["width"], result.pieces[0].payload.shape) == (None, 300, (32, 32, 3))


def jpeg_with_corrupt_exif(path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0110] = "Camera"
    exif[0x0132] = "2020:01:01 10:00:00"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), RED).save(buffer, "JPEG", exif=exif.tobytes())
    data = bytearray(buffer.getvalue())
    tiff = data.find(b"Exif\x00\x00") + 6  # big-endian TIFF header; first IFD entry 2 + 8 bytes later
    entry = tiff + int.from_bytes(data[tiff + 4 : tiff + 8], "big") + 2
    data[entry + 4 : entry + 8] = (0x7FFFFF).to_bytes(4, "big")  # a tag claiming 8 MB of data
    path.write_bytes(data)
    return path


def test_python_warnings_become_notes_not_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = jpeg_with_corrupt_exif(tmp_path / "exif.jpg")
    with pytest.warns(UserWarning), Image.open(path) as plain:  # Pillow complains on its own
        plain.getexif()
    result = decode(str(path), "image", OPTIONS)
    assert result.error is None and result.pieces
    assert result.meta["notes"] and "tag" in result.meta["notes"].lower()
    assert len(result.meta["notes"]) <= 300
    assert capfd.readouterr().err == ""


def corrupt_lzw_tiff(path: Path) -> Path:
    """An LZW TIFF with scrambled strip data: libtiff prints to file descriptor 2."""
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), RED).save(buffer, "TIFF", compression="tiff_lzw")
    data = bytearray(buffer.getvalue())
    for i in range(20, 400):
        data[i] ^= 0x5A
    path.write_bytes(data)
    return path


def test_c_library_output_is_kept_with_the_failure(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = corrupt_lzw_tiff(tmp_path / "broken.tif")
    result = decode(str(path), "image", OPTIONS)
    assert result.error is not None and "Using code not yet in table" in result.error  # libtiff's own words
    assert capfd.readouterr().err == ""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # as in the pipeline
        in_worker = pool.submit(decode, str(path), "image", OPTIONS).result()
    assert in_worker.error == result.error
    assert capfd.readouterr().err == ""


# -- camera RAW: a minimal DNG (a TIFF with DNG tags) that LibRaw reads ------------------------


def _ifd(out: bytearray, fields: list[tuple[int, str, object]]) -> int:
    """Append one little-endian TIFF directory (values that do not fit inline first); its offset."""
    types = {"B": 1, "s": 2, "H": 3, "I": 4}
    entries = []
    for tag, fmt, values in sorted(fields):
        raw = values if fmt == "s" else struct.pack(f"<{len(values)}{fmt}", *values)
        count = len(raw) if fmt in "sB" else len(values)
        if len(raw) > 4:
            out += b"\0" * (len(out) % 2)
            at = len(out)
            out += raw
            raw = struct.pack("<I", at)
        entries.append(struct.pack("<HHI", tag, types[fmt], count) + raw.ljust(4, b"\0"))
    out += b"\0" * (len(out) % 2)
    start = len(out)
    out += struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return start


def write_dng(path: Path, rgb: np.ndarray, preview: bytes | None = None) -> Path:
    """A linear (demosaiced) 16-bit DNG, with an optional JPEG preview in IFD0 and the raw in a SubIFD."""
    height, width = rgb.shape[:2]
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    pixels = rgb.astype("<u2").tobytes()
    raw_at = len(out)
    out += pixels
    raw = [(256, "I", [width]), (257, "I", [height]), (258, "H", [16] * 3), (259, "H", [1]), (262, "H", [34892])]
    raw += [(273, "I", [raw_at]), (277, "H", [3]), (278, "I", [height]), (279, "I", [len(pixels)])]
    raw += [(284, "H", [1]), (50717, "I", [65535])]
    dng = [(50706, "B", [1, 4, 0, 0]), (50708, "s", b"mmsearch test\0"), (272, "s", b"TestCam\0")]
    if preview is None:
        first = _ifd(out, [(254, "I", [0]), *raw, *dng])
    else:
        preview_at = len(out)
        out += preview
        sub = _ifd(out, [(254, "I", [0]), *raw])
        p_width, p_height = Image.open(io.BytesIO(preview)).size
        shape = [(256, "I", [p_width]), (257, "I", [p_height]), (258, "H", [8] * 3), (259, "H", [7]), (262, "H", [6])]
        strips = [(273, "I", [preview_at]), (277, "H", [3]), (278, "I", [p_height]), (279, "I", [len(preview)])]
        first = _ifd(out, [(254, "I", [1]), *shape, *strips, (330, "I", [sub]), *dng])
    out[4:8] = struct.pack("<I", first)
    path.write_bytes(out)
    return path


def test_raw_uses_the_embedded_preview_else_demosaics(tmp_path: Path) -> None:
    pytest.importorskip("rawpy")
    red = np.zeros((48, 64, 3), np.uint16)
    red[..., 0] = 60_000
    blue_preview = io.BytesIO()
    Image.new("RGB", (320, 240), (0, 0, 255)).save(blue_preview, "JPEG")
    with_preview = write_dng(tmp_path / "with_preview.dng", red, blue_preview.getvalue())
    without = write_dng(tmp_path / "without.dng", red)

    result = decode(str(with_preview), "image", OPTIONS)
    assert result.error is None, result.error
    assert {k: result.meta[k] for k in ("format", "width", "height", "camera")} == {
        "format": "dng",
        "width": 64,  # the sensor image, not the preview
        "height": 48,
        "camera": "TestCam",
    }
    preview_colour, raw_colour = decoded_colour(with_preview), decoded_colour(without)
    assert preview_colour[2] > 200 > 60 > preview_colour[0]  # the blue preview, not the red raw data
    assert raw_colour[0] > 200 > 60 > raw_colour[2]  # no preview: the raw data itself, demosaiced
    assert decode(str(without), "image", OPTIONS).meta["format"] == "dng"


def test_raw_without_rawpy_fails_with_an_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rawpy", None)  # as without the raw extra
    path = write_dng(tmp_path / "a.dng", np.zeros((8, 8, 3), np.uint16))
    assert decode(str(path), "image", OPTIONS).error == "RAW images need rawpy: pip install 'mmsearch[raw]'"
