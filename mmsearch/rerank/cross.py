"""A small cross-attention matcher: text tokens attend over an item's patches or frames.

The ITM head of ALBEF/BLIP in miniature. The item's tokens (image patches or audio
frames, from the frozen demo towers; for images optionally also a small conv stem over the
full-resolution pixels, which sees whole objects) first attend to each other, so that
counts and layouts can be read off; then each block lets the text tokens attend to each
other and over the item's tokens. A small head turns the text tokens and the two towers'
cosine into a match logit: from the mean text token, or (``pool="softmin"``) per token and
then a soft minimum, so that any one word the item contradicts vetoes the match however
long the query (calibrated separately, see :mod:`mmsearch.rerank.calibration`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import cast

import torch
from torch import nn


@dataclass(frozen=True)
class CrossConfig:
    """Architecture; stored as JSON next to the weights."""

    width: int = 64
    heads: int = 4
    layers: int = 2
    text_dim: int = 96
    image_dim: int = 4 * 96 + 48  # per region: four frozen patch features + its pixels pooled to cells x cells
    audio_dim: int = 256  # frozen conv features, channels x mel bands, per frame
    patches: int = 16
    frames: int = 16
    cells: int = 4  # pooled pixels per image region side
    whole_image: bool = False  # every region token also carries the tower's embedding and the image pooled to 4x4
    early_layer: int | None = None  # and its patches' features after this ViT block
    pixels_at: int = 4 * 96  # where a region token's pooled cells start (after its four patch features)
    stem: int = 0  # >0: a conv stem of this many first channels over the regions' full-resolution pixels (cells 16)
    context_layers: int = 1  # self-attention layers over the item's tokens before the text attends to them
    pool: str = "mean"  # "mean": head over the mean text token; "softmin": head per token, then a soft minimum

    @classmethod
    def from_dict(cls, data: dict) -> CrossConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


class CrossBlock(nn.Module):
    """Pre-norm: text self-attention (:meth:`attend_self`), then cross-attention over the item
    and a feed-forward (:meth:`attend_item`); two steps, so that :meth:`CrossMatcher.judge` runs
    the text-only first one once for all candidates."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm_self, self.norm_query, self.norm_item, self.norm_ff = (nn.LayerNorm(width) for _ in range(4))
        self.self_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def attend_self(self, text: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``valid`` (n, L) marks the text tokens that are not padding."""
        x = self.norm_self(text)
        return text + attend(self.self_attention, x, x, valid)

    def attend_item(self, text: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """``text`` may have one row for all of ``item``'s: its query projection then runs once."""
        text = text + attend(self.cross_attention, self.norm_query(text), self.norm_item(item))
        return text + self.ff(self.norm_ff(text))


def attend(
    layer: nn.MultiheadAttention, query: torch.Tensor, memory: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``layer(query, memory, memory)`` (``valid`` (n, S): the memory tokens that may be
    attended to) with its own weights, without ``MultiheadAttention``'s general-purpose
    checks, which cost more than the attention itself at re-ranking sizes."""
    width, heads = query.shape[-1], layer.num_heads
    weight, bias = layer.in_proj_weight, layer.in_proj_bias
    q = nn.functional.linear(query, weight[:width], bias[:width])
    k, v = nn.functional.linear(memory, weight[width:], bias[width:]).chunk(2, dim=-1)
    q, k, v = (t.unflatten(-1, (heads, width // heads)).transpose(1, 2) for t in (q, k, v))
    if valid is not None and bool(valid.all()):
        valid = None  # nothing padded: no mask to apply
    out = attention(q, k, v, None if valid is None else valid[:, None, None, :])
    return layer.out_proj(out.transpose(1, 2).flatten(2))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` over the keys ``allowed`` lets through, the keys padded with
    masked slots to a multiple of 16: torch's CPU softmax vectorises only rows of a multiple
    of 16 (over 10 to 15 values it took 6-9× as long as over 16), and this ran 1.5-2.2× as fast
    as ``scaled_dot_product_attention`` at re-ranking sizes (``benchmarks/attention.py``). Every
    row must allow at least one key (a text always has its start token, an item all its tokens)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    keys = scores.shape[-1]
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    if keys % 16:
        scores = nn.functional.pad(scores, (0, -keys % 16), value=float("-inf"))
    return scores.softmax(-1)[..., :keys] @ v


class CrossMatcher(nn.Module):
    """``(text tokens, item tokens, cosine) -> match logit``, for images or sounds."""

    def __init__(self, config: CrossConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.text_in = nn.Linear(config.text_dim, width)
        self.item_in = nn.ModuleDict(
            {"image": nn.Linear(config.image_dim, width), "audio": nn.Linear(config.audio_dim, width)}
        )
        self.stem = pixel_stem(config.stem, width) if config.stem else None
        self.position = nn.ParameterDict(
            {
                "image": nn.Parameter(torch.randn(config.patches, width) * 0.02),
                "audio": nn.Parameter(torch.randn(config.frames, width) * 0.02),
            }
        )
        layers = [
            nn.TransformerEncoderLayer(width, config.heads, 2 * width, 0.0, batch_first=True, norm_first=True)
            for _ in range(config.context_layers)
        ]
        self.context = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
        self.blocks = nn.ModuleList(CrossBlock(width, config.heads) for _ in range(config.layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Sequential(nn.Linear(width + 1, width), nn.GELU(), nn.Linear(width, 1))

    def encode_item(self, tokens: torch.Tensor, modality: str) -> torch.Tensor:
        """Item tokens in the matcher's width, after one round of self-attention."""
        x = self.item_in[modality](tokens) + self.position[modality][: tokens.shape[1]]
        if self.stem is not None and modality == "image":
            x = x + self.stem(region_pixels(tokens, self.config.pixels_at, self.config.cells))
        return self.context(x)

    def forward(
        self, text: torch.Tensor, valid: torch.Tensor, item: torch.Tensor, modality: str, cosine: torch.Tensor
    ) -> torch.Tensor:
        """``text`` (n, L, text_dim) with ``valid`` (n, L) bool; ``item`` (n, T, dim); ``cosine`` (n,)."""
        return self.judge(text, valid, self.encode_item(item, modality), cosine)

    def judge(
        self, text: torch.Tensor, valid: torch.Tensor, memory: torch.Tensor, cosine: torch.Tensor
    ) -> torch.Tensor:
        """The match logit from already encoded item tokens (``memory``, (n, T, width)): what a
        cache of per-item features keeps, since it does not depend on the query. ``text`` and
        ``valid`` may have one row for all n items: what depends on the text alone (its input
        layer and first self-attention) then runs once, not n times."""
        n = len(memory)
        x = self.text_in(text)
        for block in cast("list[CrossBlock]", self.blocks):
            x = block.attend_self(x, valid.expand(len(x), -1))
            x = block.attend_item(x, memory)
        mask = valid.expand(n, -1)
        if self.config.pool == "softmin":
            return soft_min(self._head(self.norm(x), cosine[:, None]), mask)
        weights = mask.float().unsqueeze(-1)
        pooled = (self.norm(x) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self._head(pooled, cosine)

    def _head(self, features: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
        """``head(cat([features, cosine]))`` without building the concatenation: the cosine's
        column of the first layer is added on its own (``cosine`` broadcasts over tokens)."""
        first, rest = cast("nn.Linear", self.head[0]), self.head[1:]
        width = features.shape[-1]
        hidden = nn.functional.linear(features, first.weight[:, :width], first.bias)
        return rest(hidden + cosine.unsqueeze(-1) * first.weight[:, width]).squeeze(-1)


def soft_min(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``-log mean exp(-s)`` over each row's valid tokens: a pair matches only if every token's
    judgement (colour, shape, count, ...) does, and a query that pins down more attributes is
    not diluted the way a mean over its tokens is (equal scores give that score back)."""
    negated = (-scores).masked_fill(~valid, float("-inf"))
    return -(torch.logsumexp(negated, dim=-1) - valid.sum(-1).clamp(min=1).float().log())


def pixel_stem(channels: int, width: int) -> nn.Module:
    """Four stride-2 3x3 convolutions, 64x64 pixels to a 4x4 grid of ``width`` features (one per
    region), each seeing about 31x31 pixels: whole objects across region borders, which the
    frozen patches and pooled cells show only in pieces."""
    sizes = [3, channels, 2 * channels, 4 * channels]
    layers: list[nn.Module] = []
    for c_in, c_out in pairwise(sizes):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GELU()]
    layers += [nn.Conv2d(sizes[-1], width, 3, stride=2, padding=1), nn.Flatten(2)]
    return nn.Sequential(*layers, Transpose())


class Transpose(nn.Module):
    """``(n, width, regions)`` to ``(n, regions, width)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def region_pixels(tokens: torch.Tensor, start: int, cells: int) -> torch.Tensor:
    """The image ``(n, 3, side·cells, side·cells)`` back from the region tokens' pooled cells,
    which sit at ``start`` in each token (see ``mmsearch.rerank.demo._cells``)."""
    n, regions = tokens.shape[:2]
    side = round(regions**0.5)
    cells_part = tokens[..., start : start + 3 * cells * cells]
    grid = cells_part.reshape(n, side, side, 3, cells, cells).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n, 3, side * cells, side * cells)


def save_config(config: CrossConfig, extra: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps({"architecture": config.to_dict(), **extra}, indent=2) + "\n")
