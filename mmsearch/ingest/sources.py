"""Inputs beyond local folders: lists of files and URLs, and reading their bytes.

A list (img2dataset style) is a Parquet, CSV or JSONL table with a column of
locations, or a ``.txt`` file with one per line. A location is a local path
(relative ones are taken from the list's folder), an ``http(s)://`` URL (read with
the standard library) or any URI pyarrow has a filesystem for (``s3://``, ``gs://``).
Remote items cannot be stat-ed cheaply, so they are planned as immutable: a URL
indexed once is unchanged on the next run. A location that cannot be read is a
per-item failure with its reason, never an error for the whole batch.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

from mmsearch.errors import UserInputError, one_line
from mmsearch.ingest.discover import DECODER_BY_EXTENSION, FoundFile, absolute

REMOTE_TIMEOUT_S = 30.0
URL_SCHEMES = ("http://", "https://")
LIST_EXTENSIONS = (".parquet", ".csv", ".jsonl", ".txt")
DEFAULT_DECODER = "image"  # a location without a known extension: URL lists are image lists by convention


class FetchError(Exception):
    """A location could not be read; the message is the recorded failure reason."""


def is_remote(location: str) -> bool:
    """Whether ``location`` is a URI (``scheme://...``) rather than a local path."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.isalnum()


def read_bytes(location: str, timeout_s: float = REMOTE_TIMEOUT_S) -> bytes:
    """The bytes at a local path or a remote location (remote errors become ``FetchError``)."""
    if not is_remote(location):
        with open(location, "rb") as handle:
            return handle.read()
    if location.startswith(URL_SCHEMES):
        return _http_get(location, timeout_s)
    return _pyarrow_read(location)


def _http_get(url: str, timeout_s: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "mmsearch"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise FetchError(f"HTTP {exc.code} {exc.reason}") from None
    except TimeoutError:
        raise FetchError(f"timed out after {timeout_s:g} s") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"cannot fetch: {one_line(reason, 160)}") from None


def _pyarrow_read(uri: str) -> bytes:
    """``s3://``, ``gs://`` and other URIs through pyarrow's filesystems (credentials from the environment)."""
    import pyarrow as pa
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except (pa.ArrowException, OSError) as exc:
        raise FetchError(f"cannot read: {one_line(exc, 160)}") from None


def decoder_for(location: str) -> str:
    """The decoder a listed location gets: by extension, else images."""
    name = location.split("?", 1)[0].rsplit("/", 1)[-1]
    return DECODER_BY_EXTENSION.get(os.path.splitext(name)[1].lower(), DEFAULT_DECODER)


def read_list(path: str | Path, column: str | None) -> list[str]:
    """The locations in a list file: ``column`` of a table, or the lines of a ``.txt`` file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LIST_EXTENSIONS:
        raise UserInputError(f"not a list of files or URLs: {path} (expected {', '.join(LIST_EXTENSIONS)})")
    if suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    read = {".parquet": pq.read_table, ".csv": pcsv.read_csv, ".jsonl": pjson.read_json}[suffix]
    try:
        table = read(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserInputError(f"cannot read the list {path}: {one_line(exc, 160)}") from None
    if column is None or column not in table.column_names:
        raise UserInputError(f"the list {path} has no column {column!r} (columns: {', '.join(table.column_names)})")
    return [
        str(value).strip() for value in table.column(column).to_pylist() if value is not None and str(value).strip()
    ]


def listed(lists: Sequence[str | Path], column: str | None) -> list[FoundFile]:
    """The items named by ``lists``, in order and without repeats.

    Local items are stat-ed (a missing one is kept: reading it records the failure);
    remote ones get size and mtime 0, so a URL indexed once counts as unchanged.
    """
    found: dict[str, FoundFile] = {}
    for list_path in lists:
        folder = Path(absolute(list_path)).parent
        for location in read_list(list_path, column):
            item = location if is_remote(location) else absolute(folder / os.path.expanduser(location))
            if item not in found:
                found[item] = _found(item)
    return list(found.values())


def _found(location: str) -> FoundFile:
    if is_remote(location):
        return FoundFile(location, decoder_for(location), 0, 0)
    try:
        info = os.stat(location)
    except OSError:
        return FoundFile(location, decoder_for(location), 0, 0)
    return FoundFile(location, decoder_for(location), info.st_size, info.st_mtime_ns)


def check_lists(paths: Iterable[str | Path]) -> list[str]:
    """Absolute paths of the list files, or a one-line error for the first unusable one."""
    checked = []
    for path in paths:
        if os.path.isdir(path):
            raise UserInputError(f"{path} is a folder; --url-column reads a list file (.txt, .csv, .jsonl or .parquet)")
        if not os.path.isfile(path):
            raise UserInputError(f"list file not found: {path}")
        checked.append(absolute(path))
    return checked
