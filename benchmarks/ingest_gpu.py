"""Ingest throughput on one device, end to end against the model alone, in one run.

* model only: ViT-B-32 with random weights, saved to a local checkpoint and loaded through
  mmsearch's real checkpoint path (``ViT-B-32:/path/ckpt.pt``); batches of random uint8 crops
  through the encoder as the ingest feeds it (host-to-device copy, normalisation on the device,
  fp16 autocast on CUDA, vectors back): img/s;
* end to end: ``mmsearch index`` (the CLI, a fresh process) on N generated JPEG photos of
  realistic size (default 1600×1200, ~500 kB; 32 drawn photos, each file made unique by a
  JPEG comment): discover, hash, decode, resize, embed, write, commit; img/s over the whole
  process and over the ingest itself (the summary's total: no interpreter start-up, no model
  load), and the latter's ratio to the model alone
  (target ≥ 0.9; ≥ 6,000 img/s for ViT-B/32 on one H100), and what the decode workers alone
  could deliver (their summed decode seconds spread over their number);
* the Ray path, ``mmsearch index --ray local``, where Ray is installed (otherwise skipped
  with a note).

    python benchmarks/ingest_gpu.py                 # CPU here: ~160 photos, a few minutes
    python benchmarks/ingest_gpu.py --images 20000  # the default on a GPU

Writes benchmarks/results/gpu.json and gpu.md with the device next to the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mmsearch.ingest.pipeline import default_workers

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
SEED = 20261126
ARCH = "ViT-B-32"
TARGET_RATIO = 0.9
TARGET_IMG_S = 6000
BASE_PHOTOS = 32


def device_name() -> tuple[str, str]:
    """('cuda' | 'cpu', a human name of the device)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(0)
    return "cpu", f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def checkpoint(folder: Path) -> str:
    """A random-weight ViT-B-32 saved as a user's checkpoint file; its mmsearch spec."""
    import open_clip
    import torch

    torch.manual_seed(SEED)
    path = folder / "vit-b-32-random.pt"
    torch.save(open_clip.create_model(ARCH).state_dict(), path)
    return f"{ARCH}:{path}"


def _photo(job: tuple[Path, int, int, int]) -> int:
    """One JPEG that compresses and decodes like a photo: smooth shapes, gradients and grain."""
    from PIL import Image, ImageDraw, ImageFilter

    path, index, width, height = job
    rng = np.random.default_rng(SEED + index)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([(x / width) * rng.uniform(60, 200) + (y / height) * rng.uniform(20, 120)] * 3, axis=-1)
    base += rng.uniform(0, 80, 3)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        size = int(rng.integers(width // 20, width // 3))
        draw.ellipse((x0, y0, x0 + size, y0 + size), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(2))
    grain = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    pixels = np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path.stat().st_size


def photos(folder: Path, count: int, width: int, height: int) -> int:
    """``count`` JPEG files in sub-folders of 1,000; returns their total bytes.

    ``BASE_PHOTOS`` distinct photos are drawn (seconds, not the many minutes 20,000 would
    take); each file is one of them with a JPEG comment naming the file, so every file has its
    own bytes (the index would reuse the vectors of identical files) and decodes like a photo.
    """
    bases_dir = folder / "bases"
    bases_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(bases_dir / f"base_{i:03d}.jpg", i, width, height) for i in range(min(count, BASE_PHOTOS))]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_photo, jobs))
    bases = [job[0].read_bytes() for job in jobs]
    shutil.rmtree(bases_dir)
    total = 0
    for i in range(count):
        path = folder / f"{i // 1000:03d}" / f"img_{i:06d}.jpg"
        path.parent.mkdir(exist_ok=True)
        comment = f"mmsearch benchmark photo {i}".encode()
        base = bases[i % len(bases)]
        data = base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]
        path.write_bytes(data)
        total += len(data)
    return total


def model_only(spec: str, device: str, count: int) -> dict:
    """img/s of the encoder alone on random uint8 crops, after one warm-up batch."""
    from mmsearch.models.registry import load_encoder

    encoder = load_encoder(spec, device)
    size = encoder.image_spec().size
    crops = np.random.default_rng(SEED).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    encoder.embed_crops(crops[: encoder.batch_size])
    _sync(device)
    started = time.perf_counter()
    encoder.embed_crops(crops)
    _sync(device)
    seconds = time.perf_counter() - started
    return {"images": count, "batch_size": encoder.batch_size, "seconds": round(seconds, 3), "img_s": count / seconds}


def device_decode(folder: Path, size: int, device: str, count: int, batch: int = 256) -> dict:
    """img/s of the device JPEG stage alone (read back, decode, orient, resize, crop: what the
    ingest does on a CUDA encoder before embedding), and of torchvision's batched decode alone
    on bytes already in memory, over ``count`` photos after one warm-up batch."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from mmsearch.ingest import device_jpeg

    paths = sorted(folder.rglob("*.jpg"))[: count + batch]
    jpegs = [device_jpeg.DeferredJpeg(str(p)) for p in paths]
    device_jpeg.crops(jpegs[:batch], size, device)
    _sync(device)
    started = time.perf_counter()
    for i in range(batch, len(jpegs), batch):
        device_jpeg.crops(jpegs[i : i + batch], size, device)
    _sync(device)
    stage_s = time.perf_counter() - started
    data = [torch.from_numpy(np.fromfile(p, dtype=np.uint8)) for p in paths[batch:]]
    started = time.perf_counter()
    for i in range(0, len(data), batch):
        decode_jpeg(data[i : i + batch], mode=ImageReadMode.RGB, device=device)
    _sync(device)
    decode_s = time.perf_counter() - started
    n = len(paths) - batch
    return {"images": n, "batch_size": batch, "img_s": n / stage_s, "decode_only_img_s": n / decode_s}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def index_run(folder: Path, index: Path, spec: str, device: str, workers: int, extra: list[str]) -> dict:
    """``mmsearch index`` in a fresh process: wall time and the summary's seconds per stage."""
    command = [sys.executable, "-m", "mmsearch.cli", "index", str(folder), "--index", str(index)]
    command += ["--model", spec, "--device", device, "--workers", str(workers), "--json", *extra]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"mmsearch index failed: {done.stderr.strip()[-2000:]}")
    summary = json.loads(done.stdout)
    return {
        "files": summary["embedded"],
        "workers": workers,
        "failed": len(summary["failed"]),
        "wall_s": round(wall, 2),
        "img_s": summary["embedded"] / wall,
        "img_s_ingest": summary["embedded"] / (summary["seconds"]["total"] - summary["seconds"].get("load", 0.0)),
        "stages_s": summary["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, help="photos to index  [default: 20000 on a GPU, 160 on CPU]")
    parser.add_argument("--model-images", type=int, help="random images for the model-only pass  [default: 8192 / 128]")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu  [default: CUDA if present]")
    parser.add_argument("--workers", type=int, default=None, help="decode workers  [default: mmsearch's choice]")
    parser.add_argument("--keep", type=Path, default=None, help="generate photos here and keep them (reused)")
    parser.add_argument("--render", type=Path, default=None, help="rewrite gpu.md from a gpu.json, measuring nothing")
    args = parser.parse_args()
    if args.render:
        (RESULTS / "gpu.md").write_text(report(json.loads(args.render.read_text())))
        return

    load_at_start = os.getloadavg()[0]
    kind, name = device_name()
    device = args.device or kind
    gpu = device.startswith("cuda")
    images = args.images or (20_000 if gpu else 160)
    model_images = args.model_images or (8192 if gpu else 128)
    workdir = Path(tempfile.mkdtemp(prefix="mmsearch-gpu-bench-"))
    folder = args.keep or workdir / "photos"
    workers = default_workers(images) if args.workers is None else args.workers
    try:
        started = time.perf_counter()
        have = len(list(folder.rglob("*.jpg"))) if folder.is_dir() else 0
        total_bytes = photos(folder, images, args.width, args.height) if have != images else None
        generated_s = time.perf_counter() - started
        if total_bytes is None:
            total_bytes = sum(p.stat().st_size for p in folder.rglob("*.jpg"))
        print(
            f"{images} photos {args.width}x{args.height}, {total_bytes / images / 1e3:.0f} kB each "
            f"({generated_s:.0f} s)"
        )
        spec = checkpoint(workdir)
        model = model_only(spec, device, model_images)
        print(f"model only: {model['img_s']:.1f} img/s on {name}")
        jpeg = device_decode(folder, 224, device, min(images, model_images)) if gpu else None
        if jpeg:
            print(f"device JPEG stage: {jpeg['img_s']:.1f} img/s ({jpeg['decode_only_img_s']:.1f} decode alone)")
        local = index_run(folder, workdir / "index-local", spec, device, workers, [])
        print(
            f"mmsearch index: {local['img_s']:.1f} img/s ({local['img_s_ingest']:.1f} without start-up and model load)"
        )
        if importlib.util.find_spec("ray") is not None:
            ray = index_run(folder, workdir / "index-ray", spec, device, workers, ["--ray", "local"])
            ray_note = None
            print(f"mmsearch index --ray local: {ray['img_s']:.1f} img/s")
        else:
            ray, ray_note = None, "skipped: Ray is not installed on this machine (`pip install 'mmsearch[ray]'`)"
            print(f"ray: {ray_note}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    import faiss
    import open_clip
    import torch

    ratio = local["img_s_ingest"] / model["img_s"]
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": name,
        "on_gpu": gpu,
        "cpu_cores": os.cpu_count(),
        "software": (
            f"Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
            f"open_clip {open_clip.__version__}, faiss {faiss.__version__}"
        ),
        "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]},
        "model": f"{ARCH} (random weights, local checkpoint)",
        "photos": {"count": images, "width": args.width, "height": args.height, "mean_kb": total_bytes / images / 1e3},
        "model_only": model,
        "device_jpeg": jpeg,
        "end_to_end": local,
        "ratio_end_to_end_over_model": ratio,
        "ray": ray,
        "ray_note": ray_note,
        "targets": {"ratio": TARGET_RATIO, "img_s_vit_b_32_h100": TARGET_IMG_S},
        "command": "python benchmarks/ingest_gpu.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "gpu.md").write_text(report(result))
    print(report(result))


def decode_line(e2e: dict) -> str:
    """Where decoding time went, from the summary's summed seconds."""
    per_image_ms = 1000 * e2e["stages_s"]["decode"] / e2e["files"]
    return (
        f"Decode: {e2e['stages_s']['decode']:.1f} s summed over {e2e['workers']} worker processes (read, hash, "
        "parse; the pixels too where the CPU decodes them) and, on CUDA, the JPEG stage on the device in the main "
        f"process: {per_image_ms:.2f} ms per photo in all."
    )


def report(r: dict) -> str:
    where = (
        f"Measured on **{r['device_name']}** ({r['date']})."
        if r["on_gpu"]
        else f"**Not yet run on a GPU.** The figures below are from a CPU ({r['device_name']}, {r['date']}): "
        "they show the script works and where a CPU stands, not the GPU targets."
    )
    e2e, model = r["end_to_end"], r["model_only"]
    if "load_average_1min" in r:
        load = r["load_average_1min"]
        busy = max(load["start"], load["end"]) > r["cpu_cores"]
        where += (
            f" Load average (1 min) {load['start']:.1f} at the start, {load['end']:.1f} at the end on "
            f"{r['cpu_cores']} cores"
            + (": above the core count, other processes took part of the machine." if busy else ".")
        )
    if r.get("software"):
        where += f" {r['software']}."
    if r.get("note"):
        where += f" {r['note']}"
    lines = [
        "# Ingest on one device: end to end against the model alone",
        "",
        where,
        "",
        f"`{r['command'].strip()}` — {r['photos']['count']} JPEG photos of "
        f"{r['photos']['width']}×{r['photos']['height']} (≈{r['photos']['mean_kb']:.0f} kB), {r['model']}.",
        "",
        "| case | img/s | |",
        "| --- | ---: | --- |",
        f"| model only (random uint8 crops, batch {model['batch_size']}) | {model['img_s']:.1f} | baseline |",
        f"| `mmsearch index`, whole run | {e2e['img_s']:.1f} | {e2e['img_s'] / model['img_s']:.2f}× model |",
        "| `mmsearch index`, the ingest itself (summary's total less its load: no start-up, no model load) | "
        f"{e2e['img_s_ingest']:.1f} | "
        f"{r['ratio_end_to_end_over_model']:.2f}× model (target ≥ {r['targets']['ratio']}) |",
    ]
    if r.get("device_jpeg"):
        jpeg = r["device_jpeg"]
        lines += [
            f"| device JPEG stage alone (read back, nvJPEG decode, resize, crop; batch {jpeg['batch_size']}) | "
            f"{jpeg['img_s']:.1f} | {jpeg['img_s'] / model['img_s']:.2f}× model |",
            f"| torchvision `decode_jpeg` alone (bytes in memory, batch {jpeg['batch_size']}) | "
            f"{jpeg['decode_only_img_s']:.1f} | {jpeg['decode_only_img_s'] / model['img_s']:.2f}× model |",
        ]
    if r["ray"]:
        lines.append(
            f"| `mmsearch index --ray local` | {r['ray']['img_s']:.1f} | "
            f"{r['ray']['img_s'] / model['img_s']:.2f}× model |"
        )
    lines += [
        "",
        "Seconds per stage (`mmsearch index` summary; decode runs in worker processes, so stages overlap): "
        + ", ".join(f"{k} {v:.2f}" for k, v in e2e["stages_s"].items())
        + ".",
        "",
        decode_line(e2e),
        "",
        f"Ray path: {r['ray_note'] or 'measured above'}.",
        "",
        f"Targets: end to end ≥ {r['targets']['ratio']} × model only; ≥ {r['targets']['img_s_vit_b_32_h100']:,} img/s "
        "for ViT-B/32 on one H100.",
        "",
        "To run it on a GPU machine: `pip install -e '.[gpu,ray]'` (mmsearch's own dependencies: open_clip_torch, "
        "faiss, duckdb, pillow-heif, soundfile, soxr, av, ...), then `python benchmarks/ingest_gpu.py` (20,000 photos "
        "by default on CUDA; no network: the weights are random, saved to a local checkpoint).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
