"""The data checks' fast paths give what the paths they shortcut give: the compiled chat
template beside `apply_chat_template`, the Rust batch beside the transformers call, pipelined
lengths beside one-record encoding, the byte-table fold beside the regex, the generated schema
test beside jsonschema, and validate-format without the tokenizer beside with it."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import DOMAIN_DATA, REPO
from mlxtune import formats
from mlxtune.config import ModelConfig, load_config
from mlxtune.data import records as rec
from mlxtune.data.prepare import prepare
from mlxtune.data.validate import validate_format
from mlxtune.errors import BadData

SHIPPED = [DOMAIN_DATA, REPO / "data/structured/domain_facts.jsonl"]
TOOLS = REPO / "examples/tools/tool_calls.jsonl"

# exercises what a template may read: special tokens, kwargs, namespace, loop state, name
RICH_TEMPLATE = (
    "{% set ns = namespace(system=false) %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = true %}{% endif %}"
    "{% endfor %}{% if not ns.system %}<|im_start|>system\ndefault<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}"
    "{% if m.name is defined %} ({{ m.name }}){% endif %}\n{{ m['content'] | trim }}"
    "{% if loop.last and m['role'] == 'assistant' %}{{ eos_token }}{% else %}<|im_end|>{% endif %}"
    "\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
    "{% endif %}"
)


@pytest.fixture(scope="module")
def tok(tiny_model: Path) -> Any:
    tokenizer, _, _ = rec.load_tokenizer(ModelConfig(path=str(tiny_model)))
    return tokenizer


def _shipped_conversations() -> list[list[dict[str, Any]]]:
    rows = [json.loads(line) for path in SHIPPED for line in path.open()]
    return [formats.to_canonical(r)["messages"] for r in rows]


def _tricky_conversations() -> list[list[dict[str, Any]]]:
    u, a = {"role": "user", "content": "  Wie spät?  "}, {"role": "assistant", "content": "Zwölf ✓"}
    return [
        [{"role": "system", "content": "Be brief."}, u, a],
        [u, a, {"role": "user", "content": "und jetzt"}, {"role": "assistant", "content": ""}],
        [u],
        [{**u, "name": "ana"}, a],
        [u, {**a, "reasoning_content": "think"}],  # aliased by transformers
    ]


# turns ChatML cannot render (it adds content to strings), so only the richer template gets them
ODD_TURNS = [
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}],  # key dropped
    [{"role": "user", "content": [{"type": "text", "text": "parts"}]}],
]


def _expected(hf: Any, convs: list[Any], gen: bool, tools: Any = None, **kw: Any) -> list[str]:
    """apply_chat_template one conversation at a time: the definition."""
    return [
        hf.apply_chat_template(
            [formats._with_argument_objects(m) for m in c],
            tools=tools,
            tokenize=False,
            add_generation_prompt=gen,
            **kw,
        )
        for c in convs
    ]


@pytest.mark.e2e
def test_render_many_is_apply_chat_template_byte_for_byte(tok: Any) -> None:
    hf = formats._hf(tok)
    assert formats._compiled_template(hf, {}) is not None  # the fast path is really taken
    convs = _shipped_conversations() + _tricky_conversations()
    for gen in (False, True):
        assert formats.render_many(tok, convs, add_generation_prompt=gen) == _expected(
            hf, convs, gen
        )
    tools_rows = [formats.to_canonical(json.loads(line)) for line in TOOLS.open()]
    for row in tools_rows:
        assert formats.render_many(tok, [row["messages"]], tools=row.get("tools")) == _expected(
            hf, [row["messages"]], False, row.get("tools")
        )


@pytest.mark.e2e
def test_render_many_with_a_richer_template_and_kwargs(tiny_model: Path) -> None:
    tokenizer, _, _ = rec.load_tokenizer(ModelConfig(path=str(tiny_model)))
    hf = formats._hf(tokenizer)
    hf.chat_template = RICH_TEMPLATE
    convs = _tricky_conversations() + ODD_TURNS + _shipped_conversations()[:20]
    for kwargs in ({}, {"enable_thinking": False}, {"enable_thinking": True}):
        got = formats.render_many(
            tokenizer, convs, add_generation_prompt=True, template_kwargs=kwargs
        )
        assert got == _expected(hf, convs, True, **kwargs)
    # kwargs installed from the config reach the template too (resolve_template's attribute)
    setattr(hf, formats.TEMPLATE_KWARGS_ATTR, {"enable_thinking": False})
    got = formats.render_many(tokenizer, convs[:3], add_generation_prompt=True)
    assert got == _expected(hf, convs[:3], True, enable_thinking=False)
    assert all(text.endswith("<think></think>") for text in got)
    # a kwarg that is not a plain value goes through apply_chat_template itself
    odd = {"enable_thinking": {"nested": True}}
    assert formats._compiled_template(hf, odd) is None
    assert formats.render_many(tokenizer, convs[:3], template_kwargs=odd) == _expected(
        hf, convs[:3], False, **{**odd}
    )


@pytest.mark.e2e
def test_encode_many_is_the_transformers_call(tiny_model: Path) -> None:
    tokenizer, _, _ = rec.load_tokenizer(ModelConfig(path=str(tiny_model)))
    hf = formats._hf(tokenizer)
    texts = formats.render_many(tokenizer, _shipped_conversations()[:50])
    texts += ["", "<|im_end|>", "héllo <|im_start|> wörld", "x" * 3000]
    want = [list(hf.encode(t, add_special_tokens=False)) for t in texts]
    assert formats._direct_backend(hf) is not None
    assert formats.encode_many(tokenizer, texts) == want
    # truncation set on the Rust tokenizer: transformers would lift it per call, so it is used
    hf.backend_tokenizer.enable_truncation(8)
    assert formats._direct_backend(hf) is None
    assert formats.encode_many(tokenizer, texts) == want


@pytest.mark.e2e
def test_pipelined_training_lengths(tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [formats.to_canonical(json.loads(line)) for line in DOMAIN_DATA.open()][:30]
    records += [formats.to_canonical(json.loads(line)) for line in TOOLS.open()]
    records += [{"text": "plain"}, {"text": ""}, {"text": "ends <|im_end|>"}]
    want = [len(formats.encode_for_training(tok, r)[0]) for r in records]
    monkeypatch.setattr(formats, "ENCODE_BATCH", 4)  # many batches in flight
    assert formats.training_lengths(tok, records) == want
    counter = formats.TrainingLengths(tok)
    with counter:
        for r in records:
            counter.add(r)
        assert counter.lengths() == want


def test_fold_byte_table_is_the_regex() -> None:
    import re
    import unicodedata

    non_word = re.compile(r"[\W_]+")
    rnd = random.Random(0)
    samples = ["", " ", "_", "a_b", "A__B  c\t\n", "\x1e\x1fX", "Ünïcode ß", "ﬁ", "１２", "a\xa0b"]
    samples += [
        "".join(chr(rnd.randrange(128)) for _ in range(rnd.randrange(30))) for _ in range(3000)
    ]
    for text in samples:
        want = non_word.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
        assert rec.fold(text) == want, repr(text)


def _random_value(rnd: random.Random, depth: int = 0) -> Any:
    atoms = [None, True, 0, 1, 2.5, "", "x", "user", "assistant", "tool", "bogus", [], {}]
    keys = ["messages", "role", "content", "tool_calls", "tools", "id", "keywords", "instruction"]
    keys += ["input", "output", "conversations", "from", "value", "prompt", "completion", "text"]
    roll = rnd.random()
    if depth > 3 or roll < 0.4:
        return rnd.choice(atoms)
    if roll < 0.7:
        return {rnd.choice(keys): _random_value(rnd, depth + 1) for _ in range(rnd.randrange(5))}
    return [_random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]


def test_generated_schema_test_agrees_with_jsonschema() -> None:
    rnd = random.Random(1)
    rows = [_random_value(rnd) for _ in range(3000)]
    rows += [json.loads(line) for path in (*SHIPPED, TOOLS) for line in path.open()]
    rows += [
        {"messages": [{"role": r, "content": c}]} for r in ("user", "x") for c in ("a", None, 1)
    ]
    rows += [{"instruction": i, "output": "a"} for i in ("", "q", 1)]
    for fmt in formats.FORMATS:
        accept = rec._fast(fmt)
        assert accept is not None
        for row in rows:
            valid = not any(True for _ in rec._validator(fmt).iter_errors(row))
            assert accept(row) == valid, (fmt, row)


def _prepared(tmp_path: Path, model: Path) -> Path:
    cfg = {
        "model": {"path": str(model)},
        "data": {"dir": str(tmp_path / "prepared")},
        "prepare": {
            "sources": [{"path": str(DOMAIN_DATA)}],
            "valid_ratio": 0.1,
            "test_ratio": 0.15,
        },
        "train": {"max_seq_length": 256, "batch_size": 4},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    prepare(load_config(path))
    return path


@pytest.mark.e2e
def test_validate_needs_no_tokenizer_for_what_prepare_measured(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    config = _prepared(tmp_path, model)
    cfg = load_config(config)
    loads: list[str] = []
    real = rec.load_tokenizer

    def counted(model_cfg: ModelConfig) -> Any:
        loads.append(model_cfg.path)
        return real(model_cfg)

    monkeypatch.setattr(rec, "load_tokenizer", counted)
    fast = validate_format(cfg)
    assert fast.ok and loads == []
    sidecar = tmp_path / "prepared" / rec.LENGTHS_FILE
    kept = sidecar.read_text()
    sidecar.unlink()
    assert validate_format(cfg).to_dict() == fast.to_dict() and len(loads) == 1
    sidecar.write_text(kept)
    # each of these loads the tokenizer and checks again what it decides
    assert validate_format(cfg, show=1).examples and len(loads) == 2
    kwargs = load_config(config, ['model.chat_template_kwargs={"enable_thinking": false}'])
    validate_format(kwargs)
    assert len(loads) == 3
    (model / "tokenizer_config.json").write_text(
        (model / "tokenizer_config.json").read_text() + " "
    )
    assert validate_format(cfg).ok and len(loads) == 4
    (model / "tokenizer_config.json").write_text((tiny_model / "tokenizer_config.json").read_text())
    train = tmp_path / "prepared" / "train.jsonl"
    rows = [json.loads(line) for line in train.open()]
    rows[1]["messages"][-1]["content"] = "far too long " * 200  # edited after prepare
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    edited = validate_format(cfg)
    assert len(loads) == 5 and edited.counts() == {"length": 1}
    assert edited.problems[0].line == 2


@pytest.mark.e2e
def test_prepare_pauses_the_cycle_collector_only_while_it_runs(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    seen: list[bool] = []
    real = formats.TrainingLengths.add

    def add(self: Any, record: dict[str, Any]) -> None:
        seen.append(gc.isenabled())
        real(self, record)

    monkeypatch.setattr(formats.TrainingLengths, "add", add)
    config = _prepared(tmp_path, tiny_model)
    assert seen and not any(seen) and gc.isenabled()
    source = tmp_path / "bad.jsonl"
    source.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    broken = load_config(config, [f"prepare.sources=[{{path: {source}}}]", "prepare.out_dir=x"])
    with pytest.raises(BadData):
        prepare(broken, force=True)
    assert gc.isenabled()  # restored after a failure too
    gc.disable()
    try:
        prepare(load_config(config), force=True)
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()


def test_loads_json_is_json_loads_without_non_finite_numbers() -> None:
    from mlxtune.io import loads_json

    texts = ['{"a": [1, "NaN", {"b": null}]}', "\ufeff{}", '{"a":', "", "[1] x", '"\\ud800"']
    for text in texts:  # the one decoder gives json.loads' values and errors
        try:
            want: Any = json.loads(text)
        except json.JSONDecodeError as e:
            want = (e.msg, e.pos)
        try:
            got: Any = loads_json(text)
        except json.JSONDecodeError as e:
            got = (e.msg, e.pos)
        assert got == want, text
    for text, pos in (('{"a": NaN}', 6), ('{"s": "NaN", "b": -Infinity}', 18), ("[Infinity]", 1)):
        with pytest.raises(json.JSONDecodeError, match="is not valid JSON") as err:
            loads_json(text)
        assert err.value.pos == pos
