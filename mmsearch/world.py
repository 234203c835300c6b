"""A small, seeded synthetic world of coloured shapes with captions.

Search quality can only be measured against ground truth, and no real dataset or
pretrained weights are reachable offline. This module generates scenes whose every
attribute is known, renders them as images, and describes them in several phrasings,
so the demo model can be trained on it and the search engine scored on a held-out
world (different seed) without any download.

A scene is a set of *concepts* (shape, colour, background, count, size) plus a
``seed`` for the nuisance variation (positions, rotations, colour jitter). Rendering
is a pure function of the scene, so the same concepts are also rendered as sound:
``render_sound(scene)`` maps colour to pitch, shape to timbre, count to the number
of notes and size to loudness, giving images and sounds that share concepts for
cross-modal retrieval. Keep new attributes on ``Scene`` and their vocabularies here.
"""

from __future__ import annotations

import csv
import functools
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 215, 30),
    "purple": (140, 50, 190),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COUNTS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
COUNT_WEIGHTS: tuple[float, ...] = (0.65, 0.2, 0.15)  # single objects dominate queries
SIZES: tuple[str, ...] = ("small", "large")
PREFIXES: tuple[str, ...] = (
    "a photo of",
    "an image of",
    "a picture of",
    "a drawing of",
)
CLASSES: tuple[str, ...] = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)

# Object half-extent as a fraction of the frame; small and large never overlap.
_RADIUS = {"small": (0.09, 0.12), "large": (0.22, 0.30), "large_multi": (0.16, 0.19)}
_PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{p: s for s, p in _PLURALS.items()}}
_CSV_FIELDS = ["file", "caption", "shape", "colour", "background", "count", "size"]
_COUNT_WORDS = {"a": 1, "an": 1, **{word: n for n, word in COUNTS.items()}}


@dataclass(frozen=True)
class Scene:
    """Concepts of one scene; ``seed`` only drives layout and jitter."""

    shape: str
    colour: str
    background: str
    count: int
    size: str
    seed: int


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a scene; the background never matches the object colour."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    backgrounds = [b for b in BACKGROUNDS if b != colour]
    background = backgrounds[rng.integers(len(backgrounds))]
    count = int(rng.choice(list(COUNTS), p=COUNT_WEIGHTS))
    size = SIZES[rng.integers(len(SIZES))]
    return Scene(shape, colour, background, count, size, int(rng.integers(2**31)))


def class_label(scene: Scene) -> str:
    """The shape+colour class ("red circle") that benchmarks score against."""
    return f"{scene.colour} {scene.shape}"


def _outline(shape: str) -> np.ndarray:
    """Unit-radius polygon (N, 2) for ``shape``, pointing up."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.8
    if shape == "triangle":
        t = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(t), -np.sin(t)], axis=1) * 1.05 + [0, 0.2]
    if shape == "star":
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(t), -r * np.sin(t)], axis=1)
    if shape == "cross":
        a, b = 0.3, 0.95
        return np.array(
            [[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]]
        )
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], axis=1) / 16.5
    raise ValueError(f"unknown shape {shape!r}")


def _layout(scene: Scene, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """Non-overlapping (x, y, radius) placements, fully inside the unit frame."""
    key = "large_multi" if scene.size == "large" and scene.count > 1 else scene.size
    low, high = _RADIUS[key]
    radius = rng.uniform(low, high)
    for _ in range(500):
        lo, hi = radius + 0.03, 1 - radius - 0.03
        centres = rng.uniform(lo, hi, size=(scene.count, 2))
        gaps = [math.dist(centres[i], centres[j]) for i in range(scene.count) for j in range(i + 1, scene.count)]
        if all(gap > 2 * radius + 0.03 for gap in gaps):
            return [(x, y, radius) for x, y in centres]
        radius *= 0.995
    raise RuntimeError(f"could not place {scene}")


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(c) for c in np.clip(np.asarray(rgb) + rng.integers(-12, 13, 3), 0, 255))


def render(scene: Scene, size: int = 128) -> Image.Image:
    """Render ``scene`` as a square RGB image; deterministic in the scene."""
    rng = np.random.default_rng(scene.seed)
    image = Image.new("RGB", (size, size), _jitter(BACKGROUNDS[scene.background], rng))
    draw = ImageDraw.Draw(image)
    fill = _jitter(COLOURS[scene.colour], rng)
    outline = _outline(scene.shape)
    for x, y, radius in _layout(scene, rng):
        angle = 0.0 if scene.shape == "circle" else rng.uniform(-0.26, 0.26)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        points = (outline @ rotation.T * radius + (x, y)) * size
        draw.polygon([tuple(p) for p in points.tolist()], fill=fill)
    return image


def _objects(scene: Scene, *, sized: bool) -> str:
    words = [scene.size] if sized else []
    words += [scene.colour, scene.shape if scene.count == 1 else _PLURALS[scene.shape]]
    if scene.count == 1:
        return f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"
    return f"{COUNTS[scene.count]} {' '.join(words)}"


def caption(scene: Scene) -> str:
    """The full description, e.g. "two small red circles on a grey background"."""
    return f"{_objects(scene, sized=True)} on a {scene.background} background"


def captions(scene: Scene, rng: np.random.Generator, language: str = "en") -> list[str]:
    """Several true phrasings of ``scene`` in ``language`` (``en`` or ``zh``), from terse to
    full, one with a random prefix. The random draws do not depend on the language, so
    generators in the same state give translations of each other, in the same order."""
    if language == "zh":
        objects: Callable[..., str] = functools.partial(_objects_zh, scene)
        background, prefixes, space = f"{ZH_BACKGROUNDS[scene.background]}背景上的{{}}", ZH_PREFIXES, ""
        label = f"{ZH_COLOURS[scene.colour]}{ZH_SHAPES[scene.shape]}"
    elif language == "en":
        objects = functools.partial(_objects, scene)
        background, prefixes, space = f"{{}} on a {scene.background} background", PREFIXES, " "
        label = class_label(scene)
    else:
        raise ValueError(f"language must be one of {LANGUAGES}, not {language!r}")
    forms = [
        objects(sized=False),
        objects(sized=True),
        background.format(objects(sized=False)),
        background.format(objects(sized=True)),
    ]
    prefixed = f"{prefixes[rng.integers(len(prefixes))]}{space}{forms[rng.integers(len(forms))]}"
    return [*forms, prefixed, label]


def class_query(colour: str, shape: str, language: str = "en") -> str:
    """The query for one object of a class: "a red circle", "一个红色的圆形"."""
    scene = Scene(shape, colour, "grey", 1, "small", 0)
    return _objects_zh(scene, sized=False) if language == "zh" else _objects(scene, sized=False)


# -- Chinese ---------------------------------------------------------------------------
# The same concepts in Chinese, so that queries in a second language can be trained and
# measured: measure words and 的 instead of articles and plurals, the shape last.

LANGUAGES = ("en", "zh")
ZH_COLOURS: dict[str, str] = dict(zip(COLOURS, ("红色", "绿色", "蓝色", "黄色", "紫色", "橙色", "白色", "黑色")))
ZH_SHAPES: dict[str, str] = dict(zip(SHAPES, ("圆形", "正方形", "三角形", "星形", "十字形", "心形")))
ZH_BACKGROUNDS: dict[str, str] = {"grey": "灰色", "white": "白色", "black": "黑色"}
ZH_COUNTS: dict[int, str] = {1: "一个", 2: "两个", 3: "三个"}
ZH_SIZES: dict[str, str] = {"small": "小", "large": "大"}
ZH_PREFIXES: tuple[str, ...] = ("一张照片：", "一张图片：", "一幅图：", "一幅画：")  # as many as PREFIXES


def _objects_zh(scene: Scene, *, sized: bool) -> str:
    count, colour, shape = ZH_COUNTS[scene.count], ZH_COLOURS[scene.colour], ZH_SHAPES[scene.shape]
    return f"{count}{ZH_SIZES[scene.size]}的{colour}{shape}" if sized else f"{count}{colour}的{shape}"


@lru_cache(maxsize=4096)
def parse_caption(text: str, modality: str = "image") -> dict[str, str | int]:
    """Attributes a caption pins down, e.g. {"colour": "red", "shape": "circle"}.

    Lets training and benchmarks judge whether a scene is a true match for any
    phrasing this module produces (an unmentioned attribute matches anything). For a
    scene's sound (``modality="audio"``) a background is not pinned down: it is not heard.
    """
    words = re.findall(r"[a-z]+", text.lower())
    found: dict[str, str | int] = {}
    for i, word in enumerate(words):
        if word == "background" and i and words[i - 1] in BACKGROUNDS:
            found["background"] = words[i - 1]
        elif word in _SHAPE_WORDS and "shape" not in found:
            found["shape"] = _SHAPE_WORDS[word]
            j = i - 1
            while j >= 0 and (words[j] in COLOURS or words[j] in SIZES):
                found["colour" if words[j] in COLOURS else "size"] = words[j]
                j -= 1
            if j >= 0 and words[j] in _COUNT_WORDS:
                found["count"] = _COUNT_WORDS[words[j]]
    if modality == "audio":
        found.pop("background", None)
    return found


def generate_world(
    out_dir: str | Path,
    n: int,
    seed: int,
    size: int = 128,
    image_format: str = "png",
    sounds: bool = False,
) -> list[dict]:
    """Write ``n`` rendered scenes and ``captions.csv`` under ``out_dir``.

    Output is byte-identical for the same arguments. ``image_format`` is "png" or
    "jpg" (lossy, to exercise decoding paths). With ``sounds``, ``n // 2`` further
    scenes are written as WAV files under ``sounds/`` (their rows in captions.csv
    leave the unheard background empty); the images do not change.
    """
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', not {image_format!r}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n):
        scene = sample_scene(rng)
        file = f"images/img_{index:06d}.{image_format}"
        image = render(scene, size)
        if image_format == "png":
            image.save(out / file, format="PNG")
        else:
            image.save(out / file, format="JPEG", quality=90)
        rows.append({"file": file, "caption": caption(scene), **_attributes(scene)})
    if sounds:
        import soundfile

        (out / "sounds").mkdir(exist_ok=True)
        sound_rng = np.random.default_rng([seed, 1])
        for index in range(n // 2):
            scene = sample_scene(sound_rng)
            file = f"sounds/snd_{index:06d}.wav"
            soundfile.write(out / file, render_sound(scene), SAMPLE_RATE, subtype="PCM_16")
            rows.append({"file": file, "caption": sound_captions(scene)[1], **_attributes(scene), "background": ""})
    with open(out / "captions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _attributes(scene: Scene) -> dict:
    attributes = asdict(scene)
    del attributes["seed"]
    return attributes


# -- sounds ---------------------------------------------------------------------------
# The same concepts, heard: colour is pitch, shape is timbre, count is the number of
# notes and size is loudness. The background is not heard.

SAMPLE_RATE = 8_000
SOUND_SECONDS = 2.0
PITCHES: dict[str, float] = dict(zip(COLOURS, (196.0, 247.0, 294.0, 370.0, 440.0, 523.0, 659.0, 784.0)))
LOUDNESS: dict[str, float] = {"small": 0.25, "large": 0.7}


def _partials(shape: str, frequency: float, t: np.ndarray, sample_rate: int) -> np.ndarray:
    """One note of ``shape``'s timbre, band-limited below Nyquist."""
    phase = 2 * np.pi * frequency * t
    top = int(0.45 * sample_rate / frequency)
    silence = np.zeros_like(phase)  # the start of each sum of partials
    if shape == "circle":  # pure tone
        return np.sin(phase)
    if shape == "square":  # odd harmonics, 1/k
        return sum((np.sin(k * phase) / k for k in range(1, top + 1, 2)), silence)
    if shape == "triangle":  # odd harmonics, alternating, 1/k²
        return sum(((-1) ** (k // 2) * np.sin(k * phase) / k**2 for k in range(1, top + 1, 2)), silence)
    if shape == "star":  # all harmonics, 1/k: bright sawtooth
        return sum((np.sin(k * phase) / k for k in range(1, top + 1)), silence)
    if shape == "cross":  # tremolo
        return np.sin(phase) * (0.6 + 0.4 * np.sin(2 * np.pi * 11 * t))
    return np.sin(phase + 2.5 * np.sin(2 * np.pi * 6 * t))  # heart: vibrato


def render_sound(scene: Scene, sample_rate: int = SAMPLE_RATE, seconds: float = SOUND_SECONDS) -> np.ndarray:
    """Render ``scene`` as a mono float32 waveform; deterministic in the scene."""
    rng = np.random.default_rng([scene.seed, 1])
    length = round(sample_rate * seconds)
    wave = rng.normal(0, 0.005, length)
    slot = length // scene.count
    frequency = PITCHES[scene.colour] * rng.uniform(0.99, 1.01)
    for note in range(scene.count):
        duration = int(slot * rng.uniform(0.6, 0.8))
        start = note * slot + int(rng.integers(0, slot - duration + 1))
        t = np.arange(duration) / sample_rate
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-1.5 * t)
        tone = _partials(scene.shape, frequency, t, sample_rate)
        wave[start : start + duration] += LOUDNESS[scene.size] * envelope * tone / np.max(np.abs(tone))
    return np.clip(wave, -1, 1).astype(np.float32)


def sound_captions(scene: Scene) -> list[str]:
    """True phrasings of what a scene's sound depicts (no background: it is not heard)."""
    plain, sized = _objects(scene, sized=False), _objects(scene, sized=True)
    return [plain, sized, f"the sound of {plain}", class_label(scene)]


def compose_recording(
    scenes: list[Scene | None], sample_rate: int = SAMPLE_RATE, seconds: float = SOUND_SECONDS
) -> np.ndarray:
    """A long recording: each scene's sound (or quiet noise for ``None``) in turn."""
    quiet = np.random.default_rng(0).normal(0, 0.005, round(sample_rate * seconds)).astype(np.float32)
    return np.concatenate([quiet if s is None else render_sound(s, sample_rate, seconds) for s in scenes])


# -- videos ---------------------------------------------------------------------------
# Short films: scenes in turn, each shown for a few seconds (its shapes drifting a little,
# so frames are not identical) with that scene's sound on the soundtrack. Where each
# scene starts and ends is known, so a search can be scored on finding the right moment.

VIDEO_FPS = 10
VIDEO_SIZE = 96
SCENE_SECONDS: tuple[float, ...] = (2.0, 4.0)  # multiples of the audio window, so windows match scenes


def render_video(
    path: str | Path,
    scenes: list[tuple[Scene, float]],
    size: int | tuple[int, int] = VIDEO_SIZE,
    fps: int = VIDEO_FPS,
    keyframe_every: int | None = None,
) -> None:
    """Write an H.264 + AAC MP4 showing each (scene, seconds) in turn, with its sound.

    ``size``: a square side or (width, height) (the scene is rendered square and its
    middle cut out); ``keyframe_every``: frames between keyframes (default: the encoder's).
    """
    import av

    width, height = (size, size) if isinstance(size, int) else size
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p"
        video.options = {"preset": "veryfast"}
        if keyframe_every is not None:
            video.codec_context.gop_size = keyframe_every
        audio = container.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        number = 0
        for scene, seconds in scenes:
            side = max(width, height)
            top, left = (side - height) // 2, (side - width) // 2
            picture = np.asarray(render(scene, side))[top : top + height, left : left + width]
            for step in range(round(seconds * fps)):
                shifted = np.roll(picture, step % 6 - 3, axis=1)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(shifted), format="rgb24")
                frame.pts = number
                number += 1
                container.mux(video.encode(frame))
        container.mux(video.encode(None))
        mux_sound(
            container, audio, np.concatenate([render_sound(scene, SAMPLE_RATE, seconds) for scene, seconds in scenes])
        )


def mux_sound(container: Any, stream: Any, wave: np.ndarray, chunk: int = 1024) -> None:
    """Encode a mono float wave at ``SAMPLE_RATE`` into a PyAV audio ``stream`` and flush it."""
    import av

    for start in range(0, len(wave), chunk):
        sound = av.AudioFrame.from_ndarray(wave[None, start : start + chunk], format="flt", layout="mono")
        sound.sample_rate, sound.pts = SAMPLE_RATE, start
        container.mux(stream.encode(sound))
    container.mux(stream.encode(None))


def generate_videos(
    out_dir: str | Path, n: int, seed: int, scenes_per_video: int = 3, size: int = VIDEO_SIZE
) -> list[dict]:
    """Write ``n`` videos under ``out_dir/videos/`` and their scenes to ``out_dir/videos.json``.

    Each video shows ``scenes_per_video`` scenes of 2 or 4 seconds; ``videos.json`` lists,
    per scene, the file, ``start_s``, ``end_s`` and the scene's attributes (a JSON file,
    so indexing the folder does not take it for a caption table). Deterministic in
    ``seed``, apart from the encoder's bytes.
    """
    import json

    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    rows = []
    for index in range(n):
        scenes = [(sample_scene(rng), SCENE_SECONDS[rng.integers(len(SCENE_SECONDS))]) for _ in range(scenes_per_video)]
        file = f"videos/vid_{index:06d}.mp4"
        render_video(out / file, scenes, size)
        start = 0.0
        for scene, seconds in scenes:
            rows.append({"file": file, "start_s": start, "end_s": start + seconds, **_attributes(scene)})
            start += seconds
    (out / "videos.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return rows
