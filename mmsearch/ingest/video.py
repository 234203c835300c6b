"""Video decoding with PyAV: sampled frames become image pieces, the soundtrack audio windows.

A film is never decoded frame by frame when it need not be. One demux pass (reading
packets, decoding nothing) indexes every video packet: its time, whether it is a
keyframe and its size. From that index the sampler picks the frames worth decoding:

* a frame every ``video_every`` seconds — the nearest keyframe when one lies within a
  quarter interval of the mark (before or after it), because a keyframe decodes on its
  own (encoders drift their keyframe grid after a scene-cut keyframe), else the first
  frame at or after the mark;
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

A long film is decoded in parts (:class:`mmsearch.ingest.decode.Part`), each its own job:
the part's span of the sampling grid comes from the container's duration (no demux), the
demuxer seeks to the keyframe at or before a quarter interval ahead of the span and stops
a few packets past a quarter interval beyond its end, so a part costs its share of the
film. Times stay counted from the stream's start and marks sit on the same grid. A mark
belongs to the part whose span holds the mark (not its frame), and a part gives the
frames from its first mark's frame up to the next part's first mark's frame, which it
picks from the packets indexed past its end: its marks' frames (its first may be a
keyframe just before the span) and the cuts between them. So the parts' samples, cuts and
sound windows are, together, those of the whole file, each once and in order, and a
part's last frame lasts until the next part's first.
"""

from __future__ import annotations

import bisect
import math
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

    from mmsearch.ingest.decode import DecodeOptions, Part, Piece

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
SNAP = 0.25  # of the interval: a keyframe this close to a mark (either side) stands in for it
KEYFRAMES_PER_SAMPLE = 2  # up to this many keyframes per sample are all decoded as candidates
SPIKE = 6.0  # a packet this many times its neighbourhood's median size is a cut candidate
SPIKE_NEIGHBOURS = 12  # packets on each side that make the neighbourhood
SIGNATURE = 16  # pixels per side of the thumbnail two pictures are compared on
CUT = 0.12  # mean absolute difference (0..1) of signatures above which a candidate is a new shot
REORDER = 16  # packets indexed past a span's end: B-frame reordering (at most 16 pictures) and spike neighbours
PREROLL = 0.5  # seconds of sound decoded before a part's first window (decoder and resampler settle)
EPSILON = 1e-9  # seconds: a time this close to a mark or span edge is on it
WHOLE = (0.0, math.inf)


@dataclass(frozen=True)
class _Packet:
    pts: int
    gop: int  # pts of the keyframe opening its group of pictures, in decode order
    key: bool
    size: int


@dataclass
class Sampled:
    """What sampling a video gave: (time in seconds, uint8 crop) per sample, and its cost."""

    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)
    cuts: list[float] = field(default_factory=list)  # shot changes: pictures unlike the one decoded before
    packets: int = 0  # video packets indexed (the whole file, or a part's span and its margins)
    decoded: int = 0  # video packets sent to the decoder
    duration: float | None = 0.0
    width: int = 0
    height: int = 0
    fps: float | None = None
    format: str | None = None
    sound: np.ndarray | None = None  # mono float32 at the requested rate, when asked for
    sound_from: float = 0.0  # seconds from the soundtrack's start to ``sound``'s first sample
    span: tuple[float, float] = WHOLE  # the seconds sampled: [start, end)
    owned: tuple[float, float] = (-math.inf, math.inf)  # seconds from its first mark's frame to the next span's
    parts: int = 1  # parts the file is cut into (the same for every part)


def decode_video(path: str, options: DecodeOptions, part: Part | None = None) -> tuple[dict, list[Piece]]:
    """One image piece per sampled frame and, when the model hears, audio windows of the
    soundtrack: of the whole file, or of one ``part`` of it (its meta says how many parts)."""
    from mmsearch.ingest.decode import Piece, windows

    rate = options.sample_rate if options.soundtrack else None
    sampled = sample(
        path, options.video_every, options.image_size, sound_rate=rate, part=part, window_s=options.window_s
    )
    meta = {
        "format": sampled.format,
        "width": sampled.width,
        "height": sampled.height,
        "fps": sampled.fps,
        "duration": sampled.duration,
        "parts": sampled.parts,
    }
    times = [t for t, _ in sampled.frames]
    last = min(sampled.owned[1], sampled.duration or math.inf)  # the next part's first sample
    ends = [*times[1:], max(last, times[-1])] if times else []
    pieces = [
        Piece(crop, {"track": "frame", "offset_s": t, "duration_s": round(end - t, 6)}, modality="image")
        for (t, crop), end in zip(sampled.frames, ends)
    ]
    sound = sampled.sound
    if sound is not None and len(sound) and (not sampled.sound_from or len(sound) >= _window(options) // 4):
        for window in windows(sound, options):  # a part's first window is a final sliver only at the file end
            window.meta["offset_s"] = round(window.meta["offset_s"] + sampled.sound_from, 6)
            window.meta["track"] = "sound"
            window.modality = "audio"
            pieces.append(window)
    return meta, pieces


def sample(
    path: str,
    every: float,
    size: int,
    sound_rate: int | None = None,
    part: Part | None = None,
    window_s: float = 2.0,
) -> Sampled:
    """Sample frames of the video at ``path`` every ``every`` seconds plus at shot changes,
    as ``size``-pixel square crops; with ``sound_rate``, also its soundtrack (mono), from
    the ``window_s`` windows that start in the sampled span.

    With ``part``, only that share of the file: its span of the ``every`` grid when the
    container says how long the file is (the frames from its first mark's, which may be a
    keyframe just before the span, up to the next part's first mark's: ``owned``), else
    the whole file for part 0 and nothing for the others."""
    import av

    from mmsearch.ingest.decode import DecodeError, Part

    if every <= 0:
        raise DecodeError(f"the sampling interval must be positive, not {every}")
    part = part or Part()
    try:
        with av.open(path) as container:
            stream = _video_stream(container)
            result = _describe(container, stream, path)
            if result.duration is not None and stream.start_time is not None:
                units = max(1, math.ceil(result.duration / every))
                result.parts, result.span = part.used(units), part.span(result.duration, every)
            else:  # no cheap duration: the file is not cut
                result.span = WHOLE if part.index == 0 else (0.0, 0.0)
            if result.span[0] >= result.span[1]:
                return result
            rate = sound_rate if container.streams.audio else None  # the soundtrack wanted, if any
            seek = result.span[0] - SNAP * every  # the first mark's keyframe may come just before it
            if rate:  # its first window may start before the span's first picture
                seek = min(seek, _sound_range(result.span, rate, window_s)[0] - PREROLL)
            origin = stream.start_time
            target = origin + math.floor(seek / float(stream.time_base)) if seek > 0 and origin is not None else None
            packets, target = _index(container, stream, target, result.span[1] + SNAP * every)
        if not packets:
            if result.span[0] > 0:
                return result  # the span holds no frames (the file is shorter than its header says)
            raise DecodeError("no video frames in the file")
        origin = min(p.pts for p in packets) if origin is None else origin
        with av.open(path) as container:
            sound = _Soundtrack(container.streams.audio[0], rate, window_s, result.span) if rate else None
            _decode(container, packets, target, origin, every, size, sound, result)
        if not result.frames and result.span[0] == 0:
            raise DecodeError("no decodable video frames")
        return result
    except av.error.FFmpegError as exc:
        raise DecodeError(f"not a readable video file ({_reason(exc)})") from None


def frame_at(source: str | BinaryIO, offset_s: float, longest: int) -> Image.Image:
    """The picture on screen ``offset_s`` seconds into the video (counted from the stream's
    start, as :func:`sample` counts), at most ``longest`` pixels on its longer side.

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


def _index(container, stream, target: int | None, end_s: float) -> tuple[list[_Packet], int | None]:
    """The video packets with a time, in decode order, from a demux pass (nothing decoded):
    from the keyframe at or before pts ``target`` (the file's start when ``None``, or when
    the seek lands past it) until ``REORDER`` packets in a row lie at or after ``end_s``.

    Returns the packets and the seek target the decode pass must use to meet them again."""
    origin = stream.start_time or 0
    end = math.inf if end_s == math.inf else origin + end_s / float(stream.time_base)
    if target is None:
        return _demuxed(container, stream, end), None
    container.seek(target, stream=stream, backward=True, any_frame=False)
    packets = _demuxed(container, stream, end)
    if not packets or packets[0].pts <= target:
        return packets, target
    container.seek(origin, stream=stream, backward=True, any_frame=False)  # the seek overshot: from the start
    return _demuxed(container, stream, end), origin


def _demuxed(container, stream, end: float) -> list[_Packet]:
    packets: list[_Packet] = []
    gop, past = None, 0
    for packet in container.demux(stream):
        if packet.pts is None:
            continue
        past = past + 1 if packet.pts >= end else 0
        if past > REORDER:
            break
        gop = packet.pts if packet.is_keyframe or gop is None else gop
        packets.append(_Packet(packet.pts, gop, bool(packet.is_keyframe), packet.size))
    return packets


@dataclass(frozen=True)
class Plan:
    """Which frames (by pts) to decode: samples always kept, candidates kept at a cut."""

    samples: frozenset[int]
    candidates: frozenset[int]
    gops: frozenset[int]  # the GOPs that hold a wanted frame
    owned: tuple[float, float] = (-math.inf, math.inf)  # pts [from, to) of the frames this plan may give

    def owns(self, pts: int) -> bool:
        return self.owned[0] <= pts < self.owned[1]


def plan(
    packets: list[_Packet], time_base: float, every: float, origin: int | None = None, span: tuple[float, float] = WHOLE
) -> Plan:
    """The frames to decode for samples every ``every`` seconds and for shot-change
    candidates, in ``span`` (seconds from pts ``origin``, by default the first frame's).

    A span gives the frames from its first mark's frame up to (not including) the next
    span's first mark's frame: its marks' frames (a keyframe a little before its first
    mark too) and the cuts between. A frame several marks pick goes with the last of them.
    Marks' frames never go backwards in time, so the spans of a file's parts give, together,
    the whole file's frames, each once and in order."""
    frames = sorted(packets, key=lambda p: p.pts)
    origin = frames[0].pts if origin is None else origin
    times = [(p.pts - origin) * time_base for p in frames]
    keys = [i for i, p in enumerate(frames) if p.key]
    key_times = [times[i] for i in keys]

    def picked(mark: int) -> int | None:
        """The pts of mark ``mark``'s frame; ``None`` past the last frame."""
        return (
            frames[_pick(mark * every, every, times, keys, key_times)].pts
            if mark * every <= times[-1] + EPSILON
            else None
        )

    first = math.ceil(span[0] / every - EPSILON)
    start = picked(first) if first > 0 else -math.inf  # the first span also gives what comes before its mark
    end = picked(math.ceil(span[1] / every - EPSILON)) if span[1] != math.inf else None
    owned = (math.inf if start is None else start, math.inf if end is None else end)
    samples = set()
    mark = first
    while mark * every < span[1] and (chosen := picked(mark)) is not None:
        samples.add(chosen)
        mark += 1
    samples.discard(end)  # the next span's first mark takes it
    inside = {p.pts for p in frames if owned[0] <= p.pts < owned[1]}
    keys_inside = [i for i in keys if frames[i].pts in inside]
    if len(keys_inside) <= KEYFRAMES_PER_SAMPLE * max(len(samples), 1):  # cheap enough: look at every keyframe
        candidates = {frames[i].pts for i in keys_inside}
    else:
        candidates = _off_grid(frames, keys, times)
    candidates = ((candidates | _spikes(packets)) & inside) - samples
    wanted = samples | candidates
    gops = frozenset(p.gop for p in packets if p.pts in wanted)
    return Plan(frozenset(samples), frozenset(candidates), gops, owned)


def _pick(mark_s: float, every: float, times: list[float], keys: list[int], key_times: list[float]) -> int:
    """The index in ``times`` of the frame that stands for the mark at ``mark_s``: the
    nearest keyframe within ``SNAP`` intervals either side (it decodes on its own), else
    the first frame at or after the mark (the last frame when none is)."""
    after = bisect.bisect_left(key_times, mark_s - EPSILON)
    near = [i for i in (after - 1, after) if 0 <= i < len(keys)]
    if near:
        best = min(near, key=lambda i: (abs(key_times[i] - mark_s), -i))  # a tie goes to the later one
        if abs(key_times[best] - mark_s) <= SNAP * every + EPSILON:
            return keys[best]
    return min(bisect.bisect_left(times, mark_s - EPSILON), len(times) - 1)


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


def _decode(
    container,
    packets: list[_Packet],
    target: int | None,
    origin: int,
    every: float,
    size: int,
    sound: _Soundtrack | None,
    result: Sampled,
) -> None:
    """Decode the planned frames of ``result.span`` (and the soundtrack) in one demux pass
    from the keyframe at or before pts ``target``, stopping once nothing more is wanted."""
    stream = container.streams.video[0]
    time_base = float(stream.time_base)
    wanted = plan(packets, time_base, every, origin, result.span)
    result.packets = len(packets)
    result.owned = (round((wanted.owned[0] - origin) * time_base, 6), round((wanted.owned[1] - origin) * time_base, 6))
    if result.duration is None:  # no duration in the header: the whole file was indexed
        rate = result.fps
        result.duration = (max(p.pts for p in packets) - origin) * time_base + (1 / rate if rate else 0)
    gop_of = {p.pts: p.gop for p in packets}
    wanted_pts = wanted.samples | wanted.candidates
    unsent = Counter(gop_of[pts] for pts in wanted_pts)  # per GOP, wanted pictures not yet sent
    left = len(wanted_pts)
    last_gop = packets[-1].gop
    kept: list[tuple[float, np.ndarray]] = []
    previous: np.ndarray | None = None  # the picture just before, when nothing was skipped since
    last: np.ndarray | None = None  # the last picture decoded at all
    gop, dirty, seen = None, False, False  # seen: every wanted picture was sent

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
        time_s = round((frame.pts - origin) * time_base, 6)
        if frame.pts in wanted.samples or (is_cut and wanted.owns(frame.pts)):
            kept.append((time_s, _crop(frame, size)))
            if is_cut:
                result.cuts.append(time_s)
        previous = last = signature

    codec = stream.codec_context
    streams = [stream] if sound is None else [stream, sound.stream]
    if target is not None:
        container.seek(target, stream=stream, backward=True, any_frame=False)
    for packet in container.demux(*streams):
        if packet.stream.type == "audio":
            if sound is not None:
                sound.add(packet)
            if seen and (sound is None or sound.done):
                break
            continue
        if packet.pts is None:
            continue
        gop = packet.pts if packet.is_keyframe or gop is None else gop
        seen = not left or gop > last_gop
        if seen and (sound is None or sound.done):
            break  # nothing more wanted (the soundtrack is read on while it still needs packets)
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
            left -= 1
            if not unsent[gop]:  # every wanted picture is in the decoder: drain it rather than decode on
                for frame in codec.decode(None):
                    receive(frame)
                codec.flush_buffers()
    for frame in codec.decode(None):
        receive(frame)
    result.frames = _unique_sorted(kept)
    if sound is not None:
        if not sound.started():  # the file holds this span's sound before its pictures: read it on its own
            sound.reread(container)
        result.sound, result.sound_from = sound.wave(), sound.first_s


def _describe(container, stream, path: str) -> Sampled:
    """File-level metadata from the headers: size, frame rate, whole duration (``None``
    when the container does not say), container format."""
    context = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    if container.duration:
        duration: float | None = container.duration / 1_000_000
    elif stream.duration:
        duration = stream.duration * float(stream.time_base)
    else:
        duration = None
    extension = os.path.splitext(path)[1].lower()
    name = extension.lstrip(".") if extension in VIDEO_EXTENSIONS else container.format.name.split(",")[0]
    return Sampled(duration=duration, width=context.width, height=context.height, fps=fps, format=name)


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


def _window(options: DecodeOptions) -> int:
    return round(options.window_s * options.sample_rate)


def _sound_range(span: tuple[float, float], rate: int, window_s: float) -> tuple[float, float]:
    """Seconds from the soundtrack's start of the windows that start in ``span``: from the
    first one's start to the last one's end (windows on the whole file's grid)."""
    window = round(window_s * rate) / rate
    first = math.ceil(span[0] / window - EPSILON) * window
    stop = math.ceil(span[1] / window - EPSILON) * window if span[1] != math.inf else math.inf
    return first, stop


class _Soundtrack:
    """Audio packets decoded and resampled to mono float32 as they arrive, kept from the
    first window starting in the span to the end of the last one, counted in samples
    from the stream's start, so parts cut the whole file's windows.

    Downmixing happens at the file's rate (sample-exact); the rate change starts on an
    input sample that falls on the output grid, so a part resamples with the whole
    file's phase and its samples equal the whole file's (after the preroll settles)."""

    def __init__(self, stream, rate: int, window_s: float, span: tuple[float, float]) -> None:
        self.stream, self.rate = stream, rate
        self.first_s, self.stop_s = _sound_range(span, rate, window_s)
        self.origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else None
        self._reset()

    def _reset(self) -> None:
        import av

        self.mono = av.AudioResampler(format="flt", layout="mono")
        self.resampler: av.AudioResampler | None = None  # to the model's rate, once the file's is known
        self.source_rate = self.rate
        self.chunks: list[np.ndarray] = []
        self.at: int | None = None  # output sample (from the stream's start) of the first kept sample
        self.skip = 0  # input samples still to drop before the first kept one
        self.broken = self.done = False

    def started(self) -> bool:
        return self.broken or (self.at is not None and self.at <= round(self.first_s * self.rate))

    def add(self, packet) -> None:
        import av

        if self.broken or self.done or packet.pts is None:
            return
        seconds = float(packet.pts * packet.time_base)
        if self.origin is None:
            self.origin = seconds
        if seconds - self.origin < self.first_s - PREROLL:
            return
        if seconds - self.origin >= self.stop_s + PREROLL:
            self.done = True
            return
        try:
            for frame in packet.decode():
                self._take(frame)
        except av.error.FFmpegError as exc:  # a damaged soundtrack leaves the pictures indexable
            self.broken = True
            warnings.warn(f"soundtrack cut short: {_reason(exc)}", stacklevel=2)

    def _take(self, frame) -> None:
        import av

        if self.at is None:
            if frame.pts is None:
                return
            self.source_rate = frame.sample_rate
            index = round((float(frame.pts * frame.time_base) - (self.origin or 0.0)) * self.source_rate)
            self.skip = -index % (self.source_rate // math.gcd(self.source_rate, self.rate))
            self.at = (index + self.skip) * self.rate // self.source_rate
            if self.source_rate != self.rate:
                self.resampler = av.AudioResampler(format="flt", layout="mono", rate=self.rate)
        for out in self.mono.resample(frame):
            self._resampled(out.to_ndarray().reshape(-1))

    def _resampled(self, samples: np.ndarray | None) -> None:
        """Pass mono samples at the file's rate (``None``: flush) on to the model's rate."""
        import av

        if samples is not None and self.skip:
            dropped = min(self.skip, len(samples))
            samples, self.skip = samples[dropped:], self.skip - dropped
        if self.resampler is None:
            if samples is not None:
                self.chunks.append(samples)
            return
        if samples is None:
            piece = None
        elif not len(samples):
            return
        else:
            piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None]), format="flt", layout="mono")
            piece.sample_rate = self.source_rate
        for out in self.resampler.resample(piece):
            self.chunks.append(out.to_ndarray().reshape(-1))

    def reread(self, container) -> None:
        """Read the soundtrack on its own from just before its first window."""
        self._reset()
        seconds = max(0.0, self.first_s - PREROLL) + (self.origin or 0.0)
        container.seek(math.floor(seconds / float(self.stream.time_base)), stream=self.stream, backward=True)
        for packet in container.demux(self.stream):
            self.add(packet)
            if self.done:
                break

    def wave(self) -> np.ndarray:
        if not self.broken:
            for out in self.mono.resample(None):
                self._resampled(out.to_ndarray().reshape(-1))
            self._resampled(None)
        wave = np.concatenate(self.chunks).astype(np.float32) if self.chunks else np.zeros(0, np.float32)
        skip = round(self.first_s * self.rate) - (self.at or 0)
        if skip < 0:  # the stream starts after the window: silence before it
            wave = np.concatenate([np.zeros(-skip, np.float32), wave])
            skip = 0
        stop = len(wave) if self.stop_s == math.inf else skip + round((self.stop_s - self.first_s) * self.rate)
        return wave[skip:stop]
