"""The model worker behind `mlxtune serve`: one thread owns every model and runs continuous
batching with mlx-lm's BatchGenerator, one generator per model, or one per group of adapters
of the base mixed in one batch (`serve.mix_adapters`, serve/multi_lora.py).

Requests come in through `Engine.submit` (any thread); events (text pieces, the finish, a
`Failure`) go back through each request's `emit` callback, which the web layer points at its
event loop. An error while inserting or decoding fails only the requests it concerns; if the
thread dies anyway, `on_death` tells the server, which exits rather than answer 503 for ever.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlxtune.errors import MlxtuneError
from mlxtune.serve.sampling import Sampling, make_processors, make_sampler, token_logprob

if TYPE_CHECKING:
    from mlxtune.serve.multi_lora import MixMember

log = logging.getLogger("mlxtune.serve")


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
    processor: Any = None  # a vision-language model's: it answers through mlxtune.vlm.serve
    mixed: MixMember | None = None  # decodes in its group's mixed batch (serve.mix_adapters)


def batch_key(loaded: LoadedModel) -> int:
    """Requests whose models share a key decode in one batch: a mixed group's, or the model's."""
    return id(loaded.mixed.model) if loaded.mixed is not None else id(loaded)


@dataclass(eq=False)  # compared by identity: the engine finds a request in its queues
class GenRequest:
    """One generation: prompt ids in, events out through `emit`."""

    model: str
    prompt: list[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[str] = field(default_factory=list)
    # emit(kind, payload): ("text", str) per piece, ("done", finish_reason), ("error", Failure)
    emit: Callable[[str, Any], None] = lambda kind, payload: None
    stream: bool = True  # False: no text events; read `text` after ("done", ...)
    route: str | None = None  # the `serve.routes` name asked for, when one picked `model`
    # The model as loaded when the request was queued: a reload swaps `Engine.models[model]`
    # for new requests, and this one still finishes, whole, on the weights it started with.
    loaded: LoadedModel | None = None
    # this request's own mlx-lm logits processors (a response_format constraint)
    logits_processors: list[Any] = field(default_factory=list)
    response_format: str | None = None  # "json_object" / "json_schema" when constrained
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    completion_tokens: int = 0
    images: int = 0  # image parts in the request (vision-language models)
    # worker-side state
    uid: int | None = None
    detok: Any = None
    text: str = ""
    sent: int = 0
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # when sampling.logprobs
    logprobs_sent: int = 0


@dataclass(frozen=True)
class Failure:
    """Why a request ended without an answer: the HTTP status and OpenAI error code to send."""

    status: int
    code: str
    message: str


PROMPT_KEY = "model"  # each slot keeps its own prompt cache: one key, or a mixed slot's index
SHUTTING_DOWN = Failure(503, "shutting_down", "server is shutting down")
GENERATION_FAILED = Failure(500, "generation_failed", "generation failed (see the server log)")
WORKER_DIED = Failure(503, "worker_died", "the generation worker stopped; the server is exiting")


class _Slot:
    """One model (or one mixed group), its BatchGenerator (created on first use) and its prompt
    cache: the KV of recent prompts and answers, so a request sharing a prefix with one of them
    (a system prompt, the chat template's opening, an earlier turn) prefills only the rest."""

    def __init__(
        self, loaded: LoadedModel, max_batch_size: int, stream: Any, prompt_cache_size: int
    ) -> None:
        from mlx_lm.generate import BatchGenerator
        from mlx_lm.models.cache import LRUPromptCache

        self.loaded = loaded
        self.mixed = loaded.mixed.model if loaded.mixed is not None else None
        self.prompt_cache = LRUPromptCache(prompt_cache_size) if prompt_cache_size else None
        self.max_batch_size = max_batch_size
        # A mixed batch decodes every member's requests: as many rows as their own batches had.
        rows = max_batch_size * (1 if self.mixed is None else len(self.mixed.members) + 1)
        model: Any = self.mixed if self.mixed is not None else loaded.model
        self.gen = BatchGenerator(
            model,
            stop_tokens=[[t] for t in loaded.tokenizer.eos_token_ids],
            completion_batch_size=rows,
            prefill_batch_size=min(8, max_batch_size),
            stream=stream,
        )
        self.active: dict[int, GenRequest] = {}

    def decode_one(self, token: int) -> str:
        return str(self.loaded.tokenizer.decode([token]))

    def prompt_key(self, req: GenRequest) -> Any:
        """A mixed slot's prompt cache is keyed by adapter: KV made with one is not another's."""
        if self.mixed is None or req.loaded is None or req.loaded.mixed is None:
            return PROMPT_KEY
        return req.loaded.mixed.index

    def caches(self, req: GenRequest, cache: list[Any] | None) -> list[list[Any]] | None:
        """The `caches` argument of BatchGenerator.insert for one request; a mixed slot's cache
        list carries the row's adapter (multi_lora.AdapterRows)."""
        if self.mixed is None or req.loaded is None or req.loaded.mixed is None:
            return [cache] if cache is not None else None
        return [self.mixed.cache_for(req.loaded.mixed.index, cache)]


class Engine:
    """Owns the models; `start()` runs the worker thread, `drain()` starts a shutdown, `stop()`
    drains and joins it.

    Admission is one account across models: a request takes a free decoding slot of its model
    if there is one, else one of `max_queue` waiting places shared by every model."""

    def __init__(
        self,
        models: dict[str, LoadedModel],
        *,
        max_queue: int,
        max_batch_size: int,
        prompt_cache_size: int = 0,
        on_step: Callable[[int, int], None] | None = None,
    ) -> None:
        self.models = models
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.prompt_cache_size = prompt_cache_size  # KV entries kept per model; 0: none
        self.reused_prompt_tokens = 0  # prompt tokens whose KV came from the prompt cache
        self.on_step = on_step  # (active sequences, queued requests) after each step
        self.on_death: Callable[[str], None] | None = None  # the worker thread died
        self._waiting: dict[str, collections.deque[GenRequest]] = {
            name: collections.deque() for name in models
        }
        self._active: dict[str, int] = dict.fromkeys(models, 0)  # admitted, per model
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self._cut_at: float | None = None  # when draining: end what still runs at this time
        self._thread: threading.Thread | None = None
        self._admitting: list[GenRequest] = []  # taken from the queues, not yet decoding
        self.error: str | None = None
        self.active_count = 0

    # -- any thread ---------------------------------------------------------------------------

    def _queued(self) -> int:
        """Requests waiting for a slot: per model, those beyond its free slots (lock held)."""
        return sum(
            max(0, len(q) - (self.max_batch_size - self._active[m]))
            for m, q in self._waiting.items()
        )

    def queue_depth(self) -> int:
        with self._lock:
            return self._queued()

    def submit(self, req: GenRequest) -> None:
        """Queue a request or raise QueueFull at once (fail fast, never unbounded latency)."""
        if req.model not in self.models:
            raise MlxtuneError(f"unknown model {req.model!r}")
        with self._lock:
            if self.error:
                raise QueueFull("generation worker failed")
            if self._stop:
                raise QueueFull("server is shutting down")
            free = self.max_batch_size - self._active[req.model]
            if len(self._waiting[req.model]) >= free and self._queued() >= self.max_queue:
                raise QueueFull(f"queue full ({self.max_queue} waiting)")
            req.loaded = self.models[req.model]
            self._waiting[req.model].append(req)
            self._wake.notify()

    def swap(self, name: str, loaded: LoadedModel) -> LoadedModel:
        """Serve `name` with `loaded` from the next request on; requests already queued or
        decoding finish on the model they were queued for. Returns the model replaced."""
        with self._lock:
            old = self.models[name]
            self.models[name] = loaded
            return old

    def cancel(self, req: GenRequest) -> None:
        """The client went away: a waiting request leaves the queue now ("done", "cancelled");
        a decoding one is removed from its batch at the next step."""
        with self._lock:
            req.cancelled = True
            queue = self._waiting.get(req.model)
            waiting = queue is not None and req in queue
            if waiting:
                queue.remove(req)  # type: ignore[union-attr]
        if waiting:
            req.emit("done", "cancelled")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mlxtune-serve-worker", daemon=True)
        self._thread.start()

    def drain(self, grace_s: float) -> None:
        """Start shutting down: refuse new and waiting requests, finish what decodes, and end
        whatever still runs after `grace_s` with a SHUTTING_DOWN failure."""
        with self._lock:
            self._stop = True
            if self._cut_at is None:
                self._cut_at = time.monotonic() + grace_s
            self._wake.notify()

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
        slots: dict[int, _Slot] = {}  # by id() of the LoadedModel: old and new may overlap
        try:
            with mx.stream(stream):
                self._loop(slots, stream)
        except BaseException as e:
            log.exception("generation worker died")
            with self._lock:
                self.error = f"{type(e).__name__}: {e}"
                known = [*self._admitting, *(r for q in self._waiting.values() for r in q)]
                for queue in self._waiting.values():
                    queue.clear()
            known += [r for slot in slots.values() for r in slot.active.values()]
            for req in known:
                req.emit("error", WORKER_DIED)
            if self.on_death is not None:
                self.on_death(self.error)
        finally:
            for slot in slots.values():
                with contextlib.suppress(Exception):
                    slot.gen.close()

    def _loop(self, slots: dict[int, _Slot], stream: Any) -> None:
        while True:
            refused: list[GenRequest] = []
            with self._lock:
                busy = any(s.active for s in slots.values())
                if not busy and not any(self._waiting.values()):
                    if self._stop:
                        return
                    self._wake.wait(0.5)
                for name, queue in self._waiting.items():
                    while queue and self._active[name] < self.max_batch_size:
                        self._admitting.append(queue.popleft())
                        self._active[name] += 1
                if self._stop:  # drain: refuse what has not started, finish what has
                    for queue in self._waiting.values():
                        refused += queue
                        queue.clear()
                cut = self._cut_at is not None and time.monotonic() >= self._cut_at
            for req in refused:
                req.emit("error", SHUTTING_DOWN)
            while self._admitting:
                req = self._admitting[0]  # popped once handled: a dying worker still fails it
                if req.cancelled:
                    req.emit("done", "cancelled")
                else:
                    try:
                        loaded = req.loaded or self.models[req.model]
                        key = batch_key(loaded)
                        if key not in slots:
                            slots[key] = _Slot(
                                loaded, self.max_batch_size, stream, self.prompt_cache_size
                            )
                        self._insert(slots[key], req)
                    except Exception:  # this request only (a bad sampler, a prompt mlx refuses)
                        log.exception("generation failed for a %s request", req.model)
                        req.emit("error", GENERATION_FAILED)
                self._admitting.pop(0)
            # One step per batch with work, round robin: no adapter starves another.
            for key, slot in list(slots.items()):
                if cut:
                    self._end_all(slots.pop(key), SHUTTING_DOWN)
                elif slot.active:
                    try:
                        self._step(slot)
                    except Exception:  # the batch shares the failure; a fresh generator next
                        log.exception("generation failed for a batch of %s", slot.loaded.name)
                        self._end_all(slots.pop(key), GENERATION_FAILED)
            with self._lock:
                for name in self._active:
                    self._active[name] = sum(
                        r.model == name for s in slots.values() for r in s.active.values()
                    )
                self._retire(slots)
            self.active_count = sum(len(s.active) for s in slots.values())
            if self.on_step is not None:
                self.on_step(self.active_count, self.queue_depth())

    def _retire(self, slots: dict[int, _Slot]) -> None:
        """Close the generators of models a reload replaced, once their last request is done
        (called with the lock held, so no request can be queued for them meanwhile)."""
        current = {batch_key(m) for m in self.models.values()}
        queued = {
            batch_key(r.loaded or self.models[r.model]) for q in self._waiting.values() for r in q
        }
        for key in [k for k, s in slots.items() if k not in current and not s.active]:
            if key not in queued:
                with contextlib.suppress(Exception):
                    slots.pop(key).gen.close()

    @staticmethod
    def _end_all(slot: _Slot, failure: Failure) -> None:
        """Fail every request of a slot and drop its generator."""
        for req in slot.active.values():
            req.emit("error", failure)
        slot.active.clear()
        with contextlib.suppress(Exception):
            slot.gen.close()

    def _insert(self, slot: _Slot, req: GenRequest) -> None:
        cache, rest = None, req.prompt
        if slot.prompt_cache is not None:
            from mlx_lm.models.cache import trim_prompt_cache

            cache, rest = slot.prompt_cache.fetch_nearest_cache(slot.prompt_key(req), req.prompt)
            if cache is not None and not rest:  # the whole prompt is cached: the last token's
                trim_prompt_cache(cache, 1)  # logits are not, so it is fed again
                rest = req.prompt[-1:]
            self.reused_prompt_tokens += len(req.prompt) - len(rest)
        (uid,) = slot.gen.insert(
            [rest],
            max_tokens=[req.max_tokens],
            caches=slot.caches(req, cache),
            all_tokens=[req.prompt[: len(req.prompt) - len(rest)]],
            samplers=[make_sampler(req.sampling)],
            logits_processors=[make_processors(req.sampling) + req.logits_processors],
        )
        req.uid = uid
        req.detok = (req.loaded or slot.loaded).tokenizer.detokenizer
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
                if req.sampling.logprobs is not None:
                    req.logprobs.append(
                        token_logprob(r.token, r.logprobs, req.sampling.logprobs, slot.decode_one)
                    )
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
                if slot.prompt_cache is not None and r.prompt_cache is not None:
                    key = slot.prompt_key(req)
                    slot.prompt_cache.insert_cache(key, r.all_tokens[:], r.prompt_cache)
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
            if len(req.logprobs) > req.logprobs_sent:  # they ride on the next text chunk
                req.emit("logprobs", req.logprobs[req.logprobs_sent :])
                req.logprobs_sent = len(req.logprobs)
            req.emit("text", req.text[req.sent : upto])
            req.sent = upto
