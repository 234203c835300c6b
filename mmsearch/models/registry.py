"""The encoder registry: a model spec's scheme picks the factory that builds its encoder.

Built-in schemes are ``demo``, ``hf`` and open_clip's (specs with no registered prefix).
Other packages add schemes without editing mmsearch, the way simonw/llm plugins add
models: an entry point in the ``mmsearch.encoders`` group, named by the scheme and
pointing at a factory ``(name, device) -> Encoder`` (an :class:`Encoder` subclass whose
``__init__`` takes those two arguments is one)::

    [project.entry-points."mmsearch.encoders"]
    myencoder = "mmsearch_myencoder:MyEncoder"     # mmsearch index --model myencoder:some-name

In a notebook or a test, ``@register("myencoder")`` does the same for the running process,
as LanceDB's ``@register`` does for its embedding functions. Plugins are imported only
when their scheme is used; listing them reads package metadata alone.

Layers: :mod:`~mmsearch.models.spec` (parsing) is a leaf; the encoder modules import it and
:mod:`~mmsearch.models.base`; this module sits above them all and nothing here imports it.
"""

from __future__ import annotations

import functools
import pkgutil
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from mmsearch.config import DEFAULT_MODEL, default_model
from mmsearch.errors import MMSearchError, ModelError, one_line
from mmsearch.models.spec import DEMO, DEMO_DIR, HF, OPEN_CLIP, ModelSpec, open_clip_spec, parse

if TYPE_CHECKING:  # the CLI imports this module at start-up: numpy, Pillow and plugin metadata wait for use
    from importlib.metadata import EntryPoint

    from mmsearch.models.base import Encoder

__all__ = [
    "DEFAULT_MODEL",
    "DEMO_DIR",
    "ENTRY_POINT_GROUP",
    "EncoderFactory",
    "default_model",
    "describe_models",
    "installed_schemes",
    "load_encoder",
    "register",
    "resolve",
]

ENTRY_POINT_GROUP = "mmsearch.encoders"
EncoderFactory = Callable[[str, str], "Encoder"]
Factory = TypeVar("Factory", bound=EncoderFactory)

_BUILTIN = {  # imported only when used: `mmsearch --help` must not import torch
    DEMO: "mmsearch.models.openclip:load_demo",
    HF: "mmsearch.models.hf:load",
    OPEN_CLIP: "mmsearch.models.openclip:load",
}
RESERVED = frozenset({*_BUILTIN, "hf-hub"})  # hf-hub: is open_clip's own hub prefix
SCHEME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_registered: dict[str, EncoderFactory] = {}


def register(scheme: str) -> Callable[[Factory], Factory]:
    """Decorator: serve ``SCHEME:NAME`` specs in this process with the decorated factory."""
    if scheme in RESERVED or not SCHEME_PATTERN.fullmatch(scheme):
        raise ModelError(f"cannot register encoder scheme {scheme!r}: reserved, or not a letter then [A-Za-z0-9_.-]")

    def decorate(factory: Factory) -> Factory:
        _registered[scheme] = factory
        return factory

    return decorate


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    """Installed plugins by scheme (a name mmsearch reserves is ignored)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in RESERVED}


def _provider(entry: EntryPoint) -> str:
    dist = entry.dist
    return f"{dist.name} {dist.version}" if dist is not None else entry.value


def installed_schemes() -> dict[str, str]:
    """Every scheme that can be loaded now, with who provides it."""
    schemes = dict.fromkeys(_BUILTIN, "mmsearch")
    schemes |= {name: _provider(entry) for name, entry in _entry_points().items()}
    return schemes | dict.fromkeys(_registered, "registered in this process")


def resolve(spec: str) -> ModelSpec:
    """Parse a spec string into its canonical :class:`ModelSpec` without loading anything."""
    return parse(spec, {*_entry_points(), *_registered})


def load_encoder(spec: str, device: str | None = None) -> Encoder:
    """Build the encoder for ``spec`` on ``device`` (``None``/``auto``: CUDA if present)."""
    from mmsearch.models.device import resolve_device

    parsed = resolve(spec)
    factory, plugin = _factory(parsed)
    device = resolve_device(device)
    try:
        encoder = factory(parsed.name, device)
    except MMSearchError:
        raise
    except Exception as exc:
        if plugin is None:
            raise
        raise ModelError(f"encoder plugin {parsed.scheme!r} ({plugin}) failed on {spec!r}: {one_line(exc)}") from exc
    _check(encoder, parsed, plugin or "mmsearch")
    if parsed.audio is not None:
        from mmsearch.models.audio import audio_part

        encoder.attach_audio(audio_part(parsed.audio, encoder, parsed.spec))
    encoder.spec = parsed.spec
    return encoder


def _factory(parsed: ModelSpec) -> tuple[EncoderFactory, str | None]:
    """The factory for ``parsed`` and, for a plugin, who provides it."""
    if parsed.scheme == OPEN_CLIP:
        from mmsearch.models.openclip import knows_architecture

        arch = open_clip_spec(parsed.name).arch
        if not knows_architecture(arch):
            raise ModelError(_unknown_scheme(parsed.spec, arch))
    if parsed.scheme in _BUILTIN:
        return pkgutil.resolve_name(_BUILTIN[parsed.scheme]), None
    if parsed.scheme in _registered:
        return _registered[parsed.scheme], "registered in this process"
    entry = _entry_points()[parsed.scheme]
    try:
        return entry.load(), _provider(entry)
    except Exception as exc:
        raise ModelError(
            f"encoder plugin {parsed.scheme!r} from {_provider(entry)} failed to import: {one_line(exc)}"
        ) from exc


def _unknown_scheme(spec: str, prefix: str) -> str:
    plugins = [name for name, provider in installed_schemes().items() if provider != "mmsearch"]
    return (
        f"unknown model scheme {prefix!r} in {spec!r}: neither an installed encoder plugin nor an open_clip "
        f"architecture (built in: demo, hf:, open_clip ARCH:TAG and hf-hub:; plugins: {', '.join(plugins) or 'none'}); "
        f"install the package whose {ENTRY_POINT_GROUP!r} entry point is {prefix!r} "
        f"(by convention: pip install mmsearch-{prefix.lower()})"
    )


def _check(encoder: object, parsed: ModelSpec, provider: str) -> None:
    """Fail at load, not mid-ingest, when a factory breaks the :class:`Encoder` contract."""
    from mmsearch.models.base import MODALITIES, Encoder

    problem = None
    if not isinstance(encoder, Encoder):
        problem = f"returned {type(encoder).__name__}, not an mmsearch Encoder"
    elif not isinstance(getattr(encoder, "space_id", None), str) or not encoder.space_id:
        problem = "set no space_id"
    elif not isinstance(getattr(encoder, "dim", None), int) or encoder.dim <= 0:
        problem = "set no positive integer dim"
    elif not encoder.modalities or not set(encoder.modalities) <= set(MODALITIES):
        problem = f"declares modalities {sorted(encoder.modalities)}, not a non-empty subset of {list(MODALITIES)}"
    elif "image" in encoder.modalities and encoder.image_input is None:
        problem = "embeds images but sets no image_input"
    elif "audio" in encoder.modalities and encoder.audio_input is None:
        problem = "embeds audio but sets no audio_input"
    if problem is not None:
        raise ModelError(f"the {parsed.scheme!r} encoder ({provider}) for {parsed.spec!r} {problem}")


def describe_models() -> list[tuple[str, str]]:
    """Named models, spec forms and installed plugins, for ``mmsearch models``."""
    described = [
        ("demo", "small image+text model trained by the project on its synthetic world (offline)"),
        (DEFAULT_MODEL, "default for new indexes: open_clip ViT-B/32 trained on LAION-2B"),
        ("ARCH:TAG", "any open_clip pretrained tag (python -c 'import open_clip; print(open_clip.list_pretrained())')"),
        ("ARCH:/path/to/checkpoint.pt", "a local open_clip checkpoint file"),
        ("hf-hub:ORG/REPO", "an open_clip model on the Hugging Face hub"),
        ("hf:ORG/REPO", "a transformers CLIP, SigLIP or Chinese-CLIP model (pip install 'mmsearch[hf]')"),
        ("hf:/path/to/folder", "the same, saved with save_pretrained"),
        ("SPEC+clap:NAME", "SPEC with a CLAP audio partner (hub name or folder); fit it with mmsearch fit-audio"),
    ]
    for scheme, entry in sorted(_entry_points().items()):
        summary = entry.dist.metadata["Summary"] if entry.dist is not None else None
        described.append((f"{scheme}:NAME", f"plugin from {_provider(entry)}" + (f": {summary}" if summary else "")))
    for scheme, factory in sorted(_registered.items()):
        doc = (factory.__doc__ or "").strip().splitlines()
        described.append((f"{scheme}:NAME", doc[0] if doc else "registered in this process"))
    return described
