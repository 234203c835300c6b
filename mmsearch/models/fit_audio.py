"""``mmsearch fit-audio``: fit the projector that carries a CLAP model's sounds into
another model's space, so ``SPEC+clap:NAME`` can then be loaded."""

from __future__ import annotations

from pathlib import Path

from mmsearch.errors import ModelError
from mmsearch.models.clap import ClapModelWrapper
from mmsearch.models.projector import fit
from mmsearch.models.registry import load_encoder, resolve


def fit_clap_projector(spec: str, captions: list[str], device: str | None = None) -> tuple[Path, int]:
    """Fit and cache the projector of ``spec``'s CLAP partner into its base model's space.

    Both text towers embed the same captions; the projector maps CLAP's text
    embeddings onto the base model's, and CLAP's audio embeddings follow because CLAP
    aligned its audio with its text. Returns the artifact path and the pair count.
    """
    resolved = resolve(spec)
    if resolved.audio is None or not resolved.audio.startswith("clap:"):
        raise ModelError(f"model spec {spec!r} has no CLAP partner; write it as SPEC+clap:NAME")
    if len(captions) < 2:
        raise ModelError("a projector needs many captions (hundreds or more), not fewer than two")
    base = load_encoder(resolved.base, device)
    clap = ClapModelWrapper(resolved.audio.removeprefix("clap:"), base.device)
    projector = fit(clap.embed_texts(captions), base.embed_texts(captions), clap.clap_id, base.space_id)
    return projector.save(), projector.pairs
