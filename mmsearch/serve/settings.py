"""Server settings and the bind rule, without importing FastAPI or the engine.

The CLI checks the bind address before anything heavy loads, so a refused
``--host 0.0.0.0`` without ``--token`` answers at once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from mmsearch.config import thumbnail_dir
from mmsearch.errors import UserInputError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to expose an index beyond this machine without a token (unless told to)."""
    if is_loopback(host) or token or insecure:
        return
    raise UserInputError(
        f"refusing to serve on {host} without --token: anyone who can reach it could search the index and "
        "read its files; pass --token SECRET (or $MMSEARCH_TOKEN), or --insecure if the network is trusted"
    )


@dataclass(frozen=True)
class ServeSettings:
    """Limits and switches of one server. Every bound here is what keeps one request
    from taking the process down: sizes, counts and seconds."""

    token: str | None = None
    allow_sql: bool = False
    max_k: int = 200
    max_offset: int = 10_000
    max_batch: int = 64
    max_text_chars: int = 2_000  # q and where
    max_upload_bytes: int = 25 * 1024 * 1024
    max_upload_pixels: int = 50_000_000
    max_audio_s: float = 600.0
    decode_timeout_s: float = 20.0
    query_timeout_s: float = 30.0
    max_sql_rows: int = 10_000
    thumb_size: int = 256
    thumb_cache: Path = field(default_factory=thumbnail_dir)
    allowed_hosts: tuple[str, ...] = ()  # extra Host header values accepted without a token
    warm: bool = True  # load the encoder before the first request
    encoder_threads: int = 1  # torch threads per query forward pass (see EncoderQueue)
    rerankers: tuple[str, ...] = ()  # re-ranker specs offered beside the index's default (serve --reranker)

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < 8:
            raise UserInputError("--token must be at least 8 characters")
        if self.max_upload_bytes < 1:
            raise UserInputError("the upload limit must be at least 1 byte")
