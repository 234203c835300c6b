"""Export to and import from the clip-retrieval/LAION layout: a round trip gives the same
search results, foreign layouts (float16 arrays, url/caption columns, plain .npy + .parquet
pairs) import, and every broken source is refused in one line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from mmsearch import Index
from mmsearch.errors import ModelMismatchError, UserInputError
from mmsearch.interop import export, import_into, read_source, target_index

DIM = 16


def unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def hits(index: Index, queries: np.ndarray, **options) -> list[list[tuple[str, float]]]:
    """Paths and scores (ids differ between indexes)."""
    return [[(h.path, round(h.score, 5)) for h in found] for found in index.search_batch(queries, k=12, **options)]


@pytest.fixture(scope="module")
def source_index(tmp_path_factory: pytest.TempPathFactory) -> Index:
    """Images and texts over several shards, with some removed items."""
    idx = Index.create(tmp_path_factory.mktemp("src") / "index", dim=DIM, shard_size=40)
    images = idx.add_vectors(
        unit(130, 1), [{"path": f"img/{i}.jpg", "width": i, "tag": f"t{i % 3}"} for i in range(130)]
    )
    idx.add_vectors(unit(50, 2), [{"path": f"doc/{i}.txt", "text": f"caption {i}"} for i in range(50)], modality="text")
    idx.remove_ids(images[::7].tolist())
    return idx


def test_round_trip_gives_identical_results(source_index: Index, tmp_path: Path) -> None:
    summary = export(source_index, tmp_path / "out", chunk_rows=50)
    out = tmp_path / "out"
    descriptor = json.loads((out / "mmsearch.json").read_text())
    assert summary.rows == 111 + 50 and descriptor["by_modality"] == {"image": 111, "text": 50}
    assert [c["embeddings"] for c in descriptor["chunks"]] == [
        "img_emb/img_emb_0.npy",
        "img_emb/img_emb_1.npy",
        "img_emb/img_emb_2.npy",
        "text_emb/text_emb_3.npy",
    ]
    assert np.load(out / "img_emb/img_emb_2.npy").shape == (11, DIM)
    assert pq.read_table(out / "metadata/metadata_2.parquet").num_rows == 11
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # the temporary folder was renamed

    copy = target_index(tmp_path / "copy", read_source(out))
    result = import_into(copy, read_source(out), batch_rows=32)
    assert (result.rows, result.by_modality, result.skipped) == (161, {"image": 111, "text": 50}, 0)
    queries = unit(5, 9)
    for options in ({}, {"modality": "text"}, {"where": "width > 60"}, {"where": "extra LIKE '%t1%'"}):
        assert hits(copy, queries, **options) == hits(source_index, queries, **options)
    with pytest.raises(UserInputError, match="already exists"):
        export(source_index, out)


def test_model_space_is_declared_and_checked(encoder, random_checkpoint: str, tmp_path: Path) -> None:
    """The descriptor names the model: import recreates its index (a text query agrees) and
    refuses a source that declares another space."""
    idx = Index.create(tmp_path / "model", encoder=encoder, shard_size=30)
    idx.add_vectors(unit(70, 3, encoder.dim), [{"path": f"p{i}.png"} for i in range(70)])
    export(idx, tmp_path / "out")
    source = read_source(tmp_path / "out")
    assert (source.model, source.space_id) == (random_checkpoint, encoder.space_id)
    copy = target_index(tmp_path / "copy", source)  # no --model: the declared one
    import_into(copy, source)
    ours = [(h.path, round(h.score, 5)) for h in idx.search("a red circle", k=5)]
    assert [(h.path, round(h.score, 5)) for h in copy.search("a red circle", k=5)] == ours

    descriptor = json.loads((tmp_path / "out/mmsearch.json").read_text())
    (tmp_path / "out/mmsearch.json").write_text(json.dumps(descriptor | {"space_id": "other:space@1"}))
    with pytest.raises(ModelMismatchError, match="other:space@1"):
        import_into(copy, read_source(tmp_path / "out"))
    with pytest.raises(ModelMismatchError, match="other:space@1"):
        target_index(tmp_path / "fresh", read_source(tmp_path / "out"))
    assert not (tmp_path / "fresh").exists()  # refused before the index was created
    vectors_only = target_index(tmp_path / "vectors", read_source(tmp_path / "out"), dim=encoder.dim)
    assert import_into(vectors_only, read_source(tmp_path / "out")).rows == 70  # any space fits a vector index


def write_laion(folder: Path, n: int = 60) -> None:
    """clip-retrieval's output: float16 image and text embeddings of the same pairs, one metadata file."""
    for name, seed in (("img_emb", 4), ("text_emb", 5)):
        (folder / name).mkdir(parents=True)
        np.save(folder / name / f"{name}_0.npy", unit(n, seed).astype(np.float16))
    (folder / "metadata").mkdir()
    table = pa.table({"url": [f"https://x/{i}.jpg" for i in range(n)], "caption": [f"cap {i}" for i in range(n)]})
    table = table.append_column("similarity", pa.array(np.linspace(0.2, 0.4, n)))
    pq.write_table(table, folder / "metadata" / "metadata_0.parquet")


def test_cli_imports_laion_layout_and_plain_pair(tmp_path: Path) -> None:
    write_laion(tmp_path / "laion")
    done = run_cli("import", str(tmp_path / "laion"), "--index", str(tmp_path / "idx"), "--dim", str(DIM), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["by_modality"] == {"image": 60, "text": 60}
    idx = Index.open(tmp_path / "idx")
    top = idx.search(vector=unit(60, 5)[3], k=1, modality="text")[0]
    assert (top.path, top.metadata["text"], round(top.score, 2)) == ("https://x/3.jpg", "cap 3", 1.0)
    assert json.loads(top.metadata["extra"])["similarity"] == pytest.approx(0.2 + 0.2 * 3 / 59)

    np.save(tmp_path / "pair.npy", unit(20, 6))
    pq.write_table(pa.table({"path": [f"a{i}" for i in range(20)]}), tmp_path / "pair.parquet")
    done = run_cli("import", str(tmp_path / "pair.npy"), "--index", str(tmp_path / "idx"), "--modality", "audio")
    assert done.returncode == 0, done.stderr
    assert "imported 20 vectors (20 audio)" in done.stdout
    assert Index.open(tmp_path / "idx").info_counts() == {"audio": 20, "image": 60, "text": 60}


def test_cli_export_then_import(source_index: Index, tmp_path: Path) -> None:
    done = run_cli("export", str(tmp_path / "out"), "--index", str(source_index.path), "--chunk-rows", "100", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) | {"seconds": 0} == {
        "out": str(tmp_path / "out"),
        "format": "clip-retrieval",
        "rows": 161,
        "by_modality": {"image": 111, "text": 50},
        "chunks": 3,
        "seconds": 0,
    }
    done = run_cli("import", str(tmp_path / "out"), "--index", str(tmp_path / "copy"))
    assert done.returncode == 0, done.stderr
    assert "imported 161 vectors (111 image, 50 text)" in done.stdout
    queries = unit(3, 11)
    assert hits(Index.open(tmp_path / "copy"), queries) == hits(source_index, queries)


def test_broken_sources_are_refused_in_one_line(tmp_path: Path) -> None:
    def error(*args: str) -> str:
        done = run_cli("import", *args, "--index", str(tmp_path / "idx"))
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        return done.stderr

    assert "no such file or folder" in error(str(tmp_path / "missing"))
    bad = tmp_path / "bad"
    (bad / "img_emb").mkdir(parents=True)
    (bad / "metadata").mkdir()
    np.save(bad / "img_emb" / "img_emb_0.npy", unit(10, 7))
    pq.write_table(pa.table({"path": [f"p{i}" for i in range(9)]}), bad / "metadata" / "metadata_0.parquet")
    assert "misaligned rows" in error(str(bad), "--dim", str(DIM))
    pq.write_table(pa.table({"path": [f"p{i}" for i in range(10)]}), bad / "metadata" / "metadata_0.parquet")
    assert "--dim 8, but the source's vectors have 16" in error(str(bad), "--dim", "8")
    assert "no model" in error(str(bad))
    assert not (tmp_path / "idx").exists()

    write_laion(tmp_path / "laion")
    Index.create(tmp_path / "idx", dim=8)
    assert "have 16 dimensions, the index" in error(str(tmp_path / "laion"))
    np.save(tmp_path / "nopath.npy", unit(5, 8))
    pq.write_table(pa.table({"name": list("abcde")}), tmp_path / "nopath.parquet")
    with pytest.raises(UserInputError, match="no path column"):
        idx = Index.create(tmp_path / "idx16", dim=DIM)
        import_into(idx, read_source(tmp_path / "nopath.npy"))


def test_zero_vectors_are_skipped_and_batches_fill_shards(tmp_path: Path) -> None:
    vectors = unit(10, 10)
    vectors[3] = 0
    vectors[5, 0] = np.nan
    np.save(tmp_path / "v.npy", vectors)
    pq.write_table(pa.table({"path": [f"p{i}" for i in range(10)]}), tmp_path / "v.parquet")
    idx = Index.create(tmp_path / "idx", dim=DIM, shard_size=4)
    summary = import_into(idx, read_source(tmp_path / "v.npy"))
    assert (summary.rows, summary.skipped) == (8, 2)
    assert [shard.rows for shard in idx.manifest.shards] == [4, 4]  # batches of one shard: nothing to merge
    assert sorted(idx.sql("SELECT path FROM items").column("path").to_pylist()) == [
        f"p{i}" for i in range(10) if i not in (3, 5)
    ]


def test_an_empty_index_is_not_exported(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="holds no items: nothing to export"):
        export(Index.create(tmp_path / "v", dim=4), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_importing_again_skips_what_is_already_indexed(tmp_path: Path) -> None:
    """A second import of the same source adds nothing; a text's passages (rows sharing a path)
    all come in the first time, and an image and a text at the same path are different items."""
    write_laion(tmp_path / "laion", n=10)
    args = ["import", str(tmp_path / "laion"), "--index", str(tmp_path / "idx"), "--dim", str(DIM)]
    first = run_cli(*args, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["already_indexed"] == 0
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "imported 0 vectors (nothing)" in again.stdout and ", 20 already in the index, skipped" in again.stdout
    assert Index.open(tmp_path / "idx").info_counts() == {"image": 10, "text": 10}

    np.save(tmp_path / "pair.npy", unit(6, 12))
    paths = ["https://x/0.jpg", "new.txt", "new.txt", "https://x/1.jpg", "other.txt", "new.txt"]
    pq.write_table(pa.table({"path": paths}), tmp_path / "pair.parquet")
    idx = Index.open(tmp_path / "idx")
    summary = import_into(idx, read_source(tmp_path / "pair.npy", "text"), batch_rows=2)
    assert (summary.rows, summary.already_indexed) == (4, 2)
    assert import_into(idx, read_source(tmp_path / "pair.npy", "text")).already_indexed == 6
    assert idx.info_counts() == {"image": 10, "text": 14}
