"""The CLI as people meet it: help texts, one-line errors before anything heavy loads,
summaries and tables for people, JSON/CSV/NUL output for machines, and models that
are not cached failing fast and clearly. Every check runs the real CLI in a subprocess."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import write_image
from mmsearch.models.registry import DEMO_DIR

HEAVY = ("torch", "open_clip", "faiss", "duckdb", "pyarrow", "mmsearch.index")
CLOSED_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
FAILURES_HINT = 'mmsearch sql "SELECT path, reason FROM failures"'

# Runs the CLI and, at exit, writes which heavy modules the process imported.
LIGHT_RUNNER = f"""
import atexit, json, sys
out, args = sys.argv[1], sys.argv[2:]
heavy = {HEAVY!r}
atexit.register(lambda: open(out, "w").write(json.dumps(
    sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy))))
from mmsearch.cli import main
main(args)
"""


def cli_env(tmp_path: Path, **extra: str | None) -> dict[str, str]:
    """A clean environment: no default index or model from the caller, an empty HF cache."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MMSEARCH_", "HF_"))}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "XDG_DATA_HOME": str(tmp_path / "xdg")}
    env |= {"COLUMNS": "100"}
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess; the timeout is only a safety net against hangs."""
    return subprocess.run(
        [sys.executable, "-m", "mmsearch.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def run_light(tmp_path: Path, *args: str, **extra: str | None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the CLI; also return the heavy modules it imported."""
    record = tmp_path / "imported.json"
    result = subprocess.run(
        [sys.executable, "-c", LIGHT_RUNNER, str(record), *args],
        capture_output=True,
        text=True,
        env=cli_env(tmp_path, **extra),
        cwd=tmp_path,
        timeout=120,
    )
    return result, json.loads(record.read_text())


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mmsearch: error: ")
    return lines[0]


# -- help and version ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["index", "query", "label", "info", "sql", "export", "import"])
def test_help_shows_defaults_and_flags(tmp_path: Path, command: str) -> None:
    result, heavy = run_light(tmp_path, command, "--help")
    assert result.returncode == 0, result.stderr
    assert heavy == []
    text = result.stdout
    default_index = tmp_path / "xdg" / "mmsearch" / "indexes" / "default"
    assert f"[default: {default_index}]" in text  # the resolved default, whole
    assert "$MMSEARCH_INDEX" in text
    assert "<bool>" not in text
    assert re.search(r"^  --json +Machine-readable", text, re.MULTILINE)  # a flag: no value placeholder
    assert "--help" in text


def test_help_of_index_and_query_names_every_default(tmp_path: Path) -> None:
    index_help = run_light(tmp_path, "index", "--help")[0].stdout
    for shown in ("[default: 100000]", "[default: auto]", "ViT-B-32:laion2b_s34b_b79k", "[default: CUDA if present]"):
        assert shown in index_help
    assert "--exclude GLOB" in index_help and ".mmsearchignore" in index_help
    query_help = run_light(tmp_path, "query", "--help")[0].stdout
    assert "[default: 10]" in query_help
    assert re.search(r"^  -f, --paths-only +Print", query_help, re.MULTILINE)
    assert re.search(r"^  -0, --null +Print", query_help, re.MULTILINE)


def test_help_follows_the_environment(tmp_path: Path) -> None:
    chosen = tmp_path / "elsewhere"
    result, _ = run_light(tmp_path, "query", "--help", MMSEARCH_INDEX=str(chosen))
    assert f"[default: {chosen}]" in result.stdout
    (tmp_path / "indexes").mkdir()
    result, _ = run_light(tmp_path, "--help")
    assert f"The index lives in {tmp_path / 'indexes' / 'default'}" in result.stdout
    result, _ = run_light(tmp_path, "label", "--help", MMSEARCH_MODEL="demo")
    assert "demo from $MMSEARCH_MODEL" in result.stdout


def test_version(tmp_path: Path) -> None:
    result, heavy = run_light(tmp_path, "--version")
    assert result.returncode == 0 and heavy == []
    assert result.stdout.strip() == f"mmsearch {version('mmsearch')}"


def test_models_json(tmp_path: Path) -> None:
    result, heavy = run_light(tmp_path, "models", "--json")
    assert result.returncode == 0 and heavy == []
    specs = {entry["spec"]: entry["description"] for entry in json.loads(result.stdout)}
    assert "demo" in specs and "ViT-B-32:laion2b_s34b_b79k" in specs


# -- user mistakes: one line, before anything heavy loads -------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "red", "-k", "0"], "-k must be at least 1, not 0"),
        (["query", "red", "-k", "-5"], "-k must be at least 1, not -5"),
        (["query", "red", "-k", "many"], "Invalid value for '-k'"),
        (["query", "--image", "missing.png"], "file not found: missing.png"),
        (["query", "--audio", "missing.wav"], "file not found: missing.wav"),
        (["query", "./missing.jpg", "+", "at night"], "file not found: ./missing.jpg"),
        (["query"], "give a query"),
        (["index", ".", "--index", "a-file.txt"], "index path a-file.txt is a file"),
        (["query", "red", "--index", "a-file.txt"], "index path a-file.txt is a file"),
        (["index", "no-such-folder"], "path not found: no-such-folder"),
        (["index", ".", "--bogus"], "No such option: --bogus"),
        (["index", ".", "--part-size", "big"], "invalid part size 'big'"),
        (["index", ".", "--checkpoint-every", "-1"], "--checkpoint-every must be 0 seconds or more, not -1"),
        (["label", "missing.png", "--labels", "a,b"], "file not found: missing.png"),
        (["label", "a-file.txt", "--labels", "a"], "give at least two comma-separated labels"),
        (["label", "a-file.txt"], "Missing option '--labels'"),
        (["label", "a-file.txt", "--labels", "a,b", "--index", "no-index"], "no index at no-index"),
        (["sql", "SELECT 1", "--json", "--csv"], "choose one of --json and --csv"),
        (["qurey", "red"], "Did you mean 'query'?"),
    ],
)
def test_user_mistakes_are_one_line_before_loading(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "a-file.txt").write_text("not an index")
    result, heavy = run_light(tmp_path, *args)
    line = one_error_line(result)
    assert message in line
    assert result.returncode == 2 or "no index" in message
    assert heavy == []


# -- models that are not cached ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        ({"HF_HUB_OFFLINE": None, "HF_ENDPOINT": CLOSED_ENDPOINT}, "127.0.0.1:9 unreachable"),
        ({"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "https://hub.mmsearch.invalid"}, "hub.mmsearch.invalid unreachable"),
    ],
    ids=["offline", "refused", "no-dns"],
)
def test_uncached_model_fails_fast_in_one_line(tmp_path: Path, photos: Path, extra: dict, why: str) -> None:
    index = tmp_path / "idx"
    result = run(
        "index",
        str(photos),
        "--index",
        str(index),
        "--model",
        "ViT-B-32:laion2b_s34b_b79k",
        env=cli_env(tmp_path, **extra),
    )
    line = one_error_line(result)
    assert result.returncode == 1
    assert len(line) < 300
    assert "ViT-B-32:laion2b_s34b_b79k" in line and why in line
    assert str(tmp_path / "hf" / "hub") in line  # where it looked
    assert "--model demo" in line and "--model ViT-B-32:/path/to/file.pt" in line and "HF_HUB_OFFLINE=1" in line
    assert not index.exists()


def test_cached_hub_model_loads_with_the_network_closed(tmp_path: Path, photos: Path) -> None:
    """A model in the local HF cache loads without asking the (closed) hub anything."""
    snapshot = tmp_path / "hf" / "hub" / "models--mmsearch--demo-copy" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    model_cfg = json.loads((DEMO_DIR / "mmsearch-demo.json").read_text())
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    shutil.copy(DEMO_DIR / "weights.safetensors", snapshot / "open_clip_model.safetensors")

    env = cli_env(tmp_path, HF_HUB_OFFLINE=None, HF_ENDPOINT=CLOSED_ENDPOINT)
    result = run("label", str(photos / "red.png"), "-l", "red,blue", "-m", "hf-hub:mmsearch/demo-copy", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith("red")


# -- an index built once with the offline demo model ------------------------------------------


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A demo-model index of 6 images; 12 broken images, 2 unsupported files and one
    excluded folder left out. Built by the CLI, then indexed again (nothing changed)."""
    root = tmp_path_factory.mktemp("demo_index")
    photos = root / "photos"
    for i, (name, colour) in enumerate([("red", (230, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 230))]):
        write_image(photos / f"{name}.png", colour, seed=i)
        write_image(photos / "nested" / f"{name}.jpg", colour, (120, 90), seed=10 + i)
        write_image(photos / "skipme" / f"{name}.png", colour, seed=20 + i)
    for i in range(12):
        (photos / f"broken{i:02}.png").write_bytes(b"not a png")
    (photos / "notes.xyz").write_text("?")
    (photos / "more.xyz").write_text("?")
    index = root / "idx"
    env = cli_env(root)
    args = ["index", str(photos), "--index", str(index), "--exclude", "skipme/"]
    first = run(*args, "--model", "demo", env=env)
    assert first.returncode == 0, first.stderr
    again = run(*args, env=env)
    assert again.returncode == 0, again.stderr
    return {"index": index, "photos": photos, "root": root, "env": env, "first": first.stdout, "again": again.stdout}


def test_index_summary_lists_new_failures_and_remembers_old_ones(demo_index: dict) -> None:
    first = demo_index["first"].splitlines()
    failed = [line for line in first if line.startswith("  failed: ")]
    assert len(failed) == 10 and "broken00.png: " in failed[0]
    assert f"  ... and 2 more failed ({FAILURES_HINT})" in first
    assert "  skipped 2 .xyz (unsupported type)" in first
    assert not any("still failing" in line for line in first)

    again = demo_index["again"].splitlines()
    assert again[0].endswith("0 embedded (0 vectors), 0 reused, 6 unchanged, 0 removed, 0 failed")
    assert f"  12 files still failing ({FAILURES_HINT})" in again
    assert not any(line.startswith("  failed: ") for line in again)


def test_index_exclude_leaves_files_out(demo_index: dict) -> None:
    rows = run("sql", "SELECT path FROM items", "--index", str(demo_index["index"]), "--json", env=demo_index["env"])
    paths = [row["path"] for row in json.loads(rows.stdout)]
    assert len(paths) == 6 and not any("skipme" in path for path in paths)


@pytest.mark.parametrize("json_out", [False, True])
def test_index_where_every_file_fails_exits_1_after_its_summary(tmp_path: Path, json_out: bool) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(2):
        (broken / f"b{i}.png").write_bytes(b"not a png")
    args = ["index", str(broken), "--index", str(tmp_path / "idx"), "--model", "demo"]
    result = run(*args, *(["--json"] if json_out else []), env=cli_env(tmp_path))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == "mmsearch: error: no file could be indexed (2 files failed)"
    if json_out:
        summary = json.loads(result.stdout)
        assert summary["embedded"] == 0 and len(summary["failed"]) == 2
    else:
        assert result.stdout.splitlines()[0].endswith(
            "0 embedded (0 vectors), 0 reused, 0 unchanged, 0 removed, 2 failed"
        )
    # Partial success stays a success: one good file among the broken ones.
    write_image(broken / "good.png", (200, 30, 30))
    (broken / "b2.png").write_bytes(b"not a png either")
    again = run(*args, env=cli_env(tmp_path))
    assert again.returncode == 0, again.stderr
    assert " 1 embedded " in again.stdout.splitlines()[0] and again.stdout.splitlines()[0].endswith(" 1 failed")


def test_label_uses_the_model_of_the_index(demo_index: dict) -> None:
    # The default model is not cached (and the hub is offline): only the index's demo model can work.
    env = demo_index["env"] | {"MMSEARCH_MODEL": "ViT-B-32:laion2b_s34b_b79k"}
    red = str(demo_index["photos"] / "red.png")
    by_flag = run("label", red, "--labels", "green,red,blue", "--index", str(demo_index["index"]), "--json", env=env)
    assert by_flag.returncode == 0, by_flag.stderr
    assert json.loads(by_flag.stdout)[0]["label"] == "red"
    by_default = run("label", red, "-l", "green,red,blue", env=env | {"MMSEARCH_INDEX": str(demo_index["index"])})
    assert by_default.returncode == 0, by_default.stderr
    assert by_default.stdout.splitlines()[0].endswith("red")


def test_info_for_people_and_machines(demo_index: dict) -> None:
    index, env = str(demo_index["index"]), demo_index["env"]
    text = run("info", "--index", index, env=env).stdout
    lines = text.splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    assert {key.strip() for key in fields} >= {"model", "vectors", "by modality", "size", "created at"}
    assert len({len(line) - len(line.split(":", 1)[1].lstrip()) for line in lines}) == 1  # values aligned
    assert fields["by modality"].strip() == "image 6"
    assert re.fullmatch(r"\d+(\.\d)? (B|kB|MB)", fields["size"].strip())
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", fields["created at"].strip())
    assert "{" not in text and not re.search(r"\dT\d", text)  # no dicts, no raw ISO timestamps
    raw = json.loads(run("info", "--index", index, "--json", env=env).stdout)
    assert isinstance(raw["size_bytes"], int) and raw["by_modality"] == {"image": 6}


def test_sql_table_csv_and_json(demo_index: dict) -> None:
    index, env = str(demo_index["index"]), demo_index["env"]
    statement = "SELECT modality, count(*), repeat('x', 200) AS long FROM items GROUP BY 1"
    table = run("sql", statement, "--index", index, env=env)
    assert table.returncode == 0, table.stderr
    header, rule, row = table.stdout.splitlines()
    assert header.split() == ["modality", "count(*)", "long"]
    assert set(rule.replace(" ", "")) == {"-"}
    cells = row.split()
    assert cells[:2] == ["image", "6"] and cells[2].endswith("…") and len(cells[2]) <= 60
    assert row.index("6") == header.index("count(*)") + len("count(*)") - 1  # numbers right-aligned
    assert table.stderr.strip() == "(1 row)"

    as_csv = list(csv.reader(io.StringIO(run("sql", statement, "--index", index, "--csv", env=env).stdout)))
    assert as_csv[0] == ["modality", "count_star()", "long"] and as_csv[1][:2] == ["image", "6"]
    assert as_csv[1][2] == "x" * 200
    as_json = json.loads(run("sql", statement, "--index", index, "--json", env=env).stdout)
    assert as_json == [{"modality": "image", "count_star()": 6, "long": "x" * 200}]


def test_query_paths_nul_separated(demo_index: dict) -> None:
    result = run("query", "red", "-0", "-k", "4", "--index", str(demo_index["index"]), env=demo_index["env"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\0") and "\n" not in result.stdout
    paths = result.stdout.split("\0")[:-1]
    assert len(paths) == 4 and all(Path(path).is_file() for path in paths)


def test_demo_refuses_too_few_scenes_and_a_file_for_a_folder(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for args in (["demo", str(tmp_path / "d"), "--images", "3"], ["demo", str(tmp_path / "afile")]):
        result = run(*args, env=cli_env(tmp_path))
        assert result.returncode == 2
        assert re.search(r"at least 40 scenes|is a file, not a folder", one_error_line(result))
    assert not (tmp_path / "d").exists()


def test_json_output_is_strict_json_even_for_nan(tmp_path: Path) -> None:
    from mmsearch import Index

    Index.create(tmp_path / "v", dim=4)
    sql = "SELECT 'nan'::DOUBLE AS a, 'inf'::DOUBLE AS b, 1.5::DOUBLE AS c"
    result = run("sql", sql, "--json", "--index", str(tmp_path / "v"), env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    assert json.loads(result.stdout, parse_constant=refuse) == [{"a": None, "b": None, "c": 1.5}]


@pytest.mark.parametrize("option", [["--device", "nonsense"], ["--workers", "-1"]])
def test_a_bad_device_or_worker_count_is_a_usage_error_before_anything_loads(tmp_path: Path, option: list[str]) -> None:
    result = run("index", str(tmp_path), "--index", str(tmp_path / "idx"), *option, env=cli_env(tmp_path))
    assert result.returncode == 2 and f"Invalid value for '{option[0]}'" in one_error_line(result)
    assert not (tmp_path / "idx").exists()


def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    from mmsearch import Index

    Index.create(tmp_path / "v", dim=4)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run("serve", "--index", str(tmp_path / "v"), "--port", port, env=cli_env(tmp_path))
    assert result.returncode == 2
    assert one_error_line(result) == f"mmsearch: error: cannot listen on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize("output", [[], ["--csv"], ["--json"]])
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path: Path, output: list[str]) -> None:
    """`mmsearch sql ... | head -1`: head gets its line; mmsearch stops with exit code 1, no
    traceback and no message. (Python's own PYTHONUNBUFFERED mode drops a partly written
    output silently instead, so the pipeline runs without it, as users do.)"""
    import numpy as np

    from mmsearch import Index

    Index.create(tmp_path / "v", dim=4).add_vectors(
        np.ones((20_000, 4), np.float32), [{"path": f"/a/long/enough/path/{i:05d}.jpg"} for i in range(20_000)]
    )  # ~700 kB of output: more than a pipe holds
    env = cli_env(tmp_path, PYTHONUNBUFFERED=None)
    command = [sys.executable, "-m", "mmsearch.cli", "sql", "SELECT path FROM items", "--index", str(tmp_path / "v")]
    writer = subprocess.Popen([*command, *output], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    head = subprocess.Popen(["head", "-1"], stdin=writer.stdout, stdout=subprocess.PIPE)
    assert writer.stdout is not None and writer.stderr is not None
    writer.stdout.close()  # only head reads it now
    first, _ = head.communicate(timeout=120)
    errors = writer.stderr.read().decode()
    assert writer.wait(timeout=120) == 1
    assert first.decode().strip() in ("path", "[")
    assert errors == ""
