"""Every request field serve honours, driven through the official openai client, with each
response checked against the client's own types; every field it does not honour is a 400
naming it. docs/serve.md lists the same fields."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, make_adapter
from mlxtune.config import Config

pytestmark = pytest.mark.e2e
MESSAGES = [{"role": "user", "content": "What does the MLX framework do?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def client(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import openai
    from starlette.testclient import TestClient

    from mlxtune.serve import create_app

    tmp = tmp_path_factory.mktemp("conformance")
    adapter = make_adapter(tiny_model, tmp / "runs" / "ad1", b_scale=0.05)
    cfg = Config.model_validate(
        {
            "model": {"path": str(tiny_model)},
            "serve": {"adapters": {"ad1": str(adapter)}, "usage_db": str(tmp / "u.sqlite")},
        }
    )
    with TestClient(create_app(cfg)) as http:
        yield openai.OpenAI(
            base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0
        )


def _chat(client: Any, **fields: Any) -> Any:
    from openai.types.chat import ChatCompletion

    raw = client.chat.completions.with_raw_response.create(
        model="ad1", messages=MESSAGES, max_tokens=6, **fields
    )
    return ChatCompletion.model_validate(json.loads(raw.text))


def test_chat_sampling_fields_are_honoured(client: Any) -> None:
    greedy = _chat(client, temperature=0)
    assert greedy.choices[0].message.content
    seeded = [
        _chat(
            client, temperature=1.0, seed=7, top_p=0.9, extra_body={"top_k": 20, "min_p": 0.05}
        ).choices[0]
        for _ in range(2)
    ]
    assert seeded[0].message.content == seeded[1].message.content
    penalised = _chat(
        client, temperature=0, presence_penalty=1.5, frequency_penalty=1.5,
        extra_body={"repetition_penalty": 1.3}, user="u-1", stop=["\n"], n=1,
    )  # fmt: skip
    assert penalised.choices[0].finish_reason in ("stop", "length")
    # a huge bias on one token makes greedy decoding pick it every time
    forced = _chat(client, temperature=0, logit_bias={"65": 100}, max_completion_tokens=3)
    assert forced.usage.completion_tokens == 3
    from mlx_lm.utils import load_tokenizer

    tok = load_tokenizer(_model_dir(client))
    assert forced.choices[0].message.content == tok.decode([65, 65, 65])


def _model_dir(client: Any) -> Path:
    return Path(client.models.retrieve("base").root)


def _same_text(entries: list[Any], text: str) -> bool:
    """The tokens spell the answer (mlx-lm's detokenizer drops the first token's leading
    space from the text)."""
    joined = "".join(e.token for e in entries)
    return joined == text or (joined.startswith(" ") and joined[1:] == text)


def test_chat_logprobs(client: Any) -> None:
    out = _chat(client, temperature=0, logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy: the best
    assert _same_text(content, out.choices[0].message.content)


def test_stream_with_include_usage_and_logprobs(client: Any) -> None:
    from openai.types.chat import ChatCompletionChunk

    stream = client.chat.completions.create(
        model="ad1", messages=MESSAGES, max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}, logprobs=True,
    )  # fmt: skip
    chunks = [ChatCompletionChunk.model_validate(c.model_dump()) for c in stream]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 5
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    tokens = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert _same_text(tokens, text)


def test_tools_render_into_the_prompt_and_calls_come_back(client: Any) -> None:
    plain = _chat(client, temperature=0)
    with_tools = _chat(client, temperature=0, tools=TOOLS, tool_choice="auto")
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    none = _chat(client, temperature=0, tools=TOOLS, tool_choice="none")
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    # a conversation that already holds a call and its result renders and answers
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    ]  # fmt: skip
    out = client.chat.completions.create(model="ad1", messages=history, max_tokens=4, tools=TOOLS)
    assert out.choices[0].finish_reason in ("stop", "length")


def test_tool_calls_are_read_back_in_openai_shape(tiny_model: Path) -> None:
    from mlx_lm.utils import load_tokenizer
    from openai.types.chat import ChatCompletion

    from mlxtune.serve import wire
    from mlxtune.serve.tools import extract_tool_calls

    tok = load_tokenizer(tiny_model)
    text = (
        'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    )
    content, calls = extract_tool_calls(text, tok, TOOLS)
    assert content == "Sure."
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    body = wire.completion(
        "id", 0, "m", content, "stop", wire.usage(1, 1), chat=True, tool_calls=calls
    )
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].finish_reason == "tool_calls"
    assert parsed.choices[0].message.tool_calls[0].function.name == "get_weather"
    cut = '<tool_call>\n{"name": "get_weather", "argum'
    assert extract_tool_calls(cut, tok, TOOLS) == (cut, [])


def test_completions_prompt_forms(client: Any) -> None:
    from mlx_lm.utils import load_tokenizer
    from openai.types import Completion

    tok = load_tokenizer(_model_dir(client))
    ids = tok.encode("MLX runs", add_special_tokens=False)

    def complete(prompt: Any, **fields: Any) -> Completion:
        raw = client.completions.with_raw_response.create(
            model="ad1", prompt=prompt, max_tokens=4, temperature=0, **fields
        )
        return Completion.model_validate(json.loads(raw.text))

    text = complete("MLX runs")
    assert complete(ids).choices[0].text == text.choices[0].text
    batch = complete(["MLX runs", "Other"], logprobs=2)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == text.choices[0].text
    assert len(batch.choices[0].logprobs.tokens) == 4
    other = tok.encode("Other", add_special_tokens=False)
    assert batch.usage.prompt_tokens == len(ids) + len(other)
    ids_batch = complete([ids, other])
    assert [c.text for c in ids_batch.choices] == [c.text for c in batch.choices]


def test_models_endpoints_say_what_each_id_is(client: Any, tiny_model: Path) -> None:
    from openai.types import Model

    listed = {m.id: m for m in client.models.list().data}
    adapter = Model.model_validate(client.models.retrieve("ad1").model_dump())
    assert adapter.root.endswith("ad1") and adapter.parent == str(tiny_model)
    base = client.models.retrieve("base")
    assert base.root == str(tiny_model) and base.parent is None
    assert listed["ad1"].root == adapter.root
    import openai

    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


@pytest.mark.parametrize(
    ("endpoint", "field", "value"),
    [
        ("chat", "audio", {"voice": "alloy", "format": "wav"}),
        ("chat", "functions", [{"name": "f"}]),
        ("chat", "store", True),
        ("chat", "made_up_field", 1),
        ("chat", "tool_choice", "required"),
        ("chat", "n", 2),
        ("completions", "suffix", "end"),
        ("completions", "echo", True),
        ("completions", "best_of", 3),
    ],
)
def test_fields_not_honoured_are_a_400_naming_them(
    client: Any, endpoint: str, field: str, value: Any
) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        if endpoint == "chat":
            client.chat.completions.create(
                model="ad1", messages=MESSAGES, extra_body={field: value}
            )
        else:
            client.completions.create(model="ad1", prompt="x", extra_body={field: value})
    assert field in str(err.value)


def test_docs_list_every_field() -> None:
    from mlxtune.serve.openai_fields import HONOURED, REFUSED
    from mlxtune.serve.wire import ChatBody, CompletionBody

    # every field the bodies declare is listed as honoured (a new one must be documented)
    assert set(ChatBody.model_fields) <= set(HONOURED["chat"])
    assert set(CompletionBody.model_fields) <= set(HONOURED["completions"])

    doc = (REPO / "docs" / "serve.md").read_text()
    table = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", doc, re.M))
    for endpoint in ("chat", "completions"):
        for name in HONOURED[endpoint]:
            assert name in table and "400" not in table[name].split("honoured")[0], name
        for name in REFUSED[endpoint]:
            assert name in table and table[name].strip().startswith("400"), name
