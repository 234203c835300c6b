"""The original file of an indexed item, by id only, with HTTP Range for seeking.

There is no path parameter anywhere, so there is nothing to traverse. The file is
opened once and checked through that open descriptor: it must be a regular file
whose size and modification time are exactly those the index recorded. A file
swapped since indexing (for a symlink to ``/etc/shadow``, say) no longer matches
and is refused; checking the descriptor rather than the path leaves no window
between check and read. Only files the ingest read are served: their rows carry
the content hash it computed, which rows added as bare vectors (``add_vectors``,
``mmsearch import``) never do, whatever size and mtime they claim.
"""

from __future__ import annotations

import mimetypes
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import formatdate
from urllib.parse import quote

from mmsearch.serve.items import ItemNotFound

CHUNK = 256 * 1024
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "avif": "image/avif",
    "heic": "image/heic",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "mp3": "audio/mpeg",
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "mov": "video/quicktime",
    "webm": "video/webm",
    "mkv": "video/x-matroska",
    "avi": "video/x-msvideo",
}
# A served file is data, never a page: no scripts, no plugins, no sniffing.
MEDIA_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "private, max-age=3600",
}


@dataclass
class OpenedFile:
    """An indexed file opened and checked: read it with ``chunks`` and it closes itself."""

    fd: int
    size: int
    mtime: float
    content_type: str
    name: str

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive; closes the file when done or abandoned."""
        try:
            position = start
            while position <= end:
                data = os.pread(self.fd, min(CHUNK, end - position + 1), position)
                if not data:
                    break
                position += len(data)
                yield data
        finally:
            self.close()

    def read(self) -> bytes:
        """The whole file (for thumbnails); closes it."""
        return b"".join(self.chunks(0, self.size - 1)) if self.size else b""

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def microseconds(moment: datetime) -> int:
    """A stored ``mtime`` as integer microseconds since the epoch (no float rounding)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def open_item_file(row: dict) -> OpenedFile:
    """Open the file of item ``row`` if it is still the file that was indexed."""
    item_id, path = row["id"], row["path"]
    if not row.get("content_hash") or row.get("size") is None or row.get("mtime") is None:
        raise ItemNotFound(f"item {item_id} has no indexed file to serve")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError:
        raise ItemNotFound(f"the file of item {item_id} is no longer there; index its folder again") from None
    try:
        info = os.fstat(fd)
        same = (
            stat.S_ISREG(info.st_mode)
            and info.st_size == row["size"]
            and info.st_mtime_ns // 1000 == microseconds(row["mtime"])
        )
        if not same:
            raise ItemNotFound(f"the file of item {item_id} changed since it was indexed; index its folder again")
    except BaseException:
        os.close(fd)
        raise
    return OpenedFile(fd, info.st_size, info.st_mtime, content_type(row), os.path.basename(path))


def content_type(row: dict) -> str:
    """A media type that browsers treat as data: text items as plain text, always."""
    if row.get("modality") == "text":
        guessed = mimetypes.guess_type(row["path"])[0]
        return f"{guessed if guessed in ('text/csv',) else 'text/plain'}; charset=utf-8"
    return TYPES.get((row.get("format") or "").lower(), "application/octet-stream")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single range ``header`` asks for as ``(start, end)`` inclusive; ``None`` for the
    whole file (no header, or one this server ignores, like multiple ranges, as RFC 9110
    allows). Raises ``ValueError`` when the range cannot be satisfied."""
    if not header:
        return None
    match = RANGE.match(header.strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise ValueError("empty suffix range")
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise ValueError("range outside the file")
    return start, end


def headers(opened: OpenedFile, etag: str) -> dict[str, str]:
    """Headers every media answer carries."""
    return {
        **MEDIA_HEADERS,
        "Accept-Ranges": "bytes",
        "ETag": f'"{etag}"',
        "Last-Modified": formatdate(opened.mtime, usegmt=True),
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(opened.name)}",
    }
