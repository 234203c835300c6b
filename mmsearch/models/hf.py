"""Hugging Face ``transformers`` dual encoders: the ``hf`` scheme.

``hf:ORG/REPO`` (the hub) or ``hf:/path/to/folder`` (saved with ``save_pretrained``) loads
any image-text model with ``get_image_features`` and ``get_text_features`` through
``AutoModel``, ``AutoTokenizer`` and ``AutoImageProcessor``: CLIP, SigLIP and Chinese-CLIP,
which open many languages to text queries. Images take mmsearch's own preprocessing
(shortest side to the model's size, centre crop, the processor's mean and std), so decode
workers never import transformers; SigLIP and Chinese-CLIP squash rather than crop, which
only differs for images far from square. ``transformers`` is an optional extra, checked
here with an install hint.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from mmsearch.errors import ModelError, one_line
from mmsearch.hashing import file_digest
from mmsearch.models.base import ImageInput
from mmsearch.models.device import TorchEncoder, default_batch_size, inference, to_numpy
from mmsearch.models.hub import RemoteWeights, ensure_available, quiet_root_logger

INSTALL_HINT = "pip install 'mmsearch[hf]'"
FIXES = "pass a folder saved with save_pretrained (hf:/path/to/folder), or fetch once online, then HF_HUB_OFFLINE=1"
CONFIG_NAME = "config.json"
WEIGHTS_SUFFIXES = (".safetensors", ".bin")
WEIGHTS_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def require_transformers(what: str = "the hf: scheme") -> ModuleType:
    """Import transformers or explain how to get it."""
    try:
        import transformers
    except ImportError:
        raise ModelError(f"{what} needs the 'transformers' package: {INSTALL_HINT}") from None
    return transformers


@contextlib.contextmanager
def quiet(transformers: ModuleType) -> Iterator[None]:
    """transformers draws progress bars and gives advice while loading: a command's output
    is its results. Restores the caller's settings after."""
    log = transformers.utils.logging
    verbosity, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        with quiet_root_logger():
            yield
    finally:
        log.set_verbosity(verbosity)
        if bars:
            log.enable_progress_bar()


def pooled(output: Any) -> torch.Tensor:
    """The embedding in a ``get_*_features`` result: a tensor before transformers 5, the
    ``pooler_output`` of a model output since."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load(name: str, device: str) -> HfEncoder:
    """The ``hf`` scheme's factory: ``name`` is ``ORG/REPO`` or an absolute folder."""
    return HfEncoder(name, device)


def weights_digest(folder: Path) -> str:
    """Hex sha256 over the config and every weights file: changes whenever the space does."""
    digest = hashlib.sha256((folder / CONFIG_NAME).read_bytes())
    for path in sorted(p for p in folder.iterdir() if p.suffix in WEIGHTS_SUFFIXES):
        digest.update(f"{path.name}:{file_digest(path)}".encode())
    return digest.hexdigest()


def image_input_of(processor: Any) -> ImageInput:
    """The model's input size, mean and std, read from its image processor's settings."""
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    side = size.get("height") or size.get("shortest_edge")
    return ImageInput(int(side), tuple(processor.image_mean), tuple(processor.image_std))


class HfEncoder(TorchEncoder):
    """A transformers CLIP-family model: image and text towers, float16 autocast on CUDA."""

    modalities = frozenset({"image", "text"})

    def __init__(self, name: str, device: str) -> None:
        transformers = require_transformers()
        local = Path(name).is_absolute()
        if local and not (Path(name) / CONFIG_NAME).is_file():
            raise ModelError(f"no transformers model in {name} (it has no {CONFIG_NAME})")
        remote = RemoteWeights(name, (CONFIG_NAME,), WEIGHTS_NAMES)
        cached = local or ensure_available(remote, f"hf:{name}", FIXES)
        with quiet(transformers):
            model = self._load(transformers.AutoModel, name, cached)
            kind = model.config.model_type
            if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
                raise ModelError(f"hf:{name} is a {kind} model, not an image-text dual encoder (CLIP, SigLIP, ...)")
            self.tokenizer = self._load(transformers.AutoTokenizer, name, cached)
            processor = self._load(transformers.AutoImageProcessor, name, cached)
        self.model = model.to(device).eval()
        self.device = device
        self.spec = f"hf:{name}"
        folder = Path(name) if local else Path(self._cached_config(name)).parent
        self.space_id = f"hf:{kind}@sha256:{weights_digest(folder)[:16]}"
        self.image_input = image_input_of(processor)
        self.padding: bool | str = "max_length" if kind.startswith("siglip") else True  # SigLIP trained on padded text
        self.max_length = min(self.tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
        self.batch_size = default_batch_size(device)
        self.dim = int(self._embed_text_batch(["a"]).shape[1])

    @staticmethod
    def _load(auto: Any, name: str, cached: bool) -> Any:
        """``auto.from_pretrained`` with its many failure types turned into one line."""
        try:
            return auto.from_pretrained(name, local_files_only=cached)
        except Exception as exc:  # transformers raises many types for an unusable folder or repo
            hint = INSTALL_HINT if isinstance(exc, ImportError) else FIXES
            raise ModelError(f"could not load hf:{name} ({one_line(exc, 160)}); {hint}") from None

    @staticmethod
    def _cached_config(repo: str) -> str:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo, CONFIG_NAME)
        if not isinstance(path, str):
            raise ModelError(f"hf:{repo} loaded but its {CONFIG_NAME} is not in the hub cache")
        return path

    def _encode_images(self, batch: torch.Tensor) -> np.ndarray:
        with inference(self.device):
            return to_numpy(pooled(self.model.get_image_features(pixel_values=batch)))

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(
            texts, padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with inference(self.device):
            return to_numpy(pooled(self.model.get_text_features(**tokens)))
