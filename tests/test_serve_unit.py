"""serve without a model: the CLI's flags reach the config, adapter resolution refuses bad
entries with one line, and the usage log writes rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mlxtune.cli import app
from mlxtune.config import Config
from mlxtune.errors import MlxtuneError
from mlxtune.serve import ServeResult, UsageLog, resolve_adapters, usage_db_path, wire


def fake_adapter(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "adapters.safetensors").write_bytes(b"")
    return path


def test_cli_flags_reach_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_serve(cfg: Config, on_ready: Any = None) -> ServeResult:
        seen["cfg"] = cfg
        return ServeResult(url="http://127.0.0.1:1", models=[], requests=0)

    monkeypatch.setattr("mlxtune.serve.serve", fake_serve)
    result = CliRunner().invoke(
        app,
        ["serve", "--set", "serve.max_queue=3", "--port", "9001", "--adapter", "a=runs/x",
         "--adapter", "b=runs/y", "--api-key", "k"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert cfg.serve.port == 9001 and cfg.serve.max_queue == 3 and cfg.serve.api_key == "k"
    assert cfg.serve.host == "127.0.0.1"
    assert {k: str(v) for k, v in cfg.serve.adapters.items()} == {"a": "runs/x", "b": "runs/y"}

    bad = CliRunner().invoke(app, ["serve", "--adapter", "no-equals-sign"])
    assert bad.exit_code == 2 and "NAME=PATH" in bad.output  # a usage error


def test_resolve_adapters(tmp_path: Path) -> None:
    good = fake_adapter(tmp_path / "runs" / "good")
    cfg = Config.model_validate(
        {"train": {"runs_dir": str(tmp_path / "runs")}, "serve": {"adapters": {"g": "good"}}}
    )
    assert resolve_adapters(cfg) == {"g": good}  # a run name under train.runs_dir
    assert usage_db_path(cfg, {"g": good}) == good / "usage.sqlite"
    for adapters, needle in (
        ({"x": str(tmp_path / "missing")}, "serve.adapters.x: "),
        ({"base": str(good)}, "clashes with serve.base_name"),
        ({"y": str(tmp_path)}, "serve.adapters.y: .* not an adapter directory"),
    ):
        cfg = Config.model_validate({"serve": {"adapters": adapters}})
        with pytest.raises(MlxtuneError, match=needle):
            resolve_adapters(cfg)


def test_usage_log_rows(tmp_path: Path) -> None:
    log = UsageLog(tmp_path / "u" / "usage.sqlite")
    log.log(endpoint="chat", model="a", prompt_tokens=3, completion_tokens=5, status=200)
    log.close()
    with sqlite3.connect(tmp_path / "u" / "usage.sqlite") as db:
        rows = db.execute(
            "SELECT model, prompt_tokens, completion_tokens, status, time FROM requests"
        )
        (row,) = rows.fetchall()
    assert row[:4] == ("a", 3, 5, 200) and row[4].endswith("Z")


# ---------------------------------------------------------------------------------------------
# wire: the OpenAI shapes, checked against the official client's own types


def test_whole_completions_parse_as_the_openai_client_types() -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletion

    use = wire.usage(7, 3)
    assert use == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    chat = ChatCompletion.model_validate(
        wire.completion("chatcmpl-1", 5, "ad1", "hi", "stop", use, chat=True)
    )
    assert chat.choices[0].message.content == "hi" and chat.choices[0].message.role == "assistant"
    assert chat.model == "ad1" and chat.usage is not None and chat.usage.total_tokens == 10
    text = Completion.model_validate(
        wire.completion("cmpl-1", 5, "base", "ok", "length", use, chat=False)
    )
    assert text.object == "text_completion" and text.choices[0].text == "ok"
    assert text.choices[0].finish_reason == "length"


def test_stream_chunks_parse_as_the_openai_client_types() -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletionChunk

    first = ChatCompletionChunk.model_validate(wire.chunk("c", 1, "m", "", chat=True, role=True))
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    piece = wire.chunk("c", 1, "m", "ab", chat=True)
    assert piece["choices"][0]["delta"] == {"content": "ab"} and "usage" not in piece
    last = ChatCompletionChunk.model_validate(
        wire.chunk("c", 1, "m", None, "stop", chat=True, usage=wire.usage(2, 1))
    )
    assert last.choices[0].delta.content is None and last.choices[0].finish_reason == "stop"
    assert last.usage is not None and last.usage.completion_tokens == 1
    text = Completion.model_validate(wire.chunk("c", 1, "m", None, "length", chat=False))
    assert text.choices[0].text == "" and text.object == "text_completion"


def test_model_list_and_ids() -> None:
    from openai.types import Model

    entry = wire.model_entry("ad1", 9, "models/tiny", "runs/ad1", "abc")
    listed = wire.model_list([entry])
    assert listed["object"] == "list"
    model = Model.model_validate(listed["data"][0])
    assert model.id == "ad1" and model.owned_by == "mlxtune"
    assert listed["data"][0]["adapter_sha256"] == "abc"
    chat_id, text_id = wire.new_id(chat=True), wire.new_id(chat=False)
    assert chat_id.startswith("chatcmpl-") and text_id.startswith("cmpl-")
    assert wire.new_id(chat=True) != chat_id


def test_errors_are_openai_error_bodies() -> None:
    from openai.types import ErrorObject

    err = wire.ApiError(404, "model 'x' not found", param="model", code="model_not_found")
    body = err.body()
    assert set(body) == {"error"}
    parsed = ErrorObject.model_validate(body["error"])
    assert (parsed.type, parsed.param, parsed.code) == (
        "invalid_request_error", "model", "model_not_found",
    )  # fmt: skip
    assert wire.error_body("busy", "server_error")["error"]["type"] == "server_error"


def test_validation_error_names_the_field() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        wire.ChatBody.model_validate({"messages": [{"role": "user", "content": "x"}], "top_p": 0})
    message, param = wire.validation_error(e.value.errors())
    assert param == "top_p" and message.startswith("top_p: ")
    assert wire.validation_error([]) == ("invalid request body", None)
    # FastAPI puts "body" first in the location; it is not part of the field name.
    body_error = [{"loc": ("body", "messages", 0, "role"), "msg": "bad role"}]
    assert wire.validation_error(body_error) == ("messages.0.role: bad role", "messages.0.role")


def test_request_bodies() -> None:
    from pydantic import ValidationError

    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    body = wire.ChatBody.model_validate(
        {
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": parts},
            ],
            "stop": "\n",
            "unknown_field": 1,  # OpenAI clients send fields we do not use: ignored
        }
    )
    assert [m.as_message() for m in body.messages] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]
    assert body.stops() == ["\n"] and wire.CompletionBody(prompt="p").stops() == []
    for bad in ({"stop": ["a", "b", "c", "d", "e"]}, {"stop": [""]}, {"n": 2}, {"prompt": ""}):
        with pytest.raises(ValidationError):
            wire.CompletionBody.model_validate({"prompt": "p", **bad})


def test_create_app_refuses_a_default_model_it_does_not_serve(tmp_path: Path) -> None:
    from mlxtune.serve import create_app

    cfg = Config.model_validate(
        {"serve": {"default_model": "nope", "usage_db": str(tmp_path / "u.sqlite")}}
    )
    with pytest.raises(MlxtuneError, match=r"serve\.default_model: 'nope'"):
        create_app(cfg, models={})
