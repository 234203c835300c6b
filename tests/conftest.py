"""Shared fixtures: a random-weight model loaded through the real checkpoint path,
and folders of real image files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from mmsearch import Index, world
from mmsearch.models.registry import load_encoder

COLOURS = {name: world.COLOURS[name] for name in ("red", "green", "blue", "yellow", "white", "black")}


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-init checkpoint of the shipped ``mmsearch-demo`` architecture, as a user's file."""
    import open_clip
    import torch

    from mmsearch.models.openclip import _register_project_configs

    _register_project_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("mmsearch-demo")
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    torch.save(model.state_dict(), path)
    return f"mmsearch-demo:{path}"


@pytest.fixture(scope="session")
def encoder(random_checkpoint: str):
    return load_encoder(random_checkpoint, "cpu")


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (96, 96), seed: int = 0) -> Path:
    """A solid colour with a little seeded noise, so every file has distinct content."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


MIXED_FILES = 200


def write_mixed(root: Path) -> Path:
    """200 tiny files: images (PNG, JPEG), texts (some of several passages), sounds, one broken image."""
    rng = np.random.default_rng(7)
    for n in range(MIXED_FILES - 1):
        kind = n % 5
        if kind in (0, 1):
            suffix = "png" if kind == 0 else "jpg"
            write_image(root / "images" / f"{n:03d}.{suffix}", tuple(rng.integers(0, 255, 3)), (40, 32), seed=n)
        elif kind in (2, 3):
            words = " ".join(f"word{(n * 7 + i) % 97}" for i in range(4 + (n % 13) * 12))
            (root / "texts").mkdir(parents=True, exist_ok=True)
            (root / "texts" / f"{n:03d}.txt").write_text(f"note {n}: {words}")
        else:
            (root / "sounds").mkdir(parents=True, exist_ok=True)
            seconds = 0.5 + (n % 3) * 1.5  # one to three windows
            wave = np.sin(np.linspace(0, 200 + n, int(8000 * seconds))).astype(np.float32)
            soundfile.write(root / "sounds" / f"{n:03d}.wav", wave, 8000)
    (root / "images" / "broken.png").write_bytes(b"not a picture")
    return root


def live_rows(idx: Index) -> dict[tuple, tuple[dict, np.ndarray]]:
    """(path, piece position) -> (metadata without id, vector) for every live row."""
    snapshot = idx.refresh()
    ids = set(idx.sql("SELECT id FROM items")["id"].to_pylist())
    rows: dict[tuple, tuple[dict, np.ndarray]] = {}
    for shard in snapshot.shards:
        vectors, table = shard.select(ids)
        for vector, row in zip(vectors, table.to_pylist()):
            key = (row["path"], row["char_offset"], row["offset_s"], row["row"])
            assert key not in rows, f"{key} is present twice"
            rows[key] = ({k: v for k, v in row.items() if k != "id"}, vector)
    return rows


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Twelve images in nested folders, mixed formats and sizes."""
    root = tmp_path / "photos"
    for i, (name, colour) in enumerate(COLOURS.items()):
        write_image(root / f"{name}.png", colour, (96 + 8 * i, 80), seed=i)
        write_image(root / "nested" / f"{name}.JPG", colour, (160, 120 + 8 * i), seed=100 + i)
    return root


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``mmsearch`` CLI in a subprocess."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mmsearch.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="session")
def ray_runtime():
    """One local Ray runtime (2 CPUs) shared by every test that needs Ray."""
    from mmsearch.distributed.runtime import connect

    ray = connect("local", num_cpus=2)
    yield ray
    ray.shutdown()
