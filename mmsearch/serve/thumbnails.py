"""Small cached thumbnails of indexed images, so a result grid does not ship originals.

A thumbnail is keyed by the item's content hash and size, so renamed or copied
photos share one, and an edited photo gets a new one. The source is read through
``open_item_file`` (the indexed file, checked), decoded with the same reduced-size
decode as indexing, and written atomically (temp file + rename) to the cache
folder, where concurrent requests for the same picture find it afterwards.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from pathlib import Path

from PIL import Image, ImageOps, features

from mmsearch.errors import UserInputError
from mmsearch.ingest.decode import DecodeOptions, open_image
from mmsearch.serve.items import ItemNotFound
from mmsearch.serve.media import open_item_file

FORMAT, MEDIA_TYPE, SUFFIX = (
    ("WEBP", "image/webp", ".webp") if features.check("webp") else ("JPEG", "image/jpeg", ".jpg")
)
MAX_SOURCE_PIXELS = 100_000_000


class Thumbnails:
    """Makes and caches thumbnails of image items at one size."""

    def __init__(self, folder: Path, size: int = 256, parallel: int = 2) -> None:
        """Cache in ``folder``; at most ``parallel`` thumbnails are made at once."""
        self.folder = Path(folder)
        self.size = size
        self._slots = threading.BoundedSemaphore(parallel)

    def path_of(self, content_hash: str) -> Path:
        """Where the thumbnail of that content lives in the cache."""
        digest = "".join(char for char in content_hash if char.isalnum())[:64]
        return self.folder / digest[:2] / f"{digest}-{self.size}{SUFFIX}"

    def get(self, row: dict) -> bytes:
        """The thumbnail of image item ``row``, made now if not cached."""
        if row.get("modality") != "image":
            raise ItemNotFound(f"item {row['id']} is {row.get('modality')}, and only images have thumbnails")
        if not row.get("content_hash"):
            raise ItemNotFound(f"item {row['id']} has no indexed file to make a thumbnail of")
        cached = self.path_of(row["content_hash"])
        try:
            return cached.read_bytes()
        except OSError:
            pass
        with self._slots:
            data = self._make(row)
        self._store(cached, data)
        return data

    def _make(self, row: dict) -> bytes:
        source = open_item_file(row).read()
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
            raise UserInputError(f"cannot make a thumbnail of item {row['id']}: {exc}".splitlines()[0]) from None
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
