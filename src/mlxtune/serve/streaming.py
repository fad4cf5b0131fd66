"""The path from the generation worker to a client's stream, made cheap per token.

The worker emits one event per request per decoding step (16 a step at 16 clients). Posting
each with `call_soon_threadsafe` wakes the event loop through its self-pipe once per event;
`LoopMail` queues them and wakes the loop once per burst. A stream then takes every event that
is ready (`take_ready`), so a loop that fell behind sends one SSE chunk for the tokens that
piled up instead of one per token, and writes the finish, usage and `[DONE]` events in one
write (`sse_bytes`)."""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
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
