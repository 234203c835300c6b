"""BLIP's image-text matching head (``BlipForImageTextRetrieval``) as a re-ranker.

The ITM head of BLIP (Li et al., 2022) is the cross-attention judge this stage is modelled
on: the text encoder attends over the ViT's patch tokens and a two-way head says
match / no match. Its softmax is already a probability of match, so no extra calibration
ships with it. Loaded with transformers' real ``from_pretrained`` (a hub name or a folder
saved with ``save_pretrained``); ``transformers`` is an optional extra.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmsearch.errors import ModelError, UserInputError, one_line
from mmsearch.models.device import inference, to_numpy
from mmsearch.models.hf import quiet, require_transformers
from mmsearch.models.spec import local_folder
from mmsearch.rerank.base import Candidate, Query, Reranker
from mmsearch.rerank.inputs import image_crops


def load(name: str, device: str) -> BlipReranker:
    """The ``blip`` scheme's factory: ``name`` is ``ORG/REPO`` or a local folder (written as a
    path, it must exist: else transformers would take it for a hub repo and say so)."""
    folder = local_folder(name)
    if folder is not None and not folder.exists():
        raise UserInputError(f"no such re-ranker checkpoint folder: {name}")
    return BlipReranker(str(folder) if folder is not None else name, device)


class BlipReranker(Reranker):
    """Text→image matching probabilities from a BLIP ITM checkpoint."""

    pairs = frozenset({("text", "image")})

    def __init__(self, name: str, device: str = "cpu") -> None:
        transformers = require_transformers("the blip: re-ranker")
        try:
            with quiet(transformers):
                model = transformers.BlipForImageTextRetrieval.from_pretrained(name)
                self.processor = transformers.BlipProcessor.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"could not load BLIP model {name!r} ({one_line(exc, 200)}); pass a folder saved with "
                "save_pretrained, or fetch once online, then HF_HUB_OFFLINE=1"
            ) from None
        self.model = model.to(device).eval()
        self.device = device
        self.spec = f"blip:{name}"
        self.size = int(self.processor.image_processor.size["height"])
        self.batch_size = 16

    def _match_probs(self, query: Query, candidates: Sequence[Candidate]) -> np.ndarray:
        probs = np.zeros(len(candidates))
        crops = {i: read.payload for i, read in enumerate(image_crops(candidates, self.size)) if read is not None}
        readable = list(crops)
        for start in range(0, len(readable), self.batch_size):
            part = readable[start : start + self.batch_size]
            inputs = self.processor(
                images=[crops[i] for i in part], text=[query.value] * len(part), return_tensors="pt", padding=True
            ).to(self.device)
            with inference(self.device):
                scores = self.model(**inputs, use_itm_head=True).itm_score
            probs[part] = to_numpy(torch.softmax(scores.float(), dim=-1))[:, 1]
        return probs
