"""Nothing non-finite enters an index: a sound of NaN or Inf samples fails as its own file
(with its reason) while the rest of the batch is indexed and stays searchable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import live_rows
from mmsearch import Index
from mmsearch.errors import UserInputError
from mmsearch.ingest.pipeline import not_finite

RATE = 16_000


def tone(seconds: float, hertz: float) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * hertz * np.arange(int(RATE * seconds)) / RATE)).astype(np.float32)


@pytest.fixture(scope="module")
def sounds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two good tones, an all-NaN and an all-Inf float WAV, and a 4-window tone with NaN in its last window."""
    root = tmp_path_factory.mktemp("sounds")
    soundfile.write(root / "good.wav", tone(1.0, 440), RATE, subtype="FLOAT")
    soundfile.write(root / "other.wav", tone(1.0, 880), RATE, subtype="FLOAT")
    soundfile.write(root / "nan.wav", np.full(RATE, np.nan, np.float32), RATE, subtype="FLOAT")
    soundfile.write(root / "inf.wav", np.full(RATE, np.inf, np.float32), RATE, subtype="FLOAT")
    partly = tone(8.0, 330)
    partly[int(RATE * 6.5) : int(RATE * 7)] = np.nan
    soundfile.write(root / "partly.wav", partly, RATE, subtype="FLOAT")
    return root


BAD = ["inf.wav", "nan.wav", "partly.wav"]


def check_only_good_files_indexed(idx: Index, summary, sounds: Path) -> None:
    failed = {Path(path).name: reason for path, reason in summary.failed}
    assert sorted(failed) == BAD
    assert all(r == "its embedding is not finite (NaN or Inf in the decoded input)" for r in failed.values())
    rows = live_rows(idx)
    assert {Path(path).name for path, *_ in rows} == {"good.wav", "other.wav"}
    assert all(np.isfinite(vector).all() for _, vector in rows.values())
    hits = idx.search(audio=sounds / "good.wav", k=5)
    assert Path(hits[0].path).name == "good.wav" and all(np.isfinite(hit.score) for hit in hits)
    stored = idx.sql("SELECT path FROM failures ORDER BY path")["path"].to_pylist()
    assert [Path(p).name for p in stored] == BAD


def test_non_finite_sounds_fail_and_the_rest_is_indexed(tmp_path: Path, sounds: Path) -> None:
    idx = Index.create(tmp_path / "index", "demo", device="cpu")
    idx.encoder.batch_size = 3  # the 4-window file spans batches: its first windows were written before the NaN
    summary = idx.add([sounds], workers=0)
    assert summary.embedded == 2
    check_only_good_files_indexed(idx, summary, sounds)
    again = idx.add([sounds], workers=0)
    assert (again.unchanged, again.previously_failed, again.failed) == (2, 3, [])


def test_the_ray_path_fails_them_too(tmp_path: Path, ray_runtime, sounds: Path) -> None:
    idx = Index.create(tmp_path / "index", "demo", device="cpu")
    summary = idx.add([sounds], ray="auto")
    check_only_good_files_indexed(idx, summary, sounds)


def test_not_finite_names_the_cause() -> None:
    vectors = np.ones((3, 4), np.float32)
    vectors[1, 2], vectors[2, 0] = np.nan, np.inf
    payloads = [np.zeros(8, np.float32), np.full(8, np.nan, np.float32), np.zeros(8, np.float32)]
    assert not_finite(vectors, payloads) == {
        1: "its embedding is not finite (NaN or Inf in the decoded input)",
        2: "its embedding is not finite (the model returned NaN or Inf)",
    }
    assert not_finite(vectors[:1], payloads[:1]) == {}


def test_add_vectors_refuses_non_finite_rows(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "v", dim=4)
    vectors = np.eye(4, dtype=np.float32)
    vectors[1, 0], vectors[3, 3] = np.nan, np.inf
    with pytest.raises(UserInputError, match="2 of 4 rows are not"):
        idx.add_vectors(vectors, [{"path": f"v{i}"} for i in range(4)])
    assert idx.info()["vectors"] == 0
    idx.add_vectors(vectors[[0, 2]], [{"path": "v0"}, {"path": "v2"}])
    assert idx.info()["vectors"] == 2
