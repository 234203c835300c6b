"""Model specs: the strings that name an encoder, parsed without loading anything.

A spec is what an index's manifest stores, so it alone must say how to rebuild the
encoder. Its *scheme* picks the factory (see :mod:`mmsearch.models.registry`):

* ``demo`` — the project's own small model, shipped in ``models/demo``;
* ``hf:ORG/REPO`` or ``hf:/path/to/folder`` — a CLIP, SigLIP or Chinese-CLIP model through
  ``transformers``;
* ``SCHEME:NAME`` — an encoder plugin's scheme (entry-point group ``mmsearch.encoders``);
* anything else is open_clip's: ``ARCH:TAG`` (e.g. ``ViT-B-32:laion2b_s34b_b79k``),
  ``ARCH:/path/to/checkpoint.pt`` or ``hf-hub:ORG/REPO``;
* ``SPEC+clap:NAME`` gives ``SPEC`` a CLAP audio partner (a hub name or local folder).

Parsing is pure and cheap (no torch), so an index compares specs before paying for a model.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from mmsearch.config import DEFAULT_MODEL
from mmsearch.errors import ModelError

DEMO = "demo"
HF = "hf"
OPEN_CLIP = "open_clip"  # the scheme of specs with no registered prefix
BUILTIN_SCHEMES = (DEMO, HF, OPEN_CLIP)
CLAP_PARTNER = "+clap:"
DEMO_DIR = Path(__file__).parent / "demo"
DEMO_ARCH = "mmsearch-demo"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: ``scheme`` picks the factory, which is handed ``name``."""

    spec: str  # canonical: what the manifest stores
    scheme: str
    name: str  # the factory's argument: for open_clip the whole "ARCH:TAG", for others what follows "SCHEME:"
    audio: str | None = None  # "tower:DIR" or "clap:NAME": the audio partner (see models/audio.py)

    @property
    def base(self) -> str:
        """The spec without its audio partner."""
        return self.spec.split(CLAP_PARTNER, 1)[0]


@dataclass(frozen=True)
class OpenClipSpec:
    """An open_clip architecture plus where its weights come from."""

    arch: str
    weights: str
    source: Literal["tag", "file", "hub"]

    @property
    def text(self) -> str:
        """The spec string naming exactly these weights."""
        return self.arch if self.source == "hub" else f"{self.arch}:{self.weights}"


def parse(spec: str, plugin_schemes: Collection[str] = ()) -> ModelSpec:
    """Parse ``spec`` into its canonical :class:`ModelSpec`; ``plugin_schemes`` are the
    prefixes plugins claim (a prefix nobody claims is read as an open_clip architecture)."""
    spec = spec.strip()
    base, plus, audio = spec.partition(CLAP_PARTNER)
    if plus:
        if not audio:
            raise ModelError(f"model spec {spec!r} names no CLAP model after {CLAP_PARTNER!r}")
        local = local_folder(audio)
        audio = str(local) if local is not None and local.is_dir() else audio
        parsed = parse(base, plugin_schemes)
        return replace(parsed, spec=f"{parsed.spec}{CLAP_PARTNER}{audio}", audio=f"clap:{audio}")
    if spec == DEMO:
        audio_partner = f"tower:{DEMO_DIR}" if (DEMO_DIR / "audio.pt").is_file() else None
        return ModelSpec(DEMO, DEMO, DEMO, audio_partner)
    scheme, colon, name = spec.partition(":")
    if colon and scheme == HF:
        return _hf_spec(spec, name)
    if colon and scheme in plugin_schemes:
        if not name.strip():
            raise ModelError(f"model spec {spec!r} names nothing after {scheme + ':'!r}")
        return ModelSpec(spec, scheme, name)
    text = open_clip_spec(spec).text
    return ModelSpec(text, OPEN_CLIP, text)


def _hf_spec(spec: str, name: str) -> ModelSpec:
    local = local_folder(name)
    if local is not None:
        return ModelSpec(f"{HF}:{local}", HF, str(local))
    if name.count("/") != 1 or not all(name.split("/")):
        raise ModelError(f"model spec {spec!r}: write hf:ORG/REPO (a hub model) or hf:/path/to/folder")
    return ModelSpec(spec, HF, name)


def open_clip_spec(name: str) -> OpenClipSpec:
    """Split an open_clip spec (``ARCH:TAG``, ``ARCH:/path``, ``hf-hub:ORG/REPO``) into its parts."""
    if name.startswith("hf-hub:"):
        return OpenClipSpec(name, name, "hub")
    arch, colon, weights = name.partition(":")
    if not colon or not arch or not weights:
        raise ModelError(
            f"model spec {name!r} names no weights: use ARCH:TAG (e.g. {DEFAULT_MODEL}), "
            "ARCH:/path/to/checkpoint.pt, hf-hub:ORG/REPO, hf:ORG/REPO, demo or a plugin's SCHEME:NAME"
        )
    if os.sep in weights or weights.endswith(CHECKPOINT_SUFFIXES):
        return OpenClipSpec(arch, str(Path(weights).expanduser().resolve()), "file")
    return OpenClipSpec(arch, weights, "tag")


def demo_weights() -> OpenClipSpec:
    """The shipped demo model as the open_clip checkpoint it is."""
    weights = sorted(DEMO_DIR.glob("weights.*"))
    if not weights:
        raise ModelError(f"the demo model's weights are missing from {DEMO_DIR}; reinstall mmsearch")
    return OpenClipSpec(DEMO_ARCH, str(weights[0]), "file")


def local_folder(name: str) -> Path | None:
    """``name`` as an absolute path when it is written as one (or names an existing folder)."""
    if name.startswith(("/", "./", "../", "~")) or Path(name).is_dir():
        return Path(name).expanduser().resolve()
    return None
