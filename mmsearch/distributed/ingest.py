"""Distributed ingest: the local plan on the driver, a Ray Data pipeline, one commit.

The driver holds the writer lock, discovers and plans exactly like the local path
(``ingest.add.prepare``), then streams the files to embed through Ray Data (see
``stages``): workers decode, embed and seal segments into the job's staging folder.
The driver adopts the sealed segments and commits once (``ingest.add.finish``), so a
killed job leaves the previous generation as it was, and a rerun adopts the segments
the killed job had sealed (see ``staging``) and embeds only the rest.

On a cluster, the index folder must be on storage every node can reach (the workers
write segments into it) and the model spec must resolve on every node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from mmsearch.distributed import staging
from mmsearch.distributed.runtime import connect
from mmsearch.errors import MMSearchError, UserInputError, one_line
from mmsearch.ingest.add import AddOptions, AddSummary, finish, prepare, reuse
from mmsearch.ingest.decode import DecodeOptions
from mmsearch.ingest.discover import FoundFile
from mmsearch.models.base import Encoder
from mmsearch.store.manifest import SHARDS_DIR, Manifest, ShardInfo
from mmsearch.store.writer import ShardWriter

FILES_PER_DECODE_TASK = 16
PROGRESS_EVERY_S = 0.5  # how often the driver's progress bar asks the job for its count


@dataclass
class RayAddSummary(AddSummary):
    """An :class:`AddSummary` with what only a distributed run has: ``segments`` sealed by
    workers in this run, and ``nodes``: seconds per stage (decode, encode, write) per node.
    Here ``resumed`` counts files whose segments a killed job had sealed (adopted, not
    embedded again)."""

    segments: int = 0
    nodes: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class _Outcome:
    segments: list[ShardInfo] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # path -> its first reason (a file fails once)
    files: int = 0
    vectors: int = 0
    next_id: int = 0
    nodes: dict[str, dict[str, float]] = field(default_factory=dict)


def add_files_ray(
    index_dir: Path,
    paths: Sequence[str | Path],
    load_encoder: Callable[[], Encoder],
    options: AddOptions,
    address: str = "auto",
    device: str | None = None,
) -> RayAddSummary:
    """Bring the index at ``index_dir`` up to date with ``paths`` using the Ray cluster at
    ``address`` (``auto``, ``local`` or an address; see ``runtime.connect``).

    ``device``: where embedding actors run (``None``: one GPU per actor when the cluster
    has GPUs, CPU actors otherwise). ``load_encoder`` is called on the driver only for an
    index from before decode settings were recorded.
    """
    started = time.perf_counter()
    summary = RayAddSummary(index=str(index_dir))
    ray = connect(address)
    with ShardWriter(index_dir) as writer:
        prepared = prepare(writer, paths, load_encoder, options, summary)
        plan, manifest = prepared.plan, writer.manifest
        plan.redo_cut_short()  # Ray decodes whole files
        key = staging.job_key(manifest, prepared.decoding)
        folder = staging.job_folder(index_dir, key)
        staging.clear_stale(index_dir, keep=key)
        reuse(writer, prepared.stored, plan.reuse, plan.replaces)
        resumed = staging.resume(folder, staging.sealed(folder), {f.path: f for f in plan.embed})
        todo = [f for f in plan.embed if f.path not in resumed.files]
        outcome = _Outcome()
        if todo:
            if manifest.model is None:
                raise UserInputError(f"index {index_dir} holds vectors only: it has no model to embed files with")
            start_id = max(manifest.next_id, resumed.next_id)
            # each file gives at least one vector: the budget per vector the workers' segments may use
            job = _Job(
                manifest.model, manifest, prepared.decoding, folder, start_id, writer.bytes_per_vector(len(todo))
            )
            outcome = _run(ray, todo, job, device, options.progress)
        manifest.next_id = max(manifest.next_id, resumed.next_id, outcome.next_id)
        writer.adopt(folder, resumed.segments + outcome.segments)
        writer.tombstone(resumed.hidden + staging.ids_of(folder, outcome.segments, outcome.failed))
        summary.failed = list(outcome.failed.items())
        for stage in ("decode", "encode", "write"):
            summary.seconds[stage] = round(sum(times.get(stage, 0.0) for times in outcome.nodes.values()), 3)
        summary.seconds["write"] += finish(writer, prepared, summary)
    staging.remove(folder)
    summary.embedded, summary.vectors = outcome.files, outcome.vectors
    summary.resumed, summary.segments = len(resumed.files), len(outcome.segments)
    summary.nodes = {node: {k: round(v, 3) for k, v in times.items()} for node, times in outcome.nodes.items()}
    summary.seconds["total"] = round(time.perf_counter() - started, 3)
    return summary


@contextlib.contextmanager
def _quiet(ray: ModuleType) -> Iterator[None]:
    """Ray Data reports every operator with its own bars, logs and warnings; the CLI has one
    bar. Settings are restored afterwards: a library caller keeps its own."""
    context = ray.data.DataContext.get_current()
    settings = {"enable_progress_bars": False, "print_on_execution_start": False, "verbose_stats_logs": False}
    saved = {name: getattr(context, name) for name in settings}
    loggers = {name: logging.getLogger(name) for name in ("ray.data", "ray")}
    levels = {name: logger.level for name, logger in loggers.items()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")  # max_restarts: see below
        warnings.filterwarnings("ignore", message=r"The maximum number of concurrent tasks")  # small jobs
        for name, value in settings.items():
            setattr(context, name, value)
        for logger in loggers.values():
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(context, name, value)
            for name, logger in loggers.items():
                logger.setLevel(levels[name])


def _embed_placement(ray: ModuleType, device: str | None) -> tuple[str, dict, int]:
    """Device, per-actor resources and actor count: one actor per GPU, else CPU actors."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if device is None:
        device = "cuda" if gpus else "cpu"
    if device.startswith("cuda"):
        if not gpus:
            raise UserInputError(f"--device {device} but the Ray cluster has no GPUs")
        return device, {"num_gpus": 1}, gpus
    return device, {"num_cpus": 1}, max(1, cpus // 4)


@dataclass(frozen=True)
class _Job:
    """What the pipeline needs to know of the index: its model, settings and staging folder."""

    spec: str
    manifest: Manifest
    decoding: DecodeOptions
    folder: Path
    start_id: int  # ids handed to workers start here
    bytes_per_vector: float | None  # the memory budget an ``auto`` segment must fit (``--max-memory``)


def _run(ray: ModuleType, files: list[FoundFile], job: _Job, device: str | None, progress: bool) -> _Outcome:
    """Stream ``files`` through decode → embed → seal; the driver only collects what was sealed."""
    with _quiet(ray):
        return _stream(ray, files, job, device, progress)


def _stream(ray: ModuleType, files: list[FoundFile], job: _Job, device: str | None, progress: bool) -> _Outcome:
    from tqdm import tqdm

    from mmsearch.distributed import stages
    from mmsearch.models.device import default_batch_size

    manifest = job.manifest
    (job.folder / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    device, resources, actors = _embed_placement(ray, device)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    name = f"mmsearch-ingest-{uuid.uuid4().hex}"
    state = ray.remote(num_cpus=0)(stages.JobState).options(name=name).remote(job.start_id)
    settings = stages.EmbedSettings(job.spec, device, manifest.space_id, manifest.audio_space_id, name)
    items = [{"path": f.path, "decoder": f.decoder, "size": f.size, "mtime_ns": f.mtime_ns} for f in files]
    dataset = (
        ray.data.from_items(items, override_num_blocks=max(1, len(items) // FILES_PER_DECODE_TASK))
        .map_batches(
            stages.decode_batch,
            batch_format="pyarrow",
            fn_kwargs={"options": job.decoding, "job": name},
            compute=ray.data.TaskPoolStrategy(size=cpus),  # a size unlike the actor pool's: not fused into it
        )
        .map_batches(
            stages.embedder(settings),
            batch_format="pyarrow",
            batch_size=default_batch_size(device),
            compute=ray.data.ActorPoolStrategy(size=actors),
            max_restarts=0,  # a lost actor fails the job, and a rerun resumes from the staged segments
            **resources,
        )
        .map_batches(
            stages.seal_batch,
            batch_format="pyarrow",
            batch_size=manifest.shard_size,
            fn_kwargs={
                "folder": str(job.folder),
                "recipe": manifest.recipe,
                "job": name,
                "max_bytes_per_vector": job.bytes_per_vector,
            },
        )
    )
    outcome = _Outcome()
    bar = tqdm(total=len(files), unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with bar:
        _collect(dataset, outcome, lambda: bar.update(ray.get(state.done.remote()) - bar.n))
        bar.update(len(files) - bar.n)
    outcome.next_id, outcome.nodes = ray.get(state.report.remote())
    ray.kill(state)
    return outcome


def _collect(dataset, outcome: _Outcome, tick: Callable[[], None]) -> None:
    """Consume the pipeline in a thread while ``tick`` keeps the progress bar moving."""
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                for record in batch.to_pylist():
                    if record["segment"] is None:
                        outcome.failed.setdefault(record["path"], record["reason"])
                    else:
                        outcome.segments.append(ShardInfo(**json.loads(record["segment"])))
                        outcome.files += record["files"]
                        outcome.vectors += record["vectors"]
        except BaseException as exc:  # re-raised on the driver's main thread
            errors.append(exc)

    worker = threading.Thread(target=consume, name="mmsearch-ray-collect", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(PROGRESS_EVERY_S)
        tick()
    if errors:
        if isinstance(errors[0], Exception) and not isinstance(errors[0], MMSearchError):
            raise MMSearchError(
                f"the Ray pipeline failed (rerun to resume from the segments sealed so far): {one_line(errors[0])}"
            ) from errors[0]
        raise errors[0]
