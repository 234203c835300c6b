"""Image and text encoders built with open_clip.

Every model — a pretrained tag, a local checkpoint, the shipped demo — goes through
``open_clip.create_model(arch, pretrained=...)``, so the demo exercises exactly the
code path users' real checkpoints take.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import open_clip
import torch

from mmsearch.errors import ModelError
from mmsearch.hashing import file_digest
from mmsearch.models.base import Encoder, ImageInput
from mmsearch.models.registry import PROJECT_CONFIG_DIRS, ModelSpec


@functools.cache
def _register_project_configs() -> None:
    """Make the architectures mmsearch ships known to open_clip's factory (once)."""
    for config_dir in PROJECT_CONFIG_DIRS:
        open_clip.add_model_config(config_dir)


def resolve_device(device: str | None) -> str:
    """``None``/``auto`` pick CUDA when available, else CPU; anything else is checked."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available on this machine")
    return device


def space_id_for(spec: ModelSpec) -> str:
    """Identify the embedding space: architecture plus the exact weights."""
    if spec.source == "file":
        return f"{spec.arch}@sha256:{file_digest(spec.weights)[:16]}"
    return f"{spec.arch}@{spec.weights}"


class OpenClipEncoder(Encoder):
    """An open_clip CLIP model; mixed precision on CUDA, float32 on CPU."""

    modalities = frozenset({"image", "text"})

    def __init__(self, spec: ModelSpec, device: str | None = None) -> None:
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
        _register_project_configs()
        if not spec.arch.startswith("hf-hub:") and spec.arch not in open_clip.list_models():
            raise ModelError(f"unknown open_clip architecture {spec.arch!r} in model spec {spec.spec!r}")
        self.device = resolve_device(device)
        try:
            model = open_clip.create_model(
                spec.arch,
                pretrained=None if spec.source == "hub" else spec.weights,
                device=self.device,
                require_pretrained=True,
            )
        except (RuntimeError, OSError, ValueError) as exc:
            raise ModelError(_load_failure(spec, exc)) from exc
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(spec.arch)
        self.spec = spec.spec
        self.space_id = space_id_for(spec)
        cfg = model.visual.preprocess_cfg
        size = cfg["size"]
        self.image_input = ImageInput(
            size=int(size if isinstance(size, int) else size[0]),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
        )
        self.batch_size = 256 if self.device.startswith("cuda") else 64
        self.dim = int(self._embed_text_batch([""]).shape[1])
        self.audio = None
        if spec.audio is not None:
            self.attach_audio(spec)

    def attach_audio(self, spec: ModelSpec) -> None:
        """Give the model an ear: an audio partner embedding into this model's space."""
        from mmsearch.models.audio import clap_part, tower_part

        kind, _, where = spec.audio.partition(":")
        if kind == "tower":
            self.audio = tower_part(Path(where), self.space_id, self.dim, self.device, self._run_tower)
        else:
            self.audio = clap_part(where, self.space_id, spec.spec, self.device)
        self.modalities = self.modalities | {"audio"}
        self.audio_input = self.audio.audio_input
        self.audio_space_id = self.audio.audio_space_id

    def _run_tower(self, tower, waves: np.ndarray) -> np.ndarray:
        return self._run(tower, torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)))

    def _run(self, fn, batch: torch.Tensor) -> np.ndarray:
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=torch.float16, enabled=self.device.startswith("cuda")),
        ):
            return fn(batch.to(self.device)).float().cpu().numpy()

    def _embed_image_batch(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(self.model.encode_image, torch.from_numpy(np.ascontiguousarray(pixels)))

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        return self._run(self.model.encode_text, self.tokenizer(texts))

    def _embed_audio_batch(self, waves: np.ndarray) -> np.ndarray:
        return self.audio.embed(waves)


def _load_failure(spec: ModelSpec, exc: Exception) -> str:
    reason = " ".join(str(exc).split())[:300]
    if spec.source == "file":
        return f"could not load checkpoint {spec.weights} for {spec.arch}: {reason}"
    return (
        f"could not fetch weights for model {spec.spec!r} ({reason}); connect to the internet once "
        "so open_clip can cache them, or pass a local checkpoint with --model ARCH:/path/to/weights.pt, "
        "or use the offline demo model with --model demo"
    )
