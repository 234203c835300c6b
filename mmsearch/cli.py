"""The ``mmsearch`` command line. Heavy modules (torch, faiss, duckdb) load lazily
inside commands, so ``--help`` and argument errors answer instantly.

Errors a user can cause surface as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mmsearch.config import INDEX_ENV, default_index_path
from mmsearch.errors import MMSearchError

if TYPE_CHECKING:
    from mmsearch.index import Index

app = typer.Typer(
    help="Cross-modal vector search over folders of images, text and audio.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

IndexOption = Annotated[
    Optional[Path],
    typer.Option(
        "--index", "-i", help=f"Index folder [default: ${INDEX_ENV} or ./indexes/default].", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
DeviceOption = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:N [default: auto].")]


def _index_path(index: Path | None) -> Path:
    return index if index is not None else default_index_path()


def _open(index: Path | None, device: str | None = None) -> Index:
    from mmsearch.index import Index

    return Index.open(_index_path(index), device=device)


def _print_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _say(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to index (recursively).")],
    index: IndexOption = None,
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Model spec for a new index (see `mmsearch models`).")
    ] = None,
    shard_size: Annotated[int, typer.Option(help="Vectors per shard (new index).")] = 100_000,
    recipe: Annotated[str, typer.Option(help="FAISS recipe for a new index: auto, flat, hnsw.")] = "auto",
    workers: Annotated[Optional[int], typer.Option(help="Decode worker processes [default: auto].")] = None,
    text_column: Annotated[
        Optional[str], typer.Option(help="Caption tables: column to index [default: text/caption/...].")
    ] = None,
    id_column: Annotated[Optional[str], typer.Option(help="Caption tables: column kept as source_id.")] = None,
    device: DeviceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Embed every supported file under PATHS; re-runs only embed what changed."""
    from mmsearch.index import Index
    from mmsearch.ingest.discover import check_roots

    check_roots(paths)
    path = _index_path(index)
    if not json_out:
        _say(f"loading model for {path} ...")
    idx = Index.open_or_create(path, model, shard_size=shard_size, recipe=recipe, device=device)
    summary = idx.add(
        paths,
        workers=workers,
        progress=sys.stderr.isatty() and not json_out,
        text_column=text_column,
        id_column=id_column,
    )
    if json_out:
        _print_json(summary.to_dict())
        return
    typer.echo(
        f"{summary.index}: {summary.found} files found, {summary.embedded} embedded "
        f"({summary.vectors} vectors), {summary.reused} reused, "
        f"{summary.unchanged} unchanged, {summary.removed} removed, {len(summary.failed)} failed"
    )
    for modality, count in summary.unsupported.items():
        hint = " (give it an audio partner: see mmsearch fit-audio --help)" if modality == "audio" else ""
        typer.echo(f"  skipped {count} {modality} files: model {idx.manifest.model!r} cannot embed {modality}{hint}")
    for failed_path, reason in summary.failed[:10]:
        typer.echo(f"  failed: {failed_path}: {reason}")
    hidden = len(summary.failed) - 10 + summary.previously_failed
    if hidden > 0:
        typer.echo(f'  {hidden} more failed files: mmsearch sql "SELECT path, reason FROM failures"')
    typer.echo("  seconds: " + ", ".join(f"{stage} {value:.2f}" for stage, value in summary.seconds.items()))


@app.command()
def query(
    text: Annotated[
        Optional[list[str]],
        typer.Argument(help='Text, or arithmetic: "dog" + "beach" - "2:night"; a term may name an image/audio file.'),
    ] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Query with an image file.")] = None,
    audio: Annotated[Optional[Path], typer.Option("--audio", help="Query with an audio file.")] = None,
    modality: Annotated[
        Optional[str],
        typer.Option("--modality", help="What to return: image, text, audio or any [default: per query]."),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", help="Number of results.")] = 10,
    where: Annotated[
        Optional[str], typer.Option("--where", "-w", help='SQL filter over item metadata, e.g. "width >= 1024".')
    ] = None,
    min_score: Annotated[Optional[float], typer.Option(help="Drop results scoring below this (cosine, -1..1).")] = None,
    paths_only: Annotated[bool, typer.Option("--paths-only", "-f", help="Print only paths, one per line.")] = False,
    index: IndexOption = None,
    device: DeviceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Find the items closest to a text, an image, a sound, or a sum of them."""
    from mmsearch.search.embed import query_terms

    idx = _open(index, device)
    expression = " ".join(text) if text else None
    terms = query_terms(None, image, audio, expression)
    returned = idx.result_modality(terms, modality)
    hits = idx.search(
        query=expression, image=image, audio=audio, modality=returned, k=k, where=where, min_score=min_score
    )
    if json_out:
        _print_json([{"rank": rank, **hit.to_dict()} for rank, hit in enumerate(hits, 1)])
        return
    if paths_only:
        for hit in hits:
            typer.echo(hit.path)
        return
    _say(f"returning {returned} items" + (" (--modality to change)" if modality is None else ""))
    if not hits:
        _say("no results" + (" above --min-score" if min_score is not None else ""))
    for rank, hit in enumerate(hits, 1):
        typer.echo(f"{rank:>3}  {hit.score:.4f}  {_locate(hit)}")


def _locate(hit) -> str:
    """A path plus where in the file the hit is: a time offset or a text snippet."""
    meta = hit.metadata
    if meta.get("offset_s") is not None:
        return f"{hit.path} @ {meta['offset_s']:.1f}s"
    if meta.get("text"):
        snippet = " ".join(meta["text"].split())
        return f"{hit.path}: {snippet[:70]}{'…' if len(snippet) > 70 else ''}"
    return hit.path


@app.command()
def label(
    file: Annotated[Path, typer.Argument(help="An image or audio file.")],
    labels: Annotated[str, typer.Option("--labels", "-l", help='Comma-separated candidates, e.g. "cat,dog,car".')],
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Model spec [default: $MMSEARCH_MODEL].")
    ] = None,
    device: DeviceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Zero-shot labelling without an index: rank LABELS for FILE."""
    from mmsearch.labels import rank_labels
    from mmsearch.models.registry import default_model, load_encoder

    candidates = [part.strip() for part in labels.split(",") if part.strip()]
    ranked = rank_labels(load_encoder(model or default_model(), device), file, candidates)
    if json_out:
        _print_json(
            [{"label": name, "score": round(score, 6), "probability": round(p, 6)} for name, score, p in ranked]
        )
        return
    for name, score, probability in ranked:
        typer.echo(f"{probability:6.1%}  {score:.4f}  {name}")


@app.command()
def info(index: IndexOption = None, json_out: JsonOption = False) -> None:
    """Show the index's model, space, counts, shards and size."""
    details = _open(index).info()
    if json_out:
        _print_json(details)
        return
    for key, value in details.items():
        typer.echo(f"{key:>14}: {value}")


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
def sql(
    statement: Annotated[str, typer.Argument(help="One read-only SELECT over the views `items` and `failures`.")],
    index: IndexOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run read-only SQL over the metadata of all live items."""
    table = _open(index).sql(statement)
    rows = table.to_pylist()
    if json_out:
        _print_json(rows)
        return
    typer.echo("\t".join(table.column_names))
    for row in rows:
        typer.echo("\t".join("" if value is None else str(value) for value in row.values()))


@app.command()
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders whose items to remove.")],
    index: IndexOption = None,
    json_out: JsonOption = False,
) -> None:
    """Remove the items of PATHS from the index (the files are not touched)."""
    removed = _open(index).remove(paths)
    if json_out:
        _print_json({"removed": removed})
    else:
        typer.echo(f"removed {removed} items")


@app.command()
def compact(index: IndexOption = None, json_out: JsonOption = False) -> None:
    """Rewrite shards without removed items, reclaiming space."""
    dropped = _open(index).compact()
    if json_out:
        _print_json({"dropped": dropped})
    else:
        typer.echo(f"compacted: {dropped} removed rows dropped")


@app.command()
def demo(
    folder: Annotated[Path, typer.Argument(help="Where to put the generated world and its index.")] = Path(
        "demo-world"
    ),
    images: Annotated[int, typer.Option(help="Scenes to generate.")] = 480,
    json_out: JsonOption = False,
) -> None:
    """Generate a synthetic world, index it with the demo model and query it: no network needed."""
    from mmsearch.demo import run_demo

    result = run_demo(folder, images=images, say=_say if json_out else typer.echo)
    if json_out:
        _print_json(result)


@app.command("fit-audio")
def fit_audio(
    model: Annotated[
        str, typer.Argument(help="SPEC+clap:NAME, e.g. ViT-B-32:laion2b_s34b_b79k+clap:laion/clap-htsat-unfused")
    ],
    captions: Annotated[Path, typer.Option(help="Text file (one caption per line) or caption table.")],
    text_column: Annotated[Optional[str], typer.Option(help="Caption tables: column to read.")] = None,
    device: DeviceOption = None,
) -> None:
    """Fit the projector that carries a CLAP model's sounds into an open_clip space."""
    from mmsearch.models.audio import fit_clap_projector, read_captions

    path, pairs = fit_clap_projector(model, read_captions(captions, text_column), device)
    typer.echo(f"fitted on {pairs} captions: {path}; create indexes with --model '{model}'")


@app.command()
def models() -> None:
    """List model specs."""
    from mmsearch.models.registry import describe_models

    for name, description in describe_models():
        typer.echo(f"{name:<30} {description}")


def main() -> None:
    """Console entry point: turn library errors into one line and an exit code."""
    try:
        app()
    except MMSearchError as exc:
        _say(f"mmsearch: error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _say("mmsearch: interrupted; the index keeps its last committed state")
        sys.exit(130)


if __name__ == "__main__":
    main()
