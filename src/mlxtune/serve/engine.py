"""The model worker behind `mlxtune serve`: one thread owns every model and runs continuous
batching with mlx-lm's BatchGenerator, one generator per model so adapters never mix.

Requests come in through `Engine.submit` (any thread); events (text pieces, the finish) go back
through each request's `emit` callback, which the web layer points at its event loop.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlxtune.errors import MlxtuneError


class QueueFull(MlxtuneError):
    """Too many requests are waiting; the caller should retry later (HTTP 503)."""


@dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    adapter: str | None = None  # adapter directory, None for the base model
    fingerprint: str | None = None  # sha256 of adapters.safetensors
    alias: str | None = None  # the registry alias it was served by ("current"), if any


@dataclass
class GenRequest:
    """One generation: prompt ids in, events out through `emit`."""

    model: str
    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    # emit(kind, payload): ("text", str) per piece, ("done", finish_reason), ("error", message)
    emit: Callable[[str, Any], None] = lambda kind, payload: None
    stream: bool = True  # False: no text events; read `text` after ("done", ...)
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    completion_tokens: int = 0
    # worker-side state
    uid: int | None = None
    detok: Any = None
    text: str = ""
    sent: int = 0

    def cancel(self) -> None:
        self.cancelled = True


def make_request_sampler(temperature: float, top_p: float, seed: int | None) -> Any:
    """Greedy requests share mlx-lm's greedy sampler (one batched argmax); a seeded request
    gets its own random key, so its tokens do not depend on what else is in the batch."""
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_top_p, greedy_sampler, make_sampler

    if temperature <= 0:
        return greedy_sampler
    if seed is None:
        return make_sampler(temperature, top_p=top_p if top_p < 1 else 0.0)
    state = {"key": mx.random.key(seed)}

    def sampler(logprobs: Any) -> Any:
        if 0 < top_p < 1:
            logprobs = apply_top_p(logprobs, top_p)
        state["key"], sub = mx.random.split(state["key"])
        return mx.random.categorical(logprobs * (1 / temperature), key=sub)

    return sampler


class _Slot:
    """One model and its BatchGenerator (created on first use)."""

    def __init__(self, loaded: LoadedModel, max_batch_size: int, stream: Any) -> None:
        from mlx_lm.generate import BatchGenerator

        self.loaded = loaded
        self.max_batch_size = max_batch_size
        self.gen = BatchGenerator(
            loaded.model,
            stop_tokens=[[t] for t in loaded.tokenizer.eos_token_ids],
            completion_batch_size=max_batch_size,
            prefill_batch_size=min(8, max_batch_size),
            stream=stream,
        )
        self.active: dict[int, GenRequest] = {}


class Engine:
    """Owns the models; `start()` runs the worker thread, `stop()` drains and joins it."""

    def __init__(
        self,
        models: dict[str, LoadedModel],
        *,
        max_queue: int,
        max_batch_size: int,
        on_step: Callable[[int, int], None] | None = None,
    ) -> None:
        self.models = models
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.on_step = on_step  # (active sequences, queued requests) after each step
        self._inbox: collections.deque[GenRequest] = collections.deque()
        self._waiting: dict[str, collections.deque[GenRequest]] = {
            name: collections.deque() for name in models
        }
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self.active_count = 0
        self._active: dict[str, int] = dict.fromkeys(models, 0)  # decoding, per model

    # -- any thread ---------------------------------------------------------------------------

    def _pending(self) -> int:
        return len(self._inbox) + sum(len(q) for q in self._waiting.values())

    def _free(self, model: str) -> int:
        return max(0, self.max_batch_size - self._active[model])

    def queue_depth(self) -> int:
        """Requests waiting for a decoding slot (those about to take a free slot excluded)."""
        with self._lock:
            return max(0, self._pending() - sum(self._free(m) for m in self.models))

    def submit(self, req: GenRequest) -> None:
        """Queue a request or raise QueueFull at once (fail fast, never unbounded latency)."""
        if req.model not in self.models:
            raise MlxtuneError(f"unknown model {req.model!r}")
        with self._lock:
            if self.error:
                raise QueueFull("generation worker failed (see /health)")
            if self._stop:
                raise QueueFull("server is shutting down")
            # A burst may fill free decoding slots plus max_queue waiting places, no more.
            pending = self._pending()
            if pending >= self.max_queue + self._free(req.model):
                raise QueueFull(f"queue full ({self.max_queue} waiting)")
            self._inbox.append(req)
            self._wake.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mlxtune-serve-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        import mlx.core as mx

        stream = mx.default_stream(mx.default_device())
        slots: dict[str, _Slot] = {}
        try:
            with mx.stream(stream):
                self._loop(slots, stream)
        except Exception as e:  # a bug: report it on /health and fail every request
            self.error = f"{type(e).__name__}: {e}"
            for slot in slots.values():
                for req in slot.active.values():
                    req.emit("error", "internal error in the generation worker")
            with self._lock:
                pending = list(self._inbox) + [r for q in self._waiting.values() for r in q]
            for req in pending:
                req.emit("error", "internal error in the generation worker")
            raise
        finally:
            for slot in slots.values():
                with contextlib.suppress(Exception):
                    slot.gen.close()

    def _loop(self, slots: dict[str, _Slot], stream: Any) -> None:
        while True:
            with self._lock:
                busy = any(s.active for s in slots.values())
                if not busy and not self._inbox and not any(self._waiting.values()):
                    if self._stop:
                        return
                    self._wake.wait(0.5)
                while self._inbox:
                    req = self._inbox.popleft()
                    self._waiting[req.model].append(req)
                stopping = self._stop
                admit: list[GenRequest] = []
                for name, queue in self._waiting.items():
                    slot = slots.get(name)
                    room = self.max_batch_size - (len(slot.active) if slot else 0)
                    while queue and room > 0:
                        req = queue.popleft()
                        if req.cancelled:
                            req.emit("done", "cancelled")
                            continue
                        admit.append(req)
                        self._active[name] += 1
                        room -= 1
                if stopping:  # drain: refuse what has not started, finish what has
                    for queue in self._waiting.values():
                        while queue:
                            queue.popleft().emit("error", "server is shutting down")
            for req in admit:
                slot = slots.get(req.model)
                if slot is None:
                    slot = slots[req.model] = _Slot(
                        self.models[req.model], self.max_batch_size, stream
                    )
                self._insert(slot, req)
            # One step per model with work, round robin: no adapter starves another.
            for slot in slots.values():
                if slot.active:
                    self._step(slot)
            with self._lock:
                for name, slot in slots.items():
                    self._active[name] = len(slot.active)
            self.active_count = sum(len(s.active) for s in slots.values())
            if self.on_step is not None:
                self.on_step(self.active_count, self.queue_depth())

    def _insert(self, slot: _Slot, req: GenRequest) -> None:
        sampler = make_request_sampler(req.temperature, req.top_p, req.seed)
        (uid,) = slot.gen.insert([req.prompt], max_tokens=[req.max_tokens], samplers=[sampler])
        req.uid = uid
        req.detok = slot.loaded.tokenizer.detokenizer
        slot.active[uid] = req

    def _step(self, slot: _Slot) -> None:
        remove: list[int] = []
        for uid, waiting in slot.active.items():
            if waiting.cancelled:
                remove.append(uid)
        if remove:
            slot.gen.remove(remove)
            for uid in remove:
                slot.active.pop(uid).emit("done", "cancelled")
            remove = []
        if not slot.active:
            return
        _, responses = slot.gen.next()
        now = time.perf_counter()
        for r in responses:
            req = slot.active.get(r.uid)
            if req is None:
                continue
            if req.first_token_at is None:
                req.first_token_at = now
            finish = r.finish_reason
            if finish != "stop":  # the stop token (EOS) itself is not part of the answer
                req.detok.add_token(r.token)
                req.completion_tokens += 1
            if finish is not None:
                req.detok.finalize()
            req.text += req.detok.last_segment
            if req.stop:
                hit = min((i for s in req.stop if (i := req.text.find(s)) >= 0), default=-1)
                if hit >= 0:
                    req.text = req.text[:hit]
                    finish = "stop"
                    if r.finish_reason is None:
                        remove.append(r.uid)
            self._flush(req, final=finish is not None)
            if finish is not None:
                slot.active.pop(r.uid)
                req.emit("done", finish)
        if remove:
            slot.gen.remove(remove)

    @staticmethod
    def _flush(req: GenRequest, *, final: bool) -> None:
        """Send new text, holding back a tail that could still become a stop string."""
        if not req.stream:
            return
        hold = 0 if final or not req.stop else max(len(s) for s in req.stop) - 1
        upto = max(req.sent, len(req.text) - hold)
        if upto > req.sent:
            req.emit("text", req.text[req.sent : upto])
            req.sent = upto
