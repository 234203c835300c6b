"""Byte sizes as people write them (``8G``, ``512MiB``, ``1.5GB``), parsed without heavy
imports so the CLI can refuse a bad one before loading anything."""

from __future__ import annotations

import re

from mmsearch.errors import UserInputError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, what: str = "memory size") -> int:
    """A size such as ``8G``, ``512MiB``, ``1.5GB`` or ``1000000`` as bytes (units are
    powers of 1024, as a machine's RAM is counted); ``what`` names it in the error."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([KMGT])I?B?|B)?\s*", text.upper())
    size = int(float(m.group(1)) * _UNITS[m.group(2) or ""]) if m else 0
    if size < 1:
        raise UserInputError(f"invalid {what} {text!r}: give a positive amount such as 8G, 512M or 1.5GB")
    return size
