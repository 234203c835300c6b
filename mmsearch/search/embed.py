"""Query embedding: texts, image and audio files, and weighted sums of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmsearch.errors import UserInputError
from mmsearch.ingest.decode import decode
from mmsearch.ingest.discover import absolute, decoder_of
from mmsearch.ingest.pipeline import decode_options, inputs_of
from mmsearch.models.base import Encoder, finite_rows, l2_normalise
from mmsearch.search import query as query_parser
from mmsearch.search.query import Term


def embed_file(encoder: Encoder, path: str | Path) -> np.ndarray:
    """Embed an image or audio file with ``encoder`` (a long recording: mean of its windows)."""
    path = absolute(path)
    decoder = decoder_of(path)
    if decoder not in ("image", "audio"):
        raise UserInputError(f"not an image or audio file: {path}")
    if not Path(path).is_file():
        raise UserInputError(f"file not found: {path}")
    decoded = decode(path, decoder, decode_options(inputs_of(encoder), None, None))
    if decoded.error is not None:
        raise UserInputError(f"cannot read query {decoder} {path}: {decoded.error}")
    vectors = encoder.embed(decoder, [piece.payload for piece in decoded.pieces])
    if not finite_rows(vectors).all():
        raise UserInputError(f"cannot use query {decoder} {path}: its embedding is not finite (NaN or Inf samples?)")
    return l2_normalise(vectors.mean(axis=0, keepdims=True))[0]


def check_files(terms: Sequence[Term]) -> None:
    """Fail on a missing query file before any model is loaded."""
    for term in terms:
        if term.modality != "text" and not Path(term.value).expanduser().is_file():
            raise UserInputError(f"query file not found: {term.value}")


def embed_terms(encoder: Encoder, terms: Sequence[Term]) -> np.ndarray:
    """Unit vector of the weighted sum of the terms' embeddings."""
    texts = [t for t in terms if t.modality == "text"]
    text_vectors = dict(zip((t.value for t in texts), encoder.embed_texts([t.value for t in texts])))
    total = np.zeros(encoder.dim, dtype=np.float32)
    for t in terms:
        total += t.weight * (text_vectors[t.value] if t.modality == "text" else embed_file(encoder, t.value))
    if not np.any(total):
        raise UserInputError("the query terms cancel out")
    return l2_normalise(total[None])[0]


def query_terms(
    text: str | None, image: str | Path | None, audio: str | Path | None, expression: str | None
) -> list[Term]:
    """Collect the terms of a query given in any combination of forms."""
    terms = []
    if text is not None:
        if not text.strip():
            raise UserInputError("the query text is empty")
        terms.append(Term(1.0, "text", text))
    terms += [Term(1.0, kind, str(value)) for kind, value in (("image", image), ("audio", audio)) if value]
    if expression is not None:
        terms += query_parser.parse(expression)
    return terms
