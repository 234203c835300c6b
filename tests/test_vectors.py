"""Vectors in, vectors out: add_vectors, remove_ids, search_batch, filters, deletions and
segments on synthetic clustered vectors (no model, no torch), checked against brute force."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mmsearch import Index
from mmsearch.errors import ModelMismatchError, UserInputError
from mmsearch.search import searcher
from mmsearch.store import manifest as manifest_io
from mmsearch.store.schema import ITEM_SCHEMA

DIM = 32


def clustered(n: int, seed: int = 0, clusters: int = 50) -> np.ndarray:
    """Unit vectors around 50 fixed centres (shared by every seed, as queries and data are)."""
    centres = np.random.default_rng(1234).standard_normal((clusters, DIM))
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"path": f"item-{i}", "width": i % 100, "colour": ["red", "blue"][i % 2]} for i in range(start, start + n)]


def brute(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    scores = queries @ vectors.T
    return [ids[np.argsort(-s, kind="stable")[:k]].tolist() for s in scores]


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def ivf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Index, np.ndarray, np.ndarray]:
    """6,000 vectors in two IVF shards and one flat segment."""
    path = tmp_path_factory.mktemp("ivf") / "index"
    idx = Index.create(path, dim=DIM, recipe="IVF32,Flat", shard_size=2500)
    vectors = clustered(6000)
    ids = idx.add_vectors(vectors, rows(6000))
    return idx, vectors, ids


def test_vector_only_index_round_trip(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "v", dim=DIM)
    vectors = clustered(300)
    ids = idx.add_vectors(vectors * 3.0, rows(300))  # normalised on the way in
    assert ids.tolist() == list(range(300))
    hit = idx.search(vector=vectors[7], k=1)[0]
    assert (hit.id, hit.path, round(hit.score, 4)) == (7, "item-7", 1.0)
    assert json.loads(hit.metadata["extra"]) == {"colour": "blue"} and hit.metadata["width"] == 7
    with pytest.raises(UserInputError, match="vectors only"):
        idx.search("a text query")
    with pytest.raises(ModelMismatchError, match=r"holds vectors only .* cannot embed files with 'demo'"):
        Index.open(tmp_path / "v", model="demo")
    with pytest.raises(UserInputError, match="shape"):
        idx.add_vectors(np.ones((2, DIM + 1), np.float32), rows(2))
    with pytest.raises(UserInputError, match="path"):
        idx.add_vectors(vectors[:2], [{"width": 1}, {"width": 2}])


def test_metadata_as_an_arrow_table(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "v", dim=DIM)
    table = pa.table({"path": ["https://x/a.jpg", "https://x/b.jpg"], "source_id": ["a", "b"]})
    idx.add_vectors(clustered(2), table, modality="text")
    assert idx.sql("SELECT path, source_id, modality FROM items ORDER BY id").to_pylist() == [
        {"path": "https://x/a.jpg", "source_id": "a", "modality": "text"},
        {"path": "https://x/b.jpg", "source_id": "b", "modality": "text"},
    ]


def test_recipes_are_tuned_and_recorded(ivf) -> None:
    idx, _, _ = ivf
    big = [s for s in idx.manifest.shards if s.recipe.startswith("IVF")]
    assert len(big) == 2 and all(s.recall >= 0.95 and s.params.get("nprobe", 0) >= 1 for s in big)
    assert "2 shard(s), nprobe ≤" in idx.info()["shard_recipes"]["IVF32,Flat"]


def test_unfiltered_batch_search_matches_brute_force(ivf) -> None:
    idx, vectors, ids = ivf
    queries = clustered(50, seed=1)
    found = [[h.id for h in hits] for hits in idx.search_batch(queries, k=10)]
    assert recall(found, brute(vectors, ids, queries, 10)) >= 0.95
    single = [h.id for h in idx.search(vector=queries[3], k=10)]
    assert single == found[3]


def test_one_shard_answers_like_the_general_merge_with_missing_slots(ivf) -> None:
    idx, _, _ = ivf
    shard = next(s for s in idx.refresh().shards if s.info.recipe.startswith("IVF"))
    queries = clustered(20, seed=3)
    _, rows_found = shard.search(queries[:1], shard.info.rows)
    k = int((rows_found >= 0).sum()) + 1  # what the first query's probed lists hold, and one more
    alone = searcher.search([shard], queries[:1], k)
    assert len(alone[0]) == k - 1  # its one empty slot is dropped, not read as the shard's last row
    assert alone == searcher.hits(*searcher.search_top_k([shard], queries[:1], k))
    fast = searcher.search([shard], queries, k)
    assert fast == searcher.hits(*searcher.search_top_k([shard], queries, k))


def test_one_shard_orders_tied_scores_by_lower_id(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "ties", dim=DIM)
    vectors = clustered(40)
    idx.add_vectors(np.concatenate([vectors[:5], vectors]), rows(45))  # ids 0-4 and 5-9 are the same vectors
    assert len(idx.manifest.shards) == 1
    for i in range(5):
        hits = idx.search(vector=vectors[i], k=3)
        assert [h.id for h in hits[:2]] == [i, i + 5] and hits[0].score == hits[1].score


FILTERS = {"width = 3": lambda w: w == 3, "width < 10": lambda w: w < 10, "width < 50": lambda w: w < 50}


@pytest.mark.parametrize("where", FILTERS)  # 1%, 10% and 50% of the items
def test_filtered_search_recall_at_every_selectivity(ivf, where: str) -> None:
    idx, vectors, ids = ivf
    allowed = FILTERS[where](np.arange(len(ids)) % 100)
    queries = clustered(40, seed=2)
    found = [[h.id for h in hits] for hits in idx.search_batch(queries, k=10, where=where)]
    assert all(allowed[i] for hits in found for i in hits)
    assert recall(found, brute(vectors[allowed], ids[allowed], queries, 10)) >= 0.95


def test_deleted_ids_never_come_back_and_stay_out_of_the_manifest(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "v", dim=DIM, shard_size=1000)
    vectors = clustered(3000)
    ids = idx.add_vectors(vectors, rows(3000))
    gone = ids[::3]
    assert idx.remove_ids(np.concatenate([gone, [10**9]])) == len(gone)
    assert idx.remove_ids(gone) == 0
    queries = vectors[gone[:20]]
    batch = idx.search_batch(queries, k=20)
    assert not {h.id for hits in batch for h in hits} & set(gone.tolist())
    live = np.ones(len(ids), bool)
    live[::3] = False  # flat shards, two thirds live: searched unfiltered for more than k, deleted rows dropped
    assert [[h.id for h in hits] for hits in batch] == brute(vectors[live], ids[live], queries, 20)
    assert manifest_io.manifest_path(idx.path).stat().st_size < 10_000
    assert idx.info()["vectors"] == 3000 - len(gone)
    assert idx.compact() == len(gone) and idx.manifest.deletions is None


def test_small_appends_become_segments_merged_by_size_tier(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "v", dim=DIM, shard_size=1000)
    vectors = clustered(1000 + 25 * 3)
    idx.add_vectors(vectors[:1000], rows(1000))
    big = idx.manifest.shards[0]
    for n in range(25):
        start = 1000 + 3 * n
        idx.add_vectors(vectors[start : start + 3], rows(3, start))
    shards = idx.manifest.shards
    assert shards[0] == big  # the full shard was never rewritten
    assert len(shards) < 1 + 10  # small segments were merged, tier by tier
    assert sum(s.rows for s in shards) == 1075 and idx.info()["vectors"] == 1075
    assert [h.id for h in idx.search(vector=vectors[1070], k=1)] == [1070]


def test_compact_to_a_larger_shard_size_merges_shards(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "v", dim=DIM, shard_size=50)
    vectors = clustered(200)
    ids = idx.add_vectors(vectors, rows(200))
    assert len(idx.manifest.shards) == 4
    idx.remove_ids(ids[:10])
    assert idx.compact(shard_size=500) == 10
    assert [s.rows for s in idx.manifest.shards] == [190] and idx.manifest.shard_size == 500
    found = [[h.id for h in hits] for hits in idx.search_batch(vectors[:20], k=5)]
    assert found == brute(vectors[10:], ids[10:], vectors[:20], 5)  # Flat: exact, removed ids gone
    with pytest.raises(UserInputError, match="shard size"):
        idx.compact(shard_size=0)


def test_v1_index_opens_reads_and_takes_writes(tmp_path: Path) -> None:
    """An index in the first format: IDMap2-wrapped FAISS files, deleted ids in the manifest."""
    import faiss
    import pyarrow.parquet as pq

    from mmsearch.hashing import file_digest
    from mmsearch.store.schema import items_table

    path = tmp_path / "old"
    (path / "shards").mkdir(parents=True)
    vectors = clustered(20)
    wrapped = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    wrapped.add_with_ids(vectors, np.arange(20, dtype=np.int64))
    faiss.write_index(wrapped, str(path / "shards" / "000001.faiss"))
    pq.write_table(
        items_table([{"id": i, "path": f"item-{i}", "modality": "image"} for i in range(20)]),
        path / "shards" / "000001.parquet",
    )
    shard = {
        "name": "000001",
        "rows": 20,
        "recipe": "flat",
        "faiss_sha256": file_digest(path / "shards" / "000001.faiss"),
        "parquet_sha256": file_digest(path / "shards" / "000001.parquet"),
    }
    manifest = {
        "model": None,
        "space_id": "vectors:32",
        "dim": DIM,
        "recipe": "auto",
        "shard_size": 100,
        "shards": [shard],
        "tombstones": [4, 5],
        "next_id": 20,
        "next_shard": 2,
        "generation": 3,
        "format_version": 1,
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    idx = Index.open(path)
    assert idx.info()["vectors"] == 18
    assert [h.id for h in idx.search(vector=vectors[6], k=1)] == [6]
    assert 4 not in {h.id for h in idx.search(vector=vectors[4], k=20)}
    idx.add_vectors(clustered(2, seed=9), rows(2, 20))
    assert idx.manifest.format_version == 2 and idx.manifest.deletions is not None
    assert idx.info()["vectors"] == 20 and idx.verify() == []


def test_ten_full_shards_are_left_alone(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "v", dim=DIM, shard_size=10)
    idx.add_vectors(clustered(100), rows(100))  # exactly MERGE_FACTOR full shards: nothing to merge
    assert [s.rows for s in idx.manifest.shards] == [10] * 10
    idx.add_vectors(clustered(5, seed=3), rows(5, 100))
    assert len(idx.manifest.shards) == 11 and idx.info()["vectors"] == 105


def test_items_by_id(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "v", dim=DIM)
    ids = idx.add_vectors(clustered(5), rows(5))
    idx.remove_ids([ids[1]])
    found = idx.items([ids[3], ids[1], 999])
    assert list(found) == [ids[3]] and found[ids[3]]["path"] == "item-3"
    assert found[ids[3]]["width"] == 3 and list(found[ids[3]]) == ITEM_SCHEMA.names
    held = idx.refresh().catalog.items.column_names  # columns null in every row are not read into memory
    assert held == ["id", "modality", "path", "width", "extra"]


def test_hits_read_their_generation_rows_on_first_use_even_after_later_commits(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "v", dim=DIM)
    vectors = clustered(30)
    ids = idx.add_vectors(vectors, rows(30))
    hits = idx.search(vector=vectors[4], k=3)
    idx.remove_ids(ids)  # a new generation without these items; the hits keep theirs
    idx.compact()
    assert hits[0].id == ids[4] and hits[0].path == "item-4" and hits[0].modality == "image"
    assert [h.metadata["width"] for h in hits] == [list(ids).index(h.id) for h in hits]
    assert "path='item-4'" in repr(hits[0]) and hits[0].to_dict()["width"] == 4
    assert idx.search(vector=vectors[4], k=3) == []


def test_hits_pickle_and_copy_with_their_own_row(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "v", dim=DIM)
    vectors = clustered(10)
    idx.add_vectors(vectors, rows(10))
    for read_first in (False, True):
        hits = idx.search(vector=vectors[2], k=3)
        if read_first:
            assert hits[1].path
        for copied in (pickle.loads(pickle.dumps(hits)), copy.deepcopy(hits)):
            assert [(h.id, h.score, h.metadata) for h in copied] == [(h.id, h.score, h.metadata) for h in hits]
            assert list(copied[0].rows) == [hits[0].id]  # not the other hits' rows, nor the reader
        assert dataclasses.asdict(hits[0])["rows"][hits[0].id]["path"] == hits[0].path


def test_overfetch_falls_back_when_the_nearest_rows_are_all_deleted(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "v", dim=DIM)
    near, far = clustered(40, seed=5, clusters=1), clustered(60, seed=6)
    ids = idx.add_vectors(np.concatenate([near, far]), rows(100))
    idx.remove_ids(ids[:40])  # 60% stay live, but none of the query's 40 nearest
    hits = idx.search(vector=near[0], k=5)
    truth = brute(far, ids[40:], near[:1], 5)[0]
    assert [h.id for h in hits] == truth


def test_a_superseded_deletions_file_outlives_its_commit_for_readers(tmp_path: Path) -> None:
    """A reader that read the previous manifest reads its deletions file next: a commit that
    names a new one must retire the old one (kept for the grace period), not sweep it at once."""
    idx = Index.create(tmp_path / "v", dim=DIM)
    ids = idx.add_vectors(clustered(20), rows(20))
    idx.remove_ids(ids[:2])
    first = idx.manifest.deletions
    reader_view = manifest_io.load(idx.path)  # what a reader holds between its two reads
    idx.remove_ids(ids[2:4])
    assert idx.manifest.deletions != first and first in idx.manifest.retired
    assert (idx.path / "shards" / first).is_file()
    assert manifest_io.load(idx.path).tombstones.tolist() == sorted(ids[:4])
    assert reader_view.tombstones.tolist() == sorted(ids[:2])


def test_compact_and_export_refuse_damaged_shards_instead_of_sealing_the_damage(tmp_path: Path) -> None:
    from mmsearch.errors import IndexFormatError
    from mmsearch.interop import export

    idx = Index.create(tmp_path / "v", dim=DIM, shard_size=20)
    idx.add_vectors(clustered(40), rows(40))
    damaged = sorted((tmp_path / "v" / "shards").glob("*.faiss"))[0]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # same size: only the checksum tells
    damaged.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="checksum mismatch; run `mmsearch repair` first"):
        idx.compact()
    with pytest.raises(IndexFormatError, match="checksum mismatch"):
        export(idx, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert any("checksum mismatch" in problem for problem in idx.verify())  # repair still sees it


def test_repair_recovers_an_index_whose_deletions_file_or_failure_table_is_unreadable(tmp_path: Path) -> None:
    from conftest import run_cli
    from mmsearch.errors import ShardDamagedError
    from mmsearch.store.writer import ShardWriter

    path = tmp_path / "v"
    idx = Index.create(path, dim=DIM)
    vectors = clustered(20)
    ids = idx.add_vectors(vectors, rows(20))
    idx.remove_ids(ids[:3])
    with ShardWriter(path) as writer:
        writer.set_failures([{"path": "bad.png", "modality": "image", "reason": "cannot decode"}])
        writer.commit()
    shards = path / manifest_io.SHARDS_DIR
    (shards / Index.open(path).manifest.failures).write_bytes(b"garbage")
    assert any("unreadable" in problem for problem in Index.open(path).verify())
    deletions = shards / Index.open(path).manifest.deletions
    deletions.write_bytes(deletions.read_bytes()[:3])
    with pytest.raises(ShardDamagedError):
        Index.open(path)
    done = run_cli("repair", "--index", str(path))
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "the items it deleted are back" in done.stdout and "record of failed files is gone" in done.stdout
    repaired = Index.open(path)
    assert repaired.verify() == [] and repaired.info()["vectors"] == 20
    assert repaired.search(vector=vectors[0], k=1)[0].id == ids[0]  # deleted, lost with the file, back


def test_min_score_outside_the_cosine_range_is_a_user_error(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "v", dim=DIM)
    vectors = clustered(5)
    idx.add_vectors(vectors, rows(5))
    with pytest.raises(UserInputError, match="between -1 and 1"):
        idx.search(vector=vectors[0], min_score=5)
    assert len(idx.search(vector=vectors[0], min_score=-1.0, k=3)) == 3
