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
    assert [closing_reserve(n) for n in (8, 60, 1000)] == [16, 20, 64]


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


# ---------------------------------------------------------------------------------------------
# format_compliance, config, validate-format, the shipped dataset


def test_format_compliance_and_field_matches() -> None:
    from mlxtune.metrics import field_matches, format_compliance, schema_problem, score_format

    good = '{"service": "gateway", "port": 8080}'
    assert format_compliance(good, SERVICE) == 1.0
    assert format_compliance(" " + good + "\n", SERVICE) == 1.0
    assert format_compliance('{"service": "gateway", "port": 0}', SERVICE) == 0.0
    assert format_compliance("```json\n" + good + "\n```", SERVICE) == 0.0
    assert format_compliance("[1, 2]", None) == 1.0  # no schema: any JSON
    assert schema_problem('{"service": "web", "port": 1}', SERVICE) == (
        "does not match the schema at $.service: 'web' is not one of ['gateway', 'router', 'core']"
    )
    assert (schema_problem("{'a': 1}", None) or "").startswith("not JSON")
    assert field_matches('{"service": "gateway", "port": 1}', good) == {
        "service": 1.0,
        "port": 0.0,
    }
    assert field_matches("not json", good) == {"service": 0.0, "port": 0.0}
    assert field_matches(good, "plain text") == {}
    assert score_format('{"service": "gateway"}', good, SERVICE) == {
        "format_compliance": 0.0,
        "field_exact_match": 0.5,
    }


def test_output_schema_inline_or_beside_the_config(tmp_path: Path) -> None:
    from mlxtune.config import load_config
    from mlxtune.errors import ConfigError

    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "svc.json").write_text(json.dumps(SERVICE))
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("evaluate:\n  output_schema: schemas/svc.json\n  constrained: true\n")
    assert load_config(cfg_path).evaluate.resolved_output_schema() == SERVICE
    inline = load_config(overrides=['evaluate.output_schema={"type": "object"}'])
    assert inline.evaluate.resolved_output_schema() == {"type": "object"}
    assert load_config().evaluate.resolved_output_schema() is None

    with pytest.raises(ConfigError, match="evaluate: constrained needs output_schema"):
        load_config(overrides=["evaluate.constrained=true"])
    missing = load_config(overrides=["evaluate.output_schema=nowhere.json"])
    with pytest.raises(
        ConfigError, match=r"evaluate\.output_schema: nowhere\.json: file not found"
    ):
        missing.evaluate.resolved_output_schema()
    (tmp_path / "bad.json").write_text('{"type": "object",\n}')
    bad = load_config(overrides=[f"evaluate.output_schema={tmp_path / 'bad.json'}"])
    with pytest.raises(ConfigError, match=r"bad.json:2: invalid JSON"):
        bad.evaluate.resolved_output_schema()
    wrong = load_config(overrides=['evaluate.output_schema={"type": 5}'])
    with pytest.raises(ConfigError, match=r"evaluate.output_schema.type: invalid JSON Schema"):
        wrong.evaluate.resolved_output_schema()


def test_validate_format_checks_answers_against_the_schema(
    tmp_path: Path, tiny_model: Path
) -> None:
    from conftest import run_cli

    def chat(answer: str) -> str:
        q = f"Which port, {answer[:12]}?"
        return json.dumps(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]}
        )

    rows = ['{"service": "gateway", "port": 8080}', '{"service": "gateway"}', "port 8080"]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(chat(a) for a in rows) + "\n")
    (tmp_path / "svc.json").write_text(json.dumps(SERVICE))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model:\n  path: {tiny_model}\ntrain:\n  batch_size: 1\n"
        "evaluate:\n  output_schema: svc.json\n"
    )
    proc = run_cli("validate-format", "-c", str(cfg), str(data))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = " ".join((proc.stdout + proc.stderr).split())
    missing_port = "answer does not match the schema at $: 'port' is a required property"
    assert f"{data}:2: messages[1].content: {missing_port}" in out
    assert f"{data}:3: messages[1].content: answer not JSON" in out
    assert f"{data}:1:" not in out


def test_shipped_structured_data_is_current_and_valid(
    tmp_path: Path, tiny_model: Path, repo_root: Path
) -> None:
    import subprocess
    import sys

    from mlxtune.config import load_config
    from mlxtune.data.prepare import prepare
    from mlxtune.data.validate import validate_format

    shipped = repo_root / "data" / "structured"
    subprocess.run(
        [
            sys.executable,
            str(repo_root / "scripts" / "make_structured_data.py"),
            "--out",
            str(tmp_path / "gen"),
        ],
        check=True,
        capture_output=True,
    )
    for name in ("domain_facts.jsonl", "schema.json"):
        assert (tmp_path / "gen" / name).read_text() == (shipped / name).read_text(), name

    cfg = load_config(
        repo_root / "configs" / "structured.yaml",
        [f"model.path={tiny_model}", f"data.dir={tmp_path / 'data'}"],
    )
    prepare(cfg)
    result = validate_format(cfg)
    assert result.ok, [str(p) for p in result.problems]
    assert result.rows == 308
