"""CLAP (transformers' ``ClapModel``) as the audio partner of an image/text model.

CLAP embeds sounds and texts into its own space; a projector fitted on captions
(see :mod:`mmsearch.models.projector`) carries its sound embeddings into the partner's
space. ``transformers`` is an optional extra (see :mod:`mmsearch.models.hf`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmsearch.errors import ModelError, one_line
from mmsearch.hashing import file_digest
from mmsearch.models.base import AudioInput, l2_normalise
from mmsearch.models.device import inference, to_numpy
from mmsearch.models.hf import pooled, quiet, require_transformers


class ClapModelWrapper:
    """A CLAP checkpoint (hub name or local folder) loaded with transformers' real loaders."""

    def __init__(self, name: str, device: str = "cpu") -> None:
        transformers = require_transformers("CLAP audio")
        try:
            with quiet(transformers):
                self.model = transformers.ClapModel.from_pretrained(name).to(device).eval()
                self.processor = transformers.ClapProcessor.from_pretrained(name)
        except OSError as exc:
            raise ModelError(
                f"could not load CLAP model {name!r} ({one_line(exc, 300)}); pass a local folder or go online once"
            ) from None
        self.device = device
        extractor = self.processor.feature_extractor
        self.audio_input = AudioInput(int(extractor.sampling_rate), float(extractor.max_length_s))
        weights = sorted(Path(name).glob("*.safetensors")) if Path(name).is_dir() else []
        digest = f"@sha256:{file_digest(weights[0])[:16]}" if weights else ""
        self.clap_id = f"clap:{name}{digest}"

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        inputs = self.processor(text=texts, return_tensors="pt", padding=True).to(self.device)
        with inference(self.device):
            return l2_normalise(to_numpy(pooled(self.model.get_text_features(**inputs))))

    def embed_audio(self, waves: np.ndarray) -> np.ndarray:
        inputs = self.processor(audio=list(waves), sampling_rate=self.audio_input.sample_rate, return_tensors="pt").to(
            self.device
        )
        with inference(self.device):
            return l2_normalise(to_numpy(pooled(self.model.get_audio_features(**inputs))))
