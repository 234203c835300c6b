"""Train the bundled ``mmsearch-demo`` open_clip model on the synthetic world.

Images are rendered on the fly by ``mmsearch.world`` and preprocessed with the
engine's own ``to_model_input``, so training sees exactly the pixels search will.
Captions from one scene often describe other scenes in the batch too ("a red
circle" fits every single red circle), so the contrastive targets spread over
every true match (``world.parse_caption`` says what a caption pins down) instead of the diagonal.
That removes false negatives and is what lets a tiny ViT learn in minutes on CPU.
A supervised-contrastive term over the image embeddings (positives: other images in
the batch with the same shape+colour) keeps background, count and size from
dominating image-to-image neighbours.

    python benchmarks/train_demo.py            # the English stage of the committed weights
    python benchmarks/train_demo.py --steps 50 --out /tmp/w.safetensors  # smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mmsearch import world
from mmsearch.preprocess import to_model_input

MODEL_NAME = "mmsearch-demo"
ENGLISH_CONTEXT = 24  # tokens; train_demo_chinese.py extends the context to the config's
DEMO_DIR = Path(__file__).resolve().parents[1] / "mmsearch" / "models" / "demo"
CONFIG = DEMO_DIR / f"{MODEL_NAME}.json"
ATTRIBUTES = {
    "shape": world.SHAPES,
    "colour": tuple(world.COLOURS),
    "background": tuple(world.BACKGROUNDS),
    "count": tuple(world.COUNTS),
    "size": world.SIZES,
}


def image_size() -> int:
    return open_clip.get_model_config(MODEL_NAME)["vision_cfg"]["image_size"]


def pixels(image: Image.Image) -> np.ndarray:
    return to_model_input(image, image_size(), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)


class Batches(torch.utils.data.IterableDataset):
    """Endless seeded batches: images, tokens, scene attributes, caption attributes."""

    def __init__(self, batch: int, seed: int, context: int):
        self.batch, self.seed, self.context = batch, seed, context

    def __iter__(self):
        open_clip.add_model_config(CONFIG)  # the worker process has a fresh registry
        tokenizer = open_clip.get_tokenizer(MODEL_NAME, context_length=self.context)
        rng = np.random.default_rng(self.seed)
        while True:
            scenes = [world.sample_scene(rng) for _ in range(self.batch)]
            texts = [str(rng.choice(world.captions(s, rng))) for s in scenes]
            scene_ids = [[values.index(getattr(s, k)) for k, values in ATTRIBUTES.items()] for s in scenes]
            text_ids = []
            for text in texts:
                said = world.parse_caption(text)
                text_ids.append([values.index(said[k]) if k in said else -1 for k, values in ATTRIBUTES.items()])
            images = np.stack([pixels(world.render(s)) for s in scenes])
            yield (
                torch.from_numpy(images),
                tokenizer(texts),
                torch.tensor(scene_ids),
                torch.tensor(text_ids),
            )


def multi_positive_loss(logits: torch.Tensor, scene_ids: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE whose targets are uniform over all scenes a caption truly describes."""
    said = text_ids[:, None, :]
    match = ((said == -1) | (said == scene_ids[None, :, :])).all(-1).float()  # (text, image)
    text_loss = -(match / match.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    image_loss = -(match.T / match.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
    return (text_loss + image_loss) / 2


def class_contrastive_loss(features: torch.Tensor, scene_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss over image embeddings keyed by shape+colour.

    Every other image in the batch with the same shape and colour is a positive,
    whatever its background, count or size, so nearest image neighbours are pulled
    towards the class instead of towards look-alike layouts.
    """
    labels = scene_ids[:, 0] * len(world.COLOURS) + scene_ids[:, 1]
    self_mask = torch.eye(len(labels), dtype=torch.bool, device=features.device)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    logits = (features @ features.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits.log_softmax(1).masked_fill(self_mask, 0.0)
    count = positive.sum(1)
    anchors = count > 0
    per_anchor = -(log_prob * positive).sum(1)[anchors] / count[anchors]
    return per_anchor.mean()


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(args: argparse.Namespace) -> torch.nn.Module:
    model = open_clip.create_model(MODEL_NAME, force_context_length=args.context_length)
    print(
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters",
        flush=True,
    )
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    loader = torch.utils.data.DataLoader(
        Batches(args.batch, args.seed, args.context_length), batch_size=None, num_workers=1
    )
    model.train()
    start = time.time()
    for step, (images, tokens, scene_ids, text_ids) in enumerate(loader):
        if step == args.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        image_features = model.encode_image(images, normalize=True)
        text_features = model.encode_text(tokens, normalize=True)
        logits = model.logit_scale.exp() * text_features @ image_features.T
        clip_loss = multi_positive_loss(logits, scene_ids, text_ids)
        image_loss = class_contrastive_loss(image_features, scene_ids, args.image_temperature)
        loss = clip_loss + args.image_weight * image_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % args.log_every == 0 or step == args.steps - 1:
            elapsed = time.time() - start
            print(
                f"step {step:5d}/{args.steps} loss {loss.item():.4f} "
                f"(clip {clip_loss.item():.4f} image {image_loss.item():.4f}) "
                f"scale {model.logit_scale.exp().item():5.1f} lr {optimizer.param_groups[0]['lr']:.2e} "
                f"{elapsed / 60:5.1f} min",
                flush=True,
            )
    print(f"training took {(time.time() - start) / 60:.1f} min", flush=True)
    return model


def precision_at(similarity: torch.Tensor, relevant: torch.Tensor, k: int) -> float:
    top = similarity.topk(k, dim=1).indices
    return relevant.gather(1, top).float().mean().item()


@torch.no_grad()
def evaluate(model: torch.nn.Module, n: int, seed: int) -> dict[str, float]:
    """Score on a held-out world written to disk, read back like the engine reads it."""
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME, context_length=model.context_length)
    with tempfile.TemporaryDirectory() as tmp:
        rows = world.generate_world(tmp, n, seed)
        images = torch.from_numpy(np.stack([pixels(Image.open(Path(tmp) / r["file"])) for r in rows]))
    labels = [f"{r['colour']} {r['shape']}" for r in rows]
    label_ids = torch.tensor([world.CLASSES.index(label) for label in labels])
    single = torch.tensor([r["count"] == 1 for r in rows])
    image_features = torch.cat([model.encode_image(chunk, normalize=True) for chunk in images.split(256)])
    queries = model.encode_text(tokenizer([f"a {label}" for label in world.CLASSES]), normalize=True)
    classes = model.encode_text(tokenizer(list(world.CLASSES)), normalize=True)
    same_class = label_ids[:, None] == label_ids[None, :]
    query_relevant = torch.arange(len(world.CLASSES))[:, None] == label_ids[None, :]
    image_similarity = image_features @ image_features.T
    image_similarity.fill_diagonal_(-2)  # a query image is not its own neighbour
    predicted = (image_features @ classes.T).argmax(1)
    return {
        "text_to_image_p@10": precision_at(queries @ image_features.T, query_relevant, 10),
        "zero_shot_top1": (predicted == label_ids).float().mean().item(),
        "zero_shot_top1_single_object": (predicted == label_ids)[single].float().mean().item(),
        "image_to_image_p@10": precision_at(image_similarity, same_class, 10),
    }


def save_fp16(model: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--image-weight", type=float, default=1.0)
    parser.add_argument("--image-temperature", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-n", type=int, default=2000)
    parser.add_argument("--eval-seed", type=int, default=2024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--context-length", type=int, default=ENGLISH_CONTEXT)
    parser.add_argument("--out", type=Path, default=DEMO_DIR / "weights.safetensors")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    open_clip.add_model_config(CONFIG)
    save_fp16(train(args), args.out)
    # Score the shipped fp16 file through the same loader a user's checkpoint takes.
    model = open_clip.create_model(MODEL_NAME, pretrained=str(args.out), force_context_length=args.context_length)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    for name, value in evaluate(model, args.eval_n, args.eval_seed).items():
        print(f"{name}: {value:.3f}")


if __name__ == "__main__":
    main()
