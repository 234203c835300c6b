"""Finding downloadable weights fast, for every encoder that fetches from the hub or a URL.

huggingface_hub retries a failed connection with back-off (about 25 s per file). Offline
that is a minute of silence before a 600-character error. So before building a model:
weights already in the cache load with the hub switched to offline (no round trips at
all); weights not cached fail at once under ``HF_HUB_OFFLINE``, and otherwise after one
quick probe finds the server unreachable.
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

from mmsearch.config import OPEN_CLIP_URL_CACHE
from mmsearch.errors import ModelError

PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RemoteWeights:
    """Where weights come from: all of ``needs`` and one of ``any_of`` in hub ``repo``,
    or a plain ``url``."""

    repo: str | None = None
    needs: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    url: str | None = None


def ensure_available(remote: RemoteWeights, spec: str, fixes: str) -> bool:
    """Whether ``remote`` is fully cached (then load it offline). Raises a one-line
    :class:`ModelError` ending in ``fixes`` within seconds when it is not cached and
    cannot be downloaded now; returns ``False`` when a download may go ahead."""
    from huggingface_hub import constants

    if remote.repo is not None:
        from huggingface_hub.utils import validate_repo_id

        repo = remote.repo
        try:
            validate_repo_id(repo)
        except ValueError as exc:
            raise ModelError(f"model spec {spec!r} names an invalid hub repo: {exc}") from None

        def cached(name: str) -> bool:
            return _hub_cached(repo, name)

        if all(map(cached, remote.needs)) and any(map(cached, remote.any_of)):
            return True
        cache = constants.HF_HUB_CACHE
        probe = functools.partial(_hub_reachable, repo, (remote.needs or remote.any_of)[0])
        host = urllib.parse.urlparse(constants.ENDPOINT).netloc or constants.ENDPOINT
    elif remote.url:
        cache = os.path.expanduser(OPEN_CLIP_URL_CACHE)
        if os.path.isfile(os.path.join(cache, os.path.basename(remote.url))):
            return False  # open_clip checks the file's digest and uses it without a request
        probe = functools.partial(_url_reachable, remote.url)
        host = urllib.parse.urlparse(remote.url).netloc
    else:
        return False
    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set"
    elif not probe():
        why = f"{host} unreachable"
    else:
        return False
    raise ModelError(f"could not fetch weights for {spec}: not in cache {_tilde(cache)} and {why}; {fixes}")


def _hub_cached(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename), str)


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
def hub_offline(enabled: bool) -> Iterator[None]:
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
def quiet_root_logger() -> Iterator[None]:
    """Libraries report download failures with ``logging.error``, which configures the
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
