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

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
MODALITY_BY_EXTENSION = {ext: "image" for ext in IMAGE_EXTENSIONS}


@dataclass(frozen=True)
class FoundFile:
    """A file found on disk, with what incremental indexing compares."""

    path: str
    modality: str
    size: int
    mtime_ns: int


def modality_of(path: str | Path) -> str | None:
    """The modality a file's extension implies, or ``None`` if unsupported."""
    return MODALITY_BY_EXTENSION.get(os.path.splitext(str(path))[1].lower())


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


def walk(roots: Iterable[str]) -> Iterator[FoundFile]:
    """Yield every supported file under ``roots`` (files given directly included)."""
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        if os.path.isfile(root):
            found = _found(root)
            if found is None:
                raise UserInputError(f"unsupported file type: {root}")
            yield found
            continue
        for directory, dirnames, filenames in os.walk(root, followlinks=True):
            stat = os.stat(directory)
            if (stat.st_dev, stat.st_ino) in seen_dirs:
                dirnames.clear()
                continue
            seen_dirs.add((stat.st_dev, stat.st_ino))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith("."):
                    found = _found(os.path.join(directory, name))
                    if found is not None:
                        yield found


def _found(path: str) -> FoundFile | None:
    modality = modality_of(path)
    if modality is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return FoundFile(path, modality, stat.st_size, stat.st_mtime_ns)


def under(path: str, roots: Iterable[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one of them."""
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)
