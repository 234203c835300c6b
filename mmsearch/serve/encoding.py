"""One thread owns the encoder; requests queue their texts and decoded files for it.

Torch inference from many threads at once is not something to rely on, and it
would not be faster on a few cores anyway. So a single worker thread runs every
encoder call. While it works, new requests queue up; it then takes every text
waiting and embeds them in one batch, so concurrent text queries share a forward
pass instead of waiting in line. Texts already seen are answered from a small LRU
cache (paging through results re-asks the same text).
"""

from __future__ import annotations

import queue
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from mmsearch.models.base import Encoder, l2_normalise

TEXT_CACHE_SIZE = 4096
MAX_TEXTS_PER_BATCH = 64


@dataclass
class _Job:
    """Texts to embed, or decoded pieces of one file (``modality`` set)."""

    texts: Sequence[str] = ()
    modality: str | None = None
    payloads: Sequence = ()
    future: Future[np.ndarray] = field(default_factory=Future)


class EncoderQueue:
    """Serialises and batches encoder calls; safe to use from any thread."""

    def __init__(
        self, get_encoder: Callable[[], Encoder], cache_size: int = TEXT_CACHE_SIZE, threads: int | None = None
    ) -> None:
        """``get_encoder`` is called on the worker thread, so a lazy model load happens there.

        ``threads``: torch intra-op threads once the model is loaded. One query is a small
        forward pass; split over several OpenMP threads on cores that the HTTP, search and
        other processes' threads also want, it waits on descheduled threads (measured on 2
        busy cores: 117 ms with 2 threads, 3.4 ms with 1). Batching gives throughput instead.
        """
        self._get_encoder = get_encoder
        self._threads = threads
        self._threads_set = False
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="mmsearch-encoder", daemon=True)
        self._thread.start()
        self.batches = 0  # forward passes run for texts, for tests and stats

    def texts(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """A future of the unit vectors of ``texts``, shape ``(len(texts), dim)``."""
        cached = [vector for vector in self._cached(texts) if vector is not None]
        if len(cached) == len(texts):
            done: Future[np.ndarray] = Future()
            done.set_result(np.stack(cached))
            return done
        job = _Job(texts=list(texts))
        self._jobs.put(job)
        return job.future

    def pieces(self, modality: str, payloads: Sequence) -> Future[np.ndarray]:
        """A future of the unit mean vector of a decoded file's pieces (an image, audio windows)."""
        job = _Job(modality=modality, payloads=payloads)
        self._jobs.put(job)
        return job.future

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _cached(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        with self._cache_lock:
            found = [self._cache.get(text) for text in texts]
            for text, vector in zip(texts, found):
                if vector is not None:
                    self._cache.move_to_end(text)
        return found

    def _remember(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        with self._cache_lock:
            for text, vector in zip(texts, vectors):
                vector.setflags(write=False)
                self._cache[text] = vector
                self._cache.move_to_end(text)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _encoder(self) -> Encoder:
        encoder = self._get_encoder()
        if not self._threads_set and self._threads:
            torch = sys.modules.get("torch")  # only when the model runs on torch (never imported here)
            if torch is not None:
                torch.set_num_threads(self._threads)
            self._threads_set = True
        return encoder

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            waiting = [job]
            while sum(len(j.texts) for j in waiting if j.modality is None) < MAX_TEXTS_PER_BATCH:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)  # stop after this round
                    break
                waiting.append(more)
            self._embed_texts([j for j in waiting if j.modality is None])
            for file_job in waiting:
                if file_job.modality is not None:
                    self._embed_pieces(file_job, file_job.modality)

    def _embed_texts(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        try:
            wanted = list(dict.fromkeys(text for job in jobs for text in job.texts))
            known = {text: vector for text, vector in zip(wanted, self._cached(wanted)) if vector is not None}
            missing = [text for text in wanted if text not in known]
            if missing:
                vectors = np.asarray(self._encoder().embed_texts(missing), dtype=np.float32)
                self.batches += 1
                self._remember(missing, vectors)
                known.update(zip(missing, vectors))
        except BaseException as exc:  # handed to every waiting request, which reports it
            for job in jobs:
                job.future.set_exception(exc)
            return
        for job in jobs:
            job.future.set_result(np.stack([known[text] for text in job.texts]))

    def _embed_pieces(self, job: _Job, modality: str) -> None:
        try:
            vectors = self._encoder().embed(modality, list(job.payloads))
            job.future.set_result(l2_normalise(np.asarray(vectors).mean(axis=0, keepdims=True))[0])
        except BaseException as exc:  # handed to the request, which reports it
            job.future.set_exception(exc)
