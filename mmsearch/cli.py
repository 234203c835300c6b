"""The ``mmsearch`` command line. Heavy modules (torch, faiss, duckdb) load lazily
inside commands, so ``--help``, ``--version`` and argument errors answer instantly.

Errors a user can cause surface as one line on stderr (``mmsearch: error: ...``) and a
non-zero exit code: library errors by their type, usage errors with exit code 2.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer

from mmsearch.config import (
    CHECKPOINT_S,
    DEFAULT_MODEL,
    INDEX_ENV,
    MODEL_ENV,
    SERVER_ENV,
    TOKEN_ENV,
    default_index_path,
    default_model,
)
from mmsearch.errors import MMSearchError, UserInputError

if TYPE_CHECKING:
    from mmsearch.index import AddSummary, Index
    from mmsearch.search.query import Term

FAILURES_SQL = 'mmsearch sql "SELECT path, reason FROM failures"'
SHOWN_FAILURES = 10
MAX_CELL = 60  # characters of a table cell before it is cut with "…"


def _where_index_lives() -> str:
    """Help text naming the default index (resolved now: it depends on the environment
    and the current folder) and the rule that picks it. Kept out of the help wrapper
    (``\\b``) so a long path stays whole and copyable."""
    return (
        "\b\n"
        f"Index folder.  [default: {default_index_path().absolute()}]\n"
        f"(--index, else ${INDEX_ENV}, else ./indexes/default when ./indexes\n"
        "exists, else $XDG_DATA_HOME/mmsearch/indexes/default)"
    )


def _path(value: str | Path) -> Path:
    """Every path argument and ``--index`` parse here: an empty one (what ``"$UNSET_VAR"``
    gives) would otherwise mean the current folder. A default (``demo``'s folder) arrives
    here as the ``Path`` it was declared as."""
    if not str(value).strip():
        raise typer.BadParameter("an empty path (is a shell variable unset?)")
    return Path(value)


def _device(value: str) -> str:
    """``--device`` is checked before any model loads (a typo would otherwise surface as a
    checkpoint that cannot be loaded)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise typer.BadParameter(f"unknown device {value!r}; use cpu, cuda or cuda:N")
    return value


app = typer.Typer(
    help="Cross-modal vector search over folders of images, text and audio.",
    epilog=f"\b\nThe index lives in {default_index_path().absolute()} (--index DIR or ${INDEX_ENV} to change).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: "[default: ...]" survives and flags show no value placeholder
    context_settings={"max_content_width": 100},
)

IndexOption = Annotated[
    Optional[Path], typer.Option("--index", "-i", metavar="DIR", help=_where_index_lives(), parser=_path)
]
TokenOption = Annotated[
    Optional[str],
    typer.Option(
        "--token",
        metavar="SECRET",
        envvar=TOKEN_ENV,
        show_envvar=True,
        help="The server's bearer token (prefer the environment variable: arguments show in `ps`).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
MaxMemoryOption = Annotated[
    Optional[str],
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        help="Memory budget for the vectors of an auto-recipe index, e.g. 8G or 512M: each shard gets the most "
        "accurate code (Flat, SQfp16, SQ8, ... PQ) that fits the budget spread over the index's rows.",
    ),
]
DeviceOption = Annotated[
    Optional[str],
    typer.Option("--device", metavar="DEVICE", parser=_device, help="cpu, cuda or cuda:N.  [default: CUDA if present]"),
]


def _model_default() -> str:
    """The default model as help text: the environment's choice, or the built-in one."""
    if os.environ.get(MODEL_ENV):
        return f"{default_model()} from ${MODEL_ENV}"
    return f"{DEFAULT_MODEL}; ${MODEL_ENV} changes it"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("mmsearch")
        except PackageNotFoundError:
            from mmsearch import __version__ as installed
        typer.echo(f"mmsearch {installed}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Show the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Cross-modal vector search over folders of images, text and audio."""


def _index_path(index: Path | None) -> Path:
    path = index if index is not None else default_index_path()
    if path.exists() and not path.is_dir():
        raise UserInputError(f"index path {path} is a file, not an index folder; pass another --index")
    return path


def _open(index: Path | None, device: str | None = None) -> Index:
    path = _index_path(index)
    from mmsearch.index import Index

    return Index.open(path, device=device)


def _print_json(data: object) -> None:
    """Strict JSON on stdout: a NaN or infinite number (e.g. from user SQL) prints as null; other
    SQL types as ``mmsearch.jsonvalues`` says (the server's SQL endpoint answers alike)."""
    from mmsearch.jsonvalues import jsonable

    typer.echo(json.dumps(jsonable(data), indent=2, allow_nan=False))


def _positive_finite(value: float) -> float:
    """A size or limit given on the command line: NaN, infinity, zero or less is a usage error."""
    if not math.isfinite(value) or value <= 0:
        raise typer.BadParameter(f"must be a positive number, not {value:g}")
    return value


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _check_file(path: str | Path) -> None:
    if not os.path.isfile(path):
        raise UserInputError(f"file not found: {path}" if not os.path.exists(path) else f"not a file: {path}")


@app.command()
def index(
    paths: Annotated[
        list[Path], typer.Argument(help="Files or folders to index (recursively).", metavar="PATH", parser=_path)
    ],
    index: IndexOption = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            metavar="SPEC",
            help="Model for a new index; an existing index keeps its own (see `mmsearch models`).  "
            f"[default: {_model_default()}]",
        ),
    ] = None,
    exclude: Annotated[
        Optional[list[str]],
        typer.Option(
            "--exclude",
            metavar="GLOB",
            help="Leave out files matching GLOB (gitignore syntax, relative to each given folder); repeatable. "
            ".mmsearchignore files (gitignore syntax) in the folders are honoured too.",
        ),
    ] = None,
    shard_size: Annotated[int, typer.Option(metavar="N", help="Vectors per shard (new index).")] = 100_000,
    recipe: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help="FAISS recipe for a new index: auto (Flat for small shards, IVF tuned to recall 0.95 for large "
            "ones), flat, hnsw, or a FAISS factory string such as IVF1024,Flat or IVF1024,SQ8.",
        ),
    ] = "auto",
    max_memory: MaxMemoryOption = None,
    workers: Annotated[
        Optional[int],
        typer.Option(metavar="N", min=0, help="Decode worker processes, 0 decodes in-process.  [default: auto]"),
    ] = None,
    text_column: Annotated[
        Optional[str],
        typer.Option(
            metavar="NAME",
            help="Caption tables: column to index.  [default: the first of text, caption, description, title]",
        ),
    ] = None,
    id_column: Annotated[
        Optional[str], typer.Option(metavar="NAME", help="Caption tables: column kept as source_id.  [default: none]")
    ] = None,
    url_column: Annotated[
        Optional[str],
        typer.Option(
            metavar="NAME",
            help="Each PATH is a list of files/URLs (http(s)://, s3://, gs://): column NAME of a Parquet, "
            "CSV or JSONL table, or one per line of a .txt file.",
        ),
    ] = None,
    ray: Annotated[
        Optional[str],
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Decode and embed on a Ray cluster: auto (join $RAY_ADDRESS, else start a local runtime), "
            "local, or host:port / ray://host:10001. The index folder must be reachable from every node.",
        ),
    ] = None,
    video_every: Annotated[
        Optional[float],
        typer.Option(
            metavar="SECONDS",
            help="Videos: seconds between sampled frames; shot changes add frames.  [default: 2]",
        ),
    ] = None,
    part_size: Annotated[
        Optional[str],
        typer.Option(
            metavar="SIZE",
            help="Cut files larger than SIZE (e.g. 64M) into parts that are decoded in parallel and committed "
            "one by one.  [default: text 4M, tables 16M, audio 64M, video 128M]",
        ),
    ] = None,
    checkpoint_every: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", help="Commit finished files and parts at least this often: what a crash may cost."
        ),
    ] = CHECKPOINT_S,
    rerank_features: Annotated[
        bool,
        typer.Option(
            "--rerank-features",
            help="Then compute the default re-ranker's per-item features for items that lack them and keep them "
            "in the index: re-ranked queries never re-read a candidate's file.",
        ),
    ] = False,
    device: DeviceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Embed every supported file under each PATH; re-runs only embed what changed.

    \b
    Exit status: 0 when files under the PATHs are indexed or nothing failed (some files may
    have failed: see the summary); 1 when files failed and none is indexed; 2 for a usage error.
    """
    from mmsearch.ingest.discover import check_roots
    from mmsearch.ingest.sources import check_lists

    if url_column is not None:
        check_lists(paths)
    else:
        check_roots(paths)
    if video_every is not None and not video_every > 0:
        raise UserInputError(f"--video-every must be a positive number of seconds, not {video_every}")
    if not checkpoint_every >= 0:
        raise UserInputError(f"--checkpoint-every must be 0 seconds or more, not {checkpoint_every}")
    from mmsearch.sizes import parse_size

    part_bytes = parse_size(part_size, "part size") if part_size is not None else None
    budget = parse_size(max_memory) if max_memory is not None else None
    path = _index_path(index)
    from mmsearch.store.recipes import check_budget, check_recipe

    check_recipe(recipe)  # before any model loads
    check_budget(recipe, budget)
    if ray is not None:
        from mmsearch.distributed.runtime import connect

        connect(ray)  # a bad address fails here, in one line
    from mmsearch.index import Index

    if not json_out and sys.stderr.isatty():
        _say(f"loading model for {path} ...")
    idx = Index.open_or_create(path, model, shard_size=shard_size, recipe=recipe, device=device, max_memory=budget)
    if budget is not None and idx.manifest.max_memory != budget:
        raise UserInputError(f"index {path} already exists; set its memory budget with `mmsearch compact --max-memory`")
    if rerank_features:
        _check_default_reranker(idx.manifest.model)
    summary = idx.add(
        paths,
        workers=workers,
        progress=sys.stderr.isatty() and not json_out,
        text_column=text_column,
        id_column=id_column,
        exclude=list(exclude or ()),
        url_column=url_column,
        ray=ray,
        video_every=video_every,
        part_size=part_bytes,
        checkpoint_s=checkpoint_every,
    )
    if not json_out:
        for line in _summary_lines(summary, idx.manifest.model):
            typer.echo(line)  # before the features: the ingest is committed whatever happens to them
    prepared = idx.prepare_rerank(progress=sys.stderr.isatty() and not json_out) if rerank_features else None
    if json_out:
        _print_json(summary.to_dict() | ({"rerank_features": prepared.to_dict()} if prepared else {}))
    elif prepared:
        typer.echo(
            f"  re-ranker features ({prepared.reranker}): {prepared.computed} computed, {prepared.stored} already "
            f"kept, {prepared.unreadable} unreadable, {prepared.dropped} of removed items dropped"
        )
    if summary.nothing_indexed:
        _say(f"mmsearch: error: no file could be indexed ({_plural(len(summary.failed), 'file')} failed)")
        raise typer.Exit(1)


def _check_default_reranker(model: str | None) -> None:
    """``--rerank-features`` needs the index's model to have a default re-ranker (no model loads)."""
    from mmsearch.rerank.registry import DEFAULTS

    if (model or "").split("+", 1)[0] not in DEFAULTS:
        raise UserInputError(
            f"--rerank-features: no default re-ranker for an index built with {model!r} "
            f"(models with one: {', '.join(sorted(DEFAULTS))})"
        )


def _summary_lines(summary: AddSummary, model: str | None) -> list[str]:
    """What an ``index`` run did, for people: counts, then what was left out and why."""
    lines = [
        f"{summary.index}: {summary.found} files found, {summary.embedded} embedded "
        f"({summary.vectors} vectors), {summary.reused} reused, "
        f"{summary.unchanged} unchanged, {summary.removed} removed, {len(summary.failed)} failed"
    ]
    for modality, count in summary.unsupported.items():
        hint = " (give it an audio partner: see mmsearch fit-audio --help)" if modality == "audio" else ""
        lines.append(f"  skipped {count} {modality} files: model {model!r} cannot embed {modality}{hint}")
    for reason, count in getattr(summary, "skipped", {}).items():
        lines.append(f"  skipped {count} {reason}")
    lines += [f"  repaired: {problem}" for problem in getattr(summary, "repaired", ())]
    lines += [f"  failed: {path}: {reason}" for path, reason in summary.failed[:SHOWN_FAILURES]]
    if len(summary.failed) > SHOWN_FAILURES:
        more = len(summary.failed) - SHOWN_FAILURES
        lines.append(f"  ... and {more} more failed ({FAILURES_SQL})")
    if summary.previously_failed > 0:
        lines.append(f"  {_plural(summary.previously_failed, 'file')} still failing ({FAILURES_SQL})")
    lines.append("  seconds: " + ", ".join(f"{stage} {value:.2f}" for stage, value in summary.seconds.items()))
    if summary.resumed:
        lines.append(f"  resumed {_plural(summary.resumed, 'file')} an interrupted run had begun (the rest embedded)")
    for node, times in getattr(summary, "nodes", {}).items():
        lines.append(f"  node {node}: " + ", ".join(f"{stage} {value:.2f}" for stage, value in times.items()))
    return lines


@app.command()
def query(
    text: Annotated[
        Optional[list[str]],
        typer.Argument(
            help='Text, or arithmetic: "dog" + "beach" - "2:night"; a term may name an image/audio file.',
            metavar="QUERY",
        ),
    ] = None,
    image: Annotated[
        Optional[Path], typer.Option("--image", metavar="FILE", help="Query with an image file.", parser=_path)
    ] = None,
    audio: Annotated[
        Optional[Path], typer.Option("--audio", metavar="FILE", help="Query with an audio file.", parser=_path)
    ] = None,
    modality: Annotated[
        Optional[str],
        typer.Option(
            "--modality",
            metavar="KIND",
            help="What to return: image, text, audio, video (frames and soundtracks) or any.  "
            "[default: images for text/image queries, audio for audio queries; video where those are absent]",
        ),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", metavar="N", help="Number of results.")] = 10,
    where: Annotated[
        Optional[str],
        typer.Option("--where", "-w", metavar="SQL", help='SQL filter over item metadata, e.g. "width >= 1024".'),
    ] = None,
    min_score: Annotated[
        Optional[str],
        typer.Option(
            metavar="SCORE|auto",
            help="Drop results scoring below this (cosine, -1..1). 'auto': keep only hits scoring at least 3 robust "
            "standard deviations (1.4826 x MAD) above the query's median score over a fixed sample of up to 2,048 "
            "items of this index (an empty answer means nothing stands out).  [default: keep all]",
        ),
    ] = None,
    rerank: Annotated[
        bool,
        typer.Option(
            "--rerank",
            help="Re-score the top --rerank-depth candidates with a cross-attention re-ranker and order by its "
            "calibrated match probability (shown as p=).",
        ),
    ] = False,
    reranker: Annotated[
        Optional[str],
        typer.Option(
            metavar="SPEC",
            help="Re-ranker to use (implies --rerank): demo, or blip:ORG/REPO or blip:/path/to/folder.  "
            "[default: the index model's: demo for demo indexes]",
        ),
    ] = None,
    rerank_depth: Annotated[
        int, typer.Option(metavar="N", help="Candidates from the vector stage that the re-ranker judges.")
    ] = 50,
    min_prob: Annotated[
        Optional[float],
        typer.Option(
            metavar="P",
            help="Keep only hits the re-ranker gives at least this match probability, 0..1 (implies --rerank); "
            "no results means nothing matches.",
        ),
    ] = None,
    no_group: Annotated[
        bool,
        typer.Option("--no-group", help="Videos: list every matching frame and sound window, not merged segments."),
    ] = False,
    paths_only: Annotated[bool, typer.Option("--paths-only", "-f", help="Print only paths, one per line.")] = False,
    null: Annotated[
        bool, typer.Option("--null", "-0", help="Print only paths, each ended by a NUL byte (for xargs -0).")
    ] = False,
    index: IndexOption = None,
    server: Annotated[
        Optional[str],
        typer.Option(
            "--server",
            metavar="URL",
            envvar=SERVER_ENV,
            help="Ask a running `mmsearch serve` (e.g. http://127.0.0.1:8000) instead of loading the model here; "
            "query files are uploaded.",
        ),
    ] = None,
    token: TokenOption = None,
    device: DeviceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Find the items closest to a text, an image, a sound, or a sum of them."""
    if k < 1:
        raise UserInputError(f"-k must be at least 1, not {k}")
    for file in (image, audio):
        if file is not None:
            _check_file(file)
    from mmsearch.search.embed import query_terms

    expression = " ".join(text) if text else None
    terms = query_terms(None, image, audio, expression)
    if not terms:
        raise UserInputError('give a query: a text, --image FILE, --audio FILE or an expression like "dog" + "beach"')
    _check_file_terms(terms)
    floor = _min_score(min_score)
    judge: bool | str = reranker or rerank or min_prob is not None
    if server:
        if index is not None:
            raise UserInputError("--index and --server: choose one (the server searches its own index)")
        if no_group:
            raise UserInputError("--no-group works on a local index, not with --server")
        second = {
            "rerank": True if judge else None,
            "reranker": reranker,
            "rerank_depth": rerank_depth if judge else None,
        }
        hits, returned = _forward_query(
            server, token, terms, expression, modality, k, where, floor, second | {"min_prob": min_prob}
        )
    else:
        idx = _open(index, device)
        returned = idx.result_modality(terms, modality)
        hits = idx.search(
            query=expression,
            image=image,
            audio=audio,
            modality=returned,
            k=k,
            where=where,
            min_score=floor,
            rerank=judge,
            rerank_depth=rerank_depth,
            min_prob=min_prob,
            group=not no_group,
        )
    if json_out:
        _print_json([{"rank": rank, **hit.to_dict()} for rank, hit in enumerate(hits, 1)])
        return
    if null:
        typer.echo("".join(f"{hit.path}\0" for hit in hits), nl=False)
        return
    if paths_only:
        for hit in hits:
            typer.echo(hit.path)
        return
    _say(f"returning {returned} items" + (" (--modality to change)" if modality is None else ""))
    if not hits:
        _say(
            "no results"
            + (" above --min-score" if min_score is not None else "")
            + (" above --min-prob" if min_prob is not None else "")
        )
    for rank, hit in enumerate(hits, 1):
        prob = hit.to_dict().get("match_prob")
        typer.echo(f"{rank:>3}  {hit.score:.4f}  " + ("" if prob is None else f"p={prob:.3f}  ") + _locate(hit))


def _min_score(value: str | None) -> float | str | None:
    """--min-score: a cosine or 'auto'."""
    if value is None or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise UserInputError(f"--min-score must be a number (cosine, -1..1) or 'auto', not {value!r}") from None


def _forward_query(
    server: str,
    token: str | None,
    terms: Sequence[Term],
    expression: str | None,
    modality: str | None,
    k: int,
    where: str | None,
    min_score: float | str | None,
    second: dict | None = None,
) -> tuple[list, str]:
    """Send a query to a running server: texts as an expression, files as uploads. The
    server reads files first when it picks the modality to return, so where the local
    rule (first positive term) would differ, the modality is sent explicitly."""
    from mmsearch.search.query import result_modality
    from mmsearch.serve.client import search

    files = [term for term in terms if term.modality != "text"]
    texts = [term for term in terms if term.modality == "text"]
    if files:
        q = " + ".join(f"{_weight(term.weight)}:{term.value}" for term in texts) or None
        if modality is None and result_modality(list(terms)) != result_modality(files + texts):
            modality = result_modality(list(terms))
    else:
        q = expression
    fields = {"q": q, "k": k, "modality": modality, "where": where, "min_score": min_score} | (second or {})
    return search(server, fields, [(term.value, term.weight) for term in files], token)


def _weight(value: float) -> str:
    """A term weight as the query parser reads it back (``2``, ``-0.5``)."""
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


def _check_file_terms(terms: Sequence[Term]) -> None:
    """A term that looks like an image/audio file name but names no file is a typo, not
    a text to search for: say so before the model loads."""
    from mmsearch.ingest.discover import modality_of

    for term in terms:
        value = term.value
        if term.modality != "text" or modality_of(value) not in ("image", "audio"):
            continue
        if "/" in value or os.sep in value or not any(char.isspace() for char in value):
            _check_file(value)


def _locate(hit) -> str:
    """A path plus where in the file the hit is: a time offset or a text snippet."""
    meta = hit.metadata
    if meta.get("start_s") is not None:
        best = f"best {meta.get('track')} at {_clock(meta['offset_s'])}"
        return f"{hit.path} @ {_clock(meta['start_s'])}–{_clock(meta['end_s'])} ({best})"
    if meta.get("offset_s") is not None and meta.get("track"):
        return f"{hit.path} @ {_clock(meta['offset_s'])} ({meta['track']})"
    if meta.get("offset_s") is not None:
        return f"{hit.path} @ {meta['offset_s']:.1f}s"
    if meta.get("text"):
        snippet = " ".join(meta["text"].split())
        return f"{hit.path}: {snippet[:70]}{'…' if len(snippet) > 70 else ''}"
    return hit.path


def _clock(seconds: float) -> str:
    """``83.4`` -> ``01:23`` (``1:01:23`` past an hour), as a player shows it."""
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute:02d}:{second:02d}"


@app.command()
def label(
    file: Annotated[Path, typer.Argument(help="An image or audio file.", metavar="FILE", parser=_path)],
    labels: Annotated[
        str, typer.Option("--labels", "-l", metavar="A,B,...", help='Comma-separated candidates, e.g. "cat,dog,car".')
    ],
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            metavar="SPEC",
            help="Model spec.  [default: the model of --index, or of the default index when one exists, "
            f"else {_model_default()}]",
        ),
    ] = None,
    index: Annotated[
        Optional[Path],
        typer.Option(
            "--index",
            "-i",
            metavar="DIR",
            help=f"\b\nUse this index's model.  [default: {default_index_path().absolute()}]\n"
            f"(used when an index is there; ${INDEX_ENV} changes it)",
            parser=_path,
        ),
    ] = None,
    device: DeviceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Zero-shot labelling: rank LABELS for FILE with an index's model (or --model)."""
    _check_file(file)
    candidates = [part.strip() for part in labels.split(",") if part.strip()]
    if len(candidates) < 2:
        raise UserInputError('give at least two comma-separated labels, e.g. --labels "cat,dog"')
    spec = model or _label_model(index)
    from mmsearch.labels import rank_labels
    from mmsearch.models.registry import load_encoder

    ranked = rank_labels(load_encoder(spec, device), file, candidates)
    if json_out:
        _print_json(
            [{"label": name, "score": round(score, 6), "probability": round(p, 6)} for name, score, p in ranked]
        )
        return
    for name, score, probability in ranked:
        typer.echo(f"{probability:6.1%}  {score:.4f}  {name}")


def _label_model(index: Path | None) -> str:
    """The model of ``--index`` (which must exist), else of the default index if there is
    one, else the default model."""
    from mmsearch.store import manifest as manifest_io

    path = _index_path(index) if index is not None else default_index_path()
    if index is None and not manifest_io.exists(path):
        return default_model()
    model = manifest_io.load(path).model
    if model is None:
        raise UserInputError(f"index {path} holds vectors without a model; give one with --model")
    return model


@app.command()
def info(index: IndexOption = None, json_out: JsonOption = False) -> None:
    """Show the index's model, space, counts, shards and size."""
    details = _open(index).info()
    if json_out:
        _print_json(details)
        return
    for line in _info_lines(details):
        typer.echo(line)


def _info_lines(details: dict) -> list[str]:
    """``key: value`` lines aligned on the colon: sizes in kB/MB/GB, dates in local time."""
    rows = []
    for key, value in details.items():
        name = key.removesuffix("_bytes").replace("_", " ")
        if key.endswith("_bytes") and isinstance(value, int):
            shown = human_size(value)
        elif key.endswith("_at") and isinstance(value, str):
            shown = _human_time(value)
        elif isinstance(value, dict):
            shown = ", ".join(f"{k} {_human_number(v)}" for k, v in value.items()) or "none"
        elif isinstance(value, (list, tuple)):
            shown = ", ".join(map(str, value)) or "none"
        else:
            shown = "-" if value is None else _human_number(value)
        rows.append((name, shown))
    width = max((len(name) for name, _ in rows), default=0) + 1
    return [f"{name + ':':<{width}} {shown}" for name, shown in rows]


def human_size(size: int) -> str:
    """``12345678`` -> ``12.3 MB`` (powers of 1000, like file managers)."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 999.95 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _human_number(value: object) -> str:
    """Thousands separators for large counts (``123,456``); anything else as is."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _human_time(value: str) -> str:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


@app.command()
def verify(index: IndexOption = None, json_out: JsonOption = False) -> None:
    """Check every shard file against the manifest's checksums (exit 1 on a problem)."""
    problems = _open(index).verify()
    if json_out:
        _print_json({"ok": not problems, "problems": problems})
    else:
        typer.echo("\n".join(problems) if problems else "all shard files match their checksums")
    if problems:
        raise typer.Exit(1)


@app.command()
def repair(index: IndexOption = None, json_out: JsonOption = False) -> None:
    """Verify every shard and drop the damaged ones; `mmsearch index` then re-embeds their files."""
    from mmsearch.index import Index

    dropped = Index.repair_at(_index_path(index))
    if json_out:
        _print_json({"dropped": dropped})
    elif dropped:
        typer.echo("\n".join(dropped))
        typer.echo("run `mmsearch index` on the indexed folders to embed their files again")
    else:
        typer.echo("nothing to repair: all shard files match their checksums")


@app.command()
def sql(
    statement: Annotated[
        str, typer.Argument(help="One read-only SELECT over the views `items` and `failures`.", metavar="SELECT")
    ],
    index: IndexOption = None,
    json_out: JsonOption = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="CSV with a header row on stdout.")] = False,
) -> None:
    """Run read-only SQL over the metadata of all live items; prints an aligned table."""
    if json_out and csv_out:
        raise UserInputError("choose one of --json and --csv")
    table = _open(index).sql(statement)
    rows = table.to_pylist()
    if json_out:
        _print_json(rows)
    elif csv_out:
        _print_csv(table.column_names, rows)
    else:
        for line in table_lines(table.column_names, [list(row.values()) for row in rows]):
            typer.echo(line)
        _say(f"({_plural(len(rows), 'row')})")


def _print_csv(columns: list[str], rows: list[dict]) -> None:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_csv_value(value) for value in row.values()] for row in rows)
    typer.echo(out.getvalue(), nl=False)


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return value


def table_lines(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """An aligned text table: a header, a rule, then rows; numbers right-aligned, long
    cells cut with "…", line breaks in cells shown as spaces."""
    headers = [_header(name) for name in columns]
    cells = [[_cell(value) for value in row] for row in rows]
    numeric = [
        all(_is_number(row[i]) for row in rows if row[i] is not None) and any(row[i] is not None for row in rows)
        for i in range(len(columns))
    ]
    widths = [max([len(headers[i])] + [len(row[i]) for row in cells]) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *(line(row) for row in cells)]


def _header(name: str) -> str:
    return "count(*)" if name == "count_star()" else name


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: object) -> str:
    if value is None:
        text = ""
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, datetime):
        text = value.isoformat(sep=" ", timespec="seconds")
    elif isinstance(value, bytes):
        text = f"<{len(value)} bytes>"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    text = " ".join(text.split()) if any(char in text for char in "\n\r\t") else text
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


@app.command()
def remove(
    paths: Annotated[
        list[Path], typer.Argument(help="Files or folders whose items to remove.", metavar="PATH", parser=_path)
    ],
    index: IndexOption = None,
    json_out: JsonOption = False,
) -> None:
    """Remove the items under each PATH from the index (the files are not touched)."""
    removed = _open(index).remove(paths)
    if json_out:
        _print_json({"removed": removed})
    else:
        typer.echo(f"removed {removed} items")


@app.command()
def compact(
    index: IndexOption = None,
    max_memory: MaxMemoryOption = None,
    shard_size: Annotated[
        Optional[int],
        typer.Option(
            metavar="N",
            help="New vectors per shard, e.g. 1000000 to merge ten 100k shards into one (faster queries).",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Rewrite shards without removed items, reclaiming space (with a new --shard-size or --max-memory if given)."""
    from mmsearch.sizes import parse_size

    dropped = _open(index).compact(parse_size(max_memory) if max_memory is not None else None, shard_size)
    if json_out:
        _print_json({"dropped": dropped})
    else:
        typer.echo(f"compacted: {dropped} removed rows dropped")


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="New folder to write (must not exist).", metavar="OUT", parser=_path)],
    index: IndexOption = None,
    format: Annotated[
        str, typer.Option("--format", metavar="NAME", help="Layout to write (only clip-retrieval).")
    ] = "clip-retrieval",
    chunk_rows: Annotated[int, typer.Option(metavar="N", help="Rows per .npy/.parquet chunk file.")] = 1_000_000,
    json_out: JsonOption = False,
) -> None:
    """Write the index's vectors and metadata as clip-retrieval/LAION files (img_emb/, metadata/)."""
    if format != "clip-retrieval":
        raise UserInputError(f"unknown --format {format!r}; the only one is clip-retrieval")
    from mmsearch.interop import export as export_index

    summary = export_index(_open(index), out, chunk_rows=chunk_rows, progress=sys.stderr.isatty() and not json_out)
    if json_out:
        _print_json(summary.to_dict())
        return
    counts = ", ".join(f"{count} {modality}" for modality, count in summary.by_modality.items()) or "nothing"
    typer.echo(f"exported {summary.rows} vectors ({counts}) in {_plural(summary.chunks, 'chunk')} to {summary.out}")


@app.command("import")
def import_(
    source: Annotated[
        Path,
        typer.Argument(
            help="An export folder, a clip-retrieval/LAION folder (img_emb/, text_emb/, metadata/), "
            "or a .npy file with a .parquet of the same name.",
            metavar="SOURCE",
            parser=_path,
        ),
    ],
    index: IndexOption = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            metavar="SPEC",
            help="Model of a new index (its space must be the source's, when the source declares one).  "
            "[default: the model the source declares]",
        ),
    ] = None,
    dim: Annotated[
        Optional[int], typer.Option(metavar="N", help="Create a vector-only index of N dimensions instead.")
    ] = None,
    modality: Annotated[
        str, typer.Option(metavar="KIND", help="What the vectors of a plain .npy + .parquet pair are.")
    ] = "image",
    shard_size: Annotated[int, typer.Option(metavar="N", help="Vectors per shard (new index).")] = 100_000,
    recipe: Annotated[str, typer.Option(metavar="NAME", help="FAISS recipe for a new index (see index --help).")] = (
        "auto"
    ),
    batch_rows: Annotated[
        Optional[int],
        typer.Option(metavar="N", help="Rows read and added at a time.  [default: the index's shard size]"),
    ] = None,
    device: DeviceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Add embeddings made elsewhere (clip-retrieval, LAION, `mmsearch export`) to an index, streaming.

    Rows whose path is already in the index (same modality) are skipped: importing again adds nothing twice.
    """
    from mmsearch.interop import import_into, read_source, target_index

    src = read_source(source, modality)
    path = _index_path(index)
    idx = target_index(path, src, model=model, dim=dim, shard_size=shard_size, recipe=recipe, device=device)
    summary = import_into(idx, src, batch_rows=batch_rows, progress=sys.stderr.isatty() and not json_out)
    if json_out:
        _print_json(summary.to_dict())
        return
    counts = ", ".join(f"{count} {kind}" for kind, count in summary.by_modality.items()) or "nothing"
    skipped = f", skipped {summary.skipped} zero or non-finite vectors" if summary.skipped else ""
    if summary.already_indexed:
        skipped += f", {summary.already_indexed} already in the index, skipped"
    typer.echo(f"imported {summary.rows} vectors ({counts}) into {summary.index}{skipped}")


@app.command()
def serve(
    index: IndexOption = None,
    host: Annotated[
        str,
        typer.Option(metavar="ADDR", help="Address to listen on; any but loopback needs --token (or --insecure)."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="N", help="Port; 0 picks a free one.")] = 8000,
    token: Annotated[
        Optional[str],
        typer.Option(
            metavar="SECRET",
            envvar=TOKEN_ENV,
            show_envvar=True,
            help="Require Authorization: Bearer SECRET on every /api route (prefer the environment variable).",
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback --host without a token (trusted networks only).")
    ] = False,
    allow_sql: Annotated[
        bool, typer.Option("--allow-sql", help="Add POST /api/sql (sandboxed read-only SELECT over the metadata).")
    ] = False,
    max_upload_mb: Annotated[
        float, typer.Option(metavar="MB", help="Largest query file accepted.", callback=_positive_finite)
    ] = 25.0,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request to stderr.")] = False,
    threads: Annotated[
        int, typer.Option(metavar="N", help="Torch threads per query encoding (queries are batched, not split).")
    ] = 1,
    device: DeviceOption = None,
    ray: Annotated[
        Optional[str],
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Search on Ray actors, each holding a group of the shards: auto (RAY_ADDRESS, else a local "
            "runtime), local, or host:port / ray://host:port. The index folder must be visible to every node.",
        ),
    ] = None,
    ray_actors: Annotated[int, typer.Option(metavar="N", help="With --ray: search actors to spread shards over.")] = 2,
    reranker: Annotated[
        Optional[list[str]],
        typer.Option(
            "--reranker",
            metavar="SPEC",
            help="Also offer this re-ranker to clients (repeatable; loaded now). Clients may name only these "
            "and the index's default.",
        ),
    ] = None,
) -> None:
    """Serve the index over HTTP: a JSON API under /api (docs at /docs) and a search page at /."""
    from mmsearch.serve import require_serve
    from mmsearch.serve.settings import ServeSettings, check_bind

    check_bind(host, token, insecure)
    if not 0 <= port <= 65535:
        raise UserInputError(f"--port must be between 0 and 65535, not {port}")
    if threads < 1:
        raise UserInputError(f"--threads must be at least 1, not {threads}")
    settings = ServeSettings(
        token=token,
        allow_sql=allow_sql,
        max_upload_bytes=int(max_upload_mb * 1_000_000),
        encoder_threads=threads,
        rerankers=tuple(reranker or ()),
    )
    require_serve()
    path = _index_path(index)
    if ray is not None:
        if allow_sql:
            raise UserInputError("--allow-sql and --ray: SQL needs every row in one place; serve without --ray")
        from mmsearch.distributed.search import RayIndex

        _say(f"mmsearch: placing the shards of {path} on {_plural(ray_actors, 'Ray actor')} ...")
        idx: Index = RayIndex.open(path, device=device, actors=ray_actors, address=ray)
    else:
        idx = _open(path, device)
    for spec in settings.rerankers:  # a bad spec fails here, in one line, not on a client's request
        idx.reranker(spec)
    from mmsearch.serve.app import create_app
    from mmsearch.serve.server import run

    location: list[str] = []

    def ready() -> None:
        _say(f"mmsearch: ready: {location[0]}/ (API docs: {location[0]}/docs); Ctrl+C stops")

    def announce(url: str) -> None:
        location.append(url)
        _say(f"mmsearch: serving {path} at {url} (loading the model ...)")

    try:
        run(create_app(idx, settings, on_ready=ready), host, port, access_log, announce)
    except KeyboardInterrupt:  # Ctrl+C is how a server stops: uvicorn has shut down cleanly by now
        _say("mmsearch: stopped")


@app.command()
def demo(
    folder: Annotated[
        Path, typer.Argument(help="Where to put the generated world and its index.", metavar="FOLDER", parser=_path)
    ] = Path("demo-world"),
    images: Annotated[int, typer.Option(metavar="N", help="Scenes to generate.")] = 480,
    videos: Annotated[int, typer.Option(metavar="N", help="Short videos (three scenes each) to generate.")] = 8,
    json_out: JsonOption = False,
) -> None:
    """Generate a synthetic world, index it with the demo model and query it: no network needed."""
    from mmsearch.demo import run_demo

    result = run_demo(folder, images=images, say=_say if json_out else typer.echo, videos=videos)
    if json_out:
        _print_json(result)


@app.command("fit-audio")
def fit_audio(
    model: Annotated[
        str,
        typer.Argument(
            help="SPEC+clap:NAME, e.g. ViT-B-32:laion2b_s34b_b79k+clap:laion/clap-htsat-unfused", metavar="SPEC"
        ),
    ],
    captions: Annotated[
        Path, typer.Option(metavar="FILE", help="Text file (one caption per line) or caption table.", parser=_path)
    ],
    text_column: Annotated[
        Optional[str],
        typer.Option(
            metavar="NAME",
            help="Caption tables: column to read.  [default: the first of text, caption, description, title]",
        ),
    ] = None,
    device: DeviceOption = None,
) -> None:
    """Fit the projector that carries a CLAP model's sounds into an open_clip space."""
    from mmsearch.models.fit_audio import fit_clap_projector

    path, pairs = fit_clap_projector(model, _read_captions(captions, text_column), device)
    typer.echo(f"fitted on {pairs} captions: {path}; create indexes with --model '{model}'")


def _read_captions(path: Path, text_column: str | None) -> list[str]:
    """Captions from a text file (one per line) or a caption table (CSV/JSONL/Parquet)."""
    from mmsearch.errors import one_line
    from mmsearch.ingest.decode import WHOLE, DecodeError, DecodeOptions, decode_table

    if not path.is_file():
        raise UserInputError(f"captions file not found: {path}")
    if path.suffix.lower() in (".csv", ".jsonl", ".parquet"):
        try:
            _, pieces = decode_table(path.read_bytes(), str(path), DecodeOptions(text_column=text_column), WHOLE)
        except (DecodeError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise UserInputError(f"cannot read captions from {path}: {one_line(exc)}") from None
        return [str(piece.payload) for piece in pieces]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserInputError(f"cannot read captions from {path}: not UTF-8 text") from None
    return [line.strip() for line in lines if line.strip()]


@app.command()
def models(json_out: JsonOption = False) -> None:
    """List model specs."""
    from mmsearch.models.registry import describe_models

    described = describe_models()
    if json_out:
        _print_json([{"spec": name, "description": description} for name, description in described])
        return
    for name, description in described:
        typer.echo(f"{name:<30} {description}")


def _click_errors() -> tuple[type[Any], type[Any]]:
    """click's UsageError and ClickException, wherever this typer keeps click (typed ``Any``:
    which module defines them depends on the typer version)."""
    classes = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
    return classes["UsageError"], classes["ClickException"]


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point: every error becomes one ``mmsearch: error: ...`` line and an exit code.

    A reader that closes the pipe early (``mmsearch sql ... | head -1``) ends the command quietly
    with exit code 1, as a Unix filter does: the Python docs' recipe for SIGPIPE (stdout is pointed
    at /dev/null, so the flush at interpreter exit cannot fail again). SIGPIPE itself keeps Python's
    handling: a dropped HTTP client of ``serve`` must not kill the server.
    """
    try:
        try:
            _run(args)
        finally:
            sys.stdout.flush()  # output still buffered meets the closed pipe here, not at interpreter exit
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _run(args: Sequence[str] | None) -> NoReturn:
    usage_error, click_exception = _click_errors()
    try:
        code = app(args=list(args) if args is not None else None, prog_name="mmsearch", standalone_mode=False)
    except MMSearchError as exc:
        _fail(str(exc), exc.exit_code)
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `mmsearch`: the help is the answer
            exc.show()
            sys.exit(exc.exit_code)
        command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "mmsearch"
        _fail(f"{exc.format_message()} (see {command} --help)", exc.exit_code)
    except click_exception as exc:
        _fail(exc.format_message(), exc.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    except BrokenPipeError:
        raise  # the reader of our output left: main ends quietly
    except OSError as exc:  # the environment said no: permissions, a full disk, a vanished folder
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        code = 130
    if code == 130:
        _say("mmsearch: interrupted; the index keeps its last committed state")
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, exit_code: int) -> NoReturn:
    _say(f"mmsearch: error: {' '.join(message.split())}")
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
