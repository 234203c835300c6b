"""Query files sent by clients: recognised by content, decoded in a child process.

A client's file is untrusted input to image and audio decoders written in C. Each
upload is decoded in its own process forked from a small, single-threaded fork
server that has the decoders imported (so a fork costs milliseconds, and forking
never copies the server's threads or the model). The child has a memory limit;
the server waits at most ``timeout`` seconds and then kills it. A decoder crash
or a decompression bomb costs that child, never the server. The format comes from
the file's first bytes, never from the name the client gave it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection

from mmsearch.errors import UserInputError, one_line
from mmsearch.ingest.decode import DecodeOptions
from mmsearch.ingest.discover import DECODER_OF_FORMAT, HEAD_BYTES, sniff
from mmsearch.ingest.pipeline import decode_options

CHILD_MEMORY_BYTES = 4 * 1024**3
_context_lock = threading.Lock()
_context: multiprocessing.context.ForkServerContext | None = None


class UploadTooLarge(UserInputError):
    """An upload over the size, pixel or duration limit (HTTP 413)."""


class DecodeTimeout(UserInputError):
    """Decoding an upload took longer than allowed (HTTP 422)."""


@dataclass(frozen=True)
class DecodedUpload:
    """What the encoder needs: the modality and the model-ready pieces."""

    modality: str
    pieces: list


def _fork_context() -> multiprocessing.context.ForkServerContext:
    """The fork-server context, started on first use with the decoders preloaded."""
    global _context
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["mmsearch.ingest.decode", "mmsearch.serve.uploads"])
            _context = context
        return _context


def warm_up() -> None:
    """Start the fork server now, so the first upload does not pay for it."""
    process = _fork_context().Process(target=_noop, daemon=True)
    process.start()
    process.join(timeout=30)


def _noop() -> None:
    """A child that does nothing (starting it starts the fork server)."""


def sniff_modality(path: str) -> str:
    """``image`` or ``audio`` from the file's first bytes, else a one-line refusal."""
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    fmt = sniff(head)
    decoder = DECODER_OF_FORMAT.get(fmt or "")
    if decoder not in ("image", "audio"):
        raise UserInputError("the uploaded file is not an image or audio file this server can read")
    return decoder


def decode_upload(path: str, options: DecodeOptions, timeout: float, max_audio_s: float) -> DecodedUpload:
    """Decode the upload at ``path`` in a child process within ``timeout`` seconds."""
    modality = sniff_modality(path)
    context = _fork_context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_decode_child, args=(sender, path, modality, options, max_audio_s), daemon=True)
    child.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise DecodeTimeout(f"decoding the uploaded {modality} took longer than {timeout:g} s")
        try:
            outcome = receiver.recv()
        except (EOFError, OSError):
            outcome = ("error", f"the {modality} decoder stopped (exit code {_exit_code(child)})")
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join(timeout=5)
    kind, value = outcome
    if kind == "too-large":
        raise UploadTooLarge(value)
    if kind == "error":
        raise UserInputError(f"cannot read the uploaded {modality}: {value}")
    return DecodedUpload(modality, value)


def _exit_code(child: multiprocessing.process.BaseProcess) -> int | None:
    child.join(timeout=1)
    return child.exitcode


def _decode_child(sender: Connection, path: str, modality: str, options: DecodeOptions, max_audio_s: float) -> None:
    """Runs in the child: decode, check the duration, send back ``(kind, value)``."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    try:
        outcome = _decode(path, modality, options, max_audio_s)
    except MemoryError:
        outcome = ("too-large", "the upload needs more memory to decode than this server allows")
    except Exception as exc:  # reported to the client as one line
        outcome = ("error", one_line(f"{type(exc).__name__}: {exc}", 300))
    sender.send(outcome)
    sender.close()
    os._exit(0)  # skip interpreter teardown: the parent has what it needs


def _decode(path: str, modality: str, options: DecodeOptions, max_audio_s: float) -> tuple[str, object]:
    from mmsearch.ingest.decode import decode

    if modality == "audio":
        import soundfile

        try:
            seconds = soundfile.info(path).duration
        except Exception:  # unreadable: the decoder below says why
            seconds = 0.0
        if seconds > max_audio_s:
            return ("too-large", f"the uploaded audio lasts {seconds:.0f} s, over the {max_audio_s:g} s limit")
    decoded = decode(path, modality, options)
    if decoded.error is not None:
        if decoded.error.startswith("image too large"):
            return ("too-large", decoded.error)
        return ("error", decoded.error)
    return ("ok", [piece.payload for piece in decoded.pieces])


def upload_options(inputs: dict | None, max_pixels: int) -> DecodeOptions:
    """Decode settings of the index's model, with the server's pixel limit."""
    return replace(decode_options(inputs or {}, None, None), max_pixels=max_pixels)
