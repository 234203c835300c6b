"""Start or join a Ray runtime: the one place that imports Ray."""

from __future__ import annotations

import socket
from types import ModuleType

from mmsearch.config import ray_address
from mmsearch.errors import UserInputError, one_line

INSTALL_HINT = "pip install 'mmsearch[ray]'"


def require_ray(what: str = "--ray") -> ModuleType:
    """Import Ray or explain how to get it."""
    try:
        import ray
    except ImportError:
        raise UserInputError(f"{what} needs Ray: {INSTALL_HINT}") from None
    return ray


def connect(address: str = "auto", num_cpus: int | None = None) -> ModuleType:
    """Attach this process to Ray and return the ``ray`` module.

    ``auto`` joins the cluster named by ``RAY_ADDRESS`` when it is set and otherwise
    starts a local runtime (``num_cpus`` sizes it; all cores by default); ``local``
    always starts a local one; anything else is a cluster address (``ray://head:10001``
    or ``host:port``). An already connected process is left as it is, so a library
    user's own ``ray.init`` wins.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    target = ray_address() if address == "auto" else address
    if target == "local":
        target = None
    if target is not None:
        _check_reachable(target)
    options = {"include_dashboard": False, "log_to_driver": False, "logging_level": "error"}
    if target is None:
        options["num_cpus"] = num_cpus
    try:
        ray.init(address=target, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UserInputError(f"cannot start or reach Ray at {target or 'a local runtime'}: {one_line(exc)}") from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray retries an unreachable head for minutes; one TCP connect says the same in seconds."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserInputError(f"not a Ray address (expected host:port or ray://host:port): {address}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserInputError(f"cannot reach Ray at {address}: {one_line(exc)}") from None
