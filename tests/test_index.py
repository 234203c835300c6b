"""Library-level behaviour of Index: ingest, search, incremental updates, storage."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COLOURS, write_image
from mmsearch import Index
from mmsearch.errors import FilterError, ModelMismatchError, UserInputError, WriterBusyError
from mmsearch.models.base import Encoder
from mmsearch.models.registry import load_encoder
from mmsearch.search.query import Term
from mmsearch.store.lock import WriterLock


@pytest.fixture
def index(tmp_path: Path, encoder, photos: Path) -> Index:
    idx = Index.create(tmp_path / "index", encoder=encoder, shard_size=5)
    idx.add([photos], workers=0)
    return idx


def paths_of(hits) -> list[str]:
    return [hit.path for hit in hits]


def test_add_then_search_round_trip(index: Index, photos: Path) -> None:
    hits = index.search("a red square", k=5)
    assert len(hits) == 5
    assert all(Path(h.path).is_relative_to(photos) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    info = index.info()
    assert info["vectors"] == 2 * len(COLOURS)
    assert info["by_modality"] == {"image": 2 * len(COLOURS)}
    assert info["shards"] == 3  # 12 rows at 5 per shard


def test_image_query_returns_itself_first(index: Index, photos: Path) -> None:
    query = photos / "nested" / "green.JPG"
    hits = index.search(image=query, k=3)
    assert hits[0].path == str(query)
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_metadata_columns_are_recorded(index: Index, photos: Path) -> None:
    row = index.search(image=photos / "red.png", k=1)[0].metadata
    assert (row["format"], row["width"], row["height"]) == ("png", 96, 80)
    assert row["size"] == (photos / "red.png").stat().st_size
    assert len(row["content_hash"]) == 64


def test_exif_orientation_time_and_camera(tmp_path: Path, encoder) -> None:
    folder = tmp_path / "exif"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: stored 200x100, displayed 100x200
    exif[0x0110] = "TestCam 3000"
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 12:30:00"
    Image.new("RGB", (200, 100), (200, 0, 0)).save(folder / "rotated.jpg", exif=exif)
    idx = Index.create(tmp_path / "index", encoder=encoder)
    idx.add([folder], workers=0)
    row = idx.sql("SELECT width, height, camera, CAST(taken_at AS VARCHAR) AS t FROM items").to_pylist()[0]
    assert row == {"width": 100, "height": 200, "camera": "TestCam 3000", "t": "2021-07-04 12:30:00"}


def test_filters_restrict_results(index: Index) -> None:
    hits = index.search("anything", k=20, where="format = 'png' AND width >= 120")
    assert hits and all(h.metadata["format"] == "png" and h.metadata["width"] >= 120 for h in hits)
    expected = index.sql("SELECT count(*) AS n FROM items WHERE format = 'png' AND width >= 120").to_pylist()
    assert len(hits) == expected[0]["n"]
    assert index.search("anything", k=5, where="width > 100000") == []


def test_min_score_drops_weak_hits(index: Index) -> None:
    scores = [h.score for h in index.search("a red circle", k=12)]
    threshold = (scores[2] + scores[3]) / 2
    assert len(index.search("a red circle", k=12, min_score=threshold)) == 3
    assert index.search("a red circle", k=12, min_score=1.0) == []  # "nothing relevant" is an answer


@pytest.mark.parametrize(
    "where", ["no_such_column = 1", "width >", "1=1; DROP VIEW items", "width > 1) UNION (SELECT 1"]
)
def test_bad_filters_fail_clearly(index: Index, where: str) -> None:
    with pytest.raises(FilterError) as excinfo:
        index.search("x", where=where)
    assert "\n" not in str(excinfo.value)


def test_sql_is_read_only(index: Index) -> None:
    assert index.sql("SELECT count(*) AS n FROM items").to_pylist() == [{"n": 12}]
    with pytest.raises(FilterError):
        index.sql("COPY items TO '/tmp/x.csv'")


def test_many_shards_match_one_shard(tmp_path: Path, encoder, photos: Path) -> None:
    one = Index.create(tmp_path / "one", encoder=encoder, shard_size=1000)
    many = Index.create(tmp_path / "many", encoder=encoder, shard_size=2)
    for idx in (one, many):
        idx.add([photos], workers=0)
    assert len(many.manifest.shards) == 6 and len(one.manifest.shards) == 1
    for query in ("a blue thing", "yellow"):
        a, b = one.search(query, k=7), many.search(query, k=7)
        assert paths_of(a) == paths_of(b)
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)


def test_merge_is_exact_against_brute_force(index: Index) -> None:
    shards = index.refresh().shards
    vectors = np.concatenate([s.vectors() for s in shards])
    ids = np.concatenate([s.ids for s in shards])
    query = index.embed_terms([Term(1.0, "text", "green")])
    expected = ids[np.argsort(-(vectors @ query))[:6]]
    assert [h.id for h in index.search("green", k=6)] == expected.tolist()


def test_incremental_reindex_touches_only_changes(index: Index, photos: Path) -> None:
    before = {h.path: h.id for h in index.search("x", k=100)}
    write_image(photos / "red.png", (0, 0, 0), (64, 64), seed=999)  # modified content
    (photos / "green.png").unlink()  # deleted
    (photos / "blue.png").rename(photos / "renamed-blue.png")  # renamed
    os.utime(photos / "white.png", ns=(1, 1_000_000_000))  # touched: new mtime, same bytes
    write_image(photos / "new" / "purple.png", (128, 0, 128), seed=7)  # new

    summary = index.add([photos], workers=0)
    assert summary.embedded == 2  # modified + new
    assert summary.reused == 2  # renamed + touched
    assert summary.removed == 2  # deleted + the rename's old path
    assert summary.unchanged == 8
    after = {h.path: h for h in index.search("x", k=100)}
    assert set(after) == set(before) - {str(photos / "green.png"), str(photos / "blue.png")} | {
        str(photos / "renamed-blue.png"),
        str(photos / "new" / "purple.png"),
    }
    assert after[str(photos / "yellow.png")].id == before[str(photos / "yellow.png")]
    renamed = index.search(image=photos / "renamed-blue.png", k=1)[0]
    assert renamed.path == str(photos / "renamed-blue.png") and renamed.score == pytest.approx(1.0, abs=1e-4)

    again = index.add([photos], workers=0)
    assert (again.embedded, again.reused, again.removed, again.unchanged) == (0, 0, 0, 12)


def test_copies_reuse_vectors_and_indexing_elsewhere_keeps_items(index: Index, photos: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(photos / "red.png", other / "copy.png")
    summary = index.add([other], workers=0)
    assert (summary.embedded, summary.reused, summary.removed) == (0, 1, 0)
    assert index.info()["vectors"] == 13


def test_corrupt_file_is_skipped_recorded_and_not_retried(tmp_path: Path, encoder, photos: Path) -> None:
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (photos / "truncated.png").write_bytes((photos / "red.png").read_bytes()[:120])
    idx = Index.create(tmp_path / "index", encoder=encoder)
    summary = idx.add([photos], workers=0)
    assert summary.embedded == 12
    assert sorted(Path(p).name for p, _ in summary.failed) == ["broken.jpg", "truncated.png"]
    assert all(reason for _, reason in summary.failed)
    rows = idx.sql("SELECT path, reason FROM failures ORDER BY path").to_pylist()
    assert [Path(r["path"]).name for r in rows] == ["broken.jpg", "truncated.png"]

    again = idx.add([photos], workers=0)
    assert (again.embedded, again.failed, again.previously_failed) == (0, [], 2)
    write_image(photos / "broken.jpg", (1, 2, 3))  # fixed by the user: retried and indexed
    fixed = idx.add([photos], workers=0)
    assert (fixed.embedded, fixed.previously_failed) == (1, 1)


def test_parallel_workers_give_same_vectors_as_inline(tmp_path: Path, encoder, photos: Path) -> None:
    inline = Index.create(tmp_path / "a", encoder=encoder)
    parallel = Index.create(tmp_path / "b", encoder=encoder)
    inline.add([photos], workers=0)
    parallel.add([photos], workers=2)
    for query in ("red", "a white square"):
        a, b = inline.search(query, k=12), parallel.search(query, k=12)
        assert paths_of(a) == paths_of(b)


def test_remove_and_compact(index: Index, photos: Path) -> None:
    removed = index.remove([photos / "nested"])
    assert removed == 6
    assert all("nested" not in h.path for h in index.search("x", k=100))
    before = [(h.path, round(h.score, 5)) for h in index.search("red", k=6)]
    assert index.compact() == 6
    assert len(index.manifest.tombstones) == 0 and index.manifest.deletions is None
    assert index.info()["vectors"] == 6
    assert [(h.path, round(h.score, 5)) for h in index.search("red", k=6)] == before
    with pytest.raises(UserInputError):
        index.remove([photos / "nested"])


def test_symlink_loops_are_walked_once(tmp_path: Path, encoder) -> None:
    root = tmp_path / "loop"
    write_image(root / "a" / "one.png", (1, 1, 1))
    os.symlink(root, root / "a" / "back")
    idx = Index.create(tmp_path / "index", encoder=encoder)
    assert idx.add([root], workers=0).embedded == 1


def test_wrong_model_is_refused(index: Index, tmp_path: Path) -> None:
    import open_clip
    import torch

    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model("mmsearch-demo").state_dict(), other)
    with pytest.raises(ModelMismatchError, match="space"):
        Index.open(index.path, encoder=load_encoder(f"mmsearch-demo:{other}"))
    with pytest.raises(ModelMismatchError, match="built with model"):
        Index.open(index.path, model=f"mmsearch-demo:{other}")


def test_second_writer_is_refused(index: Index, photos: Path) -> None:
    with WriterLock(index.path), pytest.raises(WriterBusyError, match="another mmsearch process"):
        index.add([photos], workers=0)
    assert index.add([photos], workers=0).unchanged == 12  # lock released


def test_crash_leftovers_are_swept_and_ignored(index: Index, photos: Path) -> None:
    shards = index.path / "shards"
    (shards / "999999.faiss").write_bytes(b"half written")
    (shards / ".000009.parquet.123.tmp").write_bytes(b"partial")
    assert len(index.search("x", k=100)) == 12  # readers only follow the manifest
    index.add([photos], workers=0)
    assert not (shards / "999999.faiss").exists()
    assert not (shards / ".000009.parquet.123.tmp").exists()


def test_missing_path_and_existing_index_errors(tmp_path: Path, encoder, index: Index) -> None:
    with pytest.raises(UserInputError, match="path not found"):
        index.add([tmp_path / "nope"])
    with pytest.raises(UserInputError, match="already exists"):
        Index.create(index.path, encoder=encoder)


def test_hnsw_recipe_filters_exactly_like_flat(tmp_path: Path, encoder, photos: Path) -> None:
    flat = Index.create(tmp_path / "flat", encoder=encoder, recipe="flat", shard_size=5)
    graph = Index.create(tmp_path / "hnsw", encoder=encoder, recipe="hnsw", shard_size=5)
    for idx in (flat, graph):
        idx.add([photos], workers=0)
    assert {s.recipe for s in graph.manifest.shards} == {"HNSW32,Flat"}
    for where in (None, "format = 'png'", "width > 100"):
        a, b = flat.search("green", k=4, where=where), graph.search("green", k=4, where=where)
        assert paths_of(a) == paths_of(b)
    with pytest.raises(UserInputError, match="invalid index recipe"):
        Index.create(tmp_path / "bad", encoder=encoder, recipe="ivf")


class CrashingEncoder(Encoder):
    """The real encoder, interrupted (as by Ctrl-C or a kill) after ``batches`` batches."""

    def __init__(self, inner: Encoder, batches: int) -> None:
        self.inner, self.remaining = inner, batches
        self.spec, self.space_id, self.audio_space_id = inner.spec, inner.space_id, inner.audio_space_id
        self.dim, self.modalities, self.image_input = inner.dim, inner.modalities, inner.image_input
        self.batch_size = 2

    def embed(self, modality: str, payloads) -> np.ndarray:
        if self.remaining == 0:
            raise KeyboardInterrupt
        self.remaining -= 1
        return self.inner.embed(modality, payloads)


def test_interrupted_ingest_keeps_checkpoints_and_resumes(tmp_path: Path, encoder, photos: Path) -> None:
    Index.create(tmp_path / "index", encoder=encoder, shard_size=4)
    crashing = Index.open(tmp_path / "index", encoder=CrashingEncoder(encoder, batches=3))
    with pytest.raises(KeyboardInterrupt):
        crashing.add([photos], workers=0)  # 6 files embedded, one shard of 4 sealed and committed
    resumed = Index.open(tmp_path / "index", encoder=encoder)
    assert resumed.info()["vectors"] == 4
    assert sorted(p.name for p in (tmp_path / "index" / "shards").iterdir() if p.suffix == ".faiss") == ["000001.faiss"]
    summary = resumed.add([photos], workers=0)
    assert (summary.unchanged, summary.embedded) == (4, 8)
    assert resumed.info()["vectors"] == 12


def test_renames_within_one_partial_shard(tmp_path: Path, encoder, photos: Path) -> None:
    idx = Index.create(tmp_path / "index", encoder=encoder)  # default shard size: one partial shard
    idx.add([photos], workers=0)
    (photos / "red.png").rename(photos / "red-renamed.png")
    (photos / "blue.png").rename(photos / "blue-renamed.png")
    summary = idx.add([photos], workers=0)
    assert (summary.reused, summary.removed, summary.embedded) == (2, 2, 0)
    assert idx.search(image=photos / "blue-renamed.png", k=1)[0].path == str(photos / "blue-renamed.png")


def test_interrupted_multi_row_file_is_redone(tmp_path: Path, encoder) -> None:
    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / "rows.csv").write_text("text\n" + "\n".join(f"caption number {i}" for i in range(10)))
    Index.create(tmp_path / "index", encoder=encoder, shard_size=4)
    with pytest.raises(KeyboardInterrupt):
        Index.open(tmp_path / "index", encoder=CrashingEncoder(encoder, batches=3)).add([folder], workers=0)
    resumed = Index.open(tmp_path / "index", encoder=encoder)
    assert resumed.info()["vectors"] == 0  # half a file was sealed at the checkpoint, but stays hidden
    summary = resumed.add([folder], workers=0)
    assert (summary.unchanged, summary.embedded, summary.vectors) == (0, 1, 10)
    assert resumed.sql("SELECT count(*) AS n FROM items").to_pylist() == [{"n": 10}]


def test_changed_file_that_fails_loses_its_old_rows(tmp_path: Path, encoder, photos: Path) -> None:
    idx = Index.create(tmp_path / "index", encoder=encoder)
    idx.add([photos], workers=0)
    (photos / "red.png").write_bytes(b"now corrupt")
    summary = idx.add([photos], workers=0)
    assert [Path(p).name for p, _ in summary.failed] == ["red.png"]
    assert str(photos / "red.png") not in paths_of(idx.search("x", k=100))


def test_an_index_inside_the_indexed_folder_is_not_indexed(tmp_path: Path, encoder, photos: Path) -> None:
    idx = Index.create(photos / "indexes" / "default", encoder=encoder)
    idx.add([photos], workers=0)
    summary = idx.add([photos], workers=0)
    assert (summary.found, summary.failed) == (12, [])
    assert idx.info()["vectors"] == 12


def test_creating_over_an_existing_index_is_refused_under_the_lock(index: Index) -> None:
    from mmsearch.store.manifest import Manifest
    from mmsearch.store.writer import ShardWriter

    fresh = Manifest(model="m", space_id="s", dim=4, recipe="auto", shard_size=10)
    with pytest.raises(UserInputError, match="already exists"), ShardWriter(index.path, fresh):
        pass
    assert index.info()["vectors"] == 12


def test_missing_shard_file_is_reported_in_one_line(index: Index) -> None:
    from mmsearch.errors import IndexFormatError

    reader = Index.open(index.path, encoder=index.encoder)
    next((index.path / "shards").glob("*.faiss")).unlink()
    with pytest.raises(IndexFormatError, match="is damaged") as excinfo:
        reader.search("red", k=3)
    assert "\n" not in str(excinfo.value)


def test_reader_follows_a_writer_that_replaced_its_shards(index: Index, photos: Path) -> None:
    reader = Index.open(index.path, encoder=index.encoder)
    assert len(reader.search("red", k=100)) == 12
    index.compact()  # rewrites every shard file the reader had loaded
    index.remove([photos / "nested"])
    assert len(reader.search("red", k=100)) == 6


def test_the_model_load_of_a_new_index_is_billed_to_its_first_add(tmp_path: Path, photos: Path) -> None:
    idx = Index.create(tmp_path / "fresh", "demo")
    first = idx.add([photos])
    assert first.seconds["load"] > 0 and first.seconds["total"] >= first.seconds["load"]
    assert idx.add([photos]).seconds.get("load", 0.0) == 0.0  # nothing to embed, nothing loaded or billed


def test_a_text_and_a_vector_together_search_for_their_sum(index: Index) -> None:
    text = index.embed_terms([Term(1.0, "text", "green")])
    vector = index.vectors([index.search("a blue thing", k=1)[0].id])[0]
    both = index.search("green", vector=vector * 3.0, k=5)  # the vector's scale does not matter
    summed = index.search(vector=text + vector, k=5)
    assert [h.id for h in both] == [h.id for h in summed]
    assert np.allclose([h.score for h in both], [h.score for h in summed], atol=1e-5)
    alone = index.search("green", k=5)
    assert not np.allclose([h.score for h in both], [h.score for h in alone], atol=1e-3)
