"""Search an index whose shards are spread over Ray actors: one machine's memory no longer
bounds the index.

Every actor opens the same index folder (a shared filesystem: NFS, a cluster file system,
or a bucket mounted with a FUSE driver) and loads only its group of shards: their FAISS
indexes and their metadata, which is where filters (``where``) and deletions are applied.
The driver, a :class:`RayIndex`, holds the manifest and the encoder; it sends each query
vector to every actor, and each actor answers its group's exact top-k with the same code as
a local search (:func:`mmsearch.search.searcher.search_top_k`); the driver merges the
groups' answers with :func:`~mmsearch.search.searcher.merge` as a local search merges
shards, then fetches the k rows from the actors. So results equal a local search's.

Generations: the driver notices a commit by a ``stat`` of the manifest, as a local
``Index`` does, and places the new generation before using it: shards keep their actor
(see ``placement``), the manifest goes to the object store once and every actor builds
its view of it; actors keep a few views so queries on the previous one finish.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mmsearch.distributed import placement
from mmsearch.distributed.runtime import connect
from mmsearch.errors import MMSearchError, UserInputError, one_line
from mmsearch.index import Index, found_vectors
from mmsearch.models.base import Encoder
from mmsearch.search import searcher
from mmsearch.store.manifest import Manifest
from mmsearch.store.snapshot import Snapshot

KEPT_VIEWS = 3  # generations an actor (and the driver) keeps, so searches on the previous one finish
ACTOR_THREADS = 8  # concurrent calls per actor (a server's search threads)
READY_TIMEOUT_S = 120.0
RESTARTS = 3


class SegmentServer:
    """One group of an index's shards, loaded in this process (Ray runs it as an actor)."""

    def __init__(self, index_dir: str) -> None:
        self.dir = Path(index_dir)
        self._views: OrderedDict[int, Snapshot] = OrderedDict()
        self._lock = threading.Lock()

    def ready(self) -> dict:
        """Where this server runs."""
        return {"host": socket.gethostname(), "pid": os.getpid()}

    def place(self, manifest: Manifest, names: Sequence[str]) -> dict:
        """Serve ``names`` of ``manifest``'s generation: load their indexes, ids and metadata now,
        so the first query does not pay for it. Shards of the previous view are reused."""
        wanted = set(names)
        mine = replace(manifest, shards=[s for s in manifest.shards if s.name in wanted])  # same tombstones
        with self._lock:
            previous = next(reversed(self._views.values()), None)
        view = Snapshot(self.dir, mine, None, previous)
        for shard in view.shards:
            shard.index, shard.ids  # noqa: B018 - load now
        view.live()
        rows = len(view.catalog)
        with self._lock:
            self._views[manifest.generation] = view
            while len(self._views) > KEPT_VIEWS:
                self._views.popitem(last=False)
        return {"shards": len(view.shards), "rows": rows}

    def _view(self, generation: int) -> Snapshot | None:
        with self._lock:
            return self._views.get(generation)

    def search(
        self, generation: int, queries: np.ndarray, k: int, where: str | None, modality: str | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """This group's merged top-k of ``modality`` rows matching ``where`` (``None``: that
        generation is not placed here)."""
        view = self._view(generation)
        if view is None:
            return None
        return searcher.search_top_k(view.shards, queries, k, view.allowed(where, modality))

    def rows(self, generation: int, ids: Sequence[int]) -> dict[int, dict] | None:
        view = self._view(generation)
        return None if view is None else view.catalog.rows(ids)

    def vectors(self, generation: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        view = self._view(generation)
        return None if view is None else found_vectors(view, ids)

    def counts(self, generation: int) -> dict[str, int] | None:
        view = self._view(generation)
        return None if view is None else view.counts()

    def check_where(self, generation: int, where: str) -> bool | None:
        view = self._view(generation)
        if view is None:
            return None
        view.catalog.ids_where(where)
        return True


class RayIndex(Index):
    """An :class:`Index` whose reads run on Ray actors, each holding a group of the shards.

    Searches, filters, item and vector lookups, counts and ``info`` work as on ``Index``;
    ``sql`` does not (it would need every row in one place). Writes still go to the index
    folder from this process (or any ``mmsearch index``); the actors pick up each new
    generation. Created by :meth:`open`.
    """

    def __init__(
        self,
        path: Path,
        encoder: Encoder | None = None,
        device: str | None = None,
        *,
        actors: int = 2,
        address: str = "auto",
        cpus_per_actor: float | None = None,
    ) -> None:
        if actors < 1:
            raise UserInputError(f"--ray-actors must be at least 1, not {actors}")
        super().__init__(path, encoder, device)
        self.ray = connect(address)
        self.path = self.path.absolute()
        if cpus_per_actor is None:
            cpus_per_actor = min(1.0, self.ray.available_resources().get("CPU", 0.0) / actors)
        server = self.ray.remote(SegmentServer).options(
            num_cpus=cpus_per_actor,
            max_concurrency=ACTOR_THREADS,
            scheduling_strategy="SPREAD",
            max_restarts=RESTARTS,  # a lost actor comes back empty and is placed again (see _each)
            max_task_retries=RESTARTS,  # every call is a read: safe to repeat
        )
        self.actors = [server.remote(str(self.path)) for _ in range(actors)]
        try:
            self.hosts = self.ray.get([actor.ready.remote() for actor in self.actors], timeout=READY_TIMEOUT_S)
        except self.ray.exceptions.GetTimeoutError:
            self.close()
            raise UserInputError(
                f"Ray could not start {actors} search actors in {READY_TIMEOUT_S:g} s "
                f"(each asks for {cpus_per_actor:g} CPU); use fewer actors or a bigger cluster"
            ) from None
        self._owner: dict[str, int] = {}
        self._placed: OrderedDict[int, tuple[Any, list[list[str]], list[dict]]] = OrderedDict()
        self._place_lock = threading.Lock()
        self._counted: dict[int, dict[str, int]] = {}
        self.refresh()

    @classmethod
    def open(
        cls,
        path: str | Path,
        model: str | None = None,
        *,
        device: str | None = None,
        encoder: Encoder | None = None,
        actors: int = 2,
        address: str = "auto",
        cpus_per_actor: float | None = None,
    ) -> RayIndex:
        """Open the index at ``path`` (on a filesystem every Ray node sees) over ``actors`` actors
        of the Ray cluster at ``address`` (``auto``: ``RAY_ADDRESS`` or a local runtime)."""
        if model is not None:
            Index.open(path, model)  # reads the manifest only: refuses another model before Ray starts
        return cls(Path(path), encoder, device, actors=actors, address=address, cpus_per_actor=cpus_per_actor)

    def close(self) -> None:
        """Stop the actors (they also stop when this process ends)."""
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def __enter__(self) -> RayIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- generations -----------------------------------------------------------------------

    def refresh(self) -> Snapshot:
        """Pick up a newer generation and place it on the actors before it is used."""
        latest = super().refresh()
        if latest.generation not in self._placed:
            with self._place_lock:
                if latest.generation not in self._placed:
                    self._place(latest)
        return latest

    def _place(self, snap: Snapshot) -> None:
        self._owner = placement.assign(snap.manifest.shards, self._owner, len(self.actors))
        groups = placement.groups(self._owner, len(self.actors))
        manifest = self.ray.put(snap.manifest)  # one copy per node, not per actor
        loaded = self._get([actor.place.remote(manifest, group) for actor, group in zip(self.actors, groups)])
        self._placed[snap.generation] = (manifest, groups, loaded)
        while len(self._placed) > KEPT_VIEWS:
            self._placed.popitem(last=False)

    def _each(self, method: str, snap: Snapshot, *args: Any) -> list[Any]:
        """``method(generation, *args)`` on every actor; an actor that lost the view (restarted,
        or the generation is older than the ones it keeps) gets it again, once."""
        generation = snap.generation
        answers = self._get([getattr(actor, method).remote(generation, *args) for actor in self.actors])
        missing = [i for i, answer in enumerate(answers) if answer is None]
        if missing:
            placed = self._placed.get(generation)
            if placed is None:
                raise RuntimeError(f"generation {generation} is no longer placed on the actors")
            manifest, groups, _ = placed
            self._get([self.actors[i].place.remote(manifest, groups[i]) for i in missing])
            for i, answer in zip(
                missing, self._get([getattr(self.actors[i], method).remote(generation, *args) for i in missing])
            ):
                answers[i] = answer
        return answers

    def _get(self, refs: list) -> list:
        """Results of actor calls; our own errors come back as themselves, in one line. Every
        result is fetched, so Ray never logs an error as unhandled (e.g. each actor's copy of
        a bad filter's error)."""
        results, failure = [], None
        for ref in refs:
            try:
                results.append(self.ray.get(ref))
            except self.ray.exceptions.RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, (MMSearchError, OSError)):
                    failure = failure or cause
                else:
                    failure = failure or MMSearchError(f"a search actor failed: {one_line(cause or exc)}")
            except self.ray.exceptions.RayActorError as exc:
                failure = failure or MMSearchError(f"a search actor died: {one_line(exc)}")
        if failure is not None:
            raise failure
        return results

    # -- reads, on the actors ----------------------------------------------------------------

    def _top_k(
        self, snap: Snapshot, queries: np.ndarray, k: int, where: str | None, modality: str | None
    ) -> list[list[searcher.Hit]]:
        parts = self._each("search", snap, queries, k, where, modality)
        return searcher.hits(*searcher.merge(parts, k))

    def _rows(self, snap: Snapshot, ids: Sequence[int]) -> dict[int, dict]:
        found: dict[int, dict] = {}
        for rows in self._each("rows", snap, list(ids)):
            found |= rows
        return found

    def _hit_rows(self, snap: Snapshot, ids: Callable[[], list[int]]) -> Mapping[int, dict]:
        return self._rows(snap, ids())  # now, while the actors still hold this generation

    def _vectors(self, snap: Snapshot, ids: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(ids, return_inverse=True)
        out = np.zeros((len(unique), snap.manifest.dim), dtype=np.float32)
        found = np.zeros(len(unique), dtype=bool)
        for vectors, here in self._each("vectors", snap, unique):
            out[here], found[here] = vectors[here], True
        if not found.all():
            raise UserInputError(f"no live item with id {int(unique[~found][0])}")
        return out[inverse]

    def _counts(self, snap: Snapshot) -> dict[str, int]:
        if snap.generation not in self._counted:
            total: dict[str, int] = {}
            for counts in self._each("counts", snap):
                for modality, count in counts.items():
                    total[modality] = total.get(modality, 0) + count
            self._counted = {snap.generation: dict(sorted(total.items()))}
        return self._counted[snap.generation]

    def _check_where(self, snap: Snapshot, where: str) -> None:
        self._each("check_where", snap, where)

    def _incomplete_files(self, snap: Snapshot) -> int | None:
        """Not over actors: a file's parts may be served by several of them."""
        return None

    def sql(self, statement: str):
        """Not over actors: a statement may need every row in one place."""
        raise UserInputError("SQL is not available on a Ray-served index; run `mmsearch sql` on the index folder")

    def info(self) -> dict:
        """``Index.info`` plus where each group of shards is served."""
        details = super().info()
        placed = self._placed.get(self.manifest.generation)
        loads = placed[2] if placed else [{}] * len(self.actors)
        details["ray"] = [host | load for host, load in zip(self.hosts, loads)]
        return details
