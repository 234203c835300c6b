"""Running the app under uvicorn: in the foreground for ``mmsearch serve``, or in a thread.

The socket is bound before uvicorn starts, so ``--port 0`` (any free port) can be
reported, and a thread server in tests or benchmarks knows its address without
racing for a port.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from mmsearch.errors import UserInputError

POLL_S = 0.05  # between readiness polls
MAX_CONNECTIONS = 256  # beyond this uvicorn answers 503 instead of queueing without bound


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (IPv6 in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def config(app: FastAPI, host: str, port: int, access_log: bool = False) -> uvicorn.Config:
    """The uvicorn settings shared by every way of running."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info" if access_log else "warning",
        access_log=access_log,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=15,
        server_header=False,
    )


def bind(settings: uvicorn.Config) -> socket.socket:
    """The listening socket, with Nagle's algorithm off for every connection it accepts.

    asyncio turns Nagle off only for sockets it creates itself (``proto == IPPROTO_TCP``),
    not for connections accepted on a socket bound beforehand. With it on, a response sent
    as two writes (headers, then body) waits for the client's delayed ACK on every request
    of a keep-alive connection: 40 ms on Linux. Accepted sockets inherit the option.
    It binds as uvicorn's ``Config.bind_socket`` does, but a port in use or a bad host is a
    one-line user error, not uvicorn's log line and exit.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise UserInputError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


def run(app: FastAPI, host: str, port: int, access_log: bool, announce: Callable[[str], None]) -> None:
    """Serve until interrupted; ``announce`` gets the URL once the socket is bound."""
    settings = config(app, host, port, access_log)
    sock = bind(settings)
    announce(url_of(sock))
    sys.stdout.flush()
    uvicorn.Server(settings).run(sockets=[sock])


def wait_ready(url: str, timeout: float = 120.0, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll ``url``/api/healthz until it answers 200; fail if ``alive()`` turns false or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server at {url} stopped before it was ready")
        try:
            with urllib.request.urlopen(url + "/api/healthz", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # refused until uvicorn listens, which is after the model has loaded
            pass
        time.sleep(POLL_S)
    raise TimeoutError(f"the server at {url} was not ready within {timeout:g} s")


class ServerThread:
    """A real uvicorn server on a loopback port in a background thread (tests, benchmarks)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1") -> None:
        """Bind a free port on ``host`` now; ``start`` serves ``app`` on it."""
        self._config = config(app, host, 0)
        self.sock = bind(self._config)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(self._config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> ServerThread:
        """Start serving (returns at once; ``wait_ready`` polls ``/api/healthz``)."""
        self._thread.start()
        return self

    def wait_ready(self, timeout: float = 120.0) -> ServerThread:
        """Poll ``/api/healthz`` until it answers 200 (the model is loaded by then)."""
        wait_ready(self.url, timeout, alive=self._thread.is_alive)
        return self

    def stop(self) -> None:
        """Ask uvicorn to finish and wait for it."""
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
