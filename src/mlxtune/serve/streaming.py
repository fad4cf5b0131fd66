"""The path from the generation worker to a client's stream, made cheap per token.

The worker emits one event per request per decoding step (16 a step at 16 clients). Posting
each with `call_soon_threadsafe` wakes the event loop through its self-pipe once per event;
`LoopMail` queues them and wakes the loop once per burst. A stream then takes every event that
is ready (`take_ready`), so a loop that fell behind sends one SSE chunk for the tokens that
piled up instead of one per token, and writes the finish, usage and `[DONE]` events in one
write (`sse_bytes`). `Pacer` holds a stream's text on the worker's thread for up to
`serve.stream_interval_ms`, so each chunk carries several tokens (the first never waits), and
`TextChunks` writes a text chunk from pre-encoded bytes around the JSON-escaped text."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

Event = tuple[str, Any]  # (kind, payload) as the engine emits it


class LoopMail:
    """Items for asyncio queues on one event loop, put from any thread, in order; one loop
    wake-up while any are pending."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[Event], Event]] = []

    def post(self, queue: asyncio.Queue[Event], item: Event) -> None:
        with self._lock:
            self._pending.append((queue, item))
            if len(self._pending) > 1:  # a delivery is already scheduled and will take it
                return
        self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, item in pending:
            queue.put_nowait(item)


_mail: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopMail] = weakref.WeakKeyDictionary()
_mail_lock = threading.Lock()


def mail_for(loop: asyncio.AbstractEventLoop) -> LoopMail:
    """The one `LoopMail` of `loop` (tests run several loops in one process)."""
    with _mail_lock:
        mail = _mail.get(loop)
        if mail is None:
            mail = _mail[loop] = LoopMail(loop)
        return mail


async def take_ready(queue: asyncio.Queue[Event]) -> list[Event]:
    """The next event, waited for, and every event already queued behind it."""
    events = [await queue.get()]
    while not queue.empty():
        events.append(queue.get_nowait())
    return events


def sse_bytes(payload: Any) -> bytes:
    """One server-sent event: `data: <payload>` (a string as is, anything else as JSON).

    The same bytes as `fastapi.sse.format_sse_event(data_str=...)` for a one-line payload,
    which JSON always is (it escapes newlines), without splitting it into lines first."""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    if "\n" in data or "\r" in data:
        from fastapi.sse import format_sse_event

        return format_sse_event(data_str=data)
    return b"data: " + data.encode() + b"\n\n"


Post = Callable[["asyncio.Queue[Event]", Event], None]


class Pacer:
    """A streamed request's `emit`: text (and its logprobs) held on the engine's thread so a
    chunk leaves at most every `interval_s`, the first at once; anything else (the finish, an
    error) sends what is held first. Text is sent when waiting one more step (the time since
    the last piece) would hold its oldest part longer than `interval_s`; slower steps than that
    send every piece as it comes, as interval 0 does."""

    def __init__(
        self,
        post: Post,
        queue: asyncio.Queue[Event],
        interval_s: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._post, self._queue, self.interval_s, self._clock = post, queue, interval_s, clock
        self._text: list[str] = []
        self._logprobs: list[Any] = []
        self._held_since: float | None = None  # when the oldest held text came
        self._last_piece: float | None = None  # when the last text came: the step estimate
        self.started = False  # the first text went out

    def __call__(self, kind: str, payload: Any) -> None:
        if kind == "logprobs":  # they ride on the next text event, as the stream sends them
            self._logprobs += payload
            return
        if kind != "text":
            self.flush()
            self._post(self._queue, (kind, payload))
            return
        now = self._clock()
        step = 0.0 if self._last_piece is None else now - self._last_piece
        self._last_piece = now
        self._text.append(payload)
        if self._held_since is None:
            self._held_since = now
        if not self.started or now + step - self._held_since > self.interval_s:
            self.flush()

    def flush(self) -> None:
        """Send what is held now."""
        if self._logprobs:
            self._post(self._queue, ("logprobs", self._logprobs))
            self._logprobs = []
        if self._text:
            self._post(self._queue, ("text", "".join(self._text)))
            self._text, self._held_since, self.started = [], None, True


def stream_emit(
    post: Post, queue: asyncio.Queue[Event], interval_s: float
) -> Callable[[str, Any], None]:
    """The engine's `emit` for one request: every event posted as it comes (interval 0, or
    an answer sent whole), else paced by `Pacer`."""
    if interval_s > 0:
        return Pacer(post, queue, interval_s)

    def emit(kind: str, payload: Any) -> None:
        post(queue, (kind, payload))

    return emit


class TextChunks:
    """SSE events for a stream's text-only chunks, byte for byte what `sse_bytes(chunk)` makes
    of the chunk `make(text)` returns, from bytes encoded once: only the text is escaped per
    chunk. `make` is the one source of the chunk's shape (`wire.chunk`)."""

    _MARK = "\x00mlxtune\x00"  # JSON escapes it, so it cannot occur in the rest of the chunk

    def __init__(self, make: Callable[[str], dict[str, Any]]) -> None:
        whole = sse_bytes(make(self._MARK))
        head, mark, tail = whole.partition(json.dumps(self._MARK).encode())
        if not mark or mark in tail:
            raise ValueError("the chunk must hold the text exactly once")
        self._head, self._tail = head, tail

    def __call__(self, text: str) -> bytes:
        return self._head + json.dumps(text).encode() + self._tail
