"""Teach the demo model's text tower Chinese, by distillation from its own English.

The image tower, and so every image vector, stays as it is. The text tower is the
student of a frozen copy of itself (the recipe of multilingual sentence embeddings,
Reimers & Gurevych 2020): a Chinese caption must land where the teacher puts the English
caption it translates (``world.captions(scene, rng, "zh")`` draws the translations of
``world.captions(scene, rng, "en")``), and an English caption must stay where it was, so
the audio tower, trained on the English text embeddings, keeps its targets.

The context first grows from 24 to 64 tokens: the byte-level BPE spends about 2.6 tokens
per Chinese character, and a Chinese phrase ends with its shape. Causal attention keeps
every English embedding unchanged by the longer context, so the teacher is the extended
model itself before training.

    python benchmarks/train_demo.py --out /tmp/english.safetensors       # the English stage
    python benchmarks/train_demo_chinese.py --base /tmp/english.safetensors   # the shipped weights
    python benchmarks/train_demo_chinese.py --base /tmp/english.safetensors --steps 50 --out /tmp/w.safetensors
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import load_file
from train_demo import CONFIG, DEMO_DIR, MODEL_NAME, save_fp16

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mmsearch import world


def extended(base: Path, context: int) -> torch.nn.Module:
    """The model with a ``context``-token text context holding ``base``'s weights; new
    positions start near zero."""
    model = open_clip.create_model(MODEL_NAME, force_context_length=context)
    state = {k: v.float() for k, v in load_file(str(base)).items()}
    positions = model.positional_embedding.detach().clone()
    old = state["positional_embedding"]
    positions[: len(old)] = old
    torch.nn.init.normal_(positions[len(old) :], std=0.01)
    state["positional_embedding"] = positions
    model.load_state_dict(state)
    return model


def encode(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens, normalize=True)`` without the padding: causal attention
    makes the end-of-text token blind to what follows it, and short English captions in a
    64-token context would otherwise cost four times what they need."""
    n = int((tokens != 0).sum(1).max())
    tokens = tokens[:, :n]
    x = model.token_embedding(tokens) + model.positional_embedding[:n]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = x[torch.arange(len(x)), tokens.argmax(dim=-1)] @ model.text_projection
    return torch.nn.functional.normalize(x, dim=-1)


def pairs(rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
    """``n`` (English, Chinese) caption pairs of random scenes, every phrasing equally likely."""
    english, chinese = [], []
    for _ in range(n):
        scene, seed = world.sample_scene(rng), int(rng.integers(2**32))
        en = world.captions(scene, np.random.default_rng(seed), "en")
        zh = world.captions(scene, np.random.default_rng(seed), "zh")
        pick = int(rng.integers(len(en)))
        english.append(en[pick])
        chinese.append(zh[pick])
    return english, chinese


@torch.no_grad()
def class_accuracy(student: torch.nn.Module, teacher: torch.nn.Module, tokenizer) -> float:
    """Top-1 of each Chinese class query among the teacher's English class queries."""
    labels = [label.split(" ", 1) for label in world.CLASSES]
    zh = encode(student, tokenizer([world.class_query(c, s, "zh") for c, s in labels]))
    en = encode(teacher, tokenizer([world.class_query(c, s) for c, s in labels]))
    return ((zh @ en.T).argmax(1) == torch.arange(len(labels))).float().mean().item()


def train(args: argparse.Namespace) -> torch.nn.Module:
    student = extended(args.base, args.context_length)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME, context_length=args.context_length)
    sample = tokenizer(["a red circle", "灰色背景上的三个小的紫色正方形"])
    assert torch.allclose(encode(teacher, sample), teacher.encode_text(sample, normalize=True), atol=1e-5)
    targets: dict[str, torch.Tensor] = {}  # the teacher's English embeddings: a finite set of captions
    text_params = [p for name, p in student.named_parameters() if not name.startswith(("visual.", "logit_"))]
    student.requires_grad_(False)
    for p in text_params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(text_params, lr=args.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - args.warmup) / max(1, args.steps - args.warmup)))

    rng = np.random.default_rng(args.seed)
    start = time.time()
    student.train()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        english, chinese = pairs(rng, args.batch)
        new = [text for text in dict.fromkeys(english) if text not in targets]
        if new:
            with torch.no_grad():
                targets.update(zip(new, encode(teacher, tokenizer(new))))
        target = torch.stack([targets[text] for text in english])
        zh = encode(student, tokenizer(chinese))
        en = encode(student, tokenizer(english))
        zh_loss = (1 - (zh * target).sum(1)).mean()
        en_loss = (1 - (en * target).sum(1)).mean()
        loss = zh_loss + args.english_weight * en_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(text_params, 1.0)
        optimizer.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            accuracy = class_accuracy(student.eval(), teacher, tokenizer)
            student.train()
            print(
                f"step {step:5d}/{args.steps} zh {zh_loss.item():.4f} en {en_loss.item():.5f} "
                f"class top-1 {accuracy:.3f} lr {optimizer.param_groups[0]['lr']:.2e} "
                f"{(time.time() - start) / 60:5.1f} min",
                flush=True,
            )
    print(f"training took {(time.time() - start) / 60:.1f} min", flush=True)
    return student.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the English stage: train_demo.py weights")
    parser.add_argument("--context-length", type=int, default=64, help="must match the shipped config's")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--english-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=DEMO_DIR / "weights.safetensors")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    open_clip.add_model_config(CONFIG)
    model = train(args)
    save_fp16(model, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB); score it with benchmarks/quality.py")


if __name__ == "__main__":
    main()
