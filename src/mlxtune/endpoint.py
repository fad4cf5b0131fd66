"""An OpenAI-compatible server as `evaluate --endpoint` and `verify` ask it: one client, one
non-streaming chat completion, one set of errors. (bench/serve.py drives load with its own
streaming client: it counts failures instead of stopping at the first.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlxtune.errors import UsageError

if TYPE_CHECKING:
    import httpx


@dataclass
class ChatReply:
    text: str
    completion_tokens: int | None  # None when the server sends no usage
    model: str | None  # the model the server says answered


def server_root(endpoint: str) -> str:
    """The server's root URL, whether the user gave it, its /v1 or its chat completions URL."""
    base = endpoint.rstrip("/")
    for suffix in ("/chat/completions", "/v1"):
        base = base.removesuffix(suffix)
    return base


def chat_url(endpoint: str) -> str:
    """The chat completions URL, whether the user gave it, the server root or its /v1."""
    base = endpoint.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if not base.endswith("/v1"):
        base += "/v1"
    return base + "/chat/completions"


def client(api_key: str | None, timeout_s: float = 120.0) -> httpx.Client:
    """A client that sends the key (when there is one) with every request; connecting gets
    10 s, an answer `timeout_s`."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0), headers=headers)


def ask(http: httpx.Client, url: str, body: dict[str, Any], *, label: str = "") -> ChatReply:
    """POST one chat completion. A server that cannot be reached, says no or answers in
    another shape is a UsageError `{label}{url}: ...` (the run cannot go on as asked)."""
    import httpx

    try:
        r = http.post(url, json=body)
    except httpx.HTTPError as e:
        raise UsageError(f"{label}{url}: {type(e).__name__}: {e}") from None
    if r.status_code != 200:
        raise UsageError(f"{label}{url}: HTTP {r.status_code}: {r.text[:200]}")
    try:
        data = r.json()
        text = data["choices"][0]["message"]["content"] or ""
        tokens = (data.get("usage") or {}).get("completion_tokens")
        model = data.get("model")
        return ChatReply(
            str(text),
            None if tokens is None else int(tokens),
            None if model is None else str(model),
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise UsageError(f"{label}{url}: not an OpenAI chat completion: {r.text[:200]}") from None
