"""Query expressions: weighted sums of texts and files, in the style rclip users know.

``"dog" + "beach" - "night"``, ``"2:golden retriever" - "puppy"``, ``"./q.jpg" + "at night"``.
Terms are separated by `` + `` or `` - `` with spaces around the sign (so "t-shirt"
stays one term); ``W:`` in front of a term weights it; a term naming an existing
image or audio file stands for that file's embedding.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from mmsearch.errors import UserInputError
from mmsearch.ingest.discover import modality_of

WEIGHT = re.compile(r"^(-?\d+(?:\.\d+)?):(.+)$")
SPLIT = re.compile(r"(?:^|\s)([+-])(?:\s+|$)")
PREFERRED_RESULT = {"text": "image", "image": "image", "audio": "audio"}


@dataclass(frozen=True)
class Term:
    """One part of a query: ``weight`` times the embedding of a text or a file."""

    weight: float
    modality: str
    value: str


def term(value: str, weight: float = 1.0) -> Term:
    """A term for ``value``: a file if it names an existing image/audio file, else text."""
    value = value.strip().strip("\"'").strip()
    if not value:
        raise UserInputError("the query has an empty term")
    modality = modality_of(value)
    if modality in ("image", "audio") and os.path.isfile(value):
        return Term(weight, modality, value)
    return Term(weight, "text", value)


def parse(expression: str) -> list[Term]:
    """Parse an arithmetic query into terms (a plain text is a single term)."""
    pieces = SPLIT.split(" " + expression.strip())
    terms, sign = [], 1.0
    for index, piece in enumerate(pieces):
        if index % 2:
            sign = 1.0 if piece == "+" else -1.0
            continue
        if not piece.strip() or piece.strip() in "+-":
            if index or piece.strip():  # only a leading sign has nothing before it
                raise UserInputError(f"the query {expression!r} has a + or - without a term after it")
            continue
        weighted = WEIGHT.match(piece.strip())
        weight, value = (float(weighted.group(1)), weighted.group(2)) if weighted else (1.0, piece)
        terms.append(term(value, sign * weight))
    if not terms:
        raise UserInputError("the query is empty")
    return terms


def result_modality(terms: list[Term]) -> str:
    """The modality to return by default: images for text or image queries, audio for audio."""
    positive = [t for t in terms if t.weight > 0] or terms
    return PREFERRED_RESULT[positive[0].modality]
