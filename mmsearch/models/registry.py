"""Model specs: a name maps to an open_clip architecture plus weights.

Resolving a spec is cheap (no torch import) so an index can compare specs before
paying for a model load. Accepted forms:

* ``demo`` — the project's own small model, shipped in ``models/demo``;
* ``ARCH:TAG`` — an open_clip pretrained tag, e.g. ``ViT-B-32:laion2b_s34b_b79k``,
  fetched into open_clip's usual cache on first use;
* ``ARCH:/path/to/checkpoint.pt`` — a local open_clip checkpoint (.pt/.bin/.safetensors);
* ``hf-hub:ORG/REPO`` — an open_clip model on the Hugging Face hub.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from mmsearch.errors import ModelError

DEMO_DIR = Path(__file__).parent / "demo"
PROJECT_CONFIG_DIRS = (DEMO_DIR,)  # open_clip configs shipped with mmsearch, e.g. mmsearch-demo
DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"
DEFAULT_MODEL_ENV = "MMSEARCH_MODEL"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model spec: what to build and where its weights come from."""

    spec: str
    arch: str
    weights: str
    source: Literal["tag", "file", "hub"]
    audio: str | None = None  # "tower:DIR" or "clap:NAME": the audio partner (see models/audio.py)

    @property
    def base(self) -> str:
        """The spec without its audio partner."""
        return self.spec.split("+", 1)[0] if self.audio and "+" in self.spec else self.spec


def _demo_spec() -> ModelSpec:
    weights = sorted(DEMO_DIR.glob("weights.*"))
    if not weights:
        raise ModelError(f"the demo model's weights are missing from {DEMO_DIR}; reinstall mmsearch")
    audio = f"tower:{DEMO_DIR}" if (DEMO_DIR / "audio.pt").is_file() else None
    return ModelSpec("demo", "mmsearch-demo", str(weights[0]), "file", audio)


NAMED_MODELS = {"demo": _demo_spec}


def default_model() -> str:
    """The spec used for new indexes when none is given."""
    return os.environ.get(DEFAULT_MODEL_ENV) or DEFAULT_MODEL


def resolve(spec: str) -> ModelSpec:
    """Parse a spec string into a canonical :class:`ModelSpec` without loading anything.

    ``BASE+clap:NAME`` gives ``BASE`` a CLAP audio partner (a hub name or local folder).
    """
    spec = spec.strip()
    base, plus, audio = spec.partition("+clap:")
    if plus:
        if not audio:
            raise ModelError(f"model spec {spec!r} names no CLAP model after '+clap:'")
        if Path(audio).expanduser().is_dir():
            audio = str(Path(audio).expanduser().resolve())
        resolved = resolve(base)
        return replace(resolved, spec=f"{resolved.spec}+clap:{audio}", audio=f"clap:{audio}")
    if spec in NAMED_MODELS:
        return NAMED_MODELS[spec]()
    if spec.startswith("hf-hub:"):
        return ModelSpec(spec, spec, spec, "hub")
    arch, sep, weights = spec.partition(":")
    if not sep or not arch or not weights:
        raise ModelError(
            f"model spec {spec!r} names no weights: use ARCH:TAG (e.g. {DEFAULT_MODEL}), "
            "ARCH:/path/to/checkpoint.pt, hf-hub:ORG/REPO or demo"
        )
    looks_like_path = os.sep in weights or weights.endswith(CHECKPOINT_SUFFIXES)
    if not looks_like_path:
        return ModelSpec(spec, arch, weights, "tag")
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"checkpoint file not found: {path}")
    return ModelSpec(f"{arch}:{path}", arch, str(path), "file")


def describe_models() -> list[tuple[str, str]]:
    """Named models and spec forms, for ``mmsearch models``."""
    return [
        ("demo", "small image+text model trained by the project on its synthetic world (offline)"),
        (DEFAULT_MODEL, "default for new indexes: open_clip ViT-B/32 trained on LAION-2B"),
        ("ARCH:TAG", "any open_clip pretrained tag (python -c 'import open_clip; print(open_clip.list_pretrained())')"),
        ("ARCH:/path/to/checkpoint.pt", "a local open_clip checkpoint file"),
        ("hf-hub:ORG/REPO", "an open_clip model on the Hugging Face hub"),
        ("SPEC+clap:NAME", "SPEC with a CLAP audio partner (hub name or folder); fit it with mmsearch fit-audio"),
    ]


def load_encoder(spec: str, device: str | None = None):
    """Build the encoder for ``spec`` on ``device`` (``None``/``auto``: CUDA if present)."""
    from mmsearch.models.openclip import OpenClipEncoder

    return OpenClipEncoder(resolve(spec), device)
