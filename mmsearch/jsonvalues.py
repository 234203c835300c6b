"""Any value a SQL result holds, as strict JSON: one converter for ``mmsearch sql --json``
and ``POST /api/sql``, so the two answer alike.

DuckDB hands back Python types ``json`` cannot write (or writes as non-JSON). Here:
NaN and infinities are ``null``; a ``DECIMAL`` is a number (an integer when whole); an
integer beyond JavaScript's exact range (±2**53, e.g. a ``HUGEINT`` or ``UBIGINT``) is a
string of its digits, so no client rounds it silently; dates, times and timestamps are ISO
8601 strings; an ``INTERVAL`` is its ISO-ish text; a ``BLOB`` is base64; anything else is
its ``str``.
"""

from __future__ import annotations

import base64
import math
from datetime import date, datetime, time, timedelta
from decimal import Decimal

MAX_EXACT = 2**53 - 1  # the largest integer a JavaScript number holds exactly


def jsonable(value: object) -> object:
    """``value`` (nested dicts and lists included) as what ``json.dumps(..., allow_nan=False)`` writes."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -MAX_EXACT <= value <= MAX_EXACT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        return jsonable(int(value)) if value == value.to_integral_value() else float(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    return str(value)
