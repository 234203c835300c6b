"""Checks of the public API's arguments: a caller's mistake becomes one ``UserInputError``
line that says what is wrong, never a numpy, pyarrow or DuckDB traceback, nor a silently
wrong answer (a zero query scoring everything 0, a NaN query finding nothing).

Vectors are judged as float32 directions, the way they are stored and searched: a row
must be finite, within float32's range and not all zero. Its direction is taken after
scaling it by its largest magnitude, so a tiny row (1e-30, whose squared norm underflows
in float32) is still a direction. The query check runs on every ``search(vector=...)``:
one dot product, no other pass over the vector.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mmsearch.errors import UserInputError
from mmsearch.models.base import l2_normalise

FLOAT32_MAX = float(np.finfo(np.float32).max)
# Squared norms FAISS's float32 normalisation handles exactly; outside, a query is made a unit
# vector here first (tiny or huge rows, see unit_rows) or refused (zero, NaN, Inf, beyond float32).
_SAFE_SQUARES = (1e-30, 1e30)
_INT64 = np.iinfo(np.int64)


def count(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` of at least ``minimum`` (an integer, not a bool, float or string)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserInputError(f"{name} must be an integer, not {_shown(value)}")
    if value < minimum:
        raise UserInputError(f"{name} must be at least {minimum}, not {value}")
    return int(value)


def ids(values: Iterable[int]) -> np.ndarray:
    """Item ids as an int64 array; anything else (strings, floats, ids past int64) is refused."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (np.ndarray, Iterable)):
        raise UserInputError(f"ids must be a sequence of integers, not {_shown(values)}")
    try:
        array = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    except (ValueError, TypeError):
        array = np.asarray([None])
    if array.size == 0:
        return np.empty(0, np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu" or (array.dtype.kind == "u" and array.max() > _INT64.max):
        raise UserInputError("ids must be integers in the int64 range")
    return array.astype(np.int64, copy=False)


def text(value: Any, name: str) -> str:
    """``value`` itself when it is a ``str``."""
    if not isinstance(value, str):
        raise UserInputError(f"{name} must be a string, not {_shown(value)}")
    return value


def optional_text(value: Any, name: str) -> str | None:
    return None if value is None else text(value, name)


def index_folder(path: str | Path) -> Path:
    """``path`` as a ``Path``, refused when it names something that is not a folder."""
    if not isinstance(path, (str, os.PathLike)):
        raise UserInputError(f"an index path must be a string or a Path, not {_shown(path)}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserInputError(f"index path {path} is a file, not a folder")
    return path


def real_matrix(vectors: Any, dim: int, name: str = "vectors") -> np.ndarray:
    """``vectors`` as an ``(n, dim)`` array of real numbers (not copied when already one);
    an empty input is ``(0, dim)``."""
    try:
        array = np.asarray(vectors)
    except (ValueError, TypeError):  # ragged lists
        raise UserInputError(f"{name} must be a numeric array of shape (n, {dim})") from None
    if array.size == 0 and array.ndim <= 2:
        return np.empty((0, dim), np.float32)
    _check_real(array, name)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != dim:
        raise UserInputError(f"{name} must have shape (n, {dim}), not {array.shape}")
    return array


def unit_rows(vectors: np.ndarray, name: str = "vectors", one: bool = False) -> np.ndarray:
    """Float32 unit rows of a real ``(n, dim)`` array (:func:`mmsearch.models.base.l2_normalise`,
    which keeps a tiny row's direction); a row that is zero, not finite or beyond float32's
    range is refused (``one``: the rows are one query, said without row numbers)."""
    if len(vectors) == 0:
        return np.empty(vectors.shape, np.float32)
    peak = np.abs(vectors).max(axis=1).astype(np.float64)  # NaN for a row with NaN
    bad = ~((peak > 0) & (peak <= FLOAT32_MAX))
    if bad.any():
        first = int(np.argmax(bad))
        fault = _fault(np.asarray(vectors[first], dtype=np.float64))
        if one:
            raise UserInputError(f"{name} {fault}; it must be finite, non-zero and within float32's range")
        raise UserInputError(
            f"{name} must be finite, non-zero and within float32's range: {int(bad.sum())} of {len(vectors)} rows "
            f"are not (row {first} {fault})"
        )
    return l2_normalise(vectors)


def query_vectors(vectors: Any, dim: int, *, batch: bool) -> np.ndarray:
    """Query vectors as a real ``(n, dim)`` array ready for FAISS's float32 normalisation:
    ``search``'s one vector (``batch`` off: shape ``(dim,)`` or ``(1, dim)``) or
    ``search_batch``'s rows. A row whose squared norm float32 arithmetic would under- or
    overflow is made a unit vector here, an unusable one refused.

    The hot case, one float32 vector, costs one dot product (about a µs): its squared norm
    is NaN or Inf when a value is, and in range only when the vector is usable."""
    if batch:
        return _ready(real_matrix(vectors, dim), "query vectors")
    single = "the query vector"
    array = np.asarray(vectors)
    if array.shape == (1, dim):
        array = array[0]
    elif array.shape != (dim,):
        if array.ndim == 1:
            raise UserInputError(f"the query vector must have {dim} dimensions, not {array.shape[0]}")
        raise UserInputError(
            f"vector must be one query of shape ({dim},), not {array.shape}; use search_batch for many queries"
        )
    # vdot: dot's speed, without its overflow warning for a huge vector (refused or rescaled below)
    if array.dtype == np.float32 and _SAFE_SQUARES[0] <= np.vdot(array, array) <= _SAFE_SQUARES[1]:
        return array[None]
    _check_real(array, single)
    return _ready(array[None], single, one=True)


def _ready(rows: np.ndarray, name: str, one: bool = False) -> np.ndarray:
    """Float32 rows whose squared norms float32 handles (as given), else :func:`unit_rows`."""
    if not len(rows):
        return rows.astype(np.float32)
    squares = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
    if _SAFE_SQUARES[0] <= squares.min() and squares.max() <= _SAFE_SQUARES[1]:  # False for NaN
        return rows.astype(np.float32, copy=False)
    return unit_rows(rows, name, one)


def _check_real(array: np.ndarray, name: str) -> None:
    if array.dtype.kind not in "iuf":
        raise UserInputError(f"{name} must hold real numbers, not {array.dtype} values")


def _fault(row: np.ndarray) -> str:
    if not np.isfinite(row).all():
        return "holds NaN or Inf"
    if not row.any():
        return "is all zeros: it has no direction"
    return f"holds values beyond float32's range (±{FLOAT32_MAX:.3g})"


def _shown(value: Any) -> str:
    if value is None:
        return "None"
    shown = repr(value)
    return f"{type(value).__name__} {shown if len(shown) <= 40 else shown[:39] + '…'}"
