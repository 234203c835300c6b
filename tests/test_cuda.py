"""The CUDA paths, run wherever a GPU is present and skipped elsewhere (CI has none): the
fp16 towers agree with float32 on the CPU, crops normalised on the device equal the host's,
an index built on the GPU holds the same rows and vectors as one built on the CPU, and
faiss-gpu (when installed) trains IVF recipes that reach their recall."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from conftest import live_rows, write_mixed
from mmsearch import Index, world
from mmsearch.models.device import crops_to_device
from mmsearch.models.registry import load_encoder
from mmsearch.preprocess import normalise, square_crop
from mmsearch.store import recipes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
FP16_AGREEMENT = 0.99  # cosine between a float16 CUDA vector and the float32 CPU one


@pytest.fixture(scope="module")
def towers():
    return load_encoder("demo", "cpu"), load_encoder("demo", "cuda")


def test_crops_normalised_on_the_device_equal_the_hosts(towers) -> None:
    spec = towers[0].image_spec()
    crops = np.random.default_rng(0).integers(0, 256, (8, spec.size, spec.size, 3), dtype=np.uint8)
    on_device = crops_to_device(crops, spec, "cuda").cpu().numpy()
    np.testing.assert_allclose(on_device, normalise(crops, spec.mean, spec.std), atol=1e-5)


def test_fp16_towers_agree_with_float32_on_the_cpu(towers) -> None:
    cpu, gpu = towers
    rng = np.random.default_rng(1)
    scenes = [world.sample_scene(rng) for _ in range(24)]
    audio = cpu.audio_input
    payloads = {
        "image": [square_crop(world.render(scene), cpu.image_spec().size) for scene in scenes],
        "text": [world.caption(scene) for scene in scenes],
        "audio": [world.render_sound(scene, audio.sample_rate, audio.window_s) for scene in scenes],
    }
    for modality, items in payloads.items():
        on_cpu, on_gpu = cpu.embed(modality, items), gpu.embed(modality, items)
        assert on_gpu.dtype == np.float32 and on_gpu.shape == on_cpu.shape
        assert float(np.sum(on_cpu * on_gpu, axis=1).min()) >= FP16_AGREEMENT, modality


def test_an_index_built_on_the_gpu_equals_the_cpu_one(tmp_path: Path) -> None:
    mixed = write_mixed(tmp_path / "mixed")
    built = {}
    for device in ("cpu", "cuda"):
        idx = Index.create(tmp_path / device, "demo", shard_size=64, device=device)
        idx.add([mixed])
        built[device] = live_rows(idx)
    assert sorted(built["cuda"]) == sorted(built["cpu"])
    for key, (row, vector) in built["cuda"].items():
        assert row == built["cpu"][key][0]
        assert float(vector @ built["cpu"][key][1]) >= FP16_AGREEMENT, key


@pytest.mark.skipif(not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0, reason="needs faiss-gpu")
def test_faiss_gpu_trains_an_ivf_recipe_that_reaches_its_recall() -> None:
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((64, 64)).astype(np.float32)
    vectors = centres[rng.integers(0, 64, 20_000)] + 0.3 * rng.standard_normal((20_000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = recipes.build("IVF256,Flat", vectors)
    index.nprobe = 16
    queries = vectors[:200]
    _, found = index.search(queries, 10)
    _, exact = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.9
