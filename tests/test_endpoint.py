"""mlxtune.endpoint: how evaluate --endpoint and verify ask an OpenAI-compatible server. The
server is an httpx transport here (the wire is the boundary); the e2e tests in test_verify.py
and test_evaluate.py ask real servers."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from mlxtune import endpoint
from mlxtune.errors import UsageError

URL = "http://srv/v1/chat/completions"


def answering(status: int, payload: Any, seen: list[dict[str, Any]] | None = None) -> httpx.Client:
    """A client whose server answers every request with `payload` (and records the bodies)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(json.loads(request.content))
        if isinstance(payload, str):
            return httpx.Response(status, text=payload)
        return httpx.Response(status, json=payload)

    return httpx.Client(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    "given", ["http://srv", "http://srv/", "http://srv/v1", "http://srv/v1/chat/completions"]
)
def test_every_way_to_name_a_server_reaches_the_same_urls(given: str) -> None:
    assert endpoint.server_root(given) == "http://srv"
    assert endpoint.chat_url(given) == URL


def test_a_chat_completion_gives_text_tokens_and_the_answering_model() -> None:
    reply = {
        "model": "m",
        "choices": [{"message": {"content": "hi"}}],
        "usage": {"completion_tokens": 3},
    }
    seen: list[dict[str, Any]] = []
    got = endpoint.ask(answering(200, reply, seen), URL, {"model": "m", "messages": []})
    assert (got.text, got.completion_tokens, got.model) == ("hi", 3, "m")
    assert seen == [{"model": "m", "messages": []}]
    bare = endpoint.ask(answering(200, {"choices": [{"message": {"content": None}}]}), URL, {})
    assert (bare.text, bare.completion_tokens, bare.model) == ("", None, None)


@pytest.mark.parametrize(
    ("status", "payload", "says"),
    [
        (503, "busy", "HTTP 503: busy"),
        (200, "<html>not json</html>", "not an OpenAI chat completion: <html>"),
        (200, {"choices": []}, "not an OpenAI chat completion"),
    ],
)
def test_a_server_that_says_no_or_answers_another_shape_is_one_usage_line(
    status: int, payload: Any, says: str
) -> None:
    with pytest.raises(UsageError) as e:
        endpoint.ask(answering(status, payload), URL, {}, label="--endpoint: ")
    assert str(e.value).startswith(f"--endpoint: {URL}: {says}")
    assert e.value.exit_code == 2


def test_an_unreachable_server_names_the_url_and_the_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    http = httpx.Client(transport=httpx.MockTransport(refuse))
    with pytest.raises(UsageError, match=rf"^{URL}: ConnectError: refused$"):
        endpoint.ask(http, URL, {})
