"""The library API refuses bad arguments with one ``UserInputError`` line (or the existing typed
error) instead of a bare numpy/pyarrow/DuckDB exception or a silently wrong answer; tiny vectors
keep their direction; threads sharing an Index write one after another. Synthetic vectors, no
torch, except the last test, which embeds a query sound with the demo model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mmsearch import Index
from mmsearch.errors import IndexFormatError, ModelMismatchError, UserInputError, WriterBusyError
from mmsearch.ingest.decode import DecodeOptions, decode
from mmsearch.models.base import l2_normalise

DIM = 8


@pytest.fixture(scope="module")
def idx(tmp_path_factory: pytest.TempPathFactory) -> Index:
    """Five random vectors; tests that write use their own index."""
    index = Index.create(tmp_path_factory.mktemp("checks") / "index", dim=DIM)
    index.add_vectors(np.random.default_rng(0).standard_normal((5, DIM)), [{"path": f"p{i}"} for i in range(5)])
    return index


@pytest.mark.filterwarnings("error")  # numpy's overflow-in-cast warning fails the test
@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.zeros(DIM), "the query vector is all zeros"),
        (np.full(DIM, np.nan), "the query vector holds NaN or Inf"),
        (np.full(DIM, np.inf, np.float32), "the query vector holds NaN or Inf"),
        (np.full(DIM, 1e300), "the query vector holds values beyond float32's range"),
        (np.full(DIM, 1e39), "the query vector holds values beyond float32's range"),
        (np.ones((2, DIM)), r"one query of shape \(8,\), not \(2, 8\); use search_batch"),
        (np.ones(DIM + 1), "must have 8 dimensions, not 9"),
        (np.full(DIM, 1 + 1j), "real numbers, not complex128"),
        (["a"] * DIM, "real numbers"),
    ],
)
def test_unusable_query_vectors_are_refused(idx: Index, vector, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        idx.search(vector=vector)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        (np.stack([np.ones(DIM), np.zeros(DIM)]), r"1 of 2 rows are not \(row 1 is all zeros"),
        (np.stack([np.ones(DIM), np.full(DIM, 1e300)]), r"row 1 holds values beyond float32's range"),
        (np.full((2, DIM), np.nan), r"2 of 2 rows are not \(row 0 holds NaN or Inf"),
        (np.ones((2, 2, DIM)), r"shape \(n, 8\), not \(2, 2, 8\)"),
        (np.ones((2, DIM + 1)), r"shape \(n, 8\), not \(2, 9\)"),
    ],
)
def test_unusable_batch_vectors_are_refused(idx: Index, vectors: np.ndarray, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        idx.search_batch(vectors)


def test_usable_query_shapes_and_types(idx: Index) -> None:
    stored = idx.vectors([3])
    for vector in (stored[0], stored, stored[0].astype(np.float64), stored[0].tolist()):
        assert idx.search(vector=vector, k=1)[0].id == 3
    assert [hits[0].id for hits in idx.search_batch(idx.vectors([1, 2]), k=1)] == [1, 2]
    assert idx.search(vector=np.eye(DIM, dtype=np.int64)[0], k=1)  # integers are numbers too


def test_tiny_and_large_vectors_keep_their_direction(tmp_path: Path) -> None:
    index = Index.create(tmp_path / "v", dim=DIM)
    direction = np.random.default_rng(1).standard_normal(DIM)
    unit = direction / np.linalg.norm(direction)
    ids = index.add_vectors(np.stack([direction * 1e-30, direction * 1e30, -direction]), [{"path": "a"}] * 3)
    stored = index.vectors(ids)
    assert np.allclose(stored, [unit, unit, -unit], atol=1e-6)  # was [1e-18]*8 for the tiny row
    for scale in (1e-30, 1e-40, 1e25):  # 1e-40: a float32 subnormal; its square is 0 in float32
        hits = index.search(vector=(direction * scale).astype(np.float32), k=3)
        assert [round(h.score, 5) for h in hits] == [1.0, 1.0, -1.0]
    assert np.allclose(l2_normalise(np.full((1, DIM), 1e-30, np.float32)), 1 / np.sqrt(DIM))
    with pytest.raises(UserInputError, match="row 0 holds values beyond float32's range"):
        index.add_vectors(np.full((1, DIM), 1e39), [{"path": "huge"}])
    assert len(index.sql("SELECT id FROM items")) == 3


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda i: i.add_vectors(np.ones((1, DIM)), None), "metadata must be a list of dicts .* not NoneType"),
        (lambda i: i.add_vectors(np.ones((1, DIM)), {"path": "a"}), "metadata must be a list of dicts .* not dict"),
        (lambda i: i.add_vectors(np.ones((1, DIM)), "abc"), "not str"),
        (lambda i: i.add_vectors(np.ones((1, DIM)), ["abc"]), "metadata row 0 is a str, not a dict"),
        (lambda i: i.add_vectors(np.ones((2, DIM)), [{"path": 5}, {"path": "x"}]), "row 0 needs a path string"),
        (
            lambda i: i.add_vectors(np.ones((2, DIM)), [{"path": "a", "width": 1}, {"path": "b", "width": "x"}]),
            "metadata column 'width'",
        ),
        (lambda i: i.add_vectors(np.array([["a"] * DIM]), [{"path": "a"}]), "real numbers, not <U1"),
        (
            lambda i: i.add_vectors(np.ones((1, DIM)), [{"path": "a", "modality": "audio"}], modality="image"),
            "a metadata row says modality 'audio', but these vectors are added as 'image'",
        ),
        (lambda i: i.add_vectors(np.full((1, DIM), 1 + 1j), [{"path": "a"}]), "real numbers, not complex128"),
        (lambda i: i.add_vectors([[1, 2], [3]], [{"path": "a"}] * 2), "numeric array of shape"),
        (lambda i: i.search(vector=np.ones(DIM), k=2.5), "k must be an integer, not float 2.5"),
        (lambda i: i.search(vector=np.ones(DIM), k="3"), "k must be an integer, not str '3'"),
        (lambda i: i.search(vector=np.ones(DIM), k=None), "k must be an integer, not None"),
        (lambda i: i.search(vector=np.ones(DIM), k=True), "k must be an integer, not bool"),
        (lambda i: i.search(vector=np.ones(DIM), k=0), "k must be at least 1"),
        (lambda i: i.search_batch(np.ones((1, DIM)), k=2.5), "k must be an integer"),
        (lambda i: i.sql(None), "the SQL statement must be a string, not None"),
        (lambda i: i.sql(b"SELECT 1"), "the SQL statement must be a string, not bytes"),
        (lambda i: Index.open("/etc/passwd"), "is a file, not a folder"),
        (lambda i: i.items([2**64]), "ids must be integers in the int64 range"),
        (lambda i: i.items([2**63]), "ids must be integers in the int64 range"),
        (lambda i: i.items(["a"]), "ids must be integers in the int64 range"),
        (lambda i: i.items([1.5]), "ids must be integers in the int64 range"),
        (lambda i: i.vectors([2**64]), "ids must be integers in the int64 range"),
        (lambda i: i.remove_ids([2**64]), "ids must be integers in the int64 range"),
        (lambda i: i.remove_ids("12"), "ids must be a sequence of integers"),
    ],
)
def test_bad_arguments_are_user_errors(idx: Index, call, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        call(idx)
    assert len(idx.sql("SELECT id FROM items")) == 5  # nothing was written


def test_ids_of_every_integer_kind_are_read(idx: Index) -> None:
    assert sorted(idx.items(np.array([1, 2], np.uint8))) == [1, 2]
    assert sorted(idx.items((np.int64(3), 4))) == [3, 4]
    assert idx.items([]) == {} and idx.vectors(range(2)).shape == (2, DIM)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dim": 8.5}, "dim must be an integer, not float 8.5"),
        ({"dim": "8"}, "dim must be an integer, not str '8'"),
        ({"dim": 0}, "dim must be at least 1"),
        ({"dim": 8, "shard_size": 2.0}, "shard size must be an integer"),
        ({"dim": 8, "recipe": 5}, "recipe must be a string"),
        ({"dim": 8, "max_memory": 1.5}, "the memory budget must be an integer"),
    ],
)
def test_create_checks_every_argument_before_writing(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        Index.create(tmp_path / "index", **options)
    assert not (tmp_path / "index" / "manifest.json").exists()
    assert Index.create(tmp_path / "index", dim=np.int64(8)).manifest.dim == 8  # a numpy integer is an integer


def test_open_or_create_refuses_another_dimension(idx: Index) -> None:
    with pytest.raises(ModelMismatchError, match="holds vectors of 8 dimensions, not 16"):
        Index.open_or_create(idx.path, dim=16)
    with pytest.raises(UserInputError, match=r"dim must be an integer, not float 8\.5"):
        Index.open_or_create(idx.path, dim=8.5)
    assert Index.open_or_create(idx.path, dim=DIM).manifest.dim == DIM


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "is damaged: field format_version is missing"),
        ('{"format_version": "2"}', "is damaged: field format_version is a string"),
        ('{"format_version": 0}', "is damaged: field format_version is an integer \\(0\\)"),
        ('{"format_version": 99}', "has format version 99; .* upgrade mmsearch"),
    ],
)
def test_manifest_without_a_usable_version_is_damaged(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(IndexFormatError, match=message):
        Index.open(tmp_path)


def test_adding_nothing_commits_nothing(idx: Index) -> None:
    generation = idx.manifest.generation
    for vectors in (np.zeros((0, DIM)), [], np.empty(0)):
        ids = idx.add_vectors(vectors, [])
        assert ids.dtype == np.int64 and ids.shape == (0,)
    assert idx.refresh().generation == generation
    with pytest.raises(UserInputError, match="1 metadata rows for 0 vectors"):
        idx.add_vectors(np.zeros((0, DIM)), [{"path": "a"}])


def test_a_rows_own_extra_is_kept(tmp_path: Path) -> None:
    index = Index.create(tmp_path / "v", dim=DIM)
    rows = [
        {"path": "a", "extra": "userextra", "foo": 1},  # merged under the key "extra"
        {"path": "b", "extra": '{"bar": 2, "foo": 0}', "foo": 3},  # a JSON object's keys merged; the column wins
        {"path": "c", "extra": {"bar": 4}},  # alone: as given, a dict as JSON
        {"path": "d", "extra": "plain"},  # alone: as given
        {"path": "e", "foo": "text"},  # an unknown column of another type in another row
    ]
    index.add_vectors(np.eye(5, DIM), rows)
    stored = index.sql("SELECT path, extra FROM items ORDER BY path").to_pylist()
    assert [row["extra"] for row in stored[3:]] == ["plain", '{"foo": "text"}']
    assert [json.loads(row["extra"]) for row in stored[:3]] == [
        {"extra": "userextra", "foo": 1},
        {"bar": 2, "foo": 3},
        {"bar": 4},
    ]


def test_threads_sharing_an_index_write_one_after_another(tmp_path: Path) -> None:
    index = Index.create(tmp_path / "v", dim=DIM)
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((3, DIM)) for _ in range(8)]
    found: list[np.ndarray] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(batches))

    def write(vectors: np.ndarray) -> None:
        start.wait()
        try:
            found.append(index.add_vectors(vectors, [{"path": "t"}] * len(vectors)))
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ids = np.concatenate(found)
    assert len(set(ids.tolist())) == 24 and index.info()["vectors"] == 24


def test_a_sound_with_no_samples_fails_at_decode(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16_000)
    soundfile.write(tmp_path / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    assert (tmp_path / "empty.wav").stat().st_size == 44
    assert decode(str(tmp_path / "empty.wav"), "audio", DecodeOptions()).error == "no audio samples"
    assert decode(str(tmp_path / "silent.wav"), "audio", DecodeOptions()).error is None  # silence is left alone


def test_a_sound_with_no_samples_is_a_failed_file_and_no_query(tmp_path: Path) -> None:
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    soundfile.write(sounds / "empty.wav", np.zeros(0, np.float32), 16_000)
    soundfile.write(sounds / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    index = Index.create(tmp_path / "index", "demo", device="cpu")
    summary = index.add([sounds], workers=0)
    assert [(Path(path).name, reason) for path, reason in summary.failed] == [("empty.wav", "no audio samples")]
    assert index.sql("SELECT count(*) AS n FROM items").to_pylist() == [{"n": 1}]
    with pytest.raises(UserInputError, match=r"empty\.wav: no audio samples"):
        index.search(audio=sounds / "empty.wav")


def test_a_writer_in_another_process_is_still_refused_at_once(tmp_path: Path) -> None:
    index = Index.create(tmp_path / "v", dim=DIM)
    hold = (
        "import sys\nfrom mmsearch.store.lock import WriterLock\n"
        "with WriterLock(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.read()"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    with subprocess.Popen(
        [sys.executable, "-c", hold, str(index.path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    ) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(WriterBusyError, match=f"pid {holder.pid}"):
            index.add_vectors(np.ones((1, DIM)), [{"path": "a"}])
        holder.communicate("")
    assert len(index.add_vectors(np.ones((1, DIM)), [{"path": "a"}])) == 1  # released with the process
