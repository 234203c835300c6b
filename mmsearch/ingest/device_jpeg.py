"""JPEG photos decoded on the encoder's device (nvJPEG through torchvision on CUDA).

On a GPU the CPU cores cannot decode photos as fast as the model embeds them (a 2 MP JPEG
costs 10-15 ms of entropy decoding on one core, reduced decoding or not). So when the encoder
runs on CUDA, decode workers still read, hash and parse each local JPEG's header (metadata,
EXIF orientation, limits) but leave its pixels: the piece's payload is a :class:`DeferredJpeg`.
The main process decodes a batch of them at once on the device, orients, resizes (bicubic,
antialiased, shortest side to the model size) and centre-crops there, and hands the encoder
uint8 crops that never visit the host. A photo the device cannot decode (an unusual JPEG
flavour) falls back to Pillow; one neither can decode is a failure like any other.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mmsearch.errors import one_line

MAX_DEVICE_PIXELS = 50_000_000  # larger photos take the CPU path, which decodes them reduced
DEFERRABLE_MODES = ("RGB", "L")  # 8-bit baseline colour or grey; CMYK and the like stay on the CPU
READERS = 8  # threads reading deferred files back (reads release the GIL)
CROP_CHUNK = 64  # photos resized in one call: ~1.5 GB of float pixels at 2 MP


@dataclass(frozen=True)
class DeferredJpeg:
    """A JPEG whose pixels are decoded later, on the encoder's device."""

    path: str
    orientation: int = 1  # EXIF orientation, 1 (as stored) to 8


def deferrable(image: Image.Image) -> bool:
    """Whether a parsed (not yet decoded) image is a JPEG the device decoder handles."""
    return (
        image.format == "JPEG"
        and image.mode in DEFERRABLE_MODES
        and not image.info.get("progressive")
        and image.width * image.height <= MAX_DEVICE_PIXELS
    )


def available(device: str) -> bool:
    """Whether JPEGs are decoded on ``device``: CUDA with torchvision's nvJPEG decoder."""
    if not device.startswith("cuda"):
        return False
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        return False
    return True


def crops(payloads: Sequence[np.ndarray | DeferredJpeg], size: int, device: str) -> tuple[Any, dict[int, str]]:
    """A batch of image payloads as uint8 crops ``(n, size, size, 3)`` on ``device`` (a torch
    tensor), decoding the deferred ones there; and the positions that could not be decoded, with
    their reasons (their rows in the tensor are zeros: drop them)."""
    import torch

    out = torch.zeros((len(payloads), size, size, 3), dtype=torch.uint8, device=device)
    ready = [(i, p) for i, p in enumerate(payloads) if not isinstance(p, DeferredJpeg)]
    if ready:
        stacked = torch.from_numpy(np.stack([p for _, p in ready]))
        out[torch.as_tensor([i for i, _ in ready], device=device)] = stacked.to(device)
    deferred = [(i, p) for i, p in enumerate(payloads) if isinstance(p, DeferredJpeg)]
    images = _decoded([p for _, p in deferred], device)
    failed = {position: image for (position, _), image in zip(deferred, images) if isinstance(image, str)}
    groups: dict[tuple, list[int]] = defaultdict(list)  # photos of one shape and orientation crop together
    for n, ((_, jpeg), image) in enumerate(zip(deferred, images)):
        if not isinstance(image, str):
            groups[(tuple(image.shape), jpeg.orientation)].append(n)
    for (_, orientation), members in groups.items():
        for start in range(0, len(members), CROP_CHUNK):
            chunk = members[start : start + CROP_CHUNK]
            cropped = _cropped(torch.stack([images[n] for n in chunk]), orientation, size)
            out[torch.as_tensor([deferred[n][0] for n in chunk], device=device)] = cropped
    return out, failed


def _decoded(jpegs: list[DeferredJpeg], device: str) -> list[Any]:
    """Each JPEG as ``(3, h, w)`` uint8 on ``device`` (or why it could not be read or decoded),
    decoded in one batch where possible."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    with ThreadPoolExecutor(READERS) as pool:
        images: list[Any] = list(pool.map(_read, (j.path for j in jpegs)))
    readable = [i for i, d in enumerate(images) if not isinstance(d, str)]
    if not readable:
        return images
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)  # nvJPEG's own stream must not be handed blocks still in use
    data = [images[i] for i in readable]
    try:
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one odd file fails the whole batch: decode one by one, then Pillow
        decoded = [_one(d, device) for d in data]
    for i, image in zip(readable, decoded):
        images[i] = image
    return images


def _read(path: str) -> Any:
    import torch

    try:
        return torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    except OSError as exc:
        return f"could not read the file again: {exc.strerror or exc}"


def _one(data: Any, device: str) -> Any:
    """One JPEG ``(3, h, w)`` on the device, decoded there or else by Pillow; or why neither could."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        pass
    try:
        with Image.open(io.BytesIO(data.numpy())) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"not a readable image file ({one_line(exc)})"
    return torch.from_numpy(pixels).permute(2, 0, 1).to(device)


def _cropped(images: Any, orientation: int, size: int) -> Any:
    """``(n, 3, h, w)`` uint8 on the device → oriented, shortest side to ``size`` (bicubic,
    antialiased, as Pillow resizes), centre crops ``(n, size, size, 3)`` uint8."""
    import torch
    from torch.nn.functional import interpolate

    images = _oriented(images, orientation)
    height, width = images.shape[-2:]
    scale = size / min(width, height)
    resized = (max(size, round(height * scale)), max(size, round(width * scale)))
    pixels = images.float()
    if resized != (height, width):
        pixels = interpolate(pixels, size=resized, mode="bicubic", antialias=True, align_corners=False)
    top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
    crops = pixels[:, :, top : top + size, left : left + size]
    return crops.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _oriented(image: Any, orientation: int) -> Any:
    """Apply an EXIF orientation to ``(..., h, w)`` tensors as Pillow's ``exif_transpose`` does."""
    if orientation in (2, 3):
        image = image.flip(-1)
    if orientation in (3, 4):
        image = image.flip(-2)
    if orientation in (5, 6, 7, 8):
        image = image.transpose(-1, -2)
        if orientation in (6, 7):
            image = image.flip(-1)
        if orientation in (7, 8):
            image = image.flip(-2)
    return image
