"""Discovery: ignore patterns and .mmsearchignore files, skipped-file reasons, content sniffing.

Fast and torch-free: real files in tmp_path, walked with the real ``walk``.
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from mmsearch.errors import UserInputError
from mmsearch.ingest import discover
from mmsearch.ingest.decode import DecodeOptions, decode
from mmsearch.ingest.discover import decoder_of, modality_of, walk


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def jpeg_bytes(colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def wav_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "tone.wav"
    soundfile.write(path, np.sin(np.linspace(0, 400, 16_000)).astype(np.float32), 16_000)
    data = path.read_bytes()
    path.unlink()
    return data


def found(root: Path, **kwargs) -> list[str]:
    return [Path(f.path).relative_to(root).as_posix() for f in walk([str(root)], **kwargs)]


@pytest.fixture
def without_rawpy(monkeypatch: pytest.MonkeyPatch):
    """An interpreter where ``import rawpy`` fails, as on an install without the ``raw`` extra."""
    monkeypatch.setitem(sys.modules, "rawpy", None)
    discover.raw_supported.cache_clear()
    yield
    discover.raw_supported.cache_clear()


def test_ignore_patterns_prune_folders_and_hide_files(tmp_path: Path) -> None:
    for name in ("a.jpg", "old/b.jpg", "x.tmp", "sub/drafts/c.jpg", "sub/d.jpg", "sub/old/e.jpg"):
        touch(tmp_path / name)
    touch(tmp_path / "old" / ".mmsearchignore", b"!\n")  # an invalid pattern: reading it would raise
    touch(tmp_path / "notes" / "old", jpeg_bytes())  # a file: the folder-only pattern old/ leaves it
    skipped: Counter[str] = Counter()
    kept = found(tmp_path, ignore=["old/", "*.tmp", "**/drafts"], skipped=skipped)
    assert kept == ["a.jpg", "notes/old", "sub/d.jpg"]
    assert skipped == Counter()  # ignored files are not reported as skipped
    assert found(tmp_path, ignore=["/old/", "*.tmp"]) == [
        "a.jpg",
        "notes/old",
        "sub/d.jpg",
        "sub/drafts/c.jpg",
        "sub/old/e.jpg",
    ]


def test_nested_ignore_files_are_relative_to_their_folder_and_can_negate(tmp_path: Path) -> None:
    touch(tmp_path / ".mmsearchignore", b"*.png\n# a comment\n\nprivate/\n")
    for name in ("a.png", "b.jpg", "keep/wanted.png", "keep/other.png", "private/p.jpg", "deep/top.jpg"):
        touch(tmp_path / name)
    touch(tmp_path / "keep" / ".mmsearchignore", b"!wanted.png\n")
    touch(tmp_path / "deep" / ".mmsearchignore", b"/top.jpg\n")
    touch(tmp_path / "deep" / "inner" / "top.jpg")
    touch(tmp_path / "deep" / "inner" / "private" / "q.jpg")
    assert found(tmp_path) == ["b.jpg", "deep/inner/top.jpg", "keep/wanted.png"]
    # patterns given to walk take precedence over the files, negation included
    assert found(tmp_path, ignore=["!a.png", "wanted.png"]) == ["a.png", "b.jpg", "deep/inner/top.jpg"]


def test_a_file_given_directly_is_still_subject_to_patterns(tmp_path: Path) -> None:
    photo = touch(tmp_path / "scan.tmp.jpg")
    assert [f.path for f in walk([str(photo)])] == [str(photo)]
    assert list(walk([str(photo)], ignore=["*.tmp.jpg"])) == []
    touch(tmp_path / ".mmsearchignore", b"scan.*\n")
    assert list(walk([str(photo)])) == []


def test_unreadable_ignore_file_marks_its_folder_unreadable(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "locked" / "b.jpg")
    (tmp_path / "locked" / ".mmsearchignore").symlink_to(".mmsearchignore")  # a loop: cannot be read
    unreadable: list[str] = []
    failed: list[tuple[str, str]] = []
    assert found(tmp_path, unreadable=unreadable, failed=failed) == ["a.jpg"]
    assert unreadable == [str(tmp_path / "locked")]
    reason = "folder left out: its .mmsearchignore cannot be read: Too many levels of symbolic links"
    assert failed == [(str(tmp_path / "locked"), reason)]


def test_bad_pattern_is_a_user_error(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    with pytest.raises(UserInputError, match="bad ignore pattern"):
        found(tmp_path, ignore=["!"])


def test_skipped_files_are_counted_by_extension_and_reason(tmp_path: Path) -> None:
    for name in ("a.xyz", "b.XYZ", "c.doc", "README", ".hidden.xyz", ".cache/d.xyz", "tmp/e.xyz", "f.jpg"):
        touch(tmp_path / name, b"plain words")
    touch(tmp_path / "song.wav", wav_bytes(tmp_path))
    skipped: Counter[str] = Counter()
    kept = found(tmp_path, modalities=("image", "text"), ignore=["tmp/"], skipped=skipped)
    assert kept == ["f.jpg"]
    assert skipped == Counter(
        {
            ".xyz (unsupported type)": 2,
            ".doc (unsupported type)": 1,
            "no extension (unrecognised content)": 1,
            ".wav (audio not selected)": 1,
        }
    )


def test_raw_files_are_skipped_with_an_install_hint_without_rawpy(tmp_path: Path, without_rawpy) -> None:
    touch(tmp_path / "IMG_0001.CR2")
    touch(tmp_path / "DSC_0002.nef")
    touch(tmp_path / "ok.heic")
    skipped: Counter[str] = Counter()
    assert found(tmp_path, skipped=skipped) == ["ok.heic"]
    hint = "(RAW: pip install 'mmsearch[raw]')"
    assert skipped == Counter({f".cr2 {hint}": 1, f".nef {hint}": 1})
    with pytest.raises(UserInputError, match=r"mmsearch\[raw\]"):
        list(walk([str(tmp_path / "IMG_0001.CR2")]))


def test_raw_files_are_found_with_rawpy(tmp_path: Path) -> None:
    pytest.importorskip("rawpy")
    touch(tmp_path / "IMG_0001.CR2")
    assert [(f.decoder, f.modality) for f in walk([str(tmp_path)])] == [("image", "image")]


def test_misnamed_and_extensionless_files_are_classified_by_content(tmp_path: Path) -> None:
    photo = touch(tmp_path / "photo", jpeg_bytes())
    renamed = touch(tmp_path / "photo.download", jpeg_bytes((10, 10, 200)))
    recording = touch(tmp_path / "recording", wav_bytes(tmp_path))
    text_named = touch(tmp_path / "looks.txt", jpeg_bytes())  # a known extension is trusted, not sniffed
    skipped: Counter[str] = Counter()
    by_name = {Path(f.path).name: f.decoder for f in walk([str(tmp_path)], skipped=skipped)}
    assert by_name == {"photo": "image", "photo.download": "image", "recording": "audio", "looks.txt": "text"}
    assert skipped == Counter()
    assert (decoder_of(photo), modality_of(recording), decoder_of(text_named)) == ("image", "audio", "text")
    assert decoder_of(tmp_path / "missing") is None and modality_of("a red car") is None

    options = DecodeOptions()
    image, sound = decode(str(renamed), "image", options), decode(str(recording), "audio", options)
    assert (image.error, image.meta["format"], sound.error, sound.meta["format"]) == (None, "jpeg", None, "wav")
