"""The demo re-ranker: a :class:`~mmsearch.rerank.cross.CrossMatcher` over the frozen demo towers.

Text tokens come from the demo text tower (before pooling), image tokens from its ViT
patches plus each patch's pixels, audio tokens from the demo audio tower's conv frames.
The towers stay frozen, so the matcher is small (``rerank.safetensors``, trained by
``benchmarks/train_rerank.py``) and its Platt scalings (one per candidate modality) ship in ``rerank.json``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmsearch.errors import ModelError
from mmsearch.hashing import file_digest
from mmsearch.models.spec import DEMO_DIR
from mmsearch.preprocess import normalise
from mmsearch.rerank.base import Candidate, Query, Reranker
from mmsearch.rerank.cache import FeatureCache, Features, Key, content_key, item_key
from mmsearch.rerank.calibration import PerModality
from mmsearch.rerank.cross import CrossConfig, CrossMatcher
from mmsearch.rerank.inputs import audio_windows, image_crops

CONFIG_FILE = DEMO_DIR / "rerank.json"
WEIGHTS_FILE = DEMO_DIR / "rerank.safetensors"
PATCH = 8  # the demo ViT's patch size
REGION = 2  # ViT patches per region side: the matcher attends over 4x4 regions
CELLS = 4  # pooled pixels per region side (the whole image's, with ``CrossConfig.whole_image``)
PATCH_WIDTH, EMBED_WIDTH = 96, 128  # the demo ViT's token width and the demo model's embedding width
DEFAULT_CACHE_BYTES = 64 << 20
FEATURES_VERSION = 1  # bump when how items are read or encoded changes (crops, windows, towers' code)
TEXTS_KEPT = 32  # recent query texts whose token features are kept (encoded once per query)
TextFeatures = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class DemoTowers:
    """Frozen token features from the demo model: what the matcher attends over."""

    def __init__(self, device: str = "cpu") -> None:
        from mmsearch.models.audio_tower import load_audio_tower
        from mmsearch.models.registry import load_encoder

        encoder = load_encoder("demo", device)
        if encoder.image_input is None or encoder.audio_input is None:
            raise ModelError("the demo re-ranker needs the demo model's image and audio towers")
        self.device = device
        self.image_input = encoder.image_input
        self.audio_input = encoder.audio_input
        self.clip = encoder.model  # type: ignore[attr-defined]
        self.clip.visual.output_tokens = True
        self.tokenizer = encoder.tokenizer  # type: ignore[attr-defined]
        self.audio = load_audio_tower(DEMO_DIR / "audio.json", DEMO_DIR / "audio.pt", device)
        self.space_id = f"{encoder.space_id}+audio@{file_digest(DEMO_DIR / 'audio.pt')[:16]}"

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token features ``(n, L, 96)``, valid-token mask ``(n, L)`` and unit embeddings ``(n, 128)``."""
        clip = self.clip
        tokens = self.tokenizer(list(texts)).to(self.device)
        x = clip.token_embedding(tokens) + clip.positional_embedding
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        eot = tokens.argmax(dim=-1)  # the end token has the largest id
        embedding = x[torch.arange(len(x)), eot] @ clip.text_projection
        length = int(eot.max()) + 1
        valid = torch.arange(length, device=self.device)[None] <= eot[:, None]
        return x[:, :length], valid, torch.nn.functional.normalize(embedding, dim=-1)

    @torch.no_grad()
    def images(self, pixels: torch.Tensor, config: CrossConfig = CrossConfig()) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised pixels ``(n, 3, 64, 64)`` → region tokens ``(n, 16, config.image_dim)`` and unit embeddings.

        A region is 2x2 ViT patches: their four frozen features side by side, plus the
        region's pixels pooled to ``config.cells`` squared (colour and layout survive the frozen
        tower either way). With ``config.whole_image`` every region also carries the tower's
        embedding and the whole image pooled to 4x4, so that each key shows the background
        and the object's extent, not only its own 16x16 pixels; with ``config.early_layer``,
        last come its four patches' features after that ViT block.
        """
        if config.early_layer is None:
            pooled, tokens = self.clip.visual(pixels)
            layers = [tokens]
        else:  # one pass that also keeps the patches after an earlier block (finer, more local detail)
            last = len(self.clip.visual.transformer.resblocks) - 1
            out = self.clip.visual.forward_intermediates(
                pixels, indices=[config.early_layer, last], normalize_intermediates=True, output_fmt="NLC"
            )
            pooled, layers = out["image_features"], out["image_intermediates"][::-1]
        embeddings = torch.nn.functional.normalize(pooled, dim=-1)
        side = pixels.shape[-1] // PATCH // REGION  # regions per side
        parts = [_regions(layers[0], side), _cells(pixels, side, config.cells)]
        if config.whole_image:
            whole = torch.cat([embeddings, _cells(pixels, 1, CELLS).flatten(1)], dim=1)
            parts.append(whole[:, None].expand(-1, side * side, -1))
        parts += [_regions(tokens, side) for tokens in layers[1:]]
        return torch.cat(parts, dim=-1), embeddings

    @torch.no_grad()
    def sounds(self, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms ``(n, samples)`` → frame tokens ``(n, frames, 256)`` and unit embeddings."""
        features = self.audio.features(self.audio.spectrogram(waves))
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        frames = features.permute(0, 3, 1, 2).flatten(2)
        return frames, torch.nn.functional.normalize(self.audio.project(pooled), dim=-1)

    def image_pixels(self, crops: np.ndarray) -> torch.Tensor:
        spec = self.image_input
        return torch.from_numpy(normalise(crops, spec.mean, spec.std)).to(self.device)


def image_dim(cells: int, whole_image: bool, early_layer: int | None = None) -> int:
    """The width of :meth:`DemoTowers.images`' region tokens for a ``CrossConfig`` with these fields."""
    patches = REGION * REGION * PATCH_WIDTH
    whole = EMBED_WIDTH + 3 * CELLS * CELLS if whole_image else 0
    return patches + 3 * cells * cells + whole + (0 if early_layer is None else patches)


def _regions(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """``(n, side², 4·width)``: ViT patch tokens ``(n, patches, width)`` grouped 2x2 into regions."""
    n, width = tokens.shape[0], tokens.shape[-1]
    grouped = tokens.reshape(n, side, REGION, side, REGION, width).permute(0, 1, 3, 2, 4, 5)
    return grouped.reshape(n, side * side, REGION * REGION * width)


def _cells(pixels: torch.Tensor, side: int, cells: int) -> torch.Tensor:
    """``(n, side², 3·cells²)``: each of ``side`` x ``side`` regions' pixels pooled to ``cells`` x ``cells``."""
    n = len(pixels)
    small = torch.nn.functional.avg_pool2d(pixels, pixels.shape[-1] // (side * cells))
    small = small.reshape(n, 3, side, cells, side, cells).permute(0, 2, 4, 1, 3, 5)
    return small.reshape(n, side * side, 3 * cells * cells)


def feature_space(towers: str, config: Path, weights: Path) -> str:
    """Names everything stored features depend on: the towers' weights, the matcher's
    architecture and weights, and how items are read into them (``FEATURES_VERSION``)."""
    parts = (str(FEATURES_VERSION), towers, file_digest(config), file_digest(weights))
    return f"demo-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:16]}"


def load_matcher(config_path: Path, weights_path: Path, device: str) -> tuple[CrossMatcher, PerModality]:
    """The matcher and its per-modality Platt scalings, from the JSON config and (fp16) safetensors."""
    from safetensors.torch import load_file

    settings = json.loads(config_path.read_text())
    matcher = CrossMatcher(CrossConfig.from_dict(settings["architecture"]))
    matcher.load_state_dict({k: v.float() for k, v in load_file(weights_path).items()})
    return matcher.to(device).eval(), PerModality.from_dict(settings["calibration"])


class DemoReranker(Reranker):
    """Text→image and text→audio matching for indexes built with the demo model.

    Per-item features (the matcher's encoded item tokens and the tower embedding, about
    4.6 kB per image or sound window) are kept in a :class:`~mmsearch.rerank.cache.FeatureCache`
    of at most ``cache_bytes`` (default 64 MiB, about 14,000 items; 0 turns it off), so a
    warm process judges known candidates without re-reading and re-encoding them; those
    computed at ingest are read from the index's :class:`~mmsearch.rerank.store.FeatureStore`.
    """

    pairs = frozenset({("text", "image"), ("text", "audio")})

    def __init__(
        self,
        device: str = "cpu",
        config: Path = CONFIG_FILE,
        weights: Path = WEIGHTS_FILE,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if not weights.is_file():
            raise ModelError(f"demo re-ranker weights not found: {weights}")
        self.spec = "demo"
        self.device = device
        self.towers = DemoTowers(device)
        self.matcher, self.calibration = load_matcher(config, weights, device)
        self.cache = FeatureCache(cache_bytes)
        self.feature_space = feature_space(self.towers.space_id, config, weights)
        self._texts: OrderedDict[str, TextFeatures] = OrderedDict()
        self._texts_lock = threading.Lock()

    def query_vector(self, query: Query, model: str | None) -> np.ndarray | None:
        """The demo text tower is the demo model's: its embedding of a text query is the vector
        stage's query vector, and the tokens it yields on the way are kept for judging."""
        if query.modality != "text" or (model or "").split("+", 1)[0] != "demo":
            return None
        return self.text(query.value)[2][0].cpu().numpy()

    def text(self, text: str) -> TextFeatures:
        """The demo text tower's token features, mask and embedding of ``text``, encoded once
        for the few most recent texts (the vector stage and the matcher both need them)."""
        with self._texts_lock:
            found = self._texts.get(text)
            if found is not None:
                self._texts.move_to_end(text)
                return found
        found = self.towers.texts([text])
        with self._texts_lock:
            self._texts[text] = found
            while len(self._texts) > TEXTS_KEPT:
                self._texts.popitem(last=False)
        return found

    def forget_texts(self) -> None:
        """Drop the remembered query texts (a benchmark times each query's full cost)."""
        with self._texts_lock:
            self._texts.clear()

    @torch.inference_mode()
    def logits(self, text: str, memory: torch.Tensor, embeddings: torch.Tensor) -> np.ndarray:
        """Raw match logits of one text against encoded item tokens and their embeddings."""
        words, valid, query = self.text(text)
        out = self.matcher.judge(words, valid, memory, embeddings @ query[0])
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def encode(self, candidates: Sequence[Candidate], modality: str) -> list[tuple[Features, str] | None]:
        """Re-read the candidates and run the frozen towers and the matcher's item encoder:
        ``(memory (T, width), embedding)`` per candidate with the sha256 of the bytes read,
        ``None`` where the file is unreadable."""
        if modality == "image":
            size = self.towers.image_input.size
            loaded = image_crops(candidates, size)
        else:
            spec = self.towers.audio_input
            loaded = audio_windows(candidates, spec.sample_rate, spec.window_s)
        readable = [(i, item) for i, item in enumerate(loaded) if item is not None]
        out: list[tuple[Features, str] | None] = [None] * len(candidates)
        if not readable:
            return out
        stacked = np.stack([item.payload for _, item in readable])
        if modality == "image":
            tokens, embeddings = self.towers.images(self.towers.image_pixels(stacked), self.matcher.config)
        else:
            tokens, embeddings = self.towers.sounds(torch.from_numpy(stacked).to(self.device))
        memory = self.matcher.encode_item(tokens, modality).float().cpu().numpy()
        vectors = embeddings.float().cpu().numpy()
        for row, (i, item) in enumerate(readable):
            out[i] = (memory[row], vectors[row]), item.content_hash
        return out

    def _match_probs(self, query: Query, candidates: Sequence[Candidate]) -> np.ndarray:
        probs = np.zeros(len(candidates))
        modality = candidates[0].modality
        keys = [item_key(c) for c in candidates]
        features = self._known(keys)
        missing = [i for i, found in enumerate(features) if found is None]
        if missing:
            for i, fresh in zip(missing, self.encode([candidates[i] for i in missing], modality), strict=True):
                if fresh is not None:  # stored under the hash of what was read, which the key may predate
                    features[i] = fresh[0]
                    self.cache.put(content_key(fresh[1], candidates[i].offset_s), fresh[0])
        readable = [i for i, found in enumerate(features) if found is not None]
        if not readable:
            return probs
        memory = torch.from_numpy(np.stack([features[i][0] for i in readable])).to(self.device)  # type: ignore[index]
        vectors = torch.from_numpy(np.stack([features[i][1] for i in readable])).to(self.device)  # type: ignore[index]
        probs[readable] = self.calibration(self.logits(query.value, memory, vectors), modality)
        return probs

    def _known(self, keys: Sequence[Key | None]) -> list[Features | None]:
        """Features computed before: in this process (the cache), or at ingest (the store)."""
        found = [None if key is None else self.cache.get(key) for key in keys]
        if self.store is not None:
            asked = [(i, key) for i, (key, hit) in enumerate(zip(keys, found)) if key is not None and hit is None]
            for (i, _), stored in zip(asked, self.store.get_many([key for _, key in asked])):
                found[i] = stored
        return found


def load(name: str, device: str) -> DemoReranker:
    """The ``demo`` scheme's factory (the shipped weights; ``name`` is ignored)."""
    return DemoReranker(device)
