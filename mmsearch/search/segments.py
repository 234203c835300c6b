"""Video hits merged into segments: neighbouring moments of one video are one answer.

A video gives a vector per sampled frame and per soundtrack window, so a query that
matches a scene matches several rows in a row; listed one by one they would fill the
page with a single scene. Rows are taken best first, like non-maximum suppression: a
row of a video whose span touches a segment already started in that video (within
``gap_s``) extends it; any other row starts a new result. Taking stops at the row
that would start result ``k + 1``, so a segment only grows by rows that score better
than every result left out, and a weak neighbour across a cut never drags a segment
into the next scene. A segment keeps the id and metadata of its best row (the frame
to show) and gains ``start_s``, ``end_s`` and ``merged`` (the rows it stands for).

Pure functions on plain rows (no index, no model), so they are tested on their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

GAP_S = 0.5  # rows whose spans are this close still touch (offsets are rounded; samples may jitter)
FETCH = 8  # rows fetched per wanted result before grouping; more are fetched when they do not suffice
Ranked = tuple[float, int, dict]  # score, id, metadata row


@dataclass
class _Segment:
    score: float
    item_id: int
    row: dict
    start: float
    end: float
    merged: int = 1


def is_timed_video(row: dict) -> bool:
    """Whether a row is a moment of a video (and so can join a segment)."""
    return row.get("modality") == "video" and row.get("offset_s") is not None


def group(ranked: Sequence[Ranked], k: int, gap_s: float = GAP_S) -> tuple[list[Ranked], bool]:
    """The best ``k`` results of ``ranked`` (best first) with touching video rows merged.

    Returns the results, best first, and whether they are final: ``False`` when ``ranked``
    ran out before the row that would start result ``k + 1``, so more rows could still
    extend a segment or add a result (fetch more and call again).
    """
    results: list[_Segment] = []
    open_by_path: dict[str, list[_Segment]] = {}
    for score, item_id, row in ranked:
        span = _span(row)
        if span is not None:
            touching = next((s for s in open_by_path.get(row["path"], []) if _touches(s, span, gap_s)), None)
            if touching is not None:
                touching.start, touching.end = min(touching.start, span[0]), max(touching.end, span[1])
                touching.merged += 1
                continue
        if len(results) == k:
            return [_result(s) for s in results], True
        segment = _Segment(score, item_id, row, *(span or (0.0, 0.0)))
        results.append(segment)
        if span is not None:
            open_by_path.setdefault(row["path"], []).append(segment)
    return [_result(s) for s in results], False


def _span(row: dict) -> tuple[float, float] | None:
    if not is_timed_video(row):
        return None
    start = float(row["offset_s"])
    return start, start + float(row.get("duration_s") or 0.0)


def _touches(segment: _Segment, span: tuple[float, float], gap_s: float) -> bool:
    return span[0] <= segment.end + gap_s and span[1] >= segment.start - gap_s


def _result(segment: _Segment) -> Ranked:
    if not is_timed_video(segment.row):
        return segment.score, segment.item_id, segment.row
    extra = {"start_s": round(segment.start, 6), "end_s": round(segment.end, 6), "merged": segment.merged}
    return segment.score, segment.item_id, segment.row | extra


def top_segments(ranked: Callable[[int], list[list[Ranked]]], k: int, total: int) -> list[list[Ranked]]:
    """Per query, the best ``k`` results with video rows grouped. ``ranked(n)`` gives each
    query's best ``n`` rows (fewer when no more qualify); ``k * FETCH`` are asked for first,
    four times more while some query's results are not final and more rows exist."""
    fetch = min(k * FETCH, total)
    while True:
        rows = ranked(fetch)
        grouped = [group(hits, k) for hits in rows]
        if fetch >= total or all(final or len(hits) < fetch for hits, (_, final) in zip(rows, grouped)):
            return [results for results, _ in grouped]
        fetch = min(fetch * 4, total)
