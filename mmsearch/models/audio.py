"""Audio partners: what gives an image/text model an ear in its own space.

* ``tower:DIR`` — an :class:`~mmsearch.models.audio_tower.AudioTower` trained directly into
  the space (the demo model's);
* ``clap:NAME`` — a CLAP model plus a projector fitted into the space
  (``mmsearch fit-audio``, :mod:`mmsearch.models.fit_audio`), cached under both models' ids.

Any encoder can take a partner: the registry attaches it after building the encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmsearch.errors import ModelError
from mmsearch.hashing import file_digest
from mmsearch.models.base import AudioInput, AudioPart, Encoder
from mmsearch.models.device import inference, to_numpy
from mmsearch.models.projector import Projector

FIT_HINT = "mmsearch fit-audio {spec!r} --captions CAPTIONS (a text file, one caption per line, or a caption table)"


def audio_part(partner: str, encoder: Encoder, spec: str) -> AudioPart:
    """The partner named ``tower:DIR`` or ``clap:NAME`` for ``encoder`` (whose full spec is ``spec``)."""
    kind, _, where = partner.partition(":")
    if kind == "tower":
        return tower_part(Path(where), encoder)
    return clap_part(where, encoder, spec)


def tower_part(folder: Path, encoder: Encoder) -> AudioPart:
    """The demo-style tower stored as ``audio.json`` + ``audio.pt`` in ``folder``."""
    from mmsearch.models.audio_tower import load_audio_tower

    tower = load_audio_tower(folder / "audio.json", folder / "audio.pt", encoder.device)
    if tower.config.embed_dim != encoder.dim:
        raise ModelError(f"audio tower in {folder} embeds into {tower.config.embed_dim} dims, not {encoder.dim}")

    def embed(waves: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(encoder.device)
        with inference(encoder.device):
            return to_numpy(tower(batch))

    return AudioPart(
        AudioInput(tower.config.sample_rate, tower.config.window_s),
        f"{encoder.space_id}+audio@sha256:{file_digest(folder / 'audio.pt')[:16]}",
        embed,
    )


def clap_part(name: str, encoder: Encoder, spec: str) -> AudioPart:
    """CLAP's audio tower followed by its fitted projector into ``encoder``'s space."""
    from mmsearch.models.clap import ClapModelWrapper

    clap = ClapModelWrapper(name, encoder.device)
    projector = Projector.load(clap.clap_id, encoder.space_id)
    if projector is None:
        raise ModelError(
            f"no projector from {clap.clap_id} into {encoder.space_id} yet; fit one with: " + FIT_HINT.format(spec=spec)
        )
    return AudioPart(
        clap.audio_input,
        f"{encoder.space_id}+{clap.clap_id}@projector:{projector.pairs}",
        lambda waves: projector(clap.embed_audio(waves)),
    )
