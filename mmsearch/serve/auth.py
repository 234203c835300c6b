"""Who may ask: the bearer token, signed links for media, and the Host header check.

``<img>`` and ``<audio>`` elements cannot send an ``Authorization`` header, so with a
token the API hands out media and thumbnail links signed for one item each (an HMAC
of the item id under the token). A link opens that item only, and changing the
token revokes every link. Without a token the server listens on loopback only, and
the Host check stops a web page elsewhere from reaching it through DNS rebinding.
"""

from __future__ import annotations

import hashlib
import hmac

from mmsearch.serve.settings import is_loopback

SIGNATURE_CHARS = 32


class Unauthorized(Exception):
    """The request lacks a valid token (HTTP 401)."""


def sign(token: str, item_id: int) -> str:
    """The signature that lets a link open item ``item_id``'s media and thumbnail."""
    digest = hmac.new(token.encode(), f"media:{item_id}".encode(), hashlib.sha256).hexdigest()
    return digest[:SIGNATURE_CHARS]


def bearer_ok(token: str | None, authorization: str | None) -> bool:
    """Whether an ``Authorization`` header carries the token (constant-time comparison)."""
    if token is None:
        return True
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def signature_ok(token: str | None, item_id: int, signature: str | None) -> bool:
    """Whether ``signature`` opens item ``item_id``."""
    if token is None:
        return True
    if not signature:
        return False
    return hmac.compare_digest(signature.encode(), sign(token, item_id).encode())


def host_ok(host_header: str | None, token: str | None, allowed: tuple[str, ...]) -> bool:
    """Without a token, only loopback names (and ``allowed``) may be in the Host header."""
    if token is not None or not host_header:
        return True
    host = host_header.strip()
    if host.startswith("["):  # [::1]:8000
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return is_loopback(host) or host.lower() in {name.lower() for name in allowed}
