"""Discovery: walk the given paths and classify files by modality.

Directory symlinks are followed, but each real directory is visited once, so a
symlink loop cannot recurse forever. Hidden files and folders (dot-names) are
skipped, like thumbnails caches and version-control folders should be. Files the
user excludes (``ignore`` patterns, ``.mmsearchignore`` files, gitignore syntax) are
not seen at all; supported-looking files that cannot be indexed are counted by reason.
Entries that are not files (a FIFO, a socket, a broken symbolic link) and folders that
cannot be listed are reported as failed, never opened: opening a FIFO blocks.
"""

from __future__ import annotations

import importlib.util
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pathspec

from mmsearch.errors import UserInputError

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif")
RAW_EXTENSIONS = (".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2", ".pef", ".srw")
RAW_HINT = "pip install 'mmsearch[raw]'"
EXTENSIONS_BY_DECODER = {
    "image": (*PHOTO_EXTENSIONS, *RAW_EXTENSIONS),
    "text": (".txt", ".md", ".markdown"),
    "table": (".csv", ".jsonl", ".parquet"),
    "audio": (".wav", ".flac", ".ogg", ".mp3"),
    "video": (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"),
}
MODALITY_OF_DECODER = {"image": "image", "text": "text", "table": "text", "audio": "audio", "video": "video"}
MODALITIES = ("image", "text", "audio", "video")
# What a model must embed for a modality to be indexed: a video's frames are images
# (its soundtrack is indexed too when the model also embeds audio).
ENCODED_AS = {"video": "image"}
DECODER_BY_EXTENSION = {ext: decoder for decoder, exts in EXTENSIONS_BY_DECODER.items() for ext in exts}
IGNORE_FILE = ".mmsearchignore"

HEAD_BYTES = 32  # enough for every signature below
DECODER_OF_FORMAT = {
    **dict.fromkeys(("jpeg", "png", "gif", "webp", "tiff", "bmp", "heic", "avif"), "image"),
    **dict.fromkeys(("wav", "flac", "ogg", "mp3"), "audio"),
    **dict.fromkeys(("mp4", "mov", "matroska", "avi"), "video"),
}
HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
AUDIO_ONLY_BRANDS = {b"M4A ", b"M4B ", b"M4P "}  # ISO media holding sound alone: not a video
EBML = b"\x1a\x45\xdf\xa3"  # Matroska and WebM
BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}


@dataclass(frozen=True)
class FoundFile:
    """A file found on disk, with what incremental indexing compares."""

    path: str
    decoder: str
    size: int
    mtime_ns: int

    @property
    def modality(self) -> str:
        return MODALITY_OF_DECODER[self.decoder]


def sniff(head: bytes) -> str | None:
    """The format a file's first bytes announce (a lowercase short name), or ``None``."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] in (b"RIFF", b"RF64"):
        return {b"WEBP": "webp", b"WAVE": "wav", b"AVI ": "avi"}.get(head[8:12])
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:2] == b"BM" and head[6:10] == bytes(4) and int.from_bytes(head[14:18], "little") in BMP_HEADER_SIZES:
        return "bmp"
    if head[4:8] == b"ftyp":
        brands = {head[i : i + 4] for i in range(8, min(len(head), int.from_bytes(head[:4], "big")), 4)}
        if brands & {b"avif", b"avis"}:
            return "avif"
        if brands & HEIC_BRANDS:
            return "heic"
        return None if head[8:12] in AUDIO_ONLY_BRANDS else "mov" if head[8:12] == b"qt  " else "mp4"
    if head[:4] == EBML:
        return "matroska"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or _mpeg_audio_frame(head):
        return "mp3"
    return None


def _mpeg_audio_frame(head: bytes) -> bool:
    """An MPEG layer III frame header: sync bits, a valid version, bitrate and sample rate."""
    if len(head) < 3 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    return (head[1] >> 3) & 3 != 1 and (head[1] >> 1) & 3 == 1 and head[2] >> 4 != 15 and (head[2] >> 2) & 3 != 3


def sniff_file(path: str | Path) -> str | None:
    """The format announced by the first bytes of the file at ``path`` (``None`` if unreadable)."""
    try:
        with open(path, "rb") as handle:
            return sniff(handle.read(HEAD_BYTES))
    except OSError:
        return None


def decoder_of(path: str | Path) -> str | None:
    """The decoder for a file: by its extension, else (an existing file) by its first bytes."""
    decoder = DECODER_BY_EXTENSION.get(os.path.splitext(str(path))[1].lower())
    if decoder is None and os.path.isfile(path):
        decoder = DECODER_OF_FORMAT.get(sniff_file(path) or "")
    return decoder


def modality_of(path: str | Path) -> str | None:
    """The modality of a file (see ``decoder_of``), or ``None`` if unsupported."""
    decoder = decoder_of(path)
    return MODALITY_OF_DECODER[decoder] if decoder else None


@cache
def raw_supported() -> bool:
    """Whether the optional RAW decoder (rawpy) is installed."""
    return importlib.util.find_spec("rawpy") is not None


def absolute(path: str | Path) -> str:
    """Absolute, normalised path without resolving symlinks (the user's view of it)."""
    return os.path.abspath(os.path.expanduser(str(path)))


def stored_name(path: str) -> str:
    """``path`` as the index stores it (UTF-8). The OS hands a name that is not valid UTF-8
    over with its bad bytes as surrogates, which Arrow cannot store: they are
    backslash-escaped, e.g. ``bad\\xffname.png``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_roots(roots: Iterable[str | Path]) -> list[str]:
    """Absolute roots, or a one-line error for the first one that does not exist."""
    checked = []
    for root in roots:
        path = absolute(root)
        if not os.path.exists(path):
            raise UserInputError(f"path not found: {root}")
        checked.append(path)
    return checked


Rule = tuple[str, pathspec.GitIgnoreSpec]  # patterns and the folder they are relative to


def walk(
    roots: Iterable[str],
    modalities: Iterable[str] = MODALITIES,
    exclude: Iterable[str] = (),
    unreadable: list[str] | None = None,
    *,
    ignore: Sequence[str] = (),
    skipped: Counter[str] | None = None,
    failed: list[tuple[str, str]] | None = None,
) -> Iterator[FoundFile]:
    """Yield every supported file of ``modalities`` under ``roots`` (files given directly included).

    Folders in ``exclude`` (e.g. the index itself) are skipped; folders that cannot be
    listed are appended to ``unreadable`` so their indexed items are not taken as deleted.
    ``ignore`` patterns (gitignore syntax, relative to each root) and the patterns of every
    ``.mmsearchignore`` file met on the way (relative to its folder; deeper files and then
    ``ignore`` take precedence) hide files and prune folders: an ignored file is not seen.
    Every other regular file left out for its type is counted in ``skipped`` under a
    reason such as ``".xyz (unsupported type)"``. Entries that are not files and folders that
    cannot be listed are appended to ``failed`` as (path, reason).
    """
    wanted, excluded = set(modalities), {os.path.realpath(p) for p in exclude}
    skipped = Counter() if skipped is None else skipped
    given = _spec(ignore, "ignore pattern")

    def note(path: str | None, reason: str) -> None:
        if unreadable is not None and path:
            unreadable.append(absolute(path))
        if failed is not None and path:
            failed.append((absolute(path), reason))

    def cannot_list(error: OSError) -> None:
        note(error.filename, f"folder cannot be read: {error.strerror}")

    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        if not os.path.isdir(root):
            folder = os.path.dirname(root)
            rules = _with_ignore_file([], folder, note)
            if rules is None or _ignored(root, False, [(folder, given), *reversed(rules)]):
                continue
            found, reason = _classify(root, wanted=None)
            if found is None:
                raise UserInputError(f"unsupported file type: {root} ({reason or _not_a_file(root) or 'vanished'})")
            yield found
            continue
        rules_of: dict[str, list[Rule]] = {}
        for directory, dirnames, filenames in os.walk(root, followlinks=True, onerror=cannot_list):
            inherited = rules_of.pop(directory, [])
            try:
                info = os.stat(directory)
            except OSError as error:
                cannot_list(error)
                dirnames.clear()
                continue
            if (info.st_dev, info.st_ino) in seen_dirs or os.path.realpath(directory) in excluded:
                dirnames.clear()
                continue
            seen_dirs.add((info.st_dev, info.st_ino))
            rules = _with_ignore_file(inherited, directory, note) if IGNORE_FILE in filenames else inherited
            if rules is None:
                dirnames.clear()
                continue
            precedence = [(root, given), *reversed(rules)]
            dirnames[:] = sorted(
                d
                for d in dirnames
                if not d.startswith(".") and not _ignored(os.path.join(directory, d), True, precedence)
            )
            for name in dirnames:
                rules_of[os.path.join(directory, name)] = rules
            for name in sorted(filenames):
                path = os.path.join(directory, name)
                if name.startswith(".") or _ignored(path, False, precedence):
                    continue
                found, reason = _classify(path, wanted)
                if found is not None:
                    yield found
                elif reason is not None:
                    skipped[reason] += 1
                elif (why := _not_a_file(path)) is not None and failed is not None:
                    failed.append((path, why))


def _spec(lines: Iterable[str], source: str) -> pathspec.GitIgnoreSpec:
    try:
        return pathspec.GitIgnoreSpec.from_lines(lines)
    except ValueError as error:
        raise UserInputError(f"bad {source}: {error}") from None


def _with_ignore_file(rules: list[Rule], folder: str, note: Callable[[str, str], None]) -> list[Rule] | None:
    """``rules`` plus the folder's ``.mmsearchignore`` if it has one; ``None`` if that file
    cannot be read: the folder is then noted as unreadable rather than indexed unfiltered."""
    path = os.path.join(folder, IGNORE_FILE)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return rules
    except OSError as error:
        note(folder or os.curdir, f"folder left out: its {IGNORE_FILE} cannot be read: {error.strerror}")
        return None
    return [*rules, (folder, _spec(lines, f"pattern in {path}"))]


def _ignored(path: str, is_dir: bool, precedence: Sequence[Rule]) -> bool:
    """Gitignore semantics: the first rule set with an opinion on ``path`` decides."""
    for base, spec in precedence:
        relative = path[len(base) :].lstrip(os.sep).replace(os.sep, "/")
        verdict = spec.check_file(relative + "/" if is_dir else relative).include
        if verdict is not None:
            return verdict
    return False


def _classify(path: str, wanted: set[str] | None) -> tuple[FoundFile | None, str | None]:
    """The file to index, or why not: a reason to count, or ``None`` for files not worth
    mentioning (gone, not regular)."""
    try:
        info = os.stat(path)
    except OSError:
        return None, None
    if not stat.S_ISREG(info.st_mode):
        return None, None
    extension = os.path.splitext(path)[1].lower()
    label = extension or "no extension"
    decoder = DECODER_BY_EXTENSION.get(extension)
    if decoder is None:
        decoder = DECODER_OF_FORMAT.get(sniff_file(path) or "")
        if decoder is None:
            return None, f"{label} ({'unsupported type' if extension else 'unrecognised content'})"
    elif extension in RAW_EXTENSIONS and not raw_supported():
        return None, f"{label} (RAW: {RAW_HINT})"
    if wanted is not None and MODALITY_OF_DECODER[decoder] not in wanted:
        return None, f"{label} ({MODALITY_OF_DECODER[decoder]} not selected)"
    return FoundFile(path, decoder, info.st_size, info.st_mtime_ns), None


def _not_a_file(path: str) -> str | None:
    """Why an entry that is not a regular file cannot be indexed, from its ``stat`` alone (never
    opened); ``None`` for a folder (walked on its own), a file, or an entry that vanished meanwhile."""
    try:
        os.lstat(path)
    except OSError:
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return f"broken symbolic link ({error.strerror})"
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))
    kind = next((name for test, name in kinds if test(mode)), "a device or other special file")
    return f"{kind}, not a regular file"


def under(path: str, roots: Iterable[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one of them."""
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)
