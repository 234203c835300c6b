"""Text ingestion (files, passages, caption tables), modality selection, query parsing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmsearch import Index
from mmsearch.errors import UserInputError
from mmsearch.ingest.decode import passages
from mmsearch.search.query import Term, parse


@pytest.fixture
def mixed(tmp_path: Path, photos: Path) -> Path:
    """Images plus a text file, a long Markdown file and caption tables."""
    (photos / "notes.txt").write_text("a red square on a white wall")
    paragraphs = [f"Paragraph {i} talks about topic {i}. " * 3 for i in range(6)]
    (photos / "long.md").write_text("\n\n".join(paragraphs))
    (photos / "captions.csv").write_text("file,caption,colour\na.png,a red circle,red\nb.png,a blue square,blue\n")
    (photos / "docs.jsonl").write_text(
        "\n".join(json.dumps({"key": f"d{i}", "text": f"document {i}", "lang": "en"}) for i in range(3))
    )
    pq.write_table(pa.table({"caption": ["parquet one", "parquet two"]}), photos / "more.parquet")
    (photos / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return photos


def test_passages_split_at_boundaries_with_offsets() -> None:
    text = "First paragraph here.\n\nSecond one is a bit longer. It has two sentences."
    chunks = passages(text, 30)
    assert [c for _, c in chunks] == ["First paragraph here.", "Second one is a bit longer.", "It has two sentences."]
    for offset, chunk in chunks:
        assert text[offset : offset + len(chunk)] == chunk


def test_text_files_and_tables_become_text_items(tmp_path: Path, encoder, mixed: Path) -> None:
    idx = Index.create(tmp_path / "index", encoder=encoder)
    summary = idx.add([mixed], workers=0, id_column=None)
    assert [Path(p).name for p, _ in summary.failed] == ["latin1.txt"]
    assert "UTF-8" in summary.failed[0][1]
    counts = idx.info()["by_modality"]
    assert counts["image"] == 12
    rows = idx.sql("SELECT path, text, char_offset, row, extra, format FROM items WHERE modality = 'text'").to_pylist()
    by_file: dict[str, list[dict]] = {}
    for row in rows:
        by_file.setdefault(Path(row["path"]).name, []).append(row)
    assert [r["text"] for r in by_file["notes.txt"]] == ["a red square on a white wall"]
    assert len(by_file["long.md"]) == 6 and {r["format"] for r in by_file["long.md"]} == {"markdown"}
    long_text = (mixed / "long.md").read_text()
    assert all(long_text[r["char_offset"] :].startswith(r["text"]) for r in by_file["long.md"])
    assert sorted(r["text"] for r in by_file["captions.csv"]) == ["a blue square", "a red circle"]
    assert json.loads(by_file["captions.csv"][0]["extra"])["colour"] in ("red", "blue")
    assert sorted(r["row"] for r in by_file["docs.jsonl"]) == [0, 1, 2]
    assert sorted(r["text"] for r in by_file["more.parquet"]) == ["parquet one", "parquet two"]
    assert counts["text"] == len(rows) == 1 + 6 + 2 + 3 + 2


def test_id_and_text_columns(tmp_path: Path, encoder) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "table.csv").write_text("key,body\nk1,hello there\nk2,general kenobi\n")
    idx = Index.create(tmp_path / "index", encoder=encoder)
    missing = idx.add([folder], workers=0)
    assert "pass --text-column" in missing.failed[0][1]
    fixed = idx.add([folder], workers=0, text_column="body", id_column="key")  # new options: retried
    assert (fixed.embedded, fixed.failed) == (1, [])
    rows = idx.sql("SELECT source_id, text FROM items ORDER BY source_id").to_pylist()
    assert rows == [{"source_id": "k1", "text": "hello there"}, {"source_id": "k2", "text": "general kenobi"}]


def test_modality_selection(tmp_path: Path, encoder, mixed: Path) -> None:
    idx = Index.create(tmp_path / "index", encoder=encoder)
    idx.add([mixed], workers=0)
    assert {h.modality for h in idx.search("red", k=50)} == {"image"}  # text query: images by default
    assert {h.modality for h in idx.search("red", k=50, modality="text")} == {"text"}
    assert {h.modality for h in idx.search("red", k=50, modality="any")} == {"image", "text"}
    image = mixed / "red.png"
    texts = idx.search(image=image, modality="text", k=3)
    assert len(texts) == 3 and all(h.metadata["text"] for h in texts)
    with pytest.raises(UserInputError, match="unknown modality"):
        idx.search("red", modality="smell")


def test_text_only_index_answers_text_queries_with_text(tmp_path: Path, encoder) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha")
    idx = Index.create(tmp_path / "index", encoder=encoder)
    idx.add([folder], workers=0)
    assert [h.metadata["text"] for h in idx.search("alpha", k=5)] == ["alpha"]


def test_query_arithmetic_parsing(photos: Path) -> None:
    assert parse('"dog" + "beach" - "night"') == [
        Term(1.0, "text", "dog"),
        Term(1.0, "text", "beach"),
        Term(-1.0, "text", "night"),
    ]
    assert parse("2:golden retriever - 0.5:puppy") == [
        Term(2.0, "text", "golden retriever"),
        Term(-0.5, "text", "puppy"),
    ]
    assert parse("a t-shirt") == [Term(1.0, "text", "a t-shirt")]
    assert parse(f"{photos / 'red.png'} + at night") == [
        Term(1.0, "image", str(photos / "red.png")),
        Term(1.0, "text", "at night"),
    ]
    for empty in (" + ", '"dog" + ""'):
        with pytest.raises(UserInputError):
            parse(empty)
    for dangling in ('"dog" +', "+ - +"):
        with pytest.raises(UserInputError, match="without a term after it"):
            parse(dangling)
    assert parse("- dog") == [Term(-1.0, "text", "dog")]  # a leading sign has nothing before it


def test_arithmetic_moves_the_query_vector(index_with_photos: Index) -> None:
    idx = index_with_photos
    dog, night = (idx.embed_terms([Term(1.0, "text", t)]) for t in ("dog", "night"))
    combined = idx.embed_terms(parse("dog - night"))
    assert combined @ night < dog @ night
    expected = (dog - night) / np.linalg.norm(dog - night)
    assert np.allclose(combined, expected, atol=1e-5)
    with pytest.raises(UserInputError, match="cancel out"):
        idx.embed_terms(parse("dog - dog"))


@pytest.fixture
def index_with_photos(tmp_path: Path, encoder, photos: Path) -> Index:
    idx = Index.create(tmp_path / "index", encoder=encoder)
    idx.add([photos], workers=0)
    return idx


def test_a_query_file_whose_embedding_is_not_finite_is_a_user_error(tmp_path: Path) -> None:
    import soundfile

    nan = tmp_path / "nan.wav"
    soundfile.write(nan, np.full(16_000, np.nan, np.float32), 16_000, subtype="FLOAT")
    idx = Index.create(tmp_path / "index", model="demo")
    with pytest.raises(UserInputError, match="embedding is not finite"):
        idx.search(audio=nan)


def test_a_caption_table_without_a_text_column_names_what_was_looked_for(tmp_path: Path) -> None:
    from mmsearch.ingest.decode import DecodeOptions, decode
    from mmsearch.ingest.discover import decoder_of

    table = tmp_path / "nocol.csv"
    table.write_text("a,b\n1,2\n")
    guessed = decode(str(table), decoder_of(str(table)), DecodeOptions())
    assert guessed.error is not None and "no text column (none of text, caption" in guessed.error
    named = decode(str(table), decoder_of(str(table)), DecodeOptions(text_column="words"))
    assert named.error is not None and "no text column 'words' (columns: a, b)" in named.error
