from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from mlxtune.formats import (
    FORMATS,
    detect_format,
    encode,
    encode_for_training,
    encode_for_training_many,
    encode_prompt,
    prompt_and_answer,
    render,
    role_order_problem,
    schema,
    to_canonical,
)

ROWS = {
    "chat": {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
    "alpaca": {"instruction": "Q", "input": "ctx", "output": "A", "category": "c"},
    "sharegpt": {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
    "completions": {"prompt": "Q", "completion": "A"},
    "text": {"text": "hello"},
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_detect_validate_and_normalise(fmt: str) -> None:
    row = ROWS[fmt]
    assert detect_format(row) == fmt
    jsonschema.validate(row, schema(fmt))
    canon = to_canonical(row)
    if fmt == "text":
        assert canon == {"text": "hello"}
    else:
        assert canon["messages"][-1] == {"role": "assistant", "content": "A"}
        assert canon["messages"][0]["role"] == "user"


def test_alpaca_keeps_input_and_metadata() -> None:
    canon = to_canonical(ROWS["alpaca"], system_prompt="Be brief.")
    assert canon["messages"][0] == {"role": "system", "content": "Be brief."}
    assert canon["messages"][1]["content"] == "Q\n\nctx"
    assert canon["category"] == "c"


def test_role_order() -> None:
    ok = [{"role": "system", "content": "s"}, *ROWS["chat"]["messages"]]
    assert role_order_problem(ok) is None
    assert "expected 'user'" in str(role_order_problem(list(reversed(ok[1:]))))
    assert "last message" in str(role_order_problem(ok[:2]))


@pytest.mark.e2e
def test_three_turn_mask_trains_every_assistant_turn(tiny_model: Path) -> None:
    from mlx_lm import load

    _, tok = load(str(tiny_model))
    msgs = [{"role": "system", "content": "sys"}]
    for i in range(3):
        msgs += [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    tokens, mask = encode_for_training(tok, {"messages": msgs})
    assert tokens == encode(tok, render(tok, msgs))
    trained = tok.decode([t for t, m in zip(tokens, mask, strict=True) if m])
    for i in range(3):
        assert f"answer {i}<|im_end|>" in trained
        assert f"question {i}" not in trained
    assert "sys" not in trained and "<|im_start|>assistant" not in trained
    # the prompt used at inference is exactly the masked prefix of the training tokens
    prompt_msgs, answer = prompt_and_answer({"messages": msgs})
    prompt = encode_prompt(tok, prompt_msgs)
    assert tokens[: len(prompt)] == prompt and answer == "answer 2"
    assert not any(mask[: len(prompt)][-3:])


@pytest.mark.e2e
def test_batched_encoding_equals_one_record_at_a_time(tiny_model: Path, domain_data: Path) -> None:
    """Train, prepare and validate-format encode in batches; the tokens and masks are those of
    rendering and encoding each text on its own (the definition, spelled out here)."""
    import json

    from mlx_lm import load

    _, tok = load(str(tiny_model))
    rows = [json.loads(line) for line in (domain_data / "train.jsonl").open()][:40]
    turns = [{"role": "system", "content": "sys"}]
    for i in range(3):
        turns += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    rows += [{"messages": turns}, {"text": "plain text"}, {**rows[0], "tools": [tool]}]

    def one_at_a_time(record: dict, mask_prompt: bool) -> tuple[list[int], list[bool]]:
        if "messages" not in record:
            tokens = encode(tok, record["text"])
            return [*tokens, tok.eos_token_id], [True] * (len(tokens) + 1)
        msgs, tools = record["messages"], record.get("tools")
        tokens = encode(tok, render(tok, msgs, tools=tools))
        mask = [not mask_prompt] * len(tokens)
        for i, m in enumerate(msgs):
            if mask_prompt and m["role"] == "assistant":
                head = render(tok, msgs[:i], add_generation_prompt=True, tools=tools)
                start = len(encode(tok, head))
                end = len(encode(tok, render(tok, msgs[: i + 1], tools=tools)))
                mask[start:end] = [True] * (min(end, len(tokens)) - start)
        return tokens, mask

    for mask_prompt in (True, False):
        batched = encode_for_training_many(tok, rows, mask_prompt=mask_prompt)
        assert batched == [one_at_a_time(r, mask_prompt) for r in rows]
        trained, total = sum(batched[-3][1]), len(batched[-3][1])
        assert (trained < total) == mask_prompt  # the three-turn record masks its prompts
