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
import pyarrow.compute as pc

from mmsearch.hashing import file_digest
from mmsearch.ingest.discover import FoundFile, under
from mmsearch.store.catalog import paths_under


@dataclass(frozen=True)
class Reuse:
    """A file whose content is already indexed: copy the vectors of ``source_ids``."""

    file: FoundFile
    content_hash: str
    source_ids: list[int]


@dataclass(frozen=True)
class Resume:
    """A file cut short in parts: ``todo`` of its ``parts`` are still missing; ``rows`` are
    the ids of all its live rows (what a path that cannot resume part by part replaces)."""

    parts: int
    todo: list[int]
    rows: list[int]


@dataclass
class Plan:
    """What an ``add`` must do; ``replaces`` maps a path to ids its new rows supersede;
    ``resume`` names files of ``embed`` whose completed parts stay and are not embedded again."""

    embed: list[FoundFile] = field(default_factory=list)
    resume: dict[str, Resume] = field(default_factory=dict)
    reuse: list[Reuse] = field(default_factory=list)
    replaces: dict[str, list[int]] = field(default_factory=dict)
    gone: list[int] = field(default_factory=list)
    unchanged: int = 0
    known_failures: list[dict] = field(default_factory=list)
    kept_failures: list[dict] = field(default_factory=list)

    def redo_cut_short(self) -> None:
        """Embed files cut short whole again, replacing all their rows (for a path that
        cannot decode a file part by part)."""
        for path, resume in self.resume.items():
            self.replaces[path] = resume.rows
        self.resume.clear()


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
    *,
    listed: bool = False,
) -> Plan:
    """Plan an add of ``found`` (everything under ``roots``) with decode ``options``.

    ``known``: live rows with columns path, id, size, mtime_us, content_hash, part, parts, pieces
    (``pieces``: rows of that part); a file is complete when each of its parts has all its
    rows. An unchanged file cut short by a crash resumes: only its missing parts are embedded
    (the rows of a part cut short, from before parts were committed one by one, are replaced).
    ``unreadable``: folders the walk could not list; their items are not "gone".
    ``failures``: earlier failure rows with path, size, mtime_us, options (plus the rest);
    a failed file is retried once it changes or the decode options do.
    ``listed``: ``roots`` are the items of a list (paths, URLs), matched exactly, not folders.

    The diff runs on Arrow columns: unchanged files and vanished ones are found by joins,
    so only new or changed files (and the rows they may reuse) reach Python objects.
    """
    files = list({f.path: f for f in found}.values())
    per_part = known.group_by(["path", "part"]).aggregate(
        [("id", "count"), ("size", "min"), ("mtime_us", "min"), ("pieces", "min"), ("parts", "min")]
    )
    per_part = per_part.append_column(
        "done", pc.cast(pc.equal(per_part["id_count"], pc.cast(per_part["pieces_min"], pa.int64())), pa.int64())
    )
    per_path = per_part.group_by("path").aggregate(
        [("done", "sum"), ("parts_min", "min"), ("size_min", "min"), ("mtime_us_min", "min")]
    )
    whole = pc.fill_null(pc.equal(per_path["done_sum"], pc.cast(per_path["parts_min_min"], pa.int64())), False)
    per_path = per_path.append_column("whole", whole)
    looked_up = pa.table(
        {
            "path": pa.array([f.path for f in files], pa.string()),
            "at": pa.array(range(len(files)), pa.int64()),
            "stamp_size": pa.array([f.size for f in files], pa.int64()),
            "stamp_mtime": pa.array([mtime_us(f) for f in files], pa.int64()),
        }
    ).join(per_path, "path", join_type="left outer")
    complete = pc.fill_null(looked_up["whole"], False)  # null: never indexed
    same = pc.and_(
        pc.equal(looked_up["size_min_min"], looked_up["stamp_size"]),
        pc.equal(looked_up["mtime_us_min_min"], looked_up["stamp_mtime"]),
    )
    unchanged = pc.fill_null(pc.and_(complete, same), False).to_numpy(zero_copy_only=False)
    same_stamp = set(looked_up.filter(pc.fill_null(same, False))["path"].to_pylist())
    changed = looked_up.filter(pa.array(~unchanged))

    plan = Plan(unchanged=int(unchanged.sum()))
    failed = {row["path"]: row for row in failures.to_pylist()}
    sizes = set(pc.unique(known["size"]).to_pylist()) if known.num_rows else set()
    stored_ids: dict[str, list[int]] = defaultdict(list)
    changed_rows = known.filter(pc.is_in(known["path"], value_set=changed["path"]))
    for path, item_id in zip(changed_rows["path"].to_pylist(), changed_rows["id"].to_pylist()):
        stored_ids[path].append(item_id)
    parts_of = _parts(per_part.filter(pc.is_in(per_part["path"], value_set=pa.array(sorted(same_stamp), pa.string()))))
    candidates: list[tuple[FoundFile, str | None]] = []
    for at in sorted(changed["at"].to_pylist()):  # in the order found (a join does not keep it)
        file = files[at]
        stamp = (file.size, mtime_us(file))
        previous = failed.get(file.path)
        if previous and (previous["size"], previous["mtime_us"], previous["options"]) == (*stamp, options):
            plan.known_failures.append(previous)
            continue
        if file.path in parts_of:  # unchanged, cut short: only the missing parts
            count, done = parts_of[file.path]
            plan.resume[file.path] = Resume(count, [p for p in range(count) if p not in done], stored_ids[file.path])
            plan.embed.append(file)
            rows = changed_rows.filter(pc.equal(changed_rows["path"], file.path)).select(["id", "part"]).to_pylist()
            stale = [row["id"] for row in rows if row["part"] not in done]
            if stale:
                plan.replaces[file.path] = stale
            continue
        if file.path in stored_ids:
            plan.replaces[file.path] = stored_ids[file.path]
        hashable = file.size in sizes and file.size > 0  # 0: empty (never indexed), missing or remote
        candidates.append((file, file_digest(file.path) if hashable else None))
    reusable = _complete_ids_by_hash(known, per_path.filter(whole)["path"], {h for _, h in candidates if h})
    for file, content_hash in candidates:
        if content_hash in reusable:
            plan.reuse.append(Reuse(file, content_hash, reusable[content_hash]))
        else:
            plan.embed.append(file)
    order = {f.path: at for at, f in enumerate(files)}
    plan.embed.sort(key=lambda f: order[f.path])  # resumed files came first: back to the order found

    seen = pc.is_in(known["path"], value_set=pa.array([f.path for f in files], pa.string()))
    if listed:
        inside = pc.is_in(known["path"], value_set=pa.array(roots, pa.string())).to_numpy(zero_copy_only=False)
    else:
        inside = paths_under(known["path"], roots)
    gone = ~seen.to_numpy(zero_copy_only=False) & inside
    gone &= ~paths_under(known["path"], list(unreadable))
    plan.gone = known.filter(pa.array(gone))["id"].to_pylist()
    items = set(roots) if listed else None
    plan.kept_failures = plan.known_failures + [
        row for path, row in failed.items() if not (path in items if items is not None else under(path, roots))
    ]
    return plan


def _parts(per_part: pa.Table) -> dict[str, tuple[int, set[int]]]:
    """path -> (its parts, those complete) for files with at least one complete part."""
    found: dict[str, tuple[int, set[int]]] = {}
    for row in per_part.select(["path", "part", "parts_min", "done"]).to_pylist():
        if row["done"]:
            found.setdefault(row["path"], (row["parts_min"], set()))[1].add(row["part"])
    return found


def _complete_ids_by_hash(known: pa.Table, complete_paths: pa.Array, hashes: set[str]) -> dict[str, list[int]]:
    """Ids of fully indexed files (``complete_paths``) with one of ``hashes``, keyed by content hash."""
    if not hashes:
        return {}
    rows = known.filter(pc.is_in(known["content_hash"], value_set=pa.array(sorted(hashes), pa.string())))
    rows = rows.filter(pc.is_in(rows["path"], value_set=complete_paths))
    by_hash: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for row in rows.select(["path", "id", "content_hash"]).to_pylist():
        by_hash[row["content_hash"]][row["path"]].append(row["id"])
    return {content_hash: next(iter(paths.values())) for content_hash, paths in by_hash.items()}
