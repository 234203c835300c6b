"""The on-disk re-ranker feature store on synthetic arrays: packs, readers in other
processes' shoes, crashes mid-pack (no torch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmsearch.rerank.store import KEYS, FeatureStore


def features(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.random((4, 3), np.float32), rng.random(5, np.float32)) for _ in range(n)]


def test_packs_round_trip_and_other_readers_see_new_packs(tmp_path: Path) -> None:
    writer, reader = FeatureStore(tmp_path / "s"), FeatureStore(tmp_path / "s")
    assert reader.get(("a" * 64, 0.0)) is None and len(reader) == 0  # no folder yet: empty
    first = features(3, 1)
    keys = [("a" * 64, 0.0), ("a" * 64, 2.5), ("b" * 64, 0.0)]  # one file's two windows, another file
    writer.add(keys, first)
    assert len(reader) == 3
    for key, want in zip(keys, first):
        got = reader.get(key)
        assert got is not None and all(np.array_equal(g, w) for g, w in zip(got, want))
    second = features(2, 2)
    writer.add([("c" * 64, 0.0), ("d" * 64, 0.0)], second)
    assert reader.get(("d" * 64, 0.0)) is not None and len(reader) == 5
    assert reader.get(("d" * 64, 1.0)) is None and reader.get(("e" * 64, 0.0)) is None
    assert np.array_equal(reader.get(("c" * 64, 0.0))[1], second[0][1])
    got = reader.get(("a" * 64, 2.5))
    assert got is not None and not got[0].flags.writeable  # mapped read-only


def test_a_pack_without_its_keys_does_not_exist_and_is_swept(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "s")
    store.add([("a" * 64, 0.0)], features(1, 1))
    (keys_file,) = (tmp_path / "s").glob(f"*{KEYS}")
    name = keys_file.name[: -len(KEYS)]
    for suffix in (".0.npy", ".1.npy"):  # a crash after the arrays, before the keys
        (tmp_path / "s" / f"dead{suffix}").write_bytes((tmp_path / "s" / f"{name}{suffix}").read_bytes())
    (tmp_path / "s" / ".x.npy.123.tmp").write_bytes(b"half")
    fresh = FeatureStore(tmp_path / "s")
    assert len(fresh) == 1
    with fresh.writing():
        assert fresh.sweep() == 3
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(
        [f"{name}.0.npy", f"{name}.1.npy", f"{name}{KEYS}", "lock"]
    )
    assert len(FeatureStore(tmp_path / "s")) == 1


def test_a_pack_with_arrays_of_the_wrong_length_is_ignored(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "s")
    store.add([("a" * 64, 0.0), ("b" * 64, 0.0)], features(2, 1))
    (keys_file,) = (tmp_path / "s").glob(f"*{KEYS}")
    array = tmp_path / "s" / keys_file.name.replace(KEYS, ".1.npy")
    np.save(array, np.zeros((1, 5), np.float32))  # damaged: fewer rows than keys
    assert len(FeatureStore(tmp_path / "s")) == 0


def test_a_damaged_pack_is_skipped_and_the_others_still_answer(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "s")
    store.add([("a" * 64, 0.0)], features(1, 1))
    store.add([("b" * 64, 0.0)], features(1, 2))
    first = sorted((tmp_path / "s").glob(f"*{KEYS}"))[0]
    first.write_bytes(b"not a numpy file")
    fresh = FeatureStore(tmp_path / "s")
    assert len(fresh) == 1 and fresh.damaged == [first.name[: -len(KEYS)]]
    assert sum(fresh.get(key) is not None for key in (("a" * 64, 0.0), ("b" * 64, 0.0))) == 1


def test_a_pack_committed_within_the_same_mtime_tick_is_not_missed(tmp_path: Path) -> None:
    writer, reader = FeatureStore(tmp_path / "s"), FeatureStore(tmp_path / "s")
    writer.add([("a" * 64, 0.0)], features(1, 1))
    tick = os.stat(tmp_path / "s").st_mtime_ns
    assert len(reader) == 1
    writer.add([("b" * 64, 0.0)], features(1, 2))
    os.utime(tmp_path / "s", ns=(tick, tick))  # a coarse clock: the folder's mtime did not move
    assert reader.get(("b" * 64, 0.0)) is not None


def test_many_windows_of_one_file_and_tag_neighbours(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "s")
    keys = [("f" * 64, float(offset)) for offset in range(0, 300, 5)] + [(f"{i:064x}", 0.0) for i in range(200)]
    stored = features(len(keys), 3)
    store.add(keys[::2], stored[::2])
    store.add(keys[1::2], stored[1::2])
    got = FeatureStore(tmp_path / "s").get_many([*keys, ("f" * 64, 2.5)])
    assert got[-1] is None
    assert all(g is not None and np.array_equal(g[0], w[0]) for g, w in zip(got, stored))


def test_prune_rewrites_the_packs_without_entries_of_removed_items(tmp_path: Path) -> None:
    from mmsearch.rerank.store import tag_of

    store = FeatureStore(tmp_path / "s")
    keys = [(f"{i:064x}", 0.0) for i in range(40)] + [("f" * 64, 2.5)]
    stored = features(len(keys), 4)
    store.add(keys[:20], stored[:20])
    store.add(keys[20:], stored[20:])
    live = keys[::3]  # a third of the items are still in the index

    def prune(alive: list, share: float = 0.25) -> int:
        tags = np.array([tag_of(digest) for digest, _ in alive], np.uint64)
        return store.prune(tags, np.array([offset for _, offset in alive]), share)

    assert prune(keys) == 0  # nothing to drop: the packs stay as they are
    with store.writing():
        assert prune(live, share=0.9) == 0  # below the share: not worth a rewrite
        assert prune(live) == len(keys) - len(live)
    fresh = FeatureStore(tmp_path / "s")
    assert len(fresh) == len(live) and not fresh.damaged
    for key, (memory, vector) in zip(keys, stored):
        got = fresh.get(key)
        assert (got is not None) == (key in live)
        assert got is None or (np.array_equal(got[0], memory) and np.array_equal(got[1], vector))
    assert len(list((tmp_path / "s").glob(f"*{KEYS}"))) == 2  # one rewritten pack per old one
