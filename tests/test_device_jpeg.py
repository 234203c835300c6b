"""JPEGs decoded by the encoder's torchvision decoder instead of Pillow in the workers (the
path a CUDA encoder takes): run here on the CPU decoder, which shares every line but the
device's. Same files embedded, same failures, vectors that agree, orientation as Pillow's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from mmsearch import world
from mmsearch.ingest import device_jpeg, pipeline
from mmsearch.ingest.decode import DecodeOptions
from mmsearch.ingest.discover import walk
from mmsearch.models.registry import load_encoder
from mmsearch.preprocess import square_crop

EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def demo():
    return load_encoder("demo", "cpu")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Baseline, grey, progressive and CMYK JPEGs, a PNG, a truncated and a damaged JPEG."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(3)

    def scene(size: int = 160) -> Image.Image:
        return world.render(world.sample_scene(rng), size)

    for i in range(6):
        scene().resize((200 + 20 * i, 140)).save(root / f"photo{i}.jpg", quality=90)
    scene().convert("L").save(root / "grey.jpg")
    scene().save(root / "progressive.jpg", progressive=True)
    scene().convert("CMYK").save(root / "cmyk.jpg")
    scene().save(root / "drawing.png")
    whole = (root / "photo0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "damaged.jpg").write_bytes(whole[:600] + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    return root


def ingest(folder: Path, encoder, on_device: bool) -> tuple[dict[str, tuple[np.ndarray, str]], dict[str, str]]:
    """name -> (vector, payload type) for embedded files, name -> reason for failures."""
    got: dict[str, tuple[np.ndarray, str]] = {}

    class Collect:
        def expect(self, decoded) -> None:
            pass

        def drop(self, decoded, pieces: int) -> None:
            pass

        def __call__(self, vectors: np.ndarray, batch: list) -> None:
            for vector, (decoded, piece) in zip(vectors, batch):
                got[Path(decoded.path).name] = (vector, type(piece.payload).__name__)

    options = replace(DecodeOptions(image_size=encoder.image_spec().size), jpeg_on_device=on_device)
    planned = pipeline.jobs(sorted(walk([str(folder)]), key=lambda f: f.path), {})
    result = pipeline.run(planned, encoder, Collect(), options, workers=0)
    assert len(result.embedded) == len(got)
    return got, {Path(d.path).name: d.error for d in result.failures}


def test_same_files_same_failures_and_agreeing_vectors(jpegs: Path, demo) -> None:
    on_host, host_failures = ingest(jpegs, demo, on_device=False)
    deferred, failures = ingest(jpegs, demo, on_device=True)
    assert sorted(deferred) == sorted(on_host) and sorted(failures) == sorted(host_failures)
    assert sorted(failures) == ["damaged.jpg", "truncated.jpg"]
    assert all(reason.startswith("not a readable image file") for reason in failures.values())
    assert {name for name, (_, kind) in deferred.items() if kind == "DeferredJpeg"} == {
        *(f"photo{i}.jpg" for i in range(6)),
        "grey.jpg",
    }  # progressive, CMYK and PNG files are decoded in the workers as before
    for name, (vector, _) in deferred.items():
        assert float(vector @ on_host[name][0]) >= 0.99, name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pillow_applies_it(tmp_path: Path, orientation: int) -> None:
    quadrants = np.zeros((120, 180, 3), np.uint8)
    quadrants[:60, :90], quadrants[:60, 90:], quadrants[60:, :90] = (250, 0, 0), (0, 250, 0), (0, 0, 250)
    image = Image.fromarray(quadrants)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = orientation
    path = tmp_path / "oriented.jpg"
    image.save(path, quality=95, exif=exif)
    crops, failed = device_jpeg.crops([device_jpeg.DeferredJpeg(str(path), orientation)], 64, "cpu")
    with Image.open(path) as stored:
        expected = square_crop(ImageOps.exif_transpose(stored), 64).astype(np.int16)
    assert not failed
    assert np.abs(crops[0].numpy().astype(np.int16) - expected).mean() < 6


def test_a_file_gone_before_the_device_reads_it_is_a_failure(tmp_path: Path) -> None:
    crops, failed = device_jpeg.crops([device_jpeg.DeferredJpeg(str(tmp_path / "gone.jpg"))], 32, "cpu")
    assert tuple(crops.shape) == (1, 32, 32, 3) and list(failed) == [0]
    assert failed[0].startswith("could not read the file again")
