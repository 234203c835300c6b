"""Video: frame sampling, ingest of frames and soundtracks, segments, failures, renames, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_image
from mmsearch import Index, world
from mmsearch.errors import UserInputError
from mmsearch.ingest.add import AddOptions
from mmsearch.ingest.decode import DecodeOptions, decode
from mmsearch.ingest.video import sample
from mmsearch.models.registry import load_encoder
from mmsearch.search.segments import FETCH, group, top_segments

RED = world.Scene("circle", "red", "white", 1, "large", 1)
BLUE = world.Scene("square", "blue", "black", 1, "large", 2)
GREEN = world.Scene("star", "green", "grey", 1, "large", 3)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cut video (red 3 s, then blue 3 s), a 30 s video with a keyframe every second,
    a damaged MP4, an MP4 holding only sound, an image and a sound file."""
    root = tmp_path_factory.mktemp("clips")
    world.render_video(root / "cut.mp4", [(RED, 3.0), (BLUE, 3.0)], size=96)
    world.render_video(root / "long.mov", [(RED, 10.0), (BLUE, 10.0), (GREEN, 10.0)], size=64, keyframe_every=10)
    (root / "broken.mp4").write_bytes((root / "cut.mp4").read_bytes()[:300])
    _sound_only(root / "sound.mp4")
    write_image(root / "photo.png", (200, 30, 30))
    import soundfile

    soundfile.write(root / "beep.wav", world.render_sound(GREEN), world.SAMPLE_RATE)
    return root


def _sound_only(path: Path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=world.SAMPLE_RATE)
        stream.layout = "mono"
        world.mux_sound(container, stream, world.render_sound(RED))


def test_sampling_every_interval_plus_the_cut(clips: Path) -> None:
    sampled = sample(str(clips / "cut.mp4"), 2.0, 32)
    times = [t for t, _ in sampled.frames]
    assert times == [0.0, 2.0, 3.0, 4.0]  # every 2 s, plus the cut at 3 s
    assert sampled.cuts == [3.0]
    assert all(crop.shape == (32, 32, 3) and crop.dtype == np.uint8 for _, crop in sampled.frames)
    red, blue = sampled.frames[0][1].reshape(-1, 3).mean(0), sampled.frames[2][1].reshape(-1, 3).mean(0)
    assert red[0] > red[2] and blue[2] > blue[0]  # the frame at the cut shows the new scene

    decoded = decode(str(clips / "cut.mp4"), "video", DecodeOptions(image_size=32, sample_rate=8000))
    assert decoded.error is None
    meta, pieces = decoded.meta, decoded.pieces
    assert (meta["width"], meta["height"], meta["fps"], meta["format"]) == (96, 96, 10.0, "mp4")
    assert meta["duration"] == pytest.approx(6.0, abs=0.15)
    frames = [p.meta for p in pieces if p.meta["track"] == "frame"]
    assert [(f["offset_s"], f["duration_s"]) for f in frames[:3]] == [(0.0, 2.0), (2.0, 1.0), (3.0, 1.0)]
    assert frames[-1]["offset_s"] + frames[-1]["duration_s"] == pytest.approx(meta["duration"])
    sounds = [p for p in pieces if p.meta["track"] == "sound"]
    assert [p.meta["offset_s"] for p in sounds] == [0.0, 2.0, 4.0] and {p.modality for p in sounds} == {"audio"}


def test_a_long_video_is_not_decoded_frame_by_frame(clips: Path) -> None:
    sampled = sample(str(clips / "long.mov"), 5.0, 32)
    assert [t for t, _ in sampled.frames] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    assert sampled.packets == 300
    assert sampled.decoded < sampled.packets / 3  # keyframes near the marks, not every frame
    dense = sample(str(clips / "long.mov"), 0.5, 32)
    assert len(dense.frames) == 60 and sampled.decoded < dense.decoded <= 300


def _row(path: str, offset: float, duration: float = 2.0, track: str = "frame") -> dict:
    return {"modality": "video", "path": path, "offset_s": offset, "duration_s": duration, "track": track}


def test_group_merges_touching_hits_of_one_video_best_first() -> None:
    ranked = [
        (0.9, 1, _row("a.mp4", 4.0)),
        (0.8, 2, _row("a.mp4", 2.0, track="sound")),  # touches 4–6: joins, segment 2–6
        (0.7, 3, {"modality": "image", "path": "x.png"}),
        (0.6, 4, _row("b.mp4", 0.0)),
        (0.5, 5, _row("a.mp4", 10.0)),  # same video, not touching: a result of its own
        (0.4, 6, _row("a.mp4", 6.0, 1.0)),  # joins 2–6 → 2–7 (taken before result k+1 appears)
        (0.3, 7, _row("c.mp4", 0.0)),  # would be result 5 of k=4: grouping stops here
        (0.2, 8, _row("a.mp4", 7.0)),  # weaker than a left-out result: never extends a segment
    ]
    results, final = group(ranked, k=4)
    assert final
    assert [(score, item_id) for score, item_id, _ in results] == [(0.9, 1), (0.7, 3), (0.6, 4), (0.5, 5)]
    first = results[0][2]
    assert (first["start_s"], first["end_s"], first["merged"], first["offset_s"]) == (2.0, 7.0, 3, 4.0)
    assert "start_s" not in results[1][2]  # not a video
    assert (results[3][2]["start_s"], results[3][2]["end_s"], results[3][2]["merged"]) == (10.0, 12.0, 1)
    partial, final = group(ranked[:5], k=4)
    assert not final and len(partial) == 4  # ran out of rows: the caller fetches more


def test_top_segments_fetches_more_until_a_segment_is_closed() -> None:
    rows = [(1.0 - n / 100, n, _row("a.mp4", 2.0 * n)) for n in range(3 * FETCH)]  # one long scene
    rows.append((0.1, 99, _row("b.mp4", 0.0)))
    asked: list[int] = []

    def ranked(n: int) -> list[list]:
        asked.append(n)
        return [rows[:n]]

    ((best,),) = top_segments(ranked, k=1, total=len(rows))
    assert asked == [FETCH, len(rows)]  # every row of a.mp4 touched the segment: it fetched on
    assert (best[1], best[2]["start_s"], best[2]["end_s"], best[2]["merged"]) == (0, 0.0, 6.0 * FETCH, 3 * FETCH)


@pytest.fixture(scope="module")
def demo_encoder():
    """The shipped demo model: it sees and hears, so soundtracks are embedded too."""
    return load_encoder("demo", "cpu")


@pytest.fixture(scope="module")
def video_index(tmp_path_factory: pytest.TempPathFactory, demo_encoder, clips: Path) -> tuple[Index, Path]:
    folder = tmp_path_factory.mktemp("mixed")
    for name in ("cut.mp4", "broken.mp4", "sound.mp4", "photo.png", "beep.wav"):
        shutil.copy(clips / name, folder / name)
    idx = Index.create(tmp_path_factory.mktemp("index") / "i", encoder=demo_encoder)
    idx.add([folder], workers=0)
    return idx, folder


def test_ingest_gives_frames_and_soundtrack_with_metadata(video_index: tuple[Index, Path]) -> None:
    idx, _ = video_index
    counts = idx.info()["by_modality"]
    assert counts == {"image": 1, "audio": 1, "video": 4 + 3}
    rows = idx.sql(
        "SELECT track, offset_s, duration_s, width, height, fps, duration, format, pieces FROM items "
        "WHERE modality = 'video' ORDER BY track, offset_s"
    ).to_pylist()
    assert [(r["track"], r["offset_s"]) for r in rows] == [
        ("frame", 0.0), ("frame", 2.0), ("frame", 3.0), ("frame", 4.0), ("sound", 0.0), ("sound", 2.0), ("sound", 4.0)
    ]  # fmt: skip
    assert {(r["width"], r["height"], r["fps"], r["format"], r["pieces"]) for r in rows} == {(96, 96, 10.0, "mp4", 7)}
    assert all(r["duration"] == pytest.approx(6.0, abs=0.15) for r in rows)
    failures = {Path(r["path"]).name: r["reason"] for r in idx.sql("SELECT path, reason FROM failures").to_pylist()}
    assert failures["broken.mp4"].startswith("not a readable video file")
    assert failures["sound.mp4"] == "no video stream (the file holds audio)"


def test_video_search_groups_segments_and_no_group_shows_rows(video_index: tuple[Index, Path]) -> None:
    idx, folder = video_index
    whole = idx.search("a red circle", modality="video", k=100)
    assert len(whole) == 1  # every row of the one video touches the next: one segment
    (segment,) = whole
    assert (segment.start_s, segment.end_s) == (0.0, pytest.approx(6.0, abs=0.15))
    assert segment.metadata["merged"] == 7 and segment.path == str(folder / "cut.mp4")
    raw = idx.search("a red circle", modality="video", k=100, group=False)
    assert len(raw) == 7 and all(hit.start_s is None for hit in raw)
    assert segment.score == raw[0].score and segment.id == raw[0].id
    two = idx.search("a red circle", modality="video", k=2)
    assert len(two) <= 2 and all(hit.start_s <= hit.metadata["offset_s"] < hit.end_s for hit in two)
    heard = idx.search(audio=folder / "beep.wav", modality="video", k=100, group=False)
    assert {hit.metadata["track"] for hit in heard} == {"frame", "sound"}
    assert {hit.modality for hit in idx.search("red", modality="any", k=100)} == {"image", "audio", "video"}


def test_renamed_video_reuses_its_vectors(tmp_path: Path, demo_encoder, clips: Path) -> None:
    folder = tmp_path / "v"
    folder.mkdir()
    shutil.copy(clips / "cut.mp4", folder / "cut.mp4")
    idx = Index.create(tmp_path / "index", encoder=demo_encoder)
    assert idx.add([folder], workers=0).vectors == 7
    before = idx.vectors(idx.sql("SELECT id FROM items ORDER BY track, offset_s")["id"].to_pylist())
    (folder / "cut.mp4").rename(folder / "renamed.mp4")
    summary = idx.add([folder], workers=0)
    assert (summary.reused, summary.embedded, summary.removed) == (1, 0, 7)  # removed counts rows
    rows = idx.sql("SELECT id, path FROM items ORDER BY track, offset_s").to_pylist()
    assert {Path(r["path"]).name for r in rows} == {"renamed.mp4"}
    assert np.array_equal(idx.vectors([r["id"] for r in rows]), before)


def test_a_video_in_parts_gives_the_rows_and_vectors_of_one_job(tmp_path: Path, demo_encoder, clips: Path) -> None:
    folder = tmp_path / "v"
    folder.mkdir()
    shutil.copy(clips / "long.mov", folder / "long.mov")
    whole = Index.create(tmp_path / "whole", encoder=demo_encoder)
    whole.add([folder], workers=0)
    split = Index.create(tmp_path / "split", encoder=demo_encoder)
    split.add([folder], workers=0, part_size=(folder / "long.mov").stat().st_size // 3 + 1)
    listing = "SELECT id, track, offset_s, part, parts FROM items ORDER BY track, offset_s"
    one, parts = whole.sql(listing).to_pylist(), split.sql(listing).to_pylist()
    assert {(r["part"], r["parts"]) for r in one} == {(0, 1)}
    assert {(r["part"], r["parts"]) for r in parts} == {(0, 3), (1, 3), (2, 3)}
    assert [(r["track"], r["offset_s"]) for r in parts] == [(r["track"], r["offset_s"]) for r in one]
    cosines = np.sum(whole.vectors([r["id"] for r in one]) * split.vectors([r["id"] for r in parts]), axis=1)
    assert cosines.min() > 0.999
    assert split.add([folder], workers=0).unchanged == 1


def test_cli_video_query_json(tmp_path: Path, clips: Path) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(clips / "cut.mp4", folder / "cut.mp4")
    index = tmp_path / "idx"
    built = run_cli("index", str(folder), "--index", str(index), "--model", "demo", "--video-every", "1")
    assert built.returncode == 0, built.stderr
    hits = json.loads(run_cli("query", "a red circle", "--index", str(index), "-k", "50", "--json").stdout)
    assert len(hits) == 1  # only videos indexed: a text query returns video segments
    (hit,) = hits
    assert hit["modality"] == "video" and hit["rank"] == 1 and hit["path"] == str(folder / "cut.mp4")
    assert hit["start_s"] == 0.0 and hit["end_s"] == pytest.approx(6.0, abs=0.15) and hit["merged"] == 6 + 3
    assert hit["track"] in ("frame", "sound") and isinstance(hit["score"], float)
    raw = run_cli("query", "a red circle", "--index", str(index), "-k", "50", "--modality", "video", "--no-group")
    assert raw.returncode == 0, raw.stderr
    lines = raw.stdout.splitlines()
    assert len(lines) == 6 + 3 and all(" @ 00:0" in line for line in lines)
    bad = run_cli("index", str(folder), "--index", str(index), "--video-every", "0")
    assert bad.returncode != 0 and bad.stderr.startswith("mmsearch: error: --video-every must be a positive")


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan")])
def test_every_add_path_refuses_a_bad_video_interval(seconds: float) -> None:
    with pytest.raises(UserInputError, match="video_every must be a positive"):
        AddOptions(video_every=seconds)  # the local and the Ray path both take their options from here


def test_a_video_is_whole_when_its_last_piece_is_not_the_last_to_arrive(
    tmp_path: Path, demo_encoder, clips: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames are batched with images and sound windows with audio: with batches of 3, the
    soundtrack's last window is written while frame 4 still waits. The video becomes
    visible once all 7 rows are in, and a re-run finds it complete."""
    monkeypatch.setattr(demo_encoder, "batch_size", 3)
    folder = tmp_path / "v"
    folder.mkdir()
    shutil.copy(clips / "cut.mp4", folder / "cut.mp4")
    idx = Index.create(tmp_path / "index", encoder=demo_encoder)
    assert idx.add([folder], workers=0).vectors == 7
    assert idx.sql("SELECT count(*) AS n FROM items").to_pylist() == [{"n": 7}]
    again = idx.add([folder], workers=0)
    assert (again.unchanged, again.embedded) == (1, 0)
