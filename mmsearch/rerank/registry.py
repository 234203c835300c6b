"""Re-rankers by spec string, beside the encoder registry.

* ``demo`` — the cross-attention matcher trained on the synthetic world (text→image,
  text→audio), the default for indexes built with the demo model;
* ``blip:ORG/REPO`` or ``blip:/path/to/folder`` — a BLIP image-text matching model
  (``BlipForImageTextRetrieval``) through ``transformers`` (text→image).

``@register("scheme")`` adds a scheme in this process, as for encoders. Loading is lazy:
nothing here imports torch.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from mmsearch.errors import UserInputError

if TYPE_CHECKING:
    from mmsearch.rerank.base import Reranker

RerankerFactory = Callable[[str, str], "Reranker"]
DEMO = "demo"
BLIP = "blip"
_BUILTIN = {DEMO: "mmsearch.rerank.demo:load", BLIP: "mmsearch.rerank.blip:load"}
DEFAULTS = {"demo": DEMO}  # an index's model (spec without audio partner) -> its default re-ranker
_registered: dict[str, RerankerFactory] = {}


def register(scheme: str) -> Callable[[RerankerFactory], RerankerFactory]:
    """Decorator: serve ``SCHEME:NAME`` re-ranker specs in this process with the factory."""
    if scheme in _BUILTIN:
        raise UserInputError(f"re-ranker scheme {scheme!r} is built in")

    def decorate(factory: RerankerFactory) -> RerankerFactory:
        _registered[scheme] = factory
        return factory

    return decorate


def default_reranker(model: str | None) -> str:
    """The re-ranker for an index built with ``model``, or a one-line explanation."""
    base = (model or "").split("+", 1)[0]
    if base in DEFAULTS:
        return DEFAULTS[base]
    raise UserInputError(
        f"no default re-ranker for an index built with {model!r}; name one with --reranker "
        "(e.g. blip:Salesforce/blip-itm-base-coco or blip:/path/to/folder)"
    )


def load_reranker(spec: str, device: str | None = None) -> Reranker:
    """Build the re-ranker for ``spec`` on ``device`` (``None``/``auto``: CUDA if present)."""
    from mmsearch.models.device import resolve_device

    scheme, _, name = spec.strip().partition(":")
    if scheme in _registered:
        factory = _registered[scheme]
    elif scheme in _BUILTIN:
        factory = pkgutil.resolve_name(_BUILTIN[scheme])
    else:
        known = ", ".join(sorted({*_BUILTIN, *_registered}))
        raise UserInputError(f"unknown re-ranker {spec!r} (known schemes: {known}; e.g. demo or blip:ORG/REPO)")
    if scheme != DEMO and not name:
        raise UserInputError(f"re-ranker spec {spec!r} names no model after {scheme + ':'!r}")
    reranker = factory(name, resolve_device(device))
    reranker.spec = spec.strip()
    return reranker
