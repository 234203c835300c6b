"""A small HTTP client for ``mmsearch query --server``, on the standard library only.

The point of forwarding a query is to skip loading torch and the model, so this
module imports nothing heavy: ``http.client`` for the request, a hand-built
multipart body for query files.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mmsearch.errors import MMSearchError, UserInputError

TIMEOUT_S = 120.0
LINK_FIELDS = ("media_url", "thumb_url")


class ServerError(MMSearchError):
    """The server refused the request or could not be reached; the message says why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        if status is not None and 400 <= status < 500:
            self.exit_code = UserInputError.exit_code


@dataclass(frozen=True)
class RemoteHit:
    """A result as the CLI prints it: the same fields as ``SearchResult``."""

    id: int
    score: float
    path: str
    modality: str
    metadata: dict

    def to_dict(self) -> dict:
        """The result's JSON form, as a local search gives it (links left out)."""
        return {key: value for key, value in self.metadata.items() if key not in LINK_FIELDS}


def _multipart(fields: dict[str, str], files: Sequence[tuple[str, float]]) -> tuple[bytes, str]:
    boundary = f"mmsearch-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for path, weight in files:
        name = os.path.basename(path).replace('"', "")
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        parts.append(f"{head}Content-Type: {kind}\r\n\r\n".encode() + Path(path).read_bytes() + b"\r\n")
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="weight"\r\n\r\n{weight!r}\r\n'.encode())
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def search(
    server: str,
    fields: dict,
    files: Sequence[tuple[str, float]] = (),
    token: str | None = None,
    timeout: float = TIMEOUT_S,
) -> tuple[list[RemoteHit], str]:
    """POST a search to ``server``; returns the hits and the modality they are."""
    fields = {key: value for key, value in fields.items() if value is not None}
    if files:
        body, kind = _multipart({key: str(value) for key, value in fields.items()}, files)
    else:
        body, kind = json.dumps(fields).encode(), "application/json"
    answer = request(server, "/api/search", body, kind, token, timeout)
    hits = [RemoteHit(hit["id"], hit["score"], hit["path"], hit["modality"], hit) for hit in answer["results"]]
    return hits, answer["modality"]


def request(
    server: str, path: str, body: bytes | None, kind: str | None, token: str | None, timeout: float = TIMEOUT_S
) -> dict:
    """One request to the server's API; errors become one-line ``ServerError``s."""
    url = urlsplit(server.rstrip("/") + path)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UserInputError(f"--server must be an http:// or https:// URL, not {server!r}")
    headers = {"Accept": "application/json"}
    if kind:
        headers["Content-Type"] = kind
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection_class = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(url.hostname, url.port, timeout=timeout)
    try:
        connection.connect()
        # http.client writes a POST's headers and body separately; without TCP_NODELAY the body
        # waits for the server's delayed ACK (40 ms on Linux).
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = url.path + (f"?{url.query}" if url.query else "")
        connection.request("POST" if body is not None else "GET", target, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ServerError(f"cannot reach {server}: {reason}; is `mmsearch serve` running there?") from None
    finally:
        connection.close()
    if response.status >= 400:
        raise ServerError(f"{server}: {_error_of(data, response.status, response.reason)}", response.status)
    try:
        return json.loads(data)
    except ValueError:
        raise ServerError(f"{server} did not answer with JSON; is it an mmsearch server?") from None


def _error_of(data: bytes, status: int, reason: str) -> str:
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status} {reason}"
