"""What stands between the socket and the handlers: the API key (checked before a body is read),
the body's size and time limits, and the connection-level limits (header timeout, connection
cap) as a uvicorn protocol. Every refusal is counted in /metrics, none is stored per request."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlxtune.serve import wire

if TYPE_CHECKING:
    from mlxtune.serve.state import ServeState

AUTHED = "mlxtune.authed"  # scope key: did this request carry the key (or is none set)?
# scope key: perf_counter() when the request's headers arrived (the protocol stamps it; KeyGate
# when the app runs without it, as under a test client), so refusals can time themselves
RECEIVED_AT = "mlxtune.received_at"


def key_matches(headers: list[tuple[bytes, bytes]], key: str) -> bool:
    """`Authorization: Bearer KEY`, compared in constant time."""
    header = next((v for k, v in headers if k == b"authorization"), b"")
    scheme, _, token = header.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def since_received(scope: Scope) -> float:
    """Seconds since the request's headers arrived."""
    return time.perf_counter() - float(scope[RECEIVED_AT])


async def send_error(send: Send, status: int, body: dict[str, Any], **headers: str) -> None:
    raw = [(b"content-type", b"application/json")]
    raw += [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class KeyGate:
    """ASGI middleware: when a key is set, everything but `/health` (which then says only
    ok/not ok) and `serve.public_endpoints` needs it, and it is checked before the body is
    read or parsed: no key, no 400 or 413 hints."""

    def __init__(self, app: ASGIApp, state: ServeState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault(RECEIVED_AT, time.perf_counter())
        key = self.state.api_key
        scope[AUTHED] = authed = key is None or key_matches(scope["headers"], key)
        path = scope["path"]
        if authed or path == "/health" or path in self.state.cfg.serve.public_endpoints:
            await self.app(scope, receive, send)
            return
        self.state.record_refusal(401, None)
        body = wire.error_body(
            "invalid or missing API key", "authentication_error", code="invalid_api_key"
        )
        await send_error(send, 401, body, www_authenticate="Bearer")


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes with 413 (chunked ones too) and bodies
    that take longer than `timeout_s` to arrive with 408."""

    def __init__(self, app: ASGIApp, state: ServeState) -> None:
        self.app, self.state = app, state
        self.limit = state.cfg.serve.max_body_bytes
        self.timeout_s = state.cfg.serve.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            try:
                # not wait_for: it wraps each receive in a task, a cost every request pays
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                self.state.record_refusal(408, None)
                body = wire.error_body(
                    f"request body not received within {self.timeout_s:g} s", code="timeout"
                )
                await send_error(send, 408, body, connection="close")
                return
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._too_large(send)
                return
            if not message.get("more_body"):
                break
        whole = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        self.state.record_refusal(413, None)
        body = wire.error_body(f"request body over {self.limit} bytes", code="body_too_large")
        await send_error(send, 413, body, connection="close")


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[Any]:
    """uvicorn's h11 protocol with two limits it lacks: a connection that has not sent
    complete request headers `header_timeout_s` after connecting (or after starting its next
    request) is closed, and connections beyond `max_connections` are closed at once. Idle
    keep-alive connections are uvicorn's own `timeout_keep_alive`."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            received_at, cycle = time.perf_counter(), self.cycle
            super().data_received(data)
            if self.cycle is not cycle and self.cycle is not None:  # a request began
                self.cycle.scope[RECEIVED_AT] = received_at  # type: ignore[literal-required]
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if self._header_timer is None:
                    self._arm()  # a request has begun: its headers get the same deadline
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol
