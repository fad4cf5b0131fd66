"""Record formats and prompt rendering: the single source of truth.

Every verb (prepare, validate-format, train, evaluate, serve, bench) turns records into
prompts through this module and nowhere else. The seeds scored 28% because training,
validation and serving each built prompt strings by hand; here there is one renderer, the
tokenizer's chat template (or the config's template when the model has none).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import ConfigError, DataError

if TYPE_CHECKING:
    from mlxtune.config import ModelConfig

FORMATS = ("chat", "alpaca", "sharegpt", "completions", "text")
META_KEYS = ("id", "category", "keywords", "source", "fact", "images")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
}

# ChatML, as Qwen and many small instruct models use it; the tiny model ships it too.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BUILTIN_TEMPLATES = {"chatml": CHATML_TEMPLATE}

Messages = list[dict[str, str]]


# ---------------------------------------------------------------------------------------------
# Formats and normalisation


@cache
def schema(fmt: str) -> dict[str, Any]:
    """The JSON Schema shipped for a record format."""
    text = resources.files("mlxtune.schemas").joinpath(f"{fmt}.schema.json").read_text()
    return dict(json.loads(text))


def detect_format(row: dict[str, Any]) -> str | None:
    """The format a single row is in, by its keys; None if it matches none."""
    if "messages" in row:
        return "chat"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "completions"
    if "text" in row:
        return "text"
    return None


def to_canonical(
    row: dict[str, Any], fmt: str | None = None, system_prompt: str | None = None
) -> dict[str, Any]:
    """Normalise any supported row to `{"messages": [...]}` (or `{"text": ...}`) plus metadata."""
    fmt = fmt or detect_format(row)
    messages: Messages
    if fmt == "chat":
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    elif fmt == "sharegpt":
        messages = [
            {"role": SHAREGPT_ROLES[m["from"]], "content": m["value"]} for m in row["conversations"]
        ]
        if row.get("system"):
            messages.insert(0, {"role": "system", "content": row["system"]})
    elif fmt == "alpaca":
        user = row["instruction"]
        if row.get("input"):
            user = f"{user}\n\n{row['input']}"
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": row["output"]},
        ]
        if row.get("system"):
            messages.insert(0, {"role": "system", "content": row["system"]})
    elif fmt == "completions":
        messages = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ]
    elif fmt == "text":
        return {"text": row["text"], **_meta(row)}
    else:
        raise ValueError(f"unsupported record format: {fmt!r}")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {"messages": messages, **_meta(row)}


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in META_KEYS if k in row}


def role_order_problem(messages: Messages) -> str | None:
    """Optional system first, then user/assistant alternating, ending with assistant."""
    if not messages:
        return "no messages"
    body = messages[1:] if messages[0].get("role") == "system" else messages
    if not body:
        return "only a system message"
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m.get("role") != want:
            index = i + (len(messages) - len(body))
            return f"messages[{index}].role is {m.get('role')!r}, expected {want!r}"
    if body[-1].get("role") != "assistant":
        return "last message must be from the assistant"
    return None


def read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every canonical record of a prepared split, checked row by row
    so a bad row names its file and line. Train and evaluate both read splits through this."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: not found (run mlxtune prepare, or set data.dir)") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict) or ("messages" not in row and "text" not in row):
            raise DataError(f"{path}:{n}: expected a canonical record with messages or text")
        if "messages" in row:
            problem = role_order_problem(row["messages"])
            if problem:
                raise DataError(f"{path}:{n}: {problem}")
        records.append((n, row))
    return records


def prompt_and_answer(record: dict[str, Any]) -> tuple[Messages, str]:
    """Split a chat record into the messages before the final answer, and that answer."""
    messages = record["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        return list(messages), ""
    return list(messages[:-1]), messages[-1]["content"]


# ---------------------------------------------------------------------------------------------
# Rendering


def resolve_template(tokenizer: Any, model_cfg: ModelConfig | None = None) -> str:
    """Install the template this run renders with on the tokenizer, and return it.

    The tokenizer's own template wins unless the config overrides it; a model without one
    needs `model.chat_template` in the config.
    """
    own = getattr(tokenizer, "chat_template", None)
    wanted = model_cfg.chat_template if model_cfg else None
    if wanted and (model_cfg and (model_cfg.override_chat_template or not own)):
        template = BUILTIN_TEMPLATES.get(wanted, wanted)
        _hf(tokenizer).chat_template = template
        return template
    if own:
        return str(own)
    raise ConfigError(
        "model.chat_template: the tokenizer has no chat template; set model.chat_template "
        "to 'chatml' or a Jinja template"
    )


def _hf(tokenizer: Any) -> Any:
    """The Hugging Face tokenizer under mlx-lm's TokenizerWrapper (or the tokenizer itself)."""
    return getattr(tokenizer, "_tokenizer", tokenizer)


def template_fingerprint(template: str) -> str:
    return hashlib.sha256(template.encode()).hexdigest()[:16]


def render(tokenizer: Any, messages: Messages, *, add_generation_prompt: bool = False) -> str:
    """Render messages to text with the tokenizer's chat template. The only renderer."""
    text = _hf(tokenizer).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return str(text)


def encode(tokenizer: Any, text: str) -> list[int]:
    # The template already holds any special tokens; don't let the tokenizer add a second BOS.
    return list(_hf(tokenizer).encode(text, add_special_tokens=False))


def encode_prompt(tokenizer: Any, messages: Messages) -> list[int]:
    """Tokens for generation: the conversation so far plus the assistant header."""
    return encode(tokenizer, render(tokenizer, messages, add_generation_prompt=True))


def encode_for_training(
    tokenizer: Any, record: dict[str, Any], *, mask_prompt: bool = True
) -> tuple[list[int], list[bool]]:
    """Tokens of a whole record and a per-token flag: True where the loss is taken.

    Every assistant turn is trained, every system/user turn (and each assistant header) is
    masked; mlx-lm masks only one prefix. Plain text records train on every token.
    """
    if "text" in record and "messages" not in record:
        tokens = encode(tokenizer, record["text"])
        eos = getattr(_hf(tokenizer), "eos_token_id", None)
        if eos is not None and (not tokens or tokens[-1] != eos):
            tokens.append(eos)
        return tokens, [True] * len(tokens)
    messages = record["messages"]
    tokens = encode(tokenizer, render(tokenizer, messages))
    if not mask_prompt:
        return tokens, [True] * len(tokens)
    mask = [False] * len(tokens)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(encode(tokenizer, render(tokenizer, messages[:i], add_generation_prompt=True)))
        end = len(encode(tokenizer, render(tokenizer, messages[: i + 1])))
        for j in range(start, min(end, len(tokens))):
            mask[j] = True
    return tokens, mask


def training_text(tokenizer: Any, record: dict[str, Any]) -> str:
    """The text `encode_for_training` tokenizes for a record (before any EOS it appends)."""
    if "text" in record and "messages" not in record:
        return str(record["text"])
    return render(tokenizer, record["messages"])


def training_lengths(tokenizer: Any, records: list[dict[str, Any]] | Any) -> list[int]:
    """`len(encode_for_training(tokenizer, r)[0])` for many records, encoded in one batch."""
    records = list(records)
    if not records:
        return []
    hf = _hf(tokenizer)
    texts = [training_text(tokenizer, r) for r in records]
    backend = getattr(hf, "backend_tokenizer", None)
    ids: list[list[int]]
    if backend is not None:  # the Rust tokenizer, batched, without transformers' wrapping
        ids = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    else:
        ids = [encode(tokenizer, t) for t in texts]
    eos = getattr(hf, "eos_token_id", None)
    out = []
    for record, tokens in zip(records, ids, strict=True):
        n = len(tokens)
        is_text = "text" in record and "messages" not in record
        if is_text and eos is not None and (not tokens or tokens[-1] != eos):
            n += 1
        out.append(n)
    return out
