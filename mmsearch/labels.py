"""Zero-shot labelling: rank candidate labels for an image or a sound, no index needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmsearch.errors import UserInputError
from mmsearch.models.base import Encoder
from mmsearch.search.embed import embed_file

LOGIT_SCALE = 100.0  # CLIP's learned temperature ceiling; turns cosines into confident probabilities


def rank_labels(encoder: Encoder, file: str | Path, labels: Sequence[str]) -> list[tuple[str, float, float]]:
    """(label, cosine score, softmax probability) for each label, best first."""
    if len(labels) < 2:
        raise UserInputError("give at least two comma-separated labels")
    scores = encoder.embed_texts(list(labels)) @ embed_file(encoder, file)
    logits = LOGIT_SCALE * (scores - scores.max())
    probabilities = np.exp(logits) / np.exp(logits).sum()
    order = np.argsort(-scores)
    return [(labels[i], float(scores[i]), float(probabilities[i])) for i in order]
