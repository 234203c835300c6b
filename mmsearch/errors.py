"""Typed errors. Library code raises these; only the CLI turns them into exit codes.

Every ``MMSearchError`` message is a complete, single-line explanation meant for a
user, so the CLI can print it verbatim without a traceback.
"""

from __future__ import annotations


def one_line(reason: BaseException | str, limit: int = 200) -> str:
    """``reason`` (an exception or its text) as one line of at most ``limit`` characters:
    third-party errors span many lines, ours are printed verbatim on one."""
    text = " ".join(str(reason).split())
    if not text and isinstance(reason, BaseException):
        text = type(reason).__name__
    if len(text) <= limit:
        return text
    return text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"


class MMSearchError(Exception):
    """Base class for every error caused by input, environment or index state."""

    exit_code = 1


class UserInputError(MMSearchError):
    """A path, option, query or filter given by the user is unusable."""

    exit_code = 2


class ModelError(MMSearchError):
    """A model spec is unknown or its weights cannot be loaded."""


class ModelMismatchError(MMSearchError):
    """An index was built in one embedding space and is used with another."""


class IndexNotFoundError(MMSearchError):
    """No index exists at the given location."""


class IndexFormatError(MMSearchError):
    """The on-disk index is damaged or written by an incompatible version."""


class ShardDamagedError(IndexFormatError):
    """A file the manifest names is missing or unreadable; ``mmsearch repair`` fixes it."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(
            f"shard file {path} is damaged or missing ({one_line(reason, 160)}); run `mmsearch repair` to fix the index"
        )
        self.path = path


class WriterBusyError(MMSearchError):
    """Another process holds the index's single-writer lock."""

    exit_code = 3


class FilterError(UserInputError):
    """A ``--where`` filter or ``sql`` statement is invalid."""
