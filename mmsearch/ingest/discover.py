"""Discovery: walk the given paths and classify files by modality.

Directory symlinks are followed, but each real directory is visited once, so a
symlink loop cannot recurse forever. Hidden files and folders (dot-names) are
skipped, like thumbnails caches and version-control folders should be.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mmsearch.errors import UserInputError

EXTENSIONS_BY_DECODER = {
    "image": (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"),
    "text": (".txt", ".md", ".markdown"),
    "table": (".csv", ".jsonl", ".parquet"),
    "audio": (".wav", ".flac", ".ogg", ".mp3"),
}
MODALITY_OF_DECODER = {"image": "image", "text": "text", "table": "text", "audio": "audio"}
MODALITIES = ("image", "text", "audio")
DECODER_BY_EXTENSION = {ext: decoder for decoder, exts in EXTENSIONS_BY_DECODER.items() for ext in exts}


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


def decoder_of(path: str | Path) -> str | None:
    """The decoder a file's extension implies, or ``None`` if unsupported."""
    return DECODER_BY_EXTENSION.get(os.path.splitext(str(path))[1].lower())


def modality_of(path: str | Path) -> str | None:
    """The modality a file's extension implies, or ``None`` if unsupported."""
    decoder = decoder_of(path)
    return MODALITY_OF_DECODER[decoder] if decoder else None


def absolute(path: str | Path) -> str:
    """Absolute, normalised path without resolving symlinks (the user's view of it)."""
    return os.path.abspath(os.path.expanduser(str(path)))


def check_roots(roots: Iterable[str | Path]) -> list[str]:
    """Absolute roots, or a one-line error for the first one that does not exist."""
    checked = []
    for root in roots:
        path = absolute(root)
        if not os.path.exists(path):
            raise UserInputError(f"path not found: {root}")
        checked.append(path)
    return checked


def walk(
    roots: Iterable[str],
    modalities: Iterable[str] = MODALITIES,
    exclude: Iterable[str] = (),
    unreadable: list[str] | None = None,
) -> Iterator[FoundFile]:
    """Yield every supported file of ``modalities`` under ``roots`` (files given directly included).

    Folders in ``exclude`` (e.g. the index itself) are skipped; folders that cannot be
    listed are appended to ``unreadable`` so their indexed items are not taken as deleted.
    """
    wanted, excluded = set(modalities), {os.path.realpath(p) for p in exclude}

    def note(error: OSError) -> None:
        if unreadable is not None and error.filename:
            unreadable.append(absolute(error.filename))

    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        if os.path.isfile(root):
            found = _found(root)
            if found is None:
                raise UserInputError(f"unsupported file type: {root}")
            yield found
            continue
        for directory, dirnames, filenames in os.walk(root, followlinks=True, onerror=note):
            try:
                stat = os.stat(directory)
            except OSError as error:
                note(error)
                dirnames.clear()
                continue
            if (stat.st_dev, stat.st_ino) in seen_dirs or os.path.realpath(directory) in excluded:
                dirnames.clear()
                continue
            seen_dirs.add((stat.st_dev, stat.st_ino))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith("."):
                    found = _found(os.path.join(directory, name))
                    if found is not None and found.modality in wanted:
                        yield found


def _found(path: str) -> FoundFile | None:
    decoder = decoder_of(path)
    if decoder is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return FoundFile(path, decoder, stat.st_size, stat.st_mtime_ns)


def under(path: str, roots: Iterable[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one of them."""
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)
