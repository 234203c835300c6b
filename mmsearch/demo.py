"""`mmsearch demo`: the whole product on a generated world, offline, in one command.

Generates a small synthetic world (images, a captions table, a few short videos and,
when the demo model has an ear, sounds), indexes it with the shipped demo model, runs
a query in every direction with ground truth marks, and scores each direction,
video segments included (precision and whether the hit is the right moment).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from mmsearch import world
from mmsearch.errors import UserInputError
from mmsearch.evaluation import Scorer, VideoScorer
from mmsearch.index import Index


def _truth(world_dir: Path) -> dict[str, dict]:
    with open(world_dir / "captions.csv", newline="", encoding="utf-8") as handle:
        return {str((world_dir / row["file"]).resolve()): row for row in csv.DictReader(handle)}


MIN_IMAGES = 40  # fewer scenes leave some query directions without a relevant item to score


def run_demo(
    folder: Path, images: int = 480, seed: int = 7, say: Callable[[str], None] = print, videos: int = 8
) -> dict:
    """Generate, index, query and score; returns the scores per direction."""
    if images < MIN_IMAGES or videos < 0:
        raise UserInputError(f"the demo needs at least {MIN_IMAGES} scenes and no negative number of videos")
    if Path(folder).exists() and not Path(folder).is_dir():
        raise UserInputError(f"{folder} is a file, not a folder for the demo")
    world_dir, index_dir = Path(folder) / "world", Path(folder) / "index"
    index = Index.open_or_create(index_dir, "demo")
    sounds = "audio" in index.encoder.modalities
    if not (world_dir / "captions.csv").is_file():
        say(f"generating {images} scenes{' with sounds' if sounds else ''} into {world_dir} ...")
        world.generate_world(world_dir, images, seed, sounds=sounds)
    if videos and not (world_dir / "videos.json").is_file():
        say(f"generating {videos} short videos of scenes with their sounds ...")
        world.generate_videos(world_dir, videos, seed)
    summary = index.add([world_dir])
    say(
        f"indexed {world_dir} into {index_dir}: {summary.embedded} files embedded "
        f"({summary.vectors} vectors), {summary.unchanged} unchanged, {summary.seconds['total']:.1f}s"
    )
    truth = _truth(world_dir)
    first_image = next(p for p, row in truth.items() if row["file"].startswith("images/"))
    examples: list[tuple[str, dict]] = [
        ('"a red circle"', {"query": "a red circle"}),
        ('"two blue squares"', {"query": "two blue squares"}),
        ('"a red circle" - "red" + "blue"', {"query": '"a red circle" - "red" + "blue"'}),
        (f"image {Path(first_image).name}", {"image": first_image}),
        (f"image {Path(first_image).name} → texts", {"image": first_image, "modality": "text"}),
    ]
    if sounds:
        first_sound = next(p for p, row in truth.items() if row["file"].startswith("sounds/"))
        examples += [
            (f"sound {Path(first_sound).name} → images", {"audio": first_sound, "modality": "image"}),
            ('"a green star" → sounds', {"query": "a green star", "modality": "audio"}),
        ]
    for title, arguments in examples:
        say(f"\nquery {title}:")
        for rank, hit in enumerate(index.search(k=5, **arguments), 1):
            label = hit.metadata.get("text") or truth.get(hit.path, {}).get("caption", "")
            say(f"  {rank}. {hit.score:.3f}  {Path(hit.path).name:<18} {label}")

    scorer = Scorer(index, world_dir, k=5, queries=60, seed=seed)
    scores = [scorer.score(direction) for direction in scorer.directions()]
    say("\nper direction: precision@5, and precision of what a world this small allows")
    say("(relevant = same colour and shape; text queries such as 'a red circle' also want one object)")
    for row in scores:
        say(f"  {row['direction']:<14} {row['precision']:.2f}   {row['achievable_precision']:.2f}")
    if (world_dir / "videos.json").is_file():
        scores += _videos(index, world_dir, say)
    return {"index": str(index_dir), "world": str(world_dir), "scores": scores}


def _videos(index: Index, world_dir: Path, say: Callable[[str], None]) -> list[dict]:
    """A video query shown as segments, then video figures: precision@10 of segments and
    temporal accuracy (the best segment of a right video overlaps the true scene)."""
    scorer = VideoScorer(index, world_dir, k=10)
    first = next(iter(scorer.scenes.values()))[0]
    text = world.class_query(first["colour"], first["shape"])
    truth = f"{Path(first['file']).name} {first['start_s']:g}–{first['end_s']:g} s"
    say(f'\nquery "{text}" → videos (true scene: {truth}):')
    for rank, hit in enumerate(index.search(text, modality="video", k=5), 1):
        say(f"  {rank}. {hit.score:.3f}  {Path(hit.path).name:<18} {hit.start_s:g}–{hit.end_s:g} s")
    scores = [scorer.score(source) for source in scorer.directions()]
    say("\nvideo segments: precision@10, achievable precision, temporal accuracy")
    for row in scores:
        say(
            f"  {row['direction']:<22} {row['precision']:.2f}   {row['achievable_precision']:.2f}"
            f"   {row['temporal_accuracy']:.2f}"
        )
    return scores
