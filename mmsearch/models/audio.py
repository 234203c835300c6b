"""Audio partners: what gives an image/text model an ear in its own space.

* ``tower:DIR`` — an :class:`AudioTower` trained directly into the space (the demo model's);
* ``clap:NAME`` — a CLAP model plus a projector fitted into the space
  (``mmsearch fit-audio``), cached under both models' ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsearch.errors import ModelError
from mmsearch.hashing import file_digest
from mmsearch.models.base import AudioInput
from mmsearch.models.projector import Projector

FIT_HINT = "mmsearch fit-audio {spec!r} --captions CAPTIONS (a text file, one caption per line, or a caption table)"


@dataclass
class AudioPart:
    """An audio embedder into a given space."""

    audio_input: AudioInput
    audio_space_id: str
    embed: Callable[[np.ndarray], np.ndarray]


def tower_part(folder: Path, space_id: str, dim: int, device: str, run: Callable) -> AudioPart:
    """The demo-style tower stored as ``audio.json`` + ``audio.pt`` in ``folder``."""
    from mmsearch.models.audio_tower import load_audio_tower

    tower = load_audio_tower(folder / "audio.json", folder / "audio.pt", device)
    if tower.config.embed_dim != dim:
        raise ModelError(f"audio tower in {folder} embeds into {tower.config.embed_dim} dims, not {dim}")
    return AudioPart(
        AudioInput(tower.config.sample_rate, tower.config.window_s),
        f"{space_id}+audio@sha256:{file_digest(folder / 'audio.pt')[:16]}",
        lambda waves: run(tower, waves),
    )


def clap_part(name: str, space_id: str, full_spec: str, device: str) -> AudioPart:
    """CLAP's audio tower followed by its fitted projector into ``space_id``."""
    from mmsearch.models.clap import ClapModelWrapper

    clap = ClapModelWrapper(name, device)
    projector = Projector.load(clap.clap_id, space_id)
    if projector is None:
        raise ModelError(
            f"no projector from {clap.clap_id} into {space_id} yet; fit one with: " + FIT_HINT.format(spec=full_spec)
        )
    return AudioPart(
        clap.audio_input,
        f"{space_id}+{clap.clap_id}@projector:{projector.pairs}",
        lambda waves: projector(clap.embed_audio(waves)),
    )


def read_captions(path: Path, text_column: str | None = None) -> list[str]:
    """Captions from a text file (one per line) or a caption table (CSV/JSONL/Parquet)."""
    from mmsearch.ingest.decode import DecodeError, DecodeOptions, decode_table

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"captions file not found: {path}")
    if path.suffix.lower() in (".csv", ".jsonl", ".parquet"):
        try:
            _, pieces = decode_table(path.read_bytes(), str(path), DecodeOptions(text_column=text_column))
        except (DecodeError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise ModelError(f"cannot read captions from {path}: {str(exc).splitlines()[0]}") from None
        captions = [str(piece.payload) for piece in pieces]
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ModelError(f"cannot read captions from {path}: not UTF-8 text") from None
        captions = [line.strip() for line in lines if line.strip()]
    if len(captions) < 2:
        raise ModelError(f"{path} holds fewer than two captions; a projector needs many (hundreds or more)")
    return captions


def fit_clap_projector(spec: str, captions: list[str], device: str | None = None) -> tuple[Path, int]:
    """Fit and cache the projector of ``spec``'s CLAP partner into its open_clip space.

    Both text towers embed the same captions; the projector maps CLAP's text
    embeddings onto open_clip's, and CLAP's audio embeddings follow because CLAP
    aligned its audio with its text. Returns the artifact path and the pair count.
    """
    from mmsearch.models.clap import ClapModelWrapper
    from mmsearch.models.projector import fit
    from mmsearch.models.registry import load_encoder, resolve

    resolved = resolve(spec)
    if not (resolved.audio or "").startswith("clap:"):
        raise ModelError(f"model spec {spec!r} has no CLAP partner; write it as SPEC+clap:NAME")
    base = load_encoder(resolved.base, device)
    clap = ClapModelWrapper(resolved.audio.removeprefix("clap:"), base.device)
    projector = fit(clap.embed_texts(captions), base.embed_texts(captions), clap.clap_id, base.space_id)
    return projector.save(), projector.pairs
