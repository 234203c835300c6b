"""Where torch models run, and how: one place for device choice and mixed precision,
so every tower (open_clip, transformers, audio) behaves the same on CPU and CUDA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from mmsearch.errors import ModelError
from mmsearch.models.base import Encoder, ImageInput


def resolve_device(device: str | None) -> str:
    """``None``/``auto`` pick CUDA when available, else CPU; anything else is checked."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available on this machine")
    return device


@contextlib.contextmanager
def inference(device: str) -> Iterator[None]:
    """No autograd; float16 autocast on CUDA (twice the throughput), float32 on CPU."""
    with (
        torch.inference_mode(),
        torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")),
    ):
        yield


def to_device(array: np.ndarray, device: str) -> torch.Tensor:
    """A host batch on ``device``; to CUDA through pinned memory, copied without blocking the host
    (the forward pass that follows is queued behind the copy on the same stream)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.startswith("cuda"):
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def crops_to_device(crops: np.ndarray | torch.Tensor, spec: ImageInput, device: str) -> torch.Tensor:
    """uint8 crops ``(n, size, size, 3)`` (on the host, or already on ``device``) as normalised
    float model input ``(n, 3, size, size)`` on ``device``: the same arithmetic as
    :func:`mmsearch.preprocess.normalise`, done after the copy."""
    batch = crops.to(device) if isinstance(crops, torch.Tensor) else to_device(crops, device)
    pixels = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return pixels.sub_(mean).div_(std)


def to_numpy(vectors: torch.Tensor) -> np.ndarray:
    """Float32 rows on the host, whatever precision the model computed in."""
    return vectors.float().cpu().numpy()


def default_batch_size(device: str) -> int:
    """Rows per forward pass: large on a GPU, modest on CPU where memory bandwidth rules."""
    return 256 if device.startswith("cuda") else 64


class TorchEncoder(Encoder):
    """An encoder whose image tower is a torch module on ``device``: host pixels or uint8 crops
    (on the host or already on the device) in, vectors out. Subclasses define ``_encode_images``."""

    crops_on_device = True

    def _embed_crop_batch(self, crops: np.ndarray) -> np.ndarray:
        return self._encode_images(crops_to_device(crops, self.image_spec(), self.device))

    def _embed_image_batch(self, pixels: np.ndarray) -> np.ndarray:
        return self._encode_images(to_device(pixels, self.device))

    def _encode_images(self, batch: torch.Tensor) -> np.ndarray:
        """Vectors of a normalised float batch ``(n, 3, size, size)`` on ``device``."""
        raise ModelError(f"model {self.spec!r} cannot embed image")
