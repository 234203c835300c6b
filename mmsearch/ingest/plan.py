"""Incremental planning: diff what is on disk against what the index holds.

Cheap checks first: an unchanged size and mtime means unchanged. Otherwise the
content hash decides whether stored vectors can be reused (a touched, renamed,
moved or copied file) or the file must be embedded again. Files are hashed here
only when some indexed file has the same size — otherwise no match is possible
and the decode worker hashes the bytes it reads anyway.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa

from mmsearch.hashing import file_digest
from mmsearch.ingest.discover import FoundFile, under


@dataclass(frozen=True)
class Reuse:
    """A file whose content is already indexed: copy the vectors of ``source_ids``."""

    file: FoundFile
    content_hash: str
    source_ids: list[int]


@dataclass
class Plan:
    """What an ``add`` must do; ``replaces`` maps a path to ids its new rows supersede."""

    embed: list[FoundFile] = field(default_factory=list)
    reuse: list[Reuse] = field(default_factory=list)
    replaces: dict[str, list[int]] = field(default_factory=dict)
    gone: list[int] = field(default_factory=list)
    unchanged: int = 0
    known_failures: list[dict] = field(default_factory=list)
    kept_failures: list[dict] = field(default_factory=list)


def mtime_us(file: FoundFile) -> int:
    """Metadata stores microseconds; compare at that precision."""
    return file.mtime_ns // 1000


def make_plan(
    found: Iterable[FoundFile],
    known: pa.Table,
    failures: pa.Table,
    roots: list[str],
    options: str,
    unreadable: Iterable[str] = (),
) -> Plan:
    """Plan an add of ``found`` (everything under ``roots``) with decode ``options``.

    ``known``: live rows with columns path, id, size, mtime_us, content_hash, pieces;
    a file with fewer live rows than pieces was cut short by a crash and is redone.
    ``unreadable``: folders the walk could not list; their items are not "gone".
    ``failures``: earlier failure rows with path, size, mtime_us, options (plus the rest);
    a failed file is retried once it changes or the decode options do.
    """
    by_path: dict[str, list[dict]] = defaultdict(list)
    for row in known.to_pylist():
        by_path[row["path"]].append(row)
    by_hash = {
        rows[0]["content_hash"]: [row["id"] for row in rows]
        for rows in by_path.values()
        if len(rows) == rows[0]["pieces"]
    }
    sizes = {rows[0]["size"] for rows in by_path.values()}
    failed = {row["path"]: row for row in failures.to_pylist()}

    plan = Plan()
    seen: set[str] = set()
    for file in found:
        if file.path in seen:
            continue
        seen.add(file.path)
        rows = by_path.get(file.path, [])
        stamp = (file.size, mtime_us(file))
        complete = bool(rows) and len(rows) == rows[0]["pieces"]
        if complete and (rows[0]["size"], rows[0]["mtime_us"]) == stamp:
            plan.unchanged += 1
            continue
        previous_failure = failed.get(file.path)
        if previous_failure and (
            previous_failure["size"],
            previous_failure["mtime_us"],
            previous_failure["options"],
        ) == (*stamp, options):
            plan.known_failures.append(previous_failure)
            continue
        if rows:
            plan.replaces[file.path] = [row["id"] for row in rows]
        content_hash = file_digest(file.path) if file.size in sizes else None
        if content_hash in by_hash:
            plan.reuse.append(Reuse(file, content_hash, by_hash[content_hash]))
        else:
            plan.embed.append(file)

    unreadable = list(unreadable)
    plan.gone = [
        row["id"]
        for path, rows in by_path.items()
        if path not in seen and under(path, roots) and not under(path, unreadable)
        for row in rows
    ]
    plan.kept_failures = plan.known_failures + [row for path, row in failed.items() if not under(path, roots)]
    return plan
