"""Video decoding with PyAV: sampled frames become image pieces, the soundtrack audio windows.

A film is never decoded frame by frame when it need not be. One demux pass (reading
packets, decoding nothing) indexes every video packet: its time, whether it is a
keyframe and its size. From that index the sampler picks the frames worth decoding:

* a frame every ``video_every`` seconds — the keyframe itself when one lies within a
  quarter interval of the mark, because a keyframe decodes on its own;
* shot-change candidates: keyframes (all of them when there are at most two per sample,
  else those off the encoder's regular keyframe grid, which it placed at a scene change),
  and packets much larger than their neighbours (a cut makes the encoder spend bits on a
  fresh picture whether or not it starts a new group of pictures there).

The decode pass then feeds the decoder only the groups of pictures (GOPs) that hold a
wanted frame, and only up to that frame (then the decoder is drained rather than fed the
pictures that would push the wanted ones out). Every decoded picture that differs from the one
decoded before it becomes a sample too, so the cut itself (which, with B-frames, may come
just before the candidate packet) starts a segment.
Each sample's ``duration_s`` runs until the next sample. The soundtrack is decoded in
the same pass, resampled to the model's rate and cut into the audio windows of
:func:`mmsearch.ingest.decode.windows`.
"""

from __future__ import annotations

import bisect
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from statistics import median
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from mmsearch.preprocess import square_crop

if TYPE_CHECKING:
    from collections.abc import Iterable

    from av import VideoFrame
    from PIL import Image

    from mmsearch.ingest.decode import DecodeOptions, Piece

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
SNAP = 0.25  # of the interval: a keyframe this close to a mark stands in for it
KEYFRAMES_PER_SAMPLE = 2  # up to this many keyframes per sample are all decoded as candidates
SPIKE = 6.0  # a packet this many times its neighbourhood's median size is a cut candidate
SPIKE_NEIGHBOURS = 12  # packets on each side that make the neighbourhood
SIGNATURE = 16  # pixels per side of the thumbnail two pictures are compared on
CUT = 0.12  # mean absolute difference (0..1) of signatures above which a candidate is a new shot


@dataclass(frozen=True)
class _Packet:
    pts: int
    gop: int  # keyframes seen before it, in decode order
    key: bool
    size: int


@dataclass
class Sampled:
    """What sampling a video gave: (time in seconds, uint8 crop) per sample, and its cost."""

    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)
    cuts: list[float] = field(default_factory=list)  # shot changes: pictures unlike the one decoded before
    packets: int = 0  # video packets in the file
    decoded: int = 0  # video packets sent to the decoder
    duration: float = 0.0
    width: int = 0
    height: int = 0
    fps: float | None = None
    format: str | None = None
    sound: np.ndarray | None = None  # mono float32 at the requested rate, when asked for


def decode_video(path: str, options: DecodeOptions) -> tuple[dict, list[Piece]]:
    """One image piece per sampled frame and, when the model hears, audio windows of the soundtrack."""
    from mmsearch.ingest.decode import Piece, windows

    rate = options.sample_rate if options.soundtrack else None
    sampled = sample(path, options.video_every, options.image_size, sound_rate=rate)
    meta = {
        "format": sampled.format,
        "width": sampled.width,
        "height": sampled.height,
        "fps": sampled.fps,
        "duration": sampled.duration,
    }
    times = [t for t, _ in sampled.frames]
    ends = [*times[1:], max(sampled.duration, times[-1])]
    pieces = [
        Piece(crop, {"track": "frame", "offset_s": t, "duration_s": round(end - t, 6)}, modality="image")
        for (t, crop), end in zip(sampled.frames, ends)
    ]
    if sampled.sound is not None and len(sampled.sound):
        for window in windows(sampled.sound, options):
            window.meta["track"] = "sound"
            window.modality = "audio"
            pieces.append(window)
    return meta, pieces


def sample(path: str, every: float, size: int, sound_rate: int | None = None) -> Sampled:
    """Sample frames of the video at ``path`` every ``every`` seconds plus at shot changes,
    as ``size``-pixel square crops; with ``sound_rate``, also its soundtrack (mono)."""
    import av

    from mmsearch.ingest.decode import DecodeError

    if every <= 0:
        raise DecodeError(f"the sampling interval must be positive, not {every}")
    try:
        with av.open(path) as container:
            stream = _video_stream(container)
            packets = _index(container, stream)
        if not packets:
            raise DecodeError("no video frames in the file")
        with av.open(path) as container:
            return _decode(container, packets, every, size, sound_rate, path)
    except av.error.FFmpegError as exc:
        raise DecodeError(f"not a readable video file ({_reason(exc)})") from None


def frame_at(source: str | BinaryIO, offset_s: float, longest: int) -> Image.Image:
    """The picture on screen ``offset_s`` seconds into the video (counted from its first
    frame, as :func:`sample` counts), at most ``longest`` pixels on its longer side.

    Seeks to the keyframe at or before the moment and decodes forward to it: one group of
    pictures, never the film. ``source`` is a path or an open binary file."""
    import av

    from mmsearch.ingest.decode import DecodeError

    try:
        with av.open(source) as container:
            stream = _video_stream(container)
            start = stream.start_time or 0
            target = start + round(offset_s / float(stream.time_base))
            container.seek(target, stream=stream, backward=True, any_frame=False)
            frame, reached = _shown(container.decode(stream), target)
            if not reached and target > start:  # the seek overshot: decode from the beginning
                container.seek(start, stream=stream, backward=True, any_frame=False)
                frame, _ = _shown(container.decode(stream), target)
            if frame is None:
                raise DecodeError("no decodable video frames")
            scale = min(1.0, longest / max(frame.width, frame.height))
            return frame.to_image(width=max(1, round(frame.width * scale)), height=max(1, round(frame.height * scale)))
    except av.error.FFmpegError as exc:
        raise DecodeError(f"not a readable video file ({_reason(exc)})") from None


def _shown(frames: Iterable[VideoFrame], target: int) -> tuple[VideoFrame | None, bool]:
    """The frame on screen at pts ``target``: the last one at or before it (and ``True``),
    else the first one after it (and ``False``: the decoding started too late)."""
    shown = None
    for frame in frames:
        if frame.pts is None:
            continue
        if frame.pts > target:
            return (shown, True) if shown is not None else (frame, False)
        shown = frame
    return shown, shown is not None


def _reason(exc: Exception) -> str:
    message = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(message).split())[:200]


def _video_stream(container):
    from mmsearch.ingest.decode import DecodeError

    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise DecodeError(f"no video stream (the file holds {', '.join(kinds)})")
    return container.streams.video[0]


def _index(container, stream) -> list[_Packet]:
    """Every video packet with a time, in decode order, from a demux pass (nothing decoded)."""
    packets, gop = [], -1
    for packet in container.demux(stream):
        if packet.pts is None:
            continue
        gop += bool(packet.is_keyframe)
        packets.append(_Packet(packet.pts, max(gop, 0), bool(packet.is_keyframe), packet.size))
    return packets


@dataclass(frozen=True)
class Plan:
    """Which frames (by pts) to decode: samples always kept, candidates kept at a cut."""

    samples: frozenset[int]
    candidates: frozenset[int]
    gops: frozenset[int]  # the GOPs that hold a wanted frame


def plan(packets: list[_Packet], time_base: float, every: float) -> Plan:
    """The frames to decode for samples every ``every`` seconds and for shot-change candidates."""
    frames = sorted(packets, key=lambda p: p.pts)
    start = frames[0].pts
    times = [(p.pts - start) * time_base for p in frames]
    keys = [i for i, p in enumerate(frames) if p.key]
    key_times = [times[i] for i in keys]
    samples = set()
    mark = 0.0
    while mark <= times[-1]:
        near = bisect.bisect_left(key_times, mark)
        close = [keys[j] for j in (near - 1, near) if 0 <= j < len(keys) and abs(key_times[j] - mark) <= SNAP * every]
        chosen = min(close, key=lambda i: abs(times[i] - mark)) if close else bisect.bisect_left(times, mark - 1e-9)
        samples.add(frames[min(chosen, len(frames) - 1)].pts)
        mark += every
    if len(keys) <= KEYFRAMES_PER_SAMPLE * len(samples):  # cheap enough: look at every keyframe
        candidates = {frames[i].pts for i in keys[1:]} | _spikes(packets)
    else:
        candidates = _off_grid(frames, keys, times) | _spikes(packets)
    candidates -= samples
    wanted = samples | candidates
    return Plan(frozenset(samples), frozenset(candidates), frozenset(p.gop for p in packets if p.pts in wanted))


def _off_grid(frames: list[_Packet], keys: list[int], times: list[float]) -> set[int]:
    """Keyframes an encoder placed at a scene change rather than on its regular grid: those
    closer to the previous keyframe than the usual spacing (all of them in a short clip)."""
    gaps = [times[b] - times[a] for a, b in pairwise(keys)]
    if len(gaps) < 3:
        return {frames[i].pts for i in keys[1:]}
    usual = median(gaps)
    return {frames[i].pts for i, gap in zip(keys[1:], gaps) if gap < 0.9 * usual}


def _spikes(packets: list[_Packet]) -> set[int]:
    """Non-key packets far larger than the median of their neighbours (in decode order)."""
    sizes = [p.size for p in packets]
    found = set()
    for i, packet in enumerate(packets):
        if packet.key:
            continue
        around = sizes[max(0, i - SPIKE_NEIGHBOURS) : i] + sizes[i + 1 : i + 1 + SPIKE_NEIGHBOURS]
        if len(around) >= 4 and packet.size > SPIKE * max(median(around), 1):
            found.add(packet.pts)
    return found


def _decode(container, packets: list[_Packet], every: float, size: int, sound_rate: int | None, path: str) -> Sampled:
    """Decode the planned frames (and the soundtrack) in one demux pass."""
    stream = container.streams.video[0]
    time_base = float(stream.time_base)
    wanted = plan(packets, time_base, every)
    start = min(p.pts for p in packets)
    gop_of = {p.pts: p.gop for p in packets}
    result = _describe(container, stream, packets, time_base, path)
    audio = container.streams.audio[0] if sound_rate and container.streams.audio else None
    sound = _Soundtrack(sound_rate) if audio is not None and sound_rate else None
    wanted_pts = wanted.samples | wanted.candidates
    unsent = Counter(gop_of[pts] for pts in wanted_pts)  # per GOP, wanted pictures not yet sent
    kept: list[tuple[float, np.ndarray]] = []
    previous: np.ndarray | None = None  # the picture just before, when nothing was skipped since
    last: np.ndarray | None = None  # the last picture decoded at all
    gop, dirty = -1, False

    def receive(frame) -> None:
        nonlocal previous, last
        if frame.pts is None:
            return
        signature = _signature(frame)
        # Any decoded frame may be the cut: with B-frames it can precede the candidate packet.
        # After a skip, only a candidate keyframe is compared, with the last picture seen.
        if previous is not None:
            is_cut = _differs(signature, previous)
        else:
            is_cut = last is not None and frame.pts in wanted.candidates and _differs(signature, last)
        if frame.pts in wanted.samples or is_cut:
            time_s = round((frame.pts - start) * time_base, 6)
            kept.append((time_s, _crop(frame, size)))
            if is_cut:
                result.cuts.append(time_s)
        previous = last = signature

    codec = stream.codec_context
    streams = [stream] if audio is None else [stream, audio]
    for packet in container.demux(*streams):
        if packet.stream.type == "audio":
            if sound is not None:
                sound.add(packet)
            continue
        if packet.pts is None:
            continue
        gop += bool(packet.is_keyframe)
        if not unsent.get(gop):  # nothing wanted in this GOP, or nothing more
            dirty, previous = True, None
            continue
        if dirty and packet.is_keyframe:
            codec.flush_buffers()  # frames of a skipped GOP must not leak in
            dirty = False
        result.decoded += 1
        for frame in codec.decode(packet):
            receive(frame)
        if packet.pts in wanted_pts:
            unsent[gop] -= 1
            if not unsent[gop]:  # every wanted picture is in the decoder: drain it rather than decode on
                for frame in codec.decode(None):
                    receive(frame)
                codec.flush_buffers()
    for frame in codec.decode(None):
        receive(frame)
    result.frames = _unique_sorted(kept)
    if not result.frames:
        from mmsearch.ingest.decode import DecodeError

        raise DecodeError("no decodable video frames")
    result.sound = sound.wave() if sound is not None else None
    return result


def _describe(container, stream, packets: list[_Packet], time_base: float, path: str) -> Sampled:
    """File-level metadata: size, frame rate, whole duration, container format."""
    context = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    span = (max(p.pts for p in packets) - min(p.pts for p in packets)) * time_base + (1 / fps if fps else 0)
    duration = container.duration / 1_000_000 if container.duration else span
    extension = os.path.splitext(path)[1].lower()
    name = extension.lstrip(".") if extension in VIDEO_EXTENSIONS else container.format.name.split(",")[0]
    return Sampled(
        packets=len(packets), duration=float(duration), width=context.width, height=context.height, fps=fps, format=name
    )


def _unique_sorted(frames: list[tuple[float, np.ndarray]]) -> list[tuple[float, np.ndarray]]:
    seen: dict[float, np.ndarray] = {}
    for time_s, crop in frames:
        seen.setdefault(round(time_s, 6), crop)
    return sorted(seen.items(), key=lambda item: item[0])


def _scaled(frame, side: int) -> tuple[int, int]:
    scale = side / min(frame.width, frame.height)
    return max(side, round(frame.width * scale)), max(side, round(frame.height * scale))


def _crop(frame, size: int) -> np.ndarray:
    """The model's square crop, scaled by FFmpeg first (far cheaper than a full-size RGB picture)."""
    width, height = _scaled(frame, size)
    return square_crop(frame.to_image(width=width, height=height), size)


def _signature(frame) -> np.ndarray:
    """A tiny colour thumbnail: enough to tell two shots apart, cheap for every decoded frame."""
    return frame.reformat(width=SIGNATURE, height=SIGNATURE, format="rgb24").to_ndarray().astype(np.float32) / 255


def _differs(signature: np.ndarray, previous: np.ndarray) -> bool:
    return float(np.abs(signature - previous).mean()) > CUT


class _Soundtrack:
    """Audio packets decoded and resampled to mono float32 as they arrive."""

    def __init__(self, rate: int) -> None:
        import av

        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self.chunks: list[np.ndarray] = []
        self.broken = False

    def add(self, packet) -> None:
        import av

        if self.broken:
            return
        try:
            for frame in packet.decode():
                for out in self.resampler.resample(frame):
                    self.chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:  # a damaged soundtrack leaves the pictures indexable
            self.broken = True
            warnings.warn(f"soundtrack cut short: {_reason(exc)}", stacklevel=2)

    def wave(self) -> np.ndarray:
        if not self.broken:
            for out in self.resampler.resample(None):
                self.chunks.append(out.to_ndarray().reshape(-1))
        return np.concatenate(self.chunks).astype(np.float32) if self.chunks else np.zeros(0, np.float32)
