"""``where`` filters are vetted on DuckDB's parse tree: one expression that runs alone (it
cannot lift the modality restriction of a search) calling only functions that cannot blow
up memory; every filter the README and the tests use still works."""

from __future__ import annotations

import numpy as np
import pytest

from mmsearch import Index
from mmsearch.errors import FilterError
from mmsearch.store import filters
from mmsearch.store.catalog import Catalog
from mmsearch.store.schema import items_table

DIM = 8
MODALITIES = ("image", "audio", "text", "video")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    rows = [
        {
            "id": i,
            "modality": MODALITIES[i % 4],
            "path": f"/data/{'note' if i % 3 else 'img'}{i:03d}.{'png' if i % 2 else 'jpeg'}",
            "format": "png" if i % 2 else "jpeg",
            "width": 40 * i,
            "taken_at": None if i % 5 == 0 else np.datetime64(f"20{10 + i % 12}-03-04T05:06:07", "s"),
            "track": ("frame", "sound")[i % 2] if i % 4 == 3 else None,
            "duration": 100.0 * i,
            "extra": f'{{"t": "t{i % 3}"}}',
        }
        for i in range(40)
    ]
    return Catalog(items_table(rows))


# Filters from the README and the tests, and their kin from the allow-list.
ACCEPTED = [
    "width >= 1024 AND format = 'jpeg'",
    "track = 'sound'",
    "duration > 600",
    "format = 'png' AND width >= 120",
    "path LIKE '%note00%'",
    "extra LIKE '%t1%'",
    "year(taken_at) = 2020 OR width > 4",
    "modality = 'image' AND id % 7 = 3",
    "width = 40",
    "path NOT LIKE '%img%' AND path ILIKE '%NOTE%' AND path GLOB '*.png'",
    "width BETWEEN 100 AND 900 AND width NOT IN (120, 160) AND taken_at IS NOT NULL",
    "regexp_matches(path, 'note0[12]') OR path ~ 'img03'",
    "lower(format) = 'png' AND length(path) > 5 AND starts_with(path, '/data') AND contains(path, 'note')",
    "CAST(width AS VARCHAR) LIKE '4%' OR TRY_CAST(format AS INTEGER) IS NULL",
    "coalesce(taken_at, TIMESTAMP '2000-01-01') > TIMESTAMP '2015-06-01'",
    "date_part('month', taken_at) = 3 AND extract(year FROM taken_at) < 2020",
    "taken_at < now() - INTERVAL 1 DAY",
    "json_extract_string(extra, '$.t') = 't2'",
    "CASE WHEN format = 'png' THEN width ELSE 0 END > 500",
    "abs(width - 800) < 100 OR round(duration / 3) = 100",
    "list_contains(['png', 'gif'], format) AND substring(path, 1, 5) = '/data'",
    "(width > 100) IS TRUE",
    "true --",
]


@pytest.mark.parametrize("where", ACCEPTED)
def test_documented_filters_still_work(catalog: Catalog, where: str) -> None:
    reference = sorted(row["id"] for row in catalog.query(f"SELECT id FROM items WHERE {where}\n").to_pylist())
    assert sorted(catalog.ids_where(where).tolist()) == reference


def test_the_accepted_filters_are_not_trivial(catalog: Catalog) -> None:
    matched = [len(catalog.ids_where(where)) for where in ACCEPTED]
    assert sum(0 < n < len(catalog) for n in matched) >= len(ACCEPTED) - 3


REFUSED = [
    ("length(repeat('a', 1000000000) || repeat('b', 1000000000)) > 0", "function || is not allowed"),
    ("length(repeat('a', 1000000000)) > 0", "function repeat is not allowed"),
    ("lpad(path, 1000000000, 'x') = 'a'", "function lpad is not allowed"),
    ("rpad(path, 1000000000, 'x') = 'a'", "function rpad is not allowed"),
    ("printf('%1000000000d', 1) = 'a'", "function printf is not allowed"),
    ("format('{:>1000000000}', path) = 'a'", "function format is not allowed"),
    ("len(range(1000000000)) > 0", "function range is not allowed"),
    ("len(list_resize([1], 1000000000)) > 0", "function list_resize is not allowed"),
    ("path || path = 'a'", "function || is not allowed"),
    ("regexp_replace(path, '', 'aaaa', 'g') = 'a'", "function regexp_replace is not allowed"),
    ("(SELECT count(*) FROM range(1000000) a, range(1000000) b) > 0", "subqueries are not allowed"),
    ("width IN (SELECT 1)", "subqueries are not allowed"),
    ("EXISTS (SELECT 1)", "subqueries are not allowed"),
    ("width = ANY([1, 2])", "subqueries are not allowed"),
    ("count(*) > 1", "function count is not allowed"),
    ("sum(width) > 1", "function sum is not allowed"),
    ("row_number() OVER () > 1", "window functions are not allowed"),
    ("len(list_transform([1], x -> repeat('a', x))) > 0", "function list_transform is not allowed"),
    ("COLUMNS(*) IS NULL", "COLUMNS"),
    ("main.lower(path) = 'a'", "function lower is not allowed"),
    ("width = $1", "parameters are not allowed"),
    ("getvariable('x') = 1", "function getvariable is not allowed"),
    ("true GROUP BY width", "one boolean expression"),
    ("true ORDER BY width LIMIT 1", "one boolean expression"),
    ("true UNION SELECT 1", "one boolean expression"),
    ("true QUALIFY true", "one boolean expression"),
    ("1=1; DROP VIEW items", "one boolean expression"),
    ("1=1) OR (1=1", "syntax error"),
    ("true /*", "unterminated /* comment"),
]


@pytest.mark.parametrize(("where", "reason"), REFUSED)
def test_refused_filters_fail_in_one_line_before_running(catalog: Catalog, where: str, reason: str) -> None:
    with pytest.raises(FilterError) as caught:
        catalog.ids_where(where)
    message = str(caught.value)
    assert message.startswith("invalid --where filter: ") and reason in message
    assert "\n" not in message and "SELECT id FROM" not in message


def test_long_or_heavy_filters_are_refused(catalog: Catalog) -> None:
    with pytest.raises(FilterError, match="longer than"):
        catalog.ids_where("width = 1 OR " * 2000 + "true")
    with pytest.raises(FilterError, match="more than 128 operations"):
        catalog.ids_where(" OR ".join(f"lower(path) = 'p{i}'" for i in range(200)))
    assert len(catalog.ids_where(" OR ".join(f"width = {40 * i}" for i in range(500)))) == 40


def test_the_verdict_is_cached_per_filter_text(catalog: Catalog) -> None:
    where = "width > 777"
    filters.statement(where)
    hits = filters._vetted.cache_info().hits
    assert filters.statement(where) == "SELECT id FROM items WHERE width > 777\n"
    assert filters._vetted.cache_info().hits == hits + 1


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Index:
    """A vector-only index holding every modality, the same vectors in each."""
    index = Index.create(tmp_path_factory.mktemp("filters") / "index", dim=DIM)
    vectors = np.random.default_rng(3).standard_normal((5, DIM)).astype(np.float32)
    for modality in MODALITIES:
        index.add_vectors(vectors, [{"path": f"{modality}/{i}", "width": i} for i in range(5)], modality=modality)
    return index


ESCAPES = ["1=1) OR (1=1", "true) OR (true", "width >= 0) OR (true", "true --", "width >= 0 -- ", "true /*", "1=1 /* x"]


@pytest.mark.parametrize("where", ESCAPES)
def test_a_filter_cannot_lift_the_modality_restriction(mixed: Index, where: str) -> None:
    query = np.random.default_rng(4).standard_normal(DIM).astype(np.float32)
    searches = {
        "search": lambda: [mixed.search(vector=query, k=6, modality="image", where=where)],
        "search_batch": lambda: mixed.search_batch(query[None], k=6, modality="image", where=where),
        "raw rows": lambda: mixed.search_batch(query[None], k=6, modality="image", where=where, group=False),
    }
    for name, run in searches.items():
        try:
            found = run()
        except FilterError as exc:
            message = str(exc)
            assert message.startswith("invalid --where filter: ") and "\n" not in message, name
            assert "modality" not in message and "AND (" not in message, name
        else:
            assert {hit.modality for hits in found for hit in hits} == {"image"}, name
            assert len(found[0]) == 5, name


def test_the_modality_and_the_filter_both_apply(mixed: Index) -> None:
    query = np.random.default_rng(5).standard_normal(DIM).astype(np.float32)
    found = mixed.search_batch(query[None], k=20, modality="audio", where="width >= 3 OR modality = 'text'")[0]
    assert sorted(hit.path for hit in found) == ["audio/3", "audio/4"]
    everything = mixed.search_batch(query[None], k=20, modality="any", where="width >= 3")[0]
    assert len(everything) >= 6 and all(hit.path.endswith(("/3", "/4")) for hit in everything)
