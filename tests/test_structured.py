"""Structured output: response_format parsing, grammar errors, and constrained decoding with
mlx-lm's real generate and BatchGenerator on the random-init tiny model (which never writes
JSON on its own)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mlxtune.structured import (
    Grammars,
    ResponseFormat,
    ResponseFormatError,
    _Nesting,
    closing_reserve,
    parse_response_format,
)

SERVICE = {
    "type": "object",
    "properties": {
        "service": {"enum": ["gateway", "router", "core"]},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    },
    "required": ["service", "port"],
    "additionalProperties": False,
}
TAGS = {
    "type": "object",
    "properties": {
        "category": {"enum": ["ports", "training"]},
        "keywords": {
            "type": "array",
            "items": {"type": "string", "maxLength": 12},
            "minItems": 1,
            "maxItems": 2,
        },
        "ok": {"type": "boolean"},
    },
    "required": ["category", "keywords", "ok"],
}
# No bounds at all: only the closing reserve stops the random model's string.
FREE_TEXT = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def schema_format(schema: dict[str, Any], name: str = "answer") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> tuple[Any, Any]:
    from mlx_lm import load

    return load(str(tiny_model))


@pytest.fixture(scope="module")
def grammars(loaded: tuple[Any, Any]) -> Grammars:
    return Grammars(loaded[1])


# ---------------------------------------------------------------------------------------------
# parsing


def test_text_and_none_are_unconstrained() -> None:
    assert parse_response_format(None) is None
    assert parse_response_format({"type": "text"}) is None


def test_json_object_and_json_schema() -> None:
    fmt = parse_response_format({"type": "json_object"})
    assert fmt == ResponseFormat("json_object", {"type": "object"})
    fmt = parse_response_format(schema_format(SERVICE, "svc"))
    assert fmt is not None
    assert (fmt.type, fmt.name, fmt.strict, dict(fmt.schema)) == (
        "json_schema",
        "svc",
        True,
        SERVICE,
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"type": "xml"}, "response_format.type: unknown type 'xml'"),
        ("json", "response_format: expected an object, got str"),
        ({"type": "json_schema"}, "response_format.json_schema: required"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "json_schema.schema: required"),
        (schema_format([1]), "json_schema.schema: expected a JSON Schema object"),  # type: ignore[arg-type]
        (
            schema_format({"type": "object", "properties": {"a": {"type": "strin"}}}),
            "response_format.json_schema.schema.properties.a.type: invalid JSON Schema",
        ),
        (
            schema_format({"type": "string", "pattern": "("}),
            "json_schema.schema.pattern: invalid JSON Schema: '(' is not a 'regex'",
        ),
        ({"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}, "strict"),
    ],
)
def test_bad_formats_name_the_problem(value: Any, message: str) -> None:
    with pytest.raises(ResponseFormatError, match=re.escape(message)):
        parse_response_format(value)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "array", "uniqueItems": True}, r'unsupported keyword\(s\) \["uniqueItems"\]'),
        ({"not": {"type": "string"}}, r'unsupported keyword\(s\) \["not"\]'),
        ({"type": "string", "format": "colour"}, "Unknown format: colour"),
        ({"$ref": "#/$defs/missing"}, "does not exist"),
    ],
)
def test_schemas_the_engine_cannot_enforce_are_errors(
    grammars: Grammars, schema: dict[str, Any], message: str
) -> None:
    fmt = parse_response_format(schema_format(schema))
    assert fmt is not None
    with pytest.raises(
        ResponseFormatError, match="response_format.json_schema.schema: " + ".*" + message
    ):
        grammars.compile(fmt)


def test_nesting_counts_open_containers_and_strings() -> None:
    n = _Nesting()
    n.feed(b'{"a": ["x\\"y')
    assert (n.stack, n.in_string) == (2, True)
    assert n.after(b'"]}') == 0
    assert n.after(b'"') == 2
    n.feed(b'"]')
    assert (n.stack, n.in_string) == (1, False)


def test_closing_reserve_bounds() -> None:
    assert [closing_reserve(n) for n in (8, 64, 1000)] == [8, 16, 64]


# ---------------------------------------------------------------------------------------------
# decoding with mlx-lm


def _batch_generate(
    loaded: tuple[Any, Any],
    jobs: list[tuple[str, list[Any]]],
    *,
    max_tokens: int,
    temp: float = 0.0,
) -> list[str]:
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_sampler

    from mlxtune.formats import encode_prompt

    model, tokenizer = loaded
    gen = BatchGenerator(
        model,
        max_tokens=max_tokens,
        stop_tokens=[[t] for t in tokenizer.eos_token_ids],
        sampler=make_sampler(temp=temp),
    )
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q, _ in jobs]
    uids = gen.insert(prompts, logits_processors=[p for _, p in jobs])
    out: dict[int, list[int]] = {u: [] for u in uids}
    while responses := gen.next_generated():
        for r in responses:
            if r.finish_reason != "stop":
                out[r.uid].append(r.token)
    gen.close()
    return [tokenizer.decode(out[u]) for u in uids]


@pytest.mark.e2e
@pytest.mark.parametrize("temp", [0.0, 1.0])
def test_mixed_batch_every_constrained_answer_validates(
    loaded: tuple[Any, Any], grammars: Grammars, temp: float
) -> None:
    max_tokens = 48
    formats = [
        schema_format(SERVICE),
        schema_format(TAGS),
        schema_format(FREE_TEXT),
        {"type": "json_object"},
    ]
    jobs: list[tuple[str, list[Any]]] = []
    constraints = []
    for question in ("Which port does the gateway use?", "What rank does LoRA use?"):
        for value in formats:
            fmt = parse_response_format(value)
            assert fmt is not None
            constraint = grammars.constraint(fmt, max_tokens=max_tokens)
            constraints.append((fmt, constraint))
            jobs.append((question, [constraint]))
        jobs.append((question, []))  # free text, decoded in the same batch
    answers = _batch_generate(loaded, jobs, max_tokens=max_tokens, temp=temp)

    constrained = [a for a, (_, p) in zip(answers, jobs, strict=True) if p]
    free = [a for a, (_, p) in zip(answers, jobs, strict=True) if not p]
    for answer, (fmt, constraint) in zip(constrained, constraints, strict=True):
        jsonschema.validate(json.loads(answer), dict(fmt.schema))
        assert constraint.complete and constraint.error is None
    # The model cannot write JSON by itself: the free answers beside them are not JSON.
    for answer in free:
        with pytest.raises(json.JSONDecodeError):
            json.loads(answer)


@pytest.mark.e2e
def test_unbounded_string_is_closed_inside_the_budget(
    loaded: tuple[Any, Any], grammars: Grammars
) -> None:
    fmt = parse_response_format(schema_format(FREE_TEXT))
    assert fmt is not None
    constraint = grammars.constraint(fmt, max_tokens=24)
    (answer,) = _batch_generate(loaded, [("Hello?", [constraint])], max_tokens=24)
    assert isinstance(json.loads(answer)["answer"], str)
    assert constraint.closed_early
    assert len(constraint.tokens) <= 24


@pytest.mark.e2e
def test_mlx_lm_generate_accepts_the_constraint(
    loaded: tuple[Any, Any], grammars: Grammars
) -> None:
    from mlx_lm import generate

    from mlxtune.formats import encode_prompt

    model, tokenizer = loaded
    fmt = parse_response_format(schema_format(SERVICE))
    assert fmt is not None
    constraint = grammars.constraint(fmt, max_tokens=40)
    prompt = encode_prompt(tokenizer, [{"role": "user", "content": "Which port?"}])
    text = generate(model, tokenizer, prompt, max_tokens=40, logits_processors=[constraint])
    jsonschema.validate(json.loads(text), SERVICE)
    # It tracked exactly what it accepted (the final EOS is not part of the answer).
    assert tokenizer.decode(constraint.tokens) == text
