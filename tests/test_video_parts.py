"""Video parts: each Part of a film decodes only its span, and the parts together give the whole file's pieces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmsearch import world
from mmsearch.ingest.decode import DecodeOptions, Part
from mmsearch.ingest.video import decode_video, sample

RED = world.Scene("circle", "red", "white", 1, "large", 1)
BLUE = world.Scene("square", "blue", "black", 1, "large", 2)
GREEN = world.Scene("star", "green", "grey", 1, "large", 3)
OPTIONS = DecodeOptions(image_size=32, sample_rate=22_050, window_s=3.0, video_every=2.0)


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24 s film cut at 5, 11 and 18 s (keyframes only at the cuts), a 30 s one with a
    keyframe every second, and a 6 s one."""
    root = tmp_path_factory.mktemp("films")
    world.render_video(root / "film.mp4", [(RED, 5.0), (BLUE, 6.0), (GREEN, 7.0), (RED, 6.0)], size=48)
    world.render_video(root / "long.mp4", [(RED, 10.0), (BLUE, 10.0), (GREEN, 10.0)], size=48, keyframe_every=10)
    world.render_video(root / "short.mp4", [(RED, 3.0), (BLUE, 3.0)], size=48)
    return root


@pytest.fixture(scope="module")
def drifting(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 10 s film whose keyframes (every 1.9 s) drift ever further before the 2 s marks,
    with a cut at 3.9 s, just after the keyframe of mark 4 s (a big P-frame, no keyframe)."""
    import av

    path = tmp_path_factory.mktemp("drift") / "drift.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 48
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "x264-params": "scenecut=0:keyint=1000"}  # keyframes only where told
        for number in range(100):
            picture = np.asarray(world.render(RED if number < 39 else BLUE, 48))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(picture, number % 6 - 3, axis=1)))
            frame.pts = number
            if number % 19 == 0:
                frame.pict_type = av.video.frame.PictureType.I
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return str(path)


def _tracks(pieces: list) -> tuple[list[dict], dict[float, np.ndarray]]:
    frames = [p.meta for p in pieces if p.meta["track"] == "frame"]
    return frames, {p.meta["offset_s"]: p.payload for p in pieces if p.meta["track"] == "sound"}


def test_parts_together_are_the_whole_film(films: Path) -> None:
    path = str(films / "film.mp4")
    whole_meta, whole = decode_video(path, OPTIONS)
    whole_frames, whole_sound = _tracks(whole)
    assert whole_meta["parts"] == 1 and [f["offset_s"] for f in whole_frames][:5] == [0.0, 2.0, 4.0, 5.0, 6.0]
    frames: list[dict] = []
    sound: dict[float, np.ndarray] = {}
    for index in range(3):
        meta, pieces = decode_video(path, OPTIONS, Part(index, 3))
        assert meta["parts"] == 3 and meta["duration"] == whole_meta["duration"]
        start, end = Part(index, 3).span(meta["duration"], OPTIONS.video_every)
        own, heard = _tracks(pieces)
        assert own and all(start <= f["offset_s"] < end for f in own)
        assert own[-1]["offset_s"] + own[-1]["duration_s"] == pytest.approx(min(end, meta["duration"]))
        assert heard and all(start <= offset < end for offset in heard) and not set(heard) & set(sound)
        frames += own
        sound |= heard
    assert [f["offset_s"] for f in frames] == pytest.approx([f["offset_s"] for f in whole_frames], abs=1e-3)
    assert sorted(sound) == sorted(whole_sound) == [3.0 * n for n in range(8)]
    for offset, wave in whole_sound.items():  # windows across a part's end are read in full, sample-exact
        np.testing.assert_allclose(sound[offset], wave, atol=1e-6)


def test_parts_find_the_same_cuts_as_the_whole_film(films: Path) -> None:
    path = str(films / "film.mp4")
    cuts = [sample(path, 2.0, 32, part=Part(index, 3)).cuts for index in range(3)]
    assert cuts == [[5.0], [11.0], []]  # 18 s is a mark on a keyframe: a sample, not a cut
    assert sample(path, 2.0, 32).cuts == [5.0, 11.0]


def test_a_middle_part_demuxes_and_decodes_only_its_share(films: Path) -> None:
    path = str(films / "long.mp4")
    whole = sample(path, 0.5, 32)
    middle = sample(path, 0.5, 32, part=Part(1, 3))
    assert middle.span == (10.0, 20.0)
    assert [t for t, _ in middle.frames] == [t for t, _ in whole.frames if 10.0 <= t < 20.0]
    assert whole.packets == 300 and middle.packets <= 100 + 10 + 2 * 16  # its GOPs, plus the reorder margin
    assert 0 < middle.decoded <= whole.decoded / 2


def test_a_part_past_the_last_used_one_is_empty(films: Path) -> None:
    path = str(films / "short.mp4")
    meta, pieces = decode_video(path, OPTIONS, Part(5, 6))
    assert (meta["parts"], pieces) == (3, [])  # 6 s on a 2 s grid holds 3 parts at most
    meta, pieces = decode_video(path, OPTIONS, Part(2, 6))
    assert meta["parts"] == 3 and [p.meta["offset_s"] for p in pieces if p.meta["track"] == "frame"] == [4.0]


def test_a_soundtrack_muxed_away_from_its_pictures_is_read_on_its_own(films: Path) -> None:
    """When the file holds a part's sound before the keyframe its pictures start from, the
    soundtrack is read again from its own seek: the same samples as the whole file's."""
    import av

    from mmsearch.ingest.video import _Soundtrack

    path = str(films / "film.mp4")
    with av.open(path) as container:
        track = _Soundtrack(container.streams.audio[0], OPTIONS.sample_rate, OPTIONS.window_s, (8.0, 16.0))
        track.reread(container)
        wave = track.wave()
    _, whole = _tracks(decode_video(path, OPTIONS)[1])
    assert track.first_s == 9.0 and track.started()
    np.testing.assert_allclose(wave, np.concatenate([whole[9.0], whole[12.0], whole[15.0]]), atol=1e-6)


def test_a_keyframe_just_before_a_mark_stands_in_for_it(drifting: str) -> None:
    whole = sample(drifting, 2.0, 32)
    assert [t for t, _ in whole.frames] == [0.0, 1.9, 3.8, 3.9, 5.7, 7.6]  # marks 2-8 s snap back to keyframes
    assert whole.cuts == [3.9]
    # the 9.5 s keyframe is a candidate (all are, this few); the cut's P-frame follows its keyframe
    assert whole.decoded == 7
    third = sample(drifting, 2.0, 32, part=Part(3, 5))
    assert [t for t, _ in third.frames] == [5.7] and third.decoded == 1  # not 5.7 s on to 6.0 s: 4 pictures


def test_parts_cut_at_marks_with_keyframes_before_them_are_the_whole_film(drifting: str) -> None:
    """Each 2 s part starts at a mark whose keyframe lies in the part before: the part of
    the mark gives it, the part before stops short of it (the cut at 3.9 s goes with it)."""
    _, whole = decode_video(drifting, OPTIONS)
    parts = [decode_video(drifting, OPTIONS, Part(index, 5))[1] for index in range(5)]
    assert [[p.meta["offset_s"] for p in pieces] for pieces in parts] == [[0.0], [1.9], [3.8, 3.9], [5.7], [7.6]]
    together = [piece for pieces in parts for piece in pieces]
    assert [p.meta for p in together] == [p.meta for p in whole]  # times and durations (to the next sample)
    assert all(np.array_equal(a.payload, b.payload) for a, b in zip(together, whole, strict=True))
    assert [sample(drifting, 2.0, 32, part=Part(index, 5)).cuts for index in range(5)] == [[], [], [3.9], [], []]
    forward = DecodeOptions(image_size=32, video_every=1.8, soundtrack=False)  # keyframes just after the marks
    _, whole = decode_video(drifting, forward)
    assert [p.meta["offset_s"] for p in whole] == [0.0, 1.9, 3.8, 3.9, 5.7, 7.6, 9.0]
    together = [piece for index in range(6) for piece in decode_video(drifting, forward, Part(index, 6))[1]]
    assert [p.meta for p in together] == [p.meta for p in whole]  # 0 s lasts until 1.9 s, not to its part's end
