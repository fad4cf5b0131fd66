"""The embedding worker behind `POST /v1/embeddings`: one thread runs every forward pass, and
requests that wait together for the same model are embedded in one batch.

Overload is refused at admission, never queued without bound. A request takes its place with
`admit()` before its body is parsed or tokenized, and holds it until the worker takes its job:
with `max_queue` places held, the next request gets QueueFull (HTTP 503 + Retry-After) at once,
and in fail-fast mode any request that finds the model busy, or another request ahead of it,
is refused at once (the seed service's `try_lock()`). Counting only tokenized jobs let a burst
through to the single tokenizer thread, and its refusals waited behind every tokenization.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

from mlxtune.embeddings import Embedder, embed_tokens, truncate
from mlxtune.errors import MlxtuneError
from mlxtune.serve.engine import QueueFull


@dataclass
class EmbedJob:
    model: str
    tokens: list[list[int]]
    dimensions: int | None = None
    # resolves to a float32 numpy array (len(tokens), dimensions)
    future: Future[Any] = field(default_factory=Future)
    submitted_at: float = field(default_factory=time.perf_counter)


# on_batch(model, requests, inputs, seconds) after each forward pass
BatchHook = Callable[[str, int, int, float], None]


class Admission:
    """A place in the worker's queue: held from `admit()` until the job is taken for a forward
    pass (`submit` hands it to the queue) or handed back with `release()`."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: Literal["held", "queued", "released"] = "held"


class EmbedWorker:
    def __init__(
        self,
        embedders: dict[str, Embedder],
        *,
        max_queue: int,
        batch_size: int,
        fail_fast: bool = False,
        on_batch: BatchHook | None = None,
    ) -> None:
        self.embedders = embedders
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.fail_fast = fail_fast
        self.on_batch = on_batch
        self._pending: collections.deque[EmbedJob] = collections.deque()
        self._held = 0  # places admitted and not yet taken by the worker (pending included)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    # -- any thread ---------------------------------------------------------------------------

    def admit(self) -> Admission:
        """A place in the queue, or QueueFull (HTTP 503) at once."""
        with self._lock:
            self._check_room()
            self._held += 1
            return Admission()

    def release(self, admission: Admission) -> None:
        """Hand back a place whose request ended without a job (a 400, a disconnect)."""
        with self._lock:
            if admission.state == "held":
                admission.state = "released"
                self._held -= 1

    def submit(self, job: EmbedJob, admission: Admission | None = None) -> Future[Any]:
        """Queue a job in the place `admission` holds (admitted now when None); QueueFull
        (HTTP 503) when there is no room or the worker cannot take it."""
        if job.model not in self.embedders:
            raise MlxtuneError(f"unknown embedding model {job.model!r}")
        admission = admission or self.admit()
        with self._lock:
            if admission.state != "held":
                raise MlxtuneError("submit: the admission was already used or released")
            if self.error or self._stop:
                self._held -= 1
                admission.state = "released"
                raise QueueFull(self._closed_reason())
            admission.state = "queued"
            self._pending.append(job)
            self._wake.notify()
        return job.future

    def queue_depth(self) -> int:
        """Requests admitted and not yet in a forward pass (tokenizing or queued)."""
        return self._held

    @property
    def busy(self) -> bool:
        return self._busy

    def start(self, warm_timeout: float = 60.0) -> None:
        """Start the thread and wait until it has embedded once with every model: a thread's
        first MLX work is slow, and the first burst must not pay for it."""
        self._warm = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlxtune-embed-worker", daemon=True)
        self._thread.start()
        self._warm.wait(warm_timeout)

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- under the lock -----------------------------------------------------------------------

    def _closed_reason(self) -> str:
        if self.error:
            return "embedding worker failed (see /health)"
        return "server is shutting down"

    def _check_room(self) -> None:
        if self.error or self._stop:
            raise QueueFull(self._closed_reason())
        if self.fail_fast and (self._busy or self._held):
            raise QueueFull("embedding model busy (fail_fast)")
        if self._held >= self.max_queue:
            raise QueueFull(f"embedding queue full ({self.max_queue} waiting)")

    # -- worker thread ------------------------------------------------------------------------

    def _take(self) -> list[EmbedJob] | None:
        """The oldest job and the waiting jobs for the same model that fit in one batch;
        None when stopping with nothing left."""
        with self._lock:
            while not self._pending:
                if self._stop:
                    return None
                self._wake.wait(0.5)
            first = self._pending.popleft()
            batch, inputs = [first], len(first.tokens)
            for job in list(self._pending):
                if job.model == first.model and inputs + len(job.tokens) <= self.batch_size:
                    self._pending.remove(job)
                    batch.append(job)
                    inputs += len(job.tokens)
            self._held -= len(batch)
            self._busy = True
            return batch

    def _run(self) -> None:
        import mlx.core as mx

        with mx.stream(mx.default_stream(mx.default_device())):
            try:
                for embedder in self.embedders.values():
                    embed_tokens(embedder, [[0], [0, 0]])
            finally:
                self._warm.set()
            while (batch := self._take()) is not None:
                try:
                    results = self._embed(batch)
                except Exception as e:  # a bug: report it on /health, fail what is waiting
                    self.error = f"{type(e).__name__}: {e}"
                    with self._lock:
                        self._held -= len(self._pending)
                        batch += list(self._pending)
                        self._pending.clear()
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(QueueFull("embedding worker failed"))
                    raise
                finally:
                    self._busy = False
                # Resolved once the worker is free, so a caller who got its answer finds the
                # model idle (fail_fast accepts its next request).
                for job, vectors in zip(batch, results, strict=True):
                    job.future.set_result(vectors)

    def _embed(self, batch: Sequence[EmbedJob]) -> list[Any]:
        import numpy as np

        started = time.perf_counter()
        embedder = self.embedders[batch[0].model]
        tokens = [t for job in batch for t in job.tokens]
        vectors = embed_tokens(embedder, tokens, batch_size=self.batch_size)
        results, start = [], 0
        for job in batch:
            part = truncate(vectors[start : start + len(job.tokens)], job.dimensions, embedder)
            start += len(job.tokens)
            results.append(np.array(part, dtype=np.float32))
        if self.on_batch is not None:
            self.on_batch(batch[0].model, len(batch), len(tokens), time.perf_counter() - started)
        return results
