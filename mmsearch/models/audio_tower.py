"""A small audio tower: log-mel spectrogram → CNN → vector in an image/text space.

It is the demo model's ear: trained (``benchmarks/train_demo_audio.py``) to map
sounds of the synthetic world onto the frozen demo text embeddings of what they
depict, so audio lives in the same space as images and text. The mel front end is
plain torch (no torchaudio dependency).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class AudioTowerConfig:
    """Architecture and input format; stored as JSON next to the weights."""

    embed_dim: int = 128
    sample_rate: int = 8_000
    window_s: float = 2.0
    n_fft: int = 256
    hop: int = 128
    n_mels: int = 32
    channels: tuple[int, ...] = (16, 32, 64)

    @classmethod
    def load(cls, path: str | Path) -> AudioTowerConfig:
        data = json.loads(Path(path).read_text())
        data["channels"] = tuple(data["channels"])
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular filters on the mel scale, shaped ``(n_fft // 2 + 1, n_mels)``."""

    def to_mel(hz: float) -> float:
        return 2595.0 * math.log10(1.0 + hz / 700.0)

    mel_points = torch.linspace(to_mel(0.0), to_mel(sample_rate / 2), n_mels + 2)
    hz_points = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = hz_points[:-2], hz_points[1:-1], hz_points[2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class AudioTower(nn.Module):
    """Waveforms ``(n, samples)`` → embeddings ``(n, embed_dim)`` (not normalised)."""

    window: torch.Tensor  # buffers, derived from the config and never saved
    mel: torch.Tensor

    def __init__(self, config: AudioTowerConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        self.register_buffer("mel", mel_filterbank(config.n_fft, config.n_mels, config.sample_rate), persistent=False)
        blocks: list[nn.Module] = []
        previous = 1
        for channels in config.channels:
            blocks += [
                nn.Conv2d(previous, channels, 3, padding=1),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            previous = channels
        self.features = nn.Sequential(*blocks)
        self.project = nn.Linear(previous * 2, config.embed_dim)

    def spectrogram(self, waves: torch.Tensor) -> torch.Tensor:
        """Log-mel spectrogram ``(n, 1, n_mels, frames)``."""
        stft = torch.stft(waves, self.config.n_fft, self.config.hop, window=self.window, return_complex=True)
        power = stft.abs().pow(2).transpose(1, 2) @ self.mel
        return torch.log(power + 1e-6).transpose(1, 2).unsqueeze(1)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        features = self.features(self.spectrogram(waves))
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.project(pooled)


def load_audio_tower(config_path: str | Path, weights_path: str | Path, device: str = "cpu") -> AudioTower:
    """Build the tower from its JSON config and load a (possibly fp16) state dict."""
    tower = AudioTower(AudioTowerConfig.load(config_path))
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    tower.load_state_dict({k: v.float() for k, v in state.items()})
    return tower.to(device).eval()
