"""The streamed path's per-token costs (serve/streaming.py): one event-loop wake-up per burst of
engine events, the text that piled up sent as one chunk, SSE framing without line splitting,
and the server's BLAS thread count."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from mlxtune.serve.streaming import LoopMail, sse_bytes, take_ready


def test_loop_mail_wakes_the_loop_once_per_burst_and_keeps_order() -> None:
    async def main() -> tuple[int, list[Any]]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        real = loop.call_soon_threadsafe

        def counting(*args: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return real(*args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        mail = LoopMail(loop)
        queues: list[asyncio.Queue[Any]] = [asyncio.Queue(), asyncio.Queue()]

        def worker() -> None:  # one decoding step: an event for each of 2 requests, 50 times
            for i in range(50):
                for q in queues:
                    mail.post(q, ("text", str(i)))

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()  # the loop is held here, as when it is busy: the burst waits for it
        await asyncio.sleep(0)
        got = [[q.get_nowait() for _ in range(q.qsize())] for q in queues]
        mail.post(queues[0], ("done", "stop"))  # a new burst: a new wake-up
        await asyncio.sleep(0)
        got.append([queues[0].get_nowait()])
        return wakeups, got

    wakeups, got = asyncio.run(main())
    assert wakeups == 2
    assert got[0] == got[1] == [("text", str(i)) for i in range(50)]
    assert got[2] == [("done", "stop")]


def test_take_ready_waits_for_one_then_takes_what_is_queued() -> None:
    async def main() -> list[list[Any]]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        waiter = asyncio.ensure_future(take_ready(q))
        await asyncio.sleep(0)
        assert not waiter.done()
        q.put_nowait(("text", "a"))
        first = await waiter
        for item in (("text", "b"), ("text", "c"), ("done", "length")):
            q.put_nowait(item)
        return [first, await take_ready(q)]

    first, rest = asyncio.run(main())
    assert first == [("text", "a")]
    assert rest == [("text", "b"), ("text", "c"), ("done", "length")]


@pytest.mark.parametrize(
    "payload",
    [
        "[DONE]",
        {"choices": [{"delta": {"content": 'line\none\r\n"quoted" é 🙂'}}], "id": "x"},
        "two\nlines",
    ],
)
def test_sse_bytes_equals_fastapis_framing(payload: Any) -> None:
    from fastapi.sse import format_sse_event

    data = payload if isinstance(payload, str) else json.dumps(payload)
    assert sse_bytes(payload) == format_sse_event(data_str=data)


def test_serve_sizes_blas_threads_from_config_env_or_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlxtune.runtime import resolve_blas_threads

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert resolve_blas_threads(5) == 5  # the config wins
    assert resolve_blas_threads(0) == 3  # then the environment
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert resolve_blas_threads(0) == max(1, (cpus or 1) - 1)


def test_blas_threads_sets_the_loaded_openblas() -> None:
    import mlx.core  # noqa: F401  (loads OpenBLAS first, through mlxtune.runtime)

    from mlxtune.runtime import blas_threads

    before = blas_threads()
    if before is None:
        pytest.skip("no OpenBLAS loaded on this platform")
    try:
        assert blas_threads(1) == 1
        assert blas_threads() == 1
    finally:
        blas_threads(before)


@pytest.mark.e2e
def test_stream_sends_the_text_that_piled_up_as_one_chunk(tiny_model: Path, tmp_path: Path) -> None:
    """When the event loop falls behind the worker, the queued tokens leave as one chunk and
    the finish, usage and [DONE] in the same write, in OpenAI's order."""
    from mlxtune.config import Config
    from mlxtune.serve import GenRequest, create_app
    from mlxtune.serve.routes import _Job, _sse

    cfg = Config.model_validate(
        {"model": {"path": str(tiny_model)}, "serve": {"usage_db": str(tmp_path / "u.sqlite")}}
    )
    state = create_app(cfg).state.serve
    lp = [
        {"token": t, "logprob": -0.5, "bytes": list(t.encode()), "top_logprobs": []} for t in "ab"
    ]

    async def main() -> list[bytes]:
        req = GenRequest(model="base", prompt=[1, 2, 3], max_tokens=3)
        req.completion_tokens = 3
        job = _Job(req, asyncio.Queue(), chat=True, rid="chatcmpl-1", created=1)
        job.include_usage = True
        for event in [
            ("logprobs", lp[:1]), ("text", "a"), ("logprobs", lp[1:]), ("text", "b"),
            ("text", "c"), ("done", "length"),
        ]:  # fmt: skip
            job.events.put_nowait(event)
        return [chunk async for chunk in _sse(state, job)]

    try:
        writes = asyncio.run(main())
    finally:
        state.usage.close()
    assert len(writes) == 2  # the role chunk, then everything that was ready
    from test_serve import sse_events

    (role,), (text, finish, usage, done) = (sse_events(w.decode()) for w in writes)
    assert json.loads(role)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    piece = json.loads(text)["choices"][0]
    assert piece["delta"] == {"content": "abc"} and piece["finish_reason"] is None
    assert piece["logprobs"] == {"content": lp}
    assert json.loads(finish)["choices"][0]["finish_reason"] == "length"
    assert (
        json.loads(usage)["choices"] == [] and json.loads(usage)["usage"]["completion_tokens"] == 3
    )
    assert done == "[DONE]"


def test_bench_notes_each_servers_blas_threads() -> None:
    from mlxtune.bench.serve import blas_note
    from mlxtune.config import Config
    from mlxtune.runtime import blas_threads

    note = blas_note(Config.model_validate({"serve": {"blas_threads": 3}}))
    if blas_threads() is None:
        assert "no OpenBLAS" in note
    else:
        assert f"mlxtune 3 (serve.blas_threads), mlx_lm.server {blas_threads()}" in note
