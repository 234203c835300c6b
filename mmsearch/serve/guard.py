"""The gate every request passes: Host check, token, body size, security headers.

Written as plain ASGI middleware (not ``BaseHTTPMiddleware``) so it adds nothing
measurable to a request and can stop an oversized upload while it streams in,
before multipart parsing has written it to disk.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException

from mmsearch.serve import auth
from mmsearch.serve.settings import ServeSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/api/healthz"})
SIGNED = re.compile(r"^/api/(?:media|thumbs)/(\d{1,19})$")
BODY_SLACK = 256 * 1024  # multipart boundaries and form fields on top of the file itself
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; script-src 'self'; "
    "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
DOCS_PATHS = ("/docs", "/redoc")  # FastAPI's doc pages load their scripts from a CDN


class BodyTooLarge(HTTPException):
    """Raised inside ``receive`` when a request body passes the limit: the app's HTTP error
    handler answers 413, wherever the body was being read."""


class Guard:
    """ASGI middleware applying ``settings`` to every HTTP request."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        """Wrap ``app``."""
        self.app = app
        self.settings = settings
        self.max_body = settings.max_upload_bytes + BODY_SLACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check, then pass on with a size-limited ``receive`` and a header-adding ``send``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        path = scope["path"][len(scope.get("root_path", "")) :] if scope.get("root_path") else scope["path"]
        token = self.settings.token
        if not auth.host_ok(headers.get("host"), token, self.settings.allowed_hosts):
            await _json(send, 400, "this server answers only to localhost (it has no --token); use 127.0.0.1")
            return
        if path.startswith("/api/") and path not in OPEN_PATHS and not self._authorised(path, scope, headers):
            await _json(send, 401, "this server needs a token: Authorization: Bearer TOKEN", bearer=True)
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _json(send, 413, self._too_large())
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(413, self._too_large())
            return message

        started = False
        policy = None if path.startswith(DOCS_PATHS) else PAGE_POLICY

        async def secured_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {key.lower() for key, _ in message.get("headers", [])}
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if policy is not None:
                    extra.append((b"content-security-policy", policy.encode()))
                message["headers"] = list(message.get("headers", [])) + [h for h in extra if h[0] not in present]
            await send(message)

        try:
            await self.app(scope, limited_receive, secured_send)
        except BodyTooLarge:
            if not started:
                await _json(send, 413, self._too_large())

    def _authorised(self, path: str, scope: Scope, headers: dict[str, str]) -> bool:
        if auth.bearer_ok(self.settings.token, headers.get("authorization")):
            return True
        signed = SIGNED.match(path)
        if signed is None:
            return False
        signature = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("sig", [None])[0]
        return auth.signature_ok(self.settings.token, int(signed.group(1)), signature)

    def _too_large(self) -> str:
        return f"the request is larger than the {self.settings.max_upload_bytes / 1e6:g} MB upload limit"


async def _json(send: Send, status: int, message: str, bearer: bool = False) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
    ]
    if bearer:
        headers.append((b"www-authenticate", b'Bearer realm="mmsearch"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
