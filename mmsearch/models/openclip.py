"""Image and text encoders built with open_clip: the ``open_clip`` and ``demo`` schemes.

Every model — a pretrained tag, a local checkpoint, the shipped demo — goes through
``open_clip.create_model(arch, pretrained=...)``, so the demo exercises exactly the
code path users' real checkpoints take.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np
import open_clip
import torch

from mmsearch.errors import ModelError, one_line
from mmsearch.hashing import file_digest
from mmsearch.models.base import ImageInput
from mmsearch.models.device import TorchEncoder, default_batch_size, inference, to_numpy
from mmsearch.models.hub import RemoteWeights, ensure_available, hub_offline, quiet_root_logger
from mmsearch.models.spec import DEMO_DIR, OpenClipSpec, demo_weights, open_clip_spec

PROJECT_CONFIG_DIRS = (DEMO_DIR,)  # open_clip configs shipped with mmsearch, e.g. mmsearch-demo
FIXES = "try --model demo, --model {arch}:/path/to/file.pt, or fetch once online, then HF_HUB_OFFLINE=1"
HF_CONFIG_NAME = "open_clip_config.json"
HF_WEIGHTS_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def load(name: str, device: str) -> OpenClipEncoder:
    """The ``open_clip`` scheme's factory: ``name`` is ``ARCH:TAG``, ``ARCH:/path`` or ``hf-hub:ORG/REPO``."""
    return OpenClipEncoder(open_clip_spec(name), device)


def load_demo(name: str, device: str) -> OpenClipEncoder:
    """The ``demo`` scheme's factory: the shipped checkpoint, loaded like a user's file."""
    return OpenClipEncoder(demo_weights(), device)


def knows_architecture(arch: str) -> bool:
    """Whether open_clip (with mmsearch's own configs) can build ``arch``: the registry asks
    before reading an unclaimed ``PREFIX:NAME`` as open_clip's ``ARCH:TAG``."""
    _register_project_configs()
    return arch.startswith("hf-hub:") or arch in open_clip.list_models()


@functools.cache
def _register_project_configs() -> None:
    """Make the architectures mmsearch ships known to open_clip's factory (once)."""
    for config_dir in PROJECT_CONFIG_DIRS:
        open_clip.add_model_config(config_dir)


def space_id_for(spec: OpenClipSpec) -> str:
    """Identify the embedding space: architecture plus the exact weights."""
    if spec.source == "file":
        return f"{spec.arch}@sha256:{file_digest(spec.weights)[:16]}"
    return f"{spec.arch}@{spec.weights}"


class OpenClipEncoder(TorchEncoder):
    """An open_clip CLIP model; mixed precision on CUDA, float32 on CPU."""

    modalities = frozenset({"image", "text"})

    def __init__(self, spec: OpenClipSpec, device: str) -> None:
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
        _register_project_configs()
        if spec.source == "file" and not Path(spec.weights).is_file():
            raise ModelError(f"checkpoint file not found: {spec.weights}")
        self.device = device
        remote = remote_weights(spec)
        cached = remote is not None and ensure_available(remote, spec.text, FIXES.format(arch=_arch_hint(spec)))
        try:
            with hub_offline(cached), quiet_root_logger():
                model = open_clip.create_model(
                    spec.arch,
                    pretrained=None if spec.source == "hub" else spec.weights,
                    device=device,
                    require_pretrained=True,
                )
                self.tokenizer = open_clip.get_tokenizer(spec.arch)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ModelError(_load_failure(spec, exc)) from exc
        self.model = model.eval()
        self.spec = spec.text
        self.space_id = space_id_for(spec)
        cfg = model.visual.preprocess_cfg
        size = cfg["size"]
        self.image_input = ImageInput(
            size=int(size if isinstance(size, int) else size[0]),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
        )
        self.batch_size = default_batch_size(device)
        self.dim = int(self._embed_text_batch([""]).shape[1])

    def _encode_images(self, batch: torch.Tensor) -> np.ndarray:
        with inference(self.device):
            return to_numpy(self.model.encode_image(batch))

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts).to(self.device)
        with inference(self.device):
            return to_numpy(self.model.encode_text(tokens))


def remote_weights(spec: OpenClipSpec) -> RemoteWeights | None:
    """The download behind ``spec``, or ``None`` when nothing is downloaded (a local file)."""
    if spec.source == "hub":
        return RemoteWeights(spec.arch.removeprefix("hf-hub:"), (HF_CONFIG_NAME,), HF_WEIGHTS_NAMES)
    if spec.source != "tag":
        return None
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.weights)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(spec.arch)
        known = f"known tags: {', '.join(tags[:6])}{', ...' if len(tags) > 6 else ''}" if tags else "it has no tags"
        raise ModelError(f"open_clip has no pretrained tag {spec.weights!r} for {spec.arch} ({known})")
    if cfg.get("file"):
        return None
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        if not filename:
            return RemoteWeights(repo, any_of=HF_WEIGHTS_NAMES)
        stem, suffix = os.path.splitext(filename)
        safe = (f"{stem}.safetensors",) if suffix in (".bin", ".pth") else ()
        return RemoteWeights(repo, any_of=(*safe, filename))
    return RemoteWeights(url=cfg.get("url") or None)


def _load_failure(spec: OpenClipSpec, exc: Exception) -> str:
    reason = one_line(exc, 160)
    if spec.source == "file":
        return f"could not load checkpoint {spec.weights} for {spec.arch}: {reason}"
    return f"could not fetch weights for {spec.text} ({reason}); {FIXES.format(arch=_arch_hint(spec))}"


def _arch_hint(spec: OpenClipSpec) -> str:
    return "ARCH" if spec.source == "hub" else spec.arch
