"""Small cached thumbnails of indexed images and video moments, so a result grid does not
ship originals.

A thumbnail is keyed by the item's content hash and size (and, for a video, the moment),
so renamed or copied files share one, and an edited file gets a new one. The source is
read through ``open_item_file`` (the indexed file, checked), and written atomically (temp
file + rename) to the cache folder, where concurrent requests for the same picture find
it afterwards. The file is checked before the cache is read, so a thumbnail is served only
while its file would be (the cache is keyed by content, not by file). An image is decoded
with the same reduced-size decode as indexing; a video row (a frame or a soundtrack window)
shows the frame on screen at its ``offset_s``, found by seeking to the keyframe before it
and decoding forward, and is a JPEG: a frame is a photograph with no transparency to keep.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageOps, features

from mmsearch.errors import UserInputError, one_line
from mmsearch.ingest.decode import DecodeOptions, open_image
from mmsearch.search.segments import is_timed_video
from mmsearch.serve.items import ItemNotFound
from mmsearch.serve.media import OpenedFile, open_item_file

FORMAT, MEDIA_TYPE, SUFFIX = (
    ("WEBP", "image/webp", ".webp") if features.check("webp") else ("JPEG", "image/jpeg", ".jpg")
)
FRAME_FORMAT, FRAME_MEDIA_TYPE, FRAME_SUFFIX = "JPEG", "image/jpeg", ".jpg"
MAX_SOURCE_PIXELS = 100_000_000


class Thumbnail(NamedTuple):
    """A thumbnail's bytes, media type and tag (for the ``ETag``: the same for the same picture)."""

    data: bytes
    media_type: str
    tag: str


def has_thumbnail(row: dict) -> bool:
    """Whether item ``row`` has a picture to show: an image, or a moment of a video."""
    return row.get("modality") == "image" or is_timed_video(row)


class Thumbnails:
    """Makes and caches thumbnails of image and video items at one size."""

    def __init__(self, folder: Path, size: int = 256, parallel: int = 2) -> None:
        """Cache in ``folder``; at most ``parallel`` thumbnails are made at once."""
        self.folder = Path(folder)
        self.size = size
        self._slots = threading.BoundedSemaphore(parallel)

    def tag(self, row: dict) -> str:
        """What the thumbnail of ``row`` is cached and tagged by: content, size and, for a video, the moment."""
        digest = "".join(char for char in row["content_hash"] if char.isalnum())[:64]
        if is_timed_video(row):
            return f"{digest}-{self.size}-at{round(float(row['offset_s']) * 1_000_000)}us"
        return f"{digest}-{self.size}"

    def path_of(self, row: dict) -> Path:
        """Where the thumbnail of item ``row`` lives in the cache."""
        tag = self.tag(row)
        return self.folder / tag[:2] / f"{tag}{FRAME_SUFFIX if is_timed_video(row) else SUFFIX}"

    def get(self, row: dict) -> Thumbnail:
        """The thumbnail of item ``row``, made now if not cached."""
        if not has_thumbnail(row):
            raise ItemNotFound(f"item {row['id']} is {row.get('modality')}, and only images and videos have thumbnails")
        if not row.get("content_hash"):
            raise ItemNotFound(f"item {row['id']} has no indexed file to make a thumbnail of")
        cached = self.path_of(row)
        media_type = FRAME_MEDIA_TYPE if is_timed_video(row) else MEDIA_TYPE
        opened = open_item_file(row)  # before the cache: a file deleted or changed since indexing has none
        try:
            try:
                return Thumbnail(cached.read_bytes(), media_type, self.tag(row))
            except OSError:
                pass
            with self._slots:
                data = self._frame(row, opened) if is_timed_video(row) else self._image(row, opened)
        finally:
            opened.close()
        self._store(cached, data)
        return Thumbnail(data, media_type, self.tag(row))

    def _image(self, row: dict, opened: OpenedFile) -> bytes:
        source = opened.read()
        try:
            image, _meta = open_image(source, DecodeOptions(image_size=self.size, max_pixels=MAX_SOURCE_PIXELS))
            with image:
                oriented = ImageOps.exif_transpose(image)
                oriented = oriented.convert("RGBA" if oriented.mode in ("RGBA", "LA", "P") else "RGB")
                oriented.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
                if FORMAT == "JPEG" and oriented.mode == "RGBA":
                    oriented = oriented.convert("RGB")
                out = io.BytesIO()
                oriented.save(out, format=FORMAT, quality=80)
        except Exception as exc:  # a file that decoded at indexing time but not now
            raise _unmade(row, exc) from None
        return out.getvalue()

    def _frame(self, row: dict, opened: OpenedFile) -> bytes:
        """The frame at the row's offset, read from the checked open file (never by path again)."""
        from mmsearch.ingest.video import frame_at

        try:
            with os.fdopen(opened.fd, "rb", closefd=False) as handle:
                frame = frame_at(handle, float(row["offset_s"]), self.size)
            out = io.BytesIO()
            frame.convert("RGB").save(out, format=FRAME_FORMAT, quality=80)
        except Exception as exc:
            raise _unmade(row, exc) from None
        return out.getvalue()

    def _store(self, path: Path, data: bytes) -> None:
        """Write atomically; a cache that cannot be written only costs speed."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".thumb-")
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temp, path)
        except OSError:
            pass


def _unmade(row: dict, exc: Exception) -> UserInputError:
    return UserInputError(f"cannot make a thumbnail of item {row['id']}: {one_line(exc)}")
