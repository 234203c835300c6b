"""Train the demo model's ear: an audio tower into the frozen demo image/text space.

Sounds of the synthetic world (``world.render_sound``: colour is pitch, shape is
timbre, count is the number of notes, size is loudness) are embedded by a small
CNN over log-mel spectrograms. The target for each sound is the frozen demo text
tower's embedding of its caption, so sounds land where texts — and therefore
images — of the same concept already are. The loss is a contrastive one over the
shape×colour class captions plus a pull towards the sound's own caption (which
also names count and size).

    python benchmarks/train_demo_audio.py            # reproduces the committed audio.pt
    python benchmarks/train_demo_audio.py --steps 30 --out /tmp/audio.pt   # smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mmsearch import world
from mmsearch.models.audio_tower import AudioTower, AudioTowerConfig
from mmsearch.models.registry import DEMO_DIR, load_encoder


def class_index(scene: world.Scene) -> int:
    return world.CLASSES.index(world.class_label(scene))


def batch(rng: np.random.Generator, size: int, config: AudioTowerConfig) -> tuple[np.ndarray, list, list[str]]:
    scenes = [world.sample_scene(rng) for _ in range(size)]
    waves = np.stack([world.render_sound(s, config.sample_rate, config.window_s) for s in scenes])
    texts = [str(rng.choice(world.sound_captions(s))) for s in scenes]
    return waves, scenes, texts


@torch.no_grad()
def evaluate(tower: AudioTower, encoder, config: AudioTowerConfig, n: int, seed: int) -> dict[str, float]:
    """text→audio precision@10 over class queries and zero-shot sound→class top-1."""
    tower.eval()
    waves, scenes, _ = batch(np.random.default_rng(seed), n, config)
    audio = torch.nn.functional.normalize(tower(torch.from_numpy(waves)), dim=1).numpy()
    classes = encoder.embed_texts([f"a {label}" for label in world.CLASSES])
    labels = np.array([class_index(s) for s in scenes])
    top = np.argsort(-(classes @ audio.T), axis=1)[:, :10]
    precision = float(np.mean(labels[top] == np.arange(len(world.CLASSES))[:, None]))
    zero_shot = float(np.mean((audio @ classes.T).argmax(1) == labels))
    tower.train()
    return {"text_to_audio_p@10": precision, "audio_zero_shot_top1": zero_shot}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=2024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEMO_DIR / "audio.pt")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = AudioTowerConfig()
    encoder = load_encoder("mmsearch-demo:" + str(next(DEMO_DIR.glob("weights.*"))), "cpu")
    class_targets = torch.from_numpy(encoder.embed_texts([f"a {label}" for label in world.CLASSES]))
    tower = AudioTower(config)
    scale = torch.nn.Parameter(torch.tensor(math.log(20.0)))
    optimizer = torch.optim.AdamW([*tower.parameters(), scale], lr=args.lr, weight_decay=1e-4)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        waves, scenes, texts = batch(rng, args.batch, config)
        audio = torch.nn.functional.normalize(tower(torch.from_numpy(waves)), dim=1)
        caption_targets = torch.from_numpy(encoder.embed_texts(texts))
        labels = torch.tensor([class_index(s) for s in scenes])
        class_loss = torch.nn.functional.cross_entropy(scale.exp() * audio @ class_targets.T, labels)
        caption_loss = (1 - (audio * caption_targets).sum(1)).mean()
        loss = class_loss + caption_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            minutes = (time.perf_counter() - started) / 60
            print(f"step {step:5d}/{args.steps} loss {loss.item():.4f} ({minutes:.1f} min)", flush=True)

    state = {k: v.detach().half() for k, v in tower.state_dict().items()}
    torch.save(state, args.out)
    config.save(args.out.with_suffix(".json"))
    print(f"saved {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    tower.load_state_dict({k: v.float() for k, v in state.items()})
    for name, value in evaluate(tower, encoder, config, 1000, args.eval_seed).items():
        print(f"{name}: {value:.3f}")


if __name__ == "__main__":
    main()
