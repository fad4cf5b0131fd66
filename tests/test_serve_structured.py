"""`response_format` in serve, in process (`create_app` with the real tiny model and an
adapter), driven by the official openai client: the random-init model never writes JSON on its
own, so every answer that parses and validates was made so by the constraint."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from conftest import make_adapter
from mlxtune.config import Config
from test_structured import SERVICE, schema_format

pytestmark = pytest.mark.e2e

API_KEY = "k-structured"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUESTION = [{"role": "user", "content": "Which port does the gateway use?"}]


class Service(BaseModel):
    service: Literal["gateway", "router", "core"]
    port: int = Field(ge=1, le=65535)
    tags: list[str] = Field(max_length=2)


@pytest.fixture(scope="module")
def app(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from mlxtune.serve import create_app

    tmp = tmp_path_factory.mktemp("serve-structured")
    adapter = make_adapter(tiny_model, tmp / "runs" / "ad1", b_scale=0.05)
    cfg = Config.model_validate(
        {
            "model": {"path": str(tiny_model)},
            "serve": {
                "adapters": {"ad1": str(adapter)},
                "api_key": API_KEY,
                "max_batch_size": 8,
                "usage_db": str(tmp / "usage.sqlite"),
            },
        }
    )
    with TestClient(create_app(cfg)) as http:
        yield http


def client(http: Any) -> Any:
    import openai

    return openai.OpenAI(
        base_url="http://testserver/v1", api_key=API_KEY, http_client=http, max_retries=0
    )


@pytest.mark.parametrize("model", ["base", "ad1"])
def test_parse_with_a_pydantic_model(app: Any, model: str) -> None:
    r = client(app).chat.completions.parse(
        model=model, messages=QUESTION, response_format=Service, max_tokens=48, temperature=1.0
    )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Service), r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


def test_plain_schema_streamed_and_whole_in_one_mixed_batch(app: Any) -> None:
    """Constrained (schema, json_object; chat and completions; streamed and not) and free
    requests at once, so they share the engine's batch."""
    c = client(app)

    def chat(fmt: dict[str, Any] | None, stream: bool, model: str) -> str:
        extra = {"response_format": fmt} if fmt else {}
        args = dict(model=model, messages=QUESTION, max_tokens=40, temperature=1.0, **extra)
        if not stream:
            return c.chat.completions.create(**args).choices[0].message.content or ""
        chunks = list(c.chat.completions.create(stream=True, **args))
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    def completion(fmt: dict[str, Any] | None, stream: bool, model: str) -> str:
        extra = {"extra_body": {"response_format": fmt}} if fmt else {}
        args = dict(model=model, prompt="port:", max_tokens=40, temperature=1.0, **extra)
        if not stream:
            return c.completions.create(**args).choices[0].text
        return "".join(ch.choices[0].text for ch in c.completions.create(stream=True, **args))

    jobs: list[tuple[Any, dict[str, Any] | None, bool, str]] = []
    for stream in (False, True):
        for model in ("base", "ad1"):
            jobs += [(chat, schema_format(SERVICE), stream, model), (chat, None, stream, model)]
        jobs += [(chat, {"type": "json_object"}, stream, "ad1")]
        jobs += [(completion, schema_format(SERVICE), stream, "ad1")]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda j: j[0](*j[1:]), jobs))
    for (_, fmt, _, _), answer in zip(jobs, answers, strict=True):
        if fmt is None:
            with pytest.raises(json.JSONDecodeError):  # the model cannot write JSON itself
                json.loads(answer)
        elif fmt["type"] == "json_object":
            assert isinstance(json.loads(answer), dict), answer
        else:
            jsonschema.validate(json.loads(answer), SERVICE)


def test_text_format_is_free_and_stream_parse_works(app: Any) -> None:
    c = client(app)
    r = c.chat.completions.create(
        model="base", messages=QUESTION, max_tokens=8, response_format={"type": "text"}
    )
    assert r.choices[0].message.content
    with c.chat.completions.stream(
        model="ad1", messages=QUESTION, response_format=Service, max_tokens=48
    ) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Service)


@pytest.mark.parametrize(
    ("response_format", "message"),
    [
        ({"type": "xml"}, "response_format.type: unknown type 'xml'"),
        (
            schema_format({"type": "object", "properties": {"a": {"type": "strin"}}}),
            "response_format.json_schema.schema.properties.a.type: invalid JSON Schema",
        ),
        (
            schema_format({"type": "array", "uniqueItems": True}),
            "response_format.json_schema.schema: cannot be enforced: "
            'unsupported keyword(s) ["uniqueItems"]',
        ),
        ("json", "response_format: expected an object, got str"),
    ],
)
def test_bad_formats_are_400_in_the_openai_shape(
    app: Any, response_format: Any, message: str
) -> None:
    import openai

    for path, body in (
        ("/v1/chat/completions", {"messages": QUESTION}),
        ("/v1/completions", {"prompt": "port:"}),
    ):
        r = app.post(path, json={**body, "response_format": response_format}, headers=AUTH)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "response_format" and error["type"] == "invalid_request_error"
        assert error["message"].startswith(message), error["message"]
    with pytest.raises(openai.BadRequestError, match="unknown type 'xml'"):
        client(app).chat.completions.create(
            model="base",
            messages=QUESTION,
            response_format={"type": "xml"},  # type: ignore[arg-type,typeddict-item]
        )


def test_usage_log_and_metrics_count_constrained_requests(app: Any) -> None:
    state = app.app.state.serve
    with sqlite3.connect(state.usage.path) as db:
        (last,) = db.execute("SELECT coalesce(max(rowid), 0) FROM requests").fetchone()
    for fmt in (schema_format(SERVICE), {"type": "json_object"}, None):
        body = {"model": "ad1", "messages": QUESTION, "max_tokens": 40}
        r = app.post("/v1/chat/completions", json={**body, "response_format": fmt}, headers=AUTH)
        assert r.status_code == 200, r.text
    state.usage.flush()  # rows are written by the log's own thread
    with sqlite3.connect(state.usage.path) as db:
        rows = db.execute(
            "SELECT response_format, status FROM requests WHERE rowid > ? ORDER BY rowid", (last,)
        ).fetchall()
    assert rows == [("json_schema", 200), ("json_object", 200), (None, 200)]
    text = app.get("/metrics", headers=AUTH).text
    line = 'mlxtune_constrained_requests_total{model="ad1",response_format="json_schema",'
    assert line + 'status="200"}' in text
