"""Search quality floors with the shipped demo model on a freshly generated world.

The floors are far below the benchmark's figures (benchmarks/results/quality.md):
they exist so that a broken pipeline — wrong preprocessing, a mis-wired modality, a
merge bug — fails CI, not to measure the model.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import run_cli
from mmsearch import Index, world
from mmsearch.evaluation import Direction, Scorer

FLOOR = 0.6
WORLD_SEED = 4242  # not a seed the demo model was trained or evaluated on


@pytest.fixture(scope="module")
def demo_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Index, Path]:
    root = tmp_path_factory.mktemp("demo")
    index = Index.create(root / "index", model="demo")
    world.generate_world(root / "world", 480, WORLD_SEED, sounds="audio" in index.encoder.modalities)
    summary = index.add([root / "world"])
    assert summary.failed == []
    return index, root / "world"


@pytest.fixture(scope="module")
def scorer(demo_world: tuple[Index, Path]) -> Scorer:
    index, world_dir = demo_world
    return Scorer(index, world_dir, k=3, queries=40, seed=1)


def test_every_direction_clears_the_floor(scorer: Scorer) -> None:
    directions = scorer.directions()
    names = {d.name for d in directions}
    assert {"text→image", "image→image", "image→text", "text→text"} <= names
    if "audio" in scorer.index.encoder.modalities:
        assert {"text→audio", "audio→image", "image→audio", "audio→audio", "audio→text"} <= names
    for direction in directions:
        result = scorer.score(direction)
        assert result["precision"] >= FLOOR, result


def test_chinese_queries_clear_the_floor(scorer: Scorer) -> None:
    """The demo text tower reads Chinese (benchmarks/train_demo_chinese.py): "一个红色的圆形"."""
    for target in ("image", "text"):
        assert scorer.score(Direction("text", target, "zh"))["precision"] >= FLOOR
    assert scorer.zero_shot(language="zh")["precision"] >= FLOOR


def test_zero_shot_labelling_clears_the_floor(scorer: Scorer) -> None:
    assert scorer.zero_shot()["precision"] >= FLOOR


def test_arithmetic_changes_results_in_the_expected_direction(demo_world: tuple[Index, Path]) -> None:
    index, _ = demo_world
    scorer = Scorer(index, demo_world[1])

    def colours(**query) -> list[str]:
        return [scorer.scenes[h.id]["colour"] for h in index.search(k=5, modality="image", **query)]

    assert colours(query="a red circle").count("red") >= 4
    swapped = colours(query='"a red circle" - "red" + "blue"')
    assert swapped.count("blue") >= 3 and swapped.count("red") <= 1


def test_label_command_names_the_right_class(demo_world: tuple[Index, Path]) -> None:
    _, world_dir = demo_world
    with open(world_dir / "captions.csv", newline="") as handle:
        first = next(csv.DictReader(handle))
    truth = f"{first['colour']} {first['shape']}"
    labels = [truth, *(c for c in world.CLASSES if c != truth)][:8]
    result = run_cli("label", str(world_dir / first["file"]), "--labels", ",".join(labels), "--model", "demo", "--json")
    assert result.returncode == 0, result.stderr
    ranked = json.loads(result.stdout)
    assert ranked[0]["label"] == truth
    assert abs(sum(r["probability"] for r in ranked) - 1) < 1e-4


def test_demo_command_runs_offline(tmp_path: Path) -> None:
    result = run_cli("demo", "--images", "48", "--json", cwd=tmp_path)  # the README's command: default folder
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "demo-world").is_dir()
    report = json.loads(result.stdout)
    assert {row["direction"] for row in report["scores"]} >= {"text→image", "image→image", "text→video segment"}
    assert 'query "a red circle"' in result.stderr


def test_long_recording_hits_point_to_the_right_window(tmp_path: Path) -> None:
    import soundfile

    index = Index.create(tmp_path / "index", model="demo")
    assert "audio" in index.encoder.modalities
    rate, window = index.encoder.audio_input.sample_rate, index.encoder.audio_input.window_s
    parts = [
        world.Scene("circle", "red", "grey", 1, "large", seed=1),
        None,
        world.Scene("square", "blue", "grey", 1, "large", seed=2),
        world.Scene("star", "green", "grey", 1, "large", seed=3),
        None,
    ]
    folder = tmp_path / "recordings"
    folder.mkdir()
    soundfile.write(folder / "long.flac", world.compose_recording(parts, rate, window), rate)
    summary = index.add([folder])
    assert (summary.embedded, summary.vectors) == (1, len(parts))
    for query, offset in (("a green star", 3 * window), ("a blue square", 2 * window), ("a red circle", 0.0)):
        hit = index.search(query, modality="audio", k=1)[0]
        assert (hit.path, hit.metadata["offset_s"], hit.metadata["duration_s"]) == (
            str(folder / "long.flac"),
            offset,
            window,
        )
    result = run_cli("query", "a green star", "--modality", "audio", "-k", "1", "--index", str(index.path))
    assert f"long.flac @ {3 * window:.1f}s" in result.stdout


def test_demo_loads_through_the_local_checkpoint_path() -> None:
    from mmsearch.models.registry import DEMO_DIR, load_encoder

    as_user_file = f"mmsearch-demo:{next(DEMO_DIR.glob('weights.*'))}"
    a, b = load_encoder("demo"), load_encoder(as_user_file)
    assert a.space_id == b.space_id
    texts = ["a red circle", "two blue squares"]
    assert (a.embed_texts(texts) == b.embed_texts(texts)).all()
