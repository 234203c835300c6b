"""Large files in parts: each decoder takes its share, the shares add up to the whole file,
and an interrupted ingest keeps finished parts and embeds only the missing ones."""

from __future__ import annotations

import codecs
import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile

from fakes import CrashAfter, HashEncoder
from mmsearch import Index
from mmsearch.ingest.decode import Decoded, DecodeOptions, Part, decode
from mmsearch.ingest.discover import FoundFile
from mmsearch.ingest.pipeline import jobs
from mmsearch.store import manifest as manifest_io
from mmsearch.store.writer import MERGE_FACTOR, ShardWriter

OPTIONS = DecodeOptions(passage_chars=60, sample_rate=8_000, window_s=1.0)


def test_parts_cut_a_grid_into_contiguous_shares() -> None:
    shares = [Part(i, 4).units(10) for i in range(4)]
    assert [list(r) for r in shares] == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]
    assert Part(3, 4).used(2) == 2 and not Part(3, 4).units(2)  # more parts than units: the last ones are empty
    assert Part(0, 3).span(10.0, 2.0) == (0.0, 2.0)  # 5 marks of 2 s: shares of 1, 2, 2 marks
    assert Part(2, 3).span(10.0, 2.0) == (6.0, float("inf"))  # the last part runs to the end
    assert Part(5, 6).span(4.0, 2.0) == (0.0, 0.0)


def test_a_large_file_is_planned_in_parts_and_a_resumed_one_only_for_what_is_missing() -> None:
    big, small = FoundFile("/r/big.txt", "text", 1000, 0), FoundFile("/r/small.txt", "text", 10, 0)
    image = FoundFile("/r/huge.png", "image", 10**9, 0)
    planned = jobs([big, small, image], {}, part_bytes=300)
    assert [(j.file.path, j.part) for j in planned] == [
        *[("/r/big.txt", Part(i, 4)) for i in range(4)],
        ("/r/small.txt", Part()),
        ("/r/huge.png", Part()),  # an image is never cut
    ]
    assert [j.part for j in jobs([big], {"/r/big.txt": (5, [1, 3])}, part_bytes=300)] == [Part(1, 5), Part(3, 5)]


def _shares(path: Path, decoder: str, count: int) -> list[Decoded]:
    return [decode(str(path), decoder, OPTIONS, Part(i, count)) for i in range(count)]


def _essay(path: Path, paragraphs: int = 40) -> Path:
    path.write_text("\n\n".join(f"Paragraph {n} says something about topic {n % 7}." for n in range(paragraphs)))
    return path


def test_text_parts_add_up_to_the_whole_file(tmp_path: Path) -> None:
    path = _essay(tmp_path / "essay.txt")
    whole = decode(str(path), "text", OPTIONS)
    shares = _shares(path, "text", 3)
    assert all(d.error is None and d.parts == 3 for d in shares)
    assert [p.meta for d in shares for p in d.pieces] == [p.meta for p in whole.pieces]
    assert len({d.content_hash for d in [whole, *shares]}) == 1
    accented = tmp_path / "accented.txt"  # a byte-order mark and characters of two to four bytes
    accented.write_bytes(codecs.BOM_UTF8 + path.read_text().replace("topic", "thème 🎵").encode())
    whole_accented = decode(str(accented), "text", OPTIONS)
    assert [p.meta for d in _shares(accented, "text", 4) for p in d.pieces] == [p.meta for p in whole_accented.pieces]
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("one\n\ntwo")
    past = decode(str(tiny), "text", OPTIONS, Part(4, 5))
    assert past.error is None and past.pieces == [] and past.parts == 2  # recorded: only two parts hold passages


def test_table_parts_skip_empty_rows_and_keep_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "captions.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["caption", "id"])
        for n in range(25):
            writer.writerow(["" if n % 5 == 0 else f"caption {n}", f"k{n}"])
    whole = decode(str(path), "table", OPTIONS)
    shares = _shares(path, "table", 4)
    assert [p.meta for d in shares for p in d.pieces] == [p.meta for p in whole.pieces]
    assert [p.meta["row"] for p in whole.pieces] == [n for n in range(25) if n % 5]
    assert {d.parts for d in shares} == {4}


def test_audio_parts_read_only_their_windows_and_add_up_to_the_whole(tmp_path: Path) -> None:
    rate = 11_025
    t = np.arange(int(rate * 9.5)) / rate
    path = tmp_path / "tone.wav"
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 440 * t * (1 + t / 10))).astype(np.float32), rate)
    whole = decode(str(path), "audio", OPTIONS)
    shares = _shares(path, "audio", 3)
    assert [p.meta for d in shares for p in d.pieces] == [p.meta for p in whole.pieces]
    assert {d.parts for d in shares} == {3} and len(whole.pieces) == 10
    firsts = {d.pieces[0].meta["offset_s"] for d in shares}
    for got, want in zip([p for d in shares for p in d.pieces], whole.pieces):
        inside = got.meta["offset_s"] not in firsts and got.meta["offset_s"] + 1 not in firsts
        if inside:  # away from where a part's resampling starts or ends, the samples are the same
            np.testing.assert_allclose(got.payload, want.payload, atol=1e-4)
        else:
            assert np.corrcoef(got.payload, want.payload)[0, 1] > 0.99


def _texts(idx: Index, path: Path | None = None) -> list[tuple[int, str]]:
    where = f"WHERE path = '{path}'" if path else ""
    rows = idx.sql(f"SELECT char_offset, text FROM items {where} ORDER BY 1").to_pylist()
    return [(r["char_offset"], r["text"]) for r in rows]


def test_an_interrupted_file_keeps_its_finished_parts_and_resumes_with_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    essay = _essay(folder / "essay.txt")
    expected = [(p.meta["char_offset"], p.meta["text"]) for p in decode(str(essay), "text", OPTIONS).pieces]
    idx = Index.create(tmp_path / "index", encoder=HashEncoder(), shard_size=1000)
    part_size = essay.stat().st_size // 5 + 1  # five parts of about eight passages: two batches each
    crashing = Index.open(idx.path, encoder=CrashAfter(5))
    with pytest.raises(KeyboardInterrupt):
        crashing.add([folder], workers=0, part_size=part_size, checkpoint_s=0)
    after = Index.open(idx.path, encoder=HashEncoder())
    parts = after.sql(
        "SELECT part, parts, count(*) AS n, min(pieces) AS pieces FROM items GROUP BY ALL ORDER BY 1"
    ).to_pylist()
    done = [r["part"] for r in parts]
    assert done == list(range(len(done))) and 0 < len(done) < 5  # the first parts were committed, each whole
    assert all(r["parts"] == 5 and r["n"] == r["pieces"] for r in parts), parts
    assert set(_texts(after)) < set(expected)
    assert after.info()["incomplete_files"] == 1
    summary = after.add([folder], workers=0, part_size=10**9)  # a different part size: the file keeps its own
    assert summary.resumed == 1 and summary.vectors == len(expected) - sum(r["n"] for r in parts)
    assert _texts(after) == expected and after.info()["incomplete_files"] == 0
    assert after.add([folder], workers=0).unchanged == 1


def test_a_changed_file_in_parts_shows_its_old_version_until_the_new_one_is_whole(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    essay = _essay(folder / "essay.txt")
    idx = Index.create(tmp_path / "index", encoder=HashEncoder(), shard_size=1000)
    part_size = essay.stat().st_size // 5 + 1
    idx.add([folder], workers=0, part_size=part_size)
    old = _texts(idx)
    _essay(essay, paragraphs=41)
    (folder / "a-note.txt").write_text("a new note, embedded before the essay")
    crashing = Index.open(idx.path, encoder=CrashAfter(5))
    with pytest.raises(KeyboardInterrupt):
        crashing.add([folder], workers=0, part_size=part_size, checkpoint_s=0)
    after = Index.open(idx.path, encoder=HashEncoder())
    assert after.manifest.generation > idx.manifest.generation  # the note was committed meanwhile
    assert _texts(after, essay) == old
    after.add([folder], workers=0, part_size=part_size)
    new = decode(str(essay), "text", OPTIONS).pieces
    assert _texts(after, essay) == [(p.meta["char_offset"], p.meta["text"]) for p in new]


def test_a_renamed_file_in_parts_reuses_every_part(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    essay = _essay(folder / "essay.txt")
    idx = Index.create(tmp_path / "index", encoder=HashEncoder(), shard_size=1000)
    idx.add([folder], workers=0, part_size=essay.stat().st_size // 3 + 1)
    before = _texts(idx)
    essay.rename(folder / "renamed.txt")
    summary = idx.add([folder], workers=0)
    assert (summary.reused, summary.embedded, summary.vectors) == (1, 0, 0)
    assert _texts(idx, folder / "renamed.txt") == before
    assert {(r["part"], r["parts"]) for r in idx.sql("SELECT DISTINCT part, parts FROM items").to_pylist()} == {
        (0, 3),
        (1, 3),
        (2, 3),
    }
    assert idx.add([folder], workers=0).unchanged == 1


def test_checkpoints_never_show_a_group_before_it_is_whole(tmp_path: Path) -> None:
    """Many checkpoints (enough small segments for a merge) while one file's rows are still
    arriving: its sealed rows stay hidden at every committed generation."""
    idx = Index.create(tmp_path / "index", dim=4)
    rng = np.random.default_rng(0)
    with ShardWriter(idx.path) as writer:
        for round_ in range(2 * MERGE_FACTOR):
            big = [{"id": int(i), "path": "/big.txt", "modality": "text"} for i in writer.next_ids(2)]
            writer.append(rng.standard_normal((2, 4)).astype(np.float32), big, group="/big.txt", last=False)
            small = [{"id": int(writer.next_ids(1)[0]), "path": f"/small{round_}.txt", "modality": "text"}]
            writer.append(rng.standard_normal((1, 4)).astype(np.float32), small)
            writer.checkpoint(0)
            seen = Index.open(idx.path).sql("SELECT path, count(*) AS n FROM items GROUP BY path").to_pylist()
            assert {row["path"]: row["n"] for row in seen} == {f"/small{n}.txt": 1 for n in range(round_ + 1)}
        writer.append(np.empty((0, 4), np.float32), [], group="/big.txt", last=True)
        writer.commit()
    counts = Index.open(idx.path).sql("SELECT path, count(*) AS n FROM items GROUP BY path").to_pylist()
    assert {row["path"]: row["n"] for row in counts}["/big.txt"] == 4 * MERGE_FACTOR


def test_a_merge_of_more_rows_than_a_shard_is_published_in_one_commit(tmp_path: Path, monkeypatch) -> None:
    """Ten 15-row segments (a full tier) merge into 20-row shards: no generation in between
    may miss rows of the segments being merged (a crash there would lose them)."""
    idx = Index.create(tmp_path / "index", dim=4, shard_size=20)
    rng = np.random.default_rng(0)
    seen: list[int] = []
    commit = manifest_io.commit

    def counting(folder: Path, manifest, before_write=None) -> None:
        commit(folder, manifest, before_write)
        seen.append(Index.open(folder).sql("SELECT count(*) AS n FROM items").to_pylist()[0]["n"])

    monkeypatch.setattr(manifest_io, "commit", counting)
    with ShardWriter(idx.path) as writer:
        for segment in range(MERGE_FACTOR):
            rows = [{"id": int(i), "path": f"/f{segment}.txt", "modality": "text"} for i in writer.next_ids(15)]
            writer.append(rng.standard_normal((15, 4)).astype(np.float32), rows)
            writer.commit()
    assert seen == sorted(seen) and seen[-1] == 15 * MERGE_FACTOR  # never fewer rows than before
    assert len(Index.open(idx.path).manifest.shards) < MERGE_FACTOR  # the tier was merged


def test_a_large_file_with_nothing_to_index_fails_once(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "blank.txt").write_text("\n \n" * 500)
    idx = Index.create(tmp_path / "index", encoder=HashEncoder())
    first = idx.add([folder], workers=0, part_size=300)
    assert (first.embedded, first.failed) == (0, [(str(folder / "blank.txt"), "nothing to index (empty file)")])
    again = idx.add([folder], workers=0, part_size=300)
    assert (again.embedded, again.previously_failed) == (0, 1)


def test_a_recording_shorter_than_its_header_says_keeps_what_it_holds(tmp_path: Path) -> None:
    rate = 8_000
    t = np.arange(rate * 40) / rate
    whole, cut = tmp_path / "long.mp3", tmp_path / "cut.mp3"
    soundfile.write(whole, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, subtype="MPEG_LAYER_III")
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 4])  # the header still says 40 s
    decoded = decode(str(cut), "audio", OPTIONS)
    assert decoded.error is None and 8 <= len(decoded.pieces) <= 12  # ~10 s of sound, no silent padding
    assert all(piece.meta["duration_s"] > 0 for piece in decoded.pieces)
    last = decode(str(cut), "audio", OPTIONS, Part(3, 4))
    assert last.pieces == [] and (last.error or "").startswith("part 4 of 4: nothing to index (the file ends early?)")


def test_a_file_cut_short_is_embedded_whole_again_under_other_decode_options(tmp_path: Path) -> None:
    folder = tmp_path / "tables"
    folder.mkdir()
    table = folder / "captions.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["caption", "title"])
        writer.writerows([f"caption {n}", f"title {n}"] for n in range(40))
    idx = Index.create(tmp_path / "index", encoder=HashEncoder())
    part_size = table.stat().st_size // 4 + 1
    with pytest.raises(KeyboardInterrupt):
        Index.open(idx.path, encoder=CrashAfter(4)).add([folder], workers=0, part_size=part_size, checkpoint_s=0)
    after = Index.open(idx.path, encoder=HashEncoder())
    assert 0 < len(_texts(after)) < 40
    summary = after.add([folder], workers=0, part_size=part_size, text_column="title")
    assert summary.resumed == 0 and summary.vectors == 40
    assert sorted(text for _, text in _texts(after)) == sorted(f"title {n}" for n in range(40))
