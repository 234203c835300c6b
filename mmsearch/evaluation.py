"""Score search quality on a synthetic world, whose ground truth is known.

Shared by ``benchmarks/quality.py``, ``mmsearch demo`` and the quality tests, so the
figures they report are computed one way.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsearch import world
from mmsearch.index import Index

QUERY_MODALITIES = ("text", "image", "audio")


@dataclass(frozen=True)
class Direction:
    """A query modality and the modality of the results."""

    source: str
    target: str
    language: str = "en"  # of text queries

    @property
    def name(self) -> str:
        said = f"[{self.language}]" if self.source == "text" and self.language != "en" else ""
        return f"{self.source}{said}→{self.target}"


def class_query(label: str, language: str = "en") -> str:
    """ "red circle" → "a red circle" (or "一个红色的圆形" in ``zh``)."""
    colour, shape = label.split(" ", 1)
    return world.class_query(colour, shape, language)


class Scorer:
    """Precision and recall at ``k`` for every query direction an index supports."""

    def __init__(self, index: Index, world_dir: Path, k: int = 10, queries: int = 200, seed: int = 0) -> None:
        self.index, self.k, self.queries = index, k, queries
        self.rng = np.random.default_rng(seed)
        truth = {}
        with open(Path(world_dir) / "captions.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                truth[str((Path(world_dir) / row["file"]).resolve())] = row
        items = index.sql("SELECT id, modality, path, extra FROM items").to_pylist()
        self.scenes: dict[int, dict] = {}
        self.by_modality: dict[str, list[int]] = {m: [] for m in QUERY_MODALITIES}
        for item in items:
            attributes = json.loads(item["extra"]) if item["modality"] == "text" else truth.get(item["path"])
            if attributes:
                self.scenes[item["id"]] = {
                    "shape": attributes["shape"],
                    "colour": attributes["colour"],
                    "count": int(attributes["count"]),
                }
                self.by_modality[item["modality"]].append(item["id"])

    def directions(self, languages: tuple[str, ...] = ("en",)) -> list[Direction]:
        """Every (query, result) pair of modalities the index holds and the model embeds,
        text queries once per language."""
        present = [m for m in QUERY_MODALITIES if self.by_modality[m]]
        sources = [m for m in present if m == "text" or m in self.index.encoder.modalities]
        return [
            Direction(s, t, language)
            for s in sources
            for language in (languages if s == "text" else ("en",))
            for t in present
        ]

    def _relevant(self, query: dict, item_id: int) -> bool:
        scene = self.scenes.get(item_id)
        if scene is None:
            return False
        return all(scene[key] == value for key, value in query.items())

    def score(self, direction: Direction) -> dict:
        """Mean precision@k and recall@k over the direction's queries, and precision
        against what is achievable (``found / min(k, relevant)``), which small worlds need."""
        precisions, recalls, achievable = [], [], []
        for query_attributes, vector, own_id in self._queries(direction.source, direction.language):
            hits = self.index.search(vector=vector, modality=direction.target, k=self.k + 1)
            hits = [h for h in hits if h.id != own_id][: self.k]
            relevant_total = sum(
                self._relevant(query_attributes, i) for i in self.by_modality[direction.target] if i != own_id
            )
            found = sum(self._relevant(query_attributes, h.id) for h in hits)
            precisions.append(found / self.k)
            if relevant_total:
                recalls.append(found / relevant_total)
                achievable.append(found / min(self.k, relevant_total))
        return {
            "direction": direction.name,
            "queries": len(precisions),
            "precision": float(np.mean(precisions)),
            "recall": float(np.mean(recalls)) if recalls else None,
            "achievable_precision": float(np.mean(achievable)) if achievable else None,
        }

    def _queries(self, modality: str, language: str):
        if modality == "text":
            labels = list(world.CLASSES)
            vectors = self.index.encoder.embed_texts([class_query(label, language) for label in labels])
            for label, vector in zip(labels, vectors):
                colour, shape = label.split(" ", 1)
                yield {"colour": colour, "shape": shape, "count": 1}, vector, None
            return
        ids = self.by_modality[modality]
        chosen = self.rng.choice(ids, size=min(self.queries, len(ids)), replace=False)
        for item_id, vector in zip(chosen, self.index.vectors(chosen.tolist())):
            scene = self.scenes[int(item_id)]
            yield {"colour": scene["colour"], "shape": scene["shape"]}, vector, int(item_id)

    def zero_shot(self, modality: str = "image", language: str = "en") -> dict:
        """Top-1 accuracy of labelling items with the shape×colour class captions."""
        ids = self.by_modality[modality]
        labels = list(world.CLASSES)
        scores = self.index.vectors(ids) @ self.index.encoder.embed_texts([class_query(x, language) for x in labels]).T
        predicted = [labels[i] for i in scores.argmax(axis=1)]
        truth = [f"{self.scenes[i]['colour']} {self.scenes[i]['shape']}" for i in ids]
        accuracy = float(np.mean([p == t for p, t in zip(predicted, truth)]))
        said = "" if language == "en" else f"[{language}]"
        return {"direction": f"{modality}→class{said} (zero-shot top-1)", "queries": len(ids), "precision": accuracy}


class VideoScorer:
    """Search quality over the videos of ``world.generate_videos``, whose scenes' times are known.

    A query (a class text such as "a red circle", or a fresh sound of that class) returns
    video segments. A segment is relevant when it overlaps a scene of the query's colour
    and shape (text queries also want one object). ``precision`` is precision@k,
    ``achievable_precision`` divides by ``min(k, matching scenes)`` instead, which small
    worlds need, and ``temporal_accuracy`` is, over the returned videos that hold such
    a scene, the share whose best segment overlaps one: right video, right moment.
    """

    def __init__(self, index: Index, world_dir: Path, k: int = 10, seed: int = 0) -> None:
        self.index, self.k, self.seed = index, k, seed
        self.scenes: dict[str, list[dict]] = {}
        for row in json.loads((Path(world_dir) / "videos.json").read_text(encoding="utf-8")):
            self.scenes.setdefault(str((Path(world_dir) / row["file"]).resolve()), []).append(row)

    def directions(self) -> list[str]:
        """Query modalities the index's model embeds: text, and audio when it hears."""
        return ["text", "audio"] if "audio" in self.index.encoder.modalities else ["text"]

    def score(self, source: str = "text") -> dict:
        """Mean figures over one query per class that some video shows."""
        precisions, achievable, on_time, in_right_video = [], [], 0, 0
        for wanted, vector in self._queries(source):
            matching = sum(self._matches(scene, wanted) for scenes in self.scenes.values() for scene in scenes)
            hits = self.index.search(vector=vector, modality="video", k=self.k)
            found, judged = 0, set()
            for hit in hits:
                overlapping = self._overlapping(hit.path, hit.start_s, hit.end_s, wanted)
                found += overlapping
                right_video = any(self._matches(scene, wanted) for scene in self.scenes.get(hit.path, []))
                if right_video and hit.path not in judged:  # the video's best segment: at the right moment?
                    judged.add(hit.path)
                    in_right_video += 1
                    on_time += overlapping
            precisions.append(found / self.k)
            achievable.append(min(found, matching) / min(self.k, matching))
        return {
            "direction": f"{source}→video segment",
            "queries": len(precisions),
            "precision": float(np.mean(precisions)) if precisions else None,
            "achievable_precision": float(np.mean(achievable)) if achievable else None,
            "temporal_accuracy": on_time / in_right_video if in_right_video else None,
        }

    def _queries(self, source: str):
        shown = sorted({(s["colour"], s["shape"]) for scenes in self.scenes.values() for s in scenes})
        if source == "text":
            queries = [world.class_query(colour, shape) for colour, shape in shown]
            vectors = self.index.encoder.embed_texts(queries)
            for (colour, shape), vector in zip(shown, vectors):
                wanted = {"colour": colour, "shape": shape, "count": 1}
                if any(self._matches(s, wanted) for scenes in self.scenes.values() for s in scenes):
                    yield wanted, vector
            return
        rate = self.index.encoder.audio_input.sample_rate if self.index.encoder.audio_input else world.SAMPLE_RATE
        for number, (colour, shape) in enumerate(shown):
            scene = world.Scene(shape, colour, "grey", 1, "large", self.seed * 1000 + number)
            wave = world.render_sound(scene, rate)
            yield {"colour": colour, "shape": shape}, self.index.encoder.embed("audio", [wave])[0]

    @staticmethod
    def _matches(scene: dict, wanted: dict) -> bool:
        return all(scene[key] == value for key, value in wanted.items())

    def _overlapping(self, path: str, start: float | None, end: float | None, wanted: dict) -> bool:
        if start is None or end is None:
            return False
        return any(
            self._matches(scene, wanted) and start < scene["end_s"] and end > scene["start_s"]
            for scene in self.scenes.get(path, [])
        )
