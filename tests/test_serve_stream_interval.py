"""`serve.stream_interval_ms`: a stream's text held on the worker's thread so a chunk carries
several tokens (serve/streaming.py `Pacer`), and text chunks written from pre-encoded bytes
(`TextChunks`). The first chunk and the finish are never held; the text is the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlxtune.serve import wire
from mlxtune.serve.streaming import Pacer, TextChunks, sse_bytes, stream_emit


class Clock:
    """The pacer's clock, moved by the test (a true boundary: time)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def paced(interval_s: float) -> tuple[Pacer, list[tuple[str, Any]], Clock]:
    posted: list[tuple[str, Any]] = []
    clock = Clock()
    pacer = Pacer(lambda queue, item: posted.append(item), None, interval_s, clock)  # type: ignore[arg-type]
    return pacer, posted, clock


def feed(pacer: Pacer, clock: Clock, pieces: list[str], step_s: float) -> None:
    for piece in pieces:
        pacer("text", piece)
        clock.now += step_s


PIECES = [f"t{i} " for i in range(20)]


def test_first_piece_goes_at_once_then_pieces_faster_than_the_interval_are_joined() -> None:
    pacer, posted, clock = paced(0.05)
    pacer("text", "first")
    assert posted == [("text", "first")]  # not held: time to first token unchanged
    clock.now += 0.01
    feed(pacer, clock, PIECES, step_s=0.01)  # 10 ms steps against a 50 ms interval
    pacer("done", "length")
    texts = [p for kind, p in posted if kind == "text"]
    assert "".join(texts) == "first" + "".join(PIECES)  # the same text, in order
    assert posted[-1] == ("done", "length")  # the finish after the held text, never before
    assert len(texts) <= 1 + len(PIECES) // 4  # ~5 pieces a chunk instead of 1
    assert all(len(t) > len(PIECES[0]) for t in texts[1:-1])  # every middle chunk joins pieces


def test_no_piece_is_held_longer_than_the_interval_at_a_steady_step() -> None:
    pacer, posted, clock = paced(0.05)
    made_at: dict[str, float] = {}
    held: list[float] = []
    for piece in "abcdefghijklmnopqrstuvwxyz":  # one character a piece: each traced
        made_at[piece] = clock.now
        before = len(posted)
        pacer("text", piece)
        held += [clock.now - made_at[c] for _, text in posted[before:] for c in text]
        clock.now += 0.012
    assert len(posted) <= len(made_at) // 3  # several pieces a chunk ...
    assert 0.03 <= max(held) <= 0.05  # ... none held longer than the interval


def test_steps_slower_than_the_interval_send_every_piece() -> None:
    pacer, posted, clock = paced(0.05)
    feed(pacer, clock, PIECES, step_s=0.08)
    assert posted == [("text", p) for p in PIECES]


def test_logprobs_ride_with_their_text_and_errors_flush_first() -> None:
    pacer, posted, clock = paced(0.05)
    pacer("logprobs", [{"token": "a"}])
    pacer("text", "a")
    clock.now += 0.01
    pacer("logprobs", [{"token": "b"}])
    pacer("text", "b")
    clock.now += 0.01
    pacer("logprobs", [{"token": "c"}])
    pacer("text", "c")
    assert posted == [("logprobs", [{"token": "a"}]), ("text", "a")]  # b, c held
    failure = object()
    pacer("error", failure)
    assert posted[2:] == [
        ("logprobs", [{"token": "b"}, {"token": "c"}]),
        ("text", "bc"),
        ("error", failure),
    ]


def test_interval_zero_posts_every_event_as_it_comes() -> None:
    posted: list[Any] = []
    emit = stream_emit(lambda queue, item: posted.append(item), None, 0.0)  # type: ignore[arg-type]
    assert not isinstance(emit, Pacer)
    for kind, payload in [("text", "a"), ("text", "b"), ("done", "stop")]:
        emit(kind, payload)
    assert posted == [("text", "a"), ("text", "b"), ("done", "stop")]


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("text", ["a", ' "quoted" \\ back', "line\nbreak\r\n", "é 🙂 \x00 \u2028"])
def test_text_chunks_are_the_bytes_of_the_wire_chunk(chat: bool, text: str) -> None:
    def make(t: str) -> dict[str, Any]:
        return wire.chunk("chatcmpl-x", 7, 'ad"1', t, None, chat=chat)

    assert TextChunks(make)(text) == sse_bytes(make(text))


def test_text_chunks_refuse_a_chunk_without_the_text() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        TextChunks(lambda t: {"choices": []})


def stream_contents(http: Any, interval_ms: float) -> tuple[list[str], int]:
    """The content of each streamed chunk and the completion tokens, at `interval_ms`."""
    from test_serve import sse_events

    http.app.state.serve.cfg.serve.stream_interval_ms = interval_ms
    body = {
        "messages": [{"role": "user", "content": "Tell me about MLX."}],
        "max_tokens": 24,
        "stream": True,
    }
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    *data, done = sse_events(r.text)
    assert done == "[DONE]"
    chunks = [json.loads(d) for d in data]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    return [c for c in contents if c], chunks[-1]["usage"]["completion_tokens"]


@pytest.mark.e2e
def test_streamed_text_is_the_same_with_and_without_an_interval(
    tiny_model: Path, tmp_path: Path
) -> None:
    from starlette.testclient import TestClient

    from mlxtune.config import Config
    from mlxtune.serve import create_app

    cfg = Config.model_validate(
        {"model": {"path": str(tiny_model)}, "serve": {"usage_db": str(tmp_path / "u.sqlite")}}
    )
    with TestClient(create_app(cfg)) as http:
        every, tokens = stream_contents(http, 0)
        held, held_tokens = stream_contents(http, 1000)  # longer than the whole answer takes
    assert tokens == held_tokens and tokens >= 8
    assert "".join(held) == "".join(every)
    assert len(every) >= 4  # one piece a token while the loop keeps up
    # the first piece at once, the rest held to the finish (a third if the box is very slow)
    assert 2 <= len(held) <= 3 and every[0].startswith(held[0])


def test_bench_names_the_interval_it_ran_with() -> None:
    from mlxtune.bench.serve import stream_note
    from mlxtune.config import Config

    held = stream_note(Config.model_validate({"serve": {"stream_interval_ms": 40}}))
    assert "held up to 40 ms" in held and "mlx_lm.server a chunk per token" in held
    assert "stream_interval_ms 0" in stream_note(
        Config.model_validate({"serve": {"stream_interval_ms": 0}})
    )
