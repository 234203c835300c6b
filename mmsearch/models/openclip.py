"""Image and text encoders built with open_clip.

Every model — a pretrained tag, a local checkpoint, the shipped demo — goes through
``open_clip.create_model(arch, pretrained=...)``, so the demo exercises exactly the
code path users' real checkpoints take.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch

from mmsearch.errors import ModelError
from mmsearch.hashing import file_digest
from mmsearch.models.base import Encoder, ImageInput
from mmsearch.models.registry import PROJECT_CONFIG_DIRS, ModelSpec


@functools.cache
def _register_project_configs() -> None:
    """Make the architectures mmsearch ships known to open_clip's factory (once)."""
    for config_dir in PROJECT_CONFIG_DIRS:
        open_clip.add_model_config(config_dir)


def resolve_device(device: str | None) -> str:
    """``None``/``auto`` pick CUDA when available, else CPU; anything else is checked."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available on this machine")
    return device


def space_id_for(spec: ModelSpec) -> str:
    """Identify the embedding space: architecture plus the exact weights."""
    if spec.source == "file":
        return f"{spec.arch}@sha256:{file_digest(spec.weights)[:16]}"
    return f"{spec.arch}@{spec.weights}"


class OpenClipEncoder(Encoder):
    """An open_clip CLIP model; mixed precision on CUDA, float32 on CPU."""

    modalities = frozenset({"image", "text"})

    def __init__(self, spec: ModelSpec, device: str | None = None) -> None:
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
        _register_project_configs()
        if not spec.arch.startswith("hf-hub:") and spec.arch not in open_clip.list_models():
            raise ModelError(f"unknown open_clip architecture {spec.arch!r} in model spec {spec.spec!r}")
        self.device = resolve_device(device)
        cached = ensure_weights_available(spec)
        try:
            with _hub_offline(cached), _quiet_root_logger():
                model = open_clip.create_model(
                    spec.arch,
                    pretrained=None if spec.source == "hub" else spec.weights,
                    device=self.device,
                    require_pretrained=True,
                )
                self.tokenizer = open_clip.get_tokenizer(spec.arch)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ModelError(_load_failure(spec, exc)) from exc
        self.model = model.eval()
        self.spec = spec.spec
        self.space_id = space_id_for(spec)
        cfg = model.visual.preprocess_cfg
        size = cfg["size"]
        self.image_input = ImageInput(
            size=int(size if isinstance(size, int) else size[0]),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
        )
        self.batch_size = 256 if self.device.startswith("cuda") else 64
        self.dim = int(self._embed_text_batch([""]).shape[1])
        self.audio = None
        if spec.audio is not None:
            self.attach_audio(spec)

    def attach_audio(self, spec: ModelSpec) -> None:
        """Give the model an ear: an audio partner embedding into this model's space."""
        from mmsearch.models.audio import clap_part, tower_part

        kind, _, where = spec.audio.partition(":")
        if kind == "tower":
            self.audio = tower_part(Path(where), self.space_id, self.dim, self.device, self._run_tower)
        else:
            self.audio = clap_part(where, self.space_id, spec.spec, self.device)
        self.modalities = self.modalities | {"audio"}
        self.audio_input = self.audio.audio_input
        self.audio_space_id = self.audio.audio_space_id

    def _run_tower(self, tower, waves: np.ndarray) -> np.ndarray:
        return self._run(tower, torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)))

    def _run(self, fn, batch: torch.Tensor) -> np.ndarray:
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=torch.float16, enabled=self.device.startswith("cuda")),
        ):
            return fn(batch.to(self.device)).float().cpu().numpy()

    def _embed_image_batch(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(self.model.encode_image, torch.from_numpy(np.ascontiguousarray(pixels)))

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        return self._run(self.model.encode_text, self.tokenizer(texts))

    def _embed_audio_batch(self, waves: np.ndarray) -> np.ndarray:
        return self.audio.embed(waves)


def _load_failure(spec: ModelSpec, exc: Exception) -> str:
    reason = _shorten(" ".join(str(exc).split()), 160)
    if spec.source == "file":
        return f"could not load checkpoint {spec.weights} for {spec.arch}: {reason}"
    return f"could not fetch weights for {spec.spec} ({reason}); {FIXES.format(arch=_arch_hint(spec))}"


# -- finding weights fast -------------------------------------------------------------
#
# open_clip downloads tagged weights through huggingface_hub, which retries a failed
# connection with back-off (about 25 s per file, two files per tag). Offline that is a
# minute of silence before a 600-character error. So before building a model: weights
# already in the cache load with the hub switched to offline (no round trips at all);
# weights not cached fail at once under HF_HUB_OFFLINE, and otherwise after one quick
# probe of the hub finds it unreachable.

PROBE_TIMEOUT_S = 5.0
FIXES = "try --model demo, --model {arch}:/path/to/file.pt, or fetch once online, then HF_HUB_OFFLINE=1"
HF_CONFIG_NAME = "open_clip_config.json"
HF_WEIGHTS_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
URL_CACHE_DIR = "~/.cache/clip"  # where open_clip keeps weights fetched by URL


@dataclass(frozen=True)
class RemoteWeights:
    """Where a spec's weights come from: all of ``needs`` and one of ``any_of`` in hub ``repo``,
    or a plain ``url``."""

    repo: str | None = None
    needs: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    url: str | None = None


def remote_weights(spec: ModelSpec) -> RemoteWeights | None:
    """The download behind ``spec``, or ``None`` when nothing is downloaded (a local file)."""
    if spec.source == "hub":
        return RemoteWeights(spec.arch.removeprefix("hf-hub:"), (HF_CONFIG_NAME,), HF_WEIGHTS_NAMES)
    if spec.source != "tag":
        return None
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.weights)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(spec.arch)
        known = f"known tags: {', '.join(tags[:6])}{', ...' if len(tags) > 6 else ''}" if tags else "it has no tags"
        raise ModelError(f"open_clip has no pretrained tag {spec.weights!r} for {spec.arch} ({known})")
    if cfg.get("file"):
        return None
    if cfg.get("hf_hub") and _has_hub():
        repo, filename = os.path.split(cfg["hf_hub"])
        if not filename:
            return RemoteWeights(repo, any_of=HF_WEIGHTS_NAMES)
        stem, suffix = os.path.splitext(filename)
        safe = (f"{stem}.safetensors",) if suffix in (".bin", ".pth") else ()
        return RemoteWeights(repo, any_of=(*safe, filename))
    return RemoteWeights(url=cfg.get("url") or None)


def ensure_weights_available(spec: ModelSpec) -> bool:
    """Whether ``spec``'s weights are cached locally; raises a one-line :class:`ModelError`
    within seconds when they are not and cannot be downloaded now."""
    remote = remote_weights(spec)
    if remote is None:
        return False
    if remote.repo is not None:
        from huggingface_hub import constants
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(remote.repo)
        except ValueError as exc:
            raise ModelError(f"model spec {spec.spec!r} names an invalid hub repo: {exc}") from None

        def cached(name: str) -> bool:
            return _hub_cached(remote.repo, name)

        if all(map(cached, remote.needs)) and any(map(cached, remote.any_of)):
            return True
        cache = constants.HF_HUB_CACHE
        probe = functools.partial(_hub_reachable, remote.repo, (remote.needs or remote.any_of)[0])
        host = urllib.parse.urlparse(constants.ENDPOINT).netloc or constants.ENDPOINT
    elif remote.url:
        cache = os.path.expanduser(URL_CACHE_DIR)
        if os.path.isfile(os.path.join(cache, os.path.basename(remote.url))):
            return False  # open_clip checks the file's digest and uses it without a request
        probe = functools.partial(_url_reachable, remote.url)
        host = urllib.parse.urlparse(remote.url).netloc
    else:
        return False
    if _hub_offline_mode():
        why = "HF_HUB_OFFLINE is set"
    elif not probe():
        why = f"{host} unreachable"
    else:
        return False
    raise ModelError(
        f"could not fetch weights for {spec.spec}: not in cache {_tilde(cache)} and {why}; "
        + FIXES.format(arch=_arch_hint(spec))
    )


def _has_hub() -> bool:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return False
    return True


def _hub_cached(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename), str)


def _hub_offline_mode() -> bool:
    if not _has_hub():
        return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(repo: str, filename: str) -> bool:
    """One HEAD request, no retries: any answer from the server (even 404) means reachable."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo, filename), timeout=PROBE_TIMEOUT_S)
    except HfHubHTTPError:
        return True
    except Exception:  # connection refused, DNS failure, timeout, proxy error: all mean "offline"
        return False
    return True


def _url_reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


@contextlib.contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    """Switch huggingface_hub to offline mode while loading weights known to be cached."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip reports download failures with ``logging.error``, which configures the
    root logger to print them when the application has not: keep that out of our output."""
    root = logging.getLogger()
    handler = None if root.handlers else logging.NullHandler()
    if handler is not None:
        root.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            root.removeHandler(handler)


def _tilde(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if home not in ("", "/") and path.startswith(home + os.sep) else path


def _arch_hint(spec: ModelSpec) -> str:
    return "ARCH" if spec.source == "hub" else spec.arch


def _shorten(text: str, limit: int) -> str:
    """``text`` cut at a word boundary to at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"
