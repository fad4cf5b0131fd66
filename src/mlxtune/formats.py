"""Record formats and prompt rendering: the single source of truth.

Every verb (prepare, validate-format, train, evaluate, serve, bench) turns records into
prompts through this module and nowhere else. The seeds scored 28% because training,
validation and serving each built prompt strings by hand; here there is one renderer, the
tokenizer's chat template (or the config's template when the model has none).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import ConfigError, DataError
from mlxtune.io import loads_json

if TYPE_CHECKING:
    from mlxtune.config import ModelConfig

FORMATS = ("chat", "alpaca", "sharegpt", "completions", "text")
META_KEYS = ("id", "category", "keywords", "source", "fact", "images")
ROLES = ("system", "user", "assistant", "tool")
# OpenAI message keys kept beside role and content (tool calling, as mlx-lm trains it).
TOOL_KEYS = ("tool_calls", "tool_call_id", "name")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
}

# ChatML, as Qwen and many small instruct models use it; the tiny model ships it too. Tool
# definitions, calls and results render the way Qwen2.5 does (<tools>, <tool_call> JSON,
# <tool_response>), so mlx-lm's `json_tools` parser reads the calls back; conversations
# without tools render exactly as plain ChatML.
CHATML_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
    "{{ '# Tools\n\nYou may call one or more functions. Function signatures are within "
    "<tools></tools> XML tags:\n<tools>' }}"
    "{% for tool in tools %}{{ '\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '\n</tools>\n\nFor each call, return a JSON object with the function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    "<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' and message.tool_calls %}"
    "{{ '<|im_start|>assistant\n' + (message['content'] or '') }}"
    "{% for tool_call in message.tool_calls %}"
    "{% if tool_call.function is defined %}{% set tool_call = tool_call.function %}{% endif %}"
    "{% if message['content'] or not loop.first %}{{ '\n' }}{% endif %}"
    '{{ \'<tool_call>\n{"name": "\' + tool_call.name + \'", "arguments": \' }}'
    "{% if tool_call.arguments is string %}{{ tool_call.arguments }}"
    "{% else %}{{ tool_call.arguments | tojson }}{% endif %}"
    "{{ '}\n</tool_call>' }}{% endfor %}{{ '<|im_end|>\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + "
    "'\n</tool_response><|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BUILTIN_TEMPLATES = {"chatml": CHATML_TEMPLATE}

Messages = list[dict[str, Any]]


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
        messages = [_message(m) for m in row["messages"]]
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
    tools = {"tools": row["tools"]} if row.get("tools") else {}
    return {"messages": messages, **tools, **_meta(row)}


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in META_KEYS if k in row}


def _message(m: dict[str, Any]) -> dict[str, Any]:
    """role and content (None, as OpenAI sends beside tool calls, becomes ""), plus the
    tool-calling keys when present."""
    out = {"role": m["role"], "content": m.get("content") or ""}
    out.update({k: m[k] for k in TOOL_KEYS if m.get(k) is not None})
    return out


def tool_problems(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for each tool call whose arguments are not a JSON object, or (when
    the record lists its tools) that names a tool the record does not define."""
    names = {
        (t.get("function") or t).get("name")
        for t in record.get("tools") or []
        if isinstance(t, dict)
    }
    out = []
    for i, m in enumerate(record.get("messages", [])):
        for j, call in enumerate(m.get("tool_calls") or []):
            where = f"messages[{i}].tool_calls[{j}]"
            fn = call.get("function", call) if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                out.append((where, "expected {function: {name, arguments}}"))
                continue
            if names and fn["name"] not in names:
                known = ", ".join(sorted(n for n in names if n)) or "none"
                out.append(
                    (f"{where}.function.name", f"unknown tool {fn['name']!r} (tools: {known})")
                )
            args = fn.get("arguments", {})
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError as e:
                    out.append((f"{where}.function.arguments", f"not valid JSON ({e.msg})"))
                    continue
            if not isinstance(args, dict):
                out.append((f"{where}.function.arguments", "expected a JSON object"))
    return out


def role_order_problem(messages: Messages) -> str | None:
    """Optional system first, then user/assistant alternating, ending with assistant. An
    assistant turn with tool_calls is followed by one or more tool results, then assistant."""
    if not messages:
        return "no messages"
    body = messages[1:] if messages[0].get("role") == "system" else messages
    if not body:
        return "only a system message"
    want: tuple[str, ...] = ("user",)
    for i, m in enumerate(body):
        role = m.get("role")
        if role not in want:
            index = i + (len(messages) - len(body))
            expected = " or ".join(repr(w) for w in want)
            return f"messages[{index}].role is {role!r}, expected {expected}"
        if role == "user":
            want = ("assistant",)
        elif role == "assistant":
            want = ("tool",) if m.get("tool_calls") else ("user",)
        else:  # tool results: more of them, or the assistant's answer
            want = ("tool", "assistant")
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
            row = loads_json(line)
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
    last = messages[-1]
    if last.get("tool_calls") and not last["content"]:  # the calls are the answer
        return list(messages[:-1]), json.dumps(last["tool_calls"], sort_keys=True)
    return list(messages[:-1]), last["content"]


# ---------------------------------------------------------------------------------------------
# Rendering


def resolve_template(tokenizer: Any, model_cfg: ModelConfig | None = None) -> str:
    """Install the template this run renders with on the tokenizer, and return it.

    The tokenizer's own template wins unless the config overrides it; a model without one
    needs `model.chat_template` in the config.
    """
    own = getattr(tokenizer, "chat_template", None)
    if model_cfg is not None and model_cfg.chat_template_kwargs:
        setattr(_hf(tokenizer), TEMPLATE_KWARGS_ATTR, dict(model_cfg.chat_template_kwargs))
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


TEMPLATE_KWARGS_ATTR = "mlxtune_chat_template_kwargs"


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """What decides a record's training tokens: the fast tokenizer's full definition, the
    chat template and its kwargs. None for a tokenizer without a Rust backend (not cached)."""
    hf = _hf(tokenizer)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        return None
    h = hashlib.sha256(backend.to_str().encode())
    h.update(str(getattr(hf, "chat_template", "")).encode())
    h.update(json.dumps(getattr(hf, TEMPLATE_KWARGS_ATTR, {}), sort_keys=True).encode())
    return h.hexdigest()[:16]


def render(
    tokenizer: Any,
    messages: Messages,
    *,
    add_generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: dict[str, Any] | None = None,
) -> str:
    """Render messages to text with the tokenizer's chat template. The only renderer.

    Tool-call arguments given as JSON strings (OpenAI's wire form) are passed as objects, as
    mlx-lm's server does, so training and serving render a call alike. `template_kwargs`
    (e.g. enable_thinking) go over the ones `resolve_template` installed from the config."""
    return render_many(
        tokenizer,
        [messages],
        add_generation_prompt=add_generation_prompt,
        tools=tools,
        template_kwargs=template_kwargs,
    )[0]


def render_many(
    tokenizer: Any,
    conversations: list[Messages],
    *,
    add_generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: dict[str, Any] | None = None,
) -> list[str]:
    """`render` of conversations that share tools and flags. Plain conversations (string
    role/content turns, no tools) go straight through the compiled template transformers
    caches, with the variables `apply_chat_template` gives it: the same text without its
    per-conversation copying and checks (half of rendering time on 100k short rows).
    Anything else goes through `apply_chat_template` itself, as one batched call."""
    if not conversations:
        return []
    hf = _hf(tokenizer)
    kwargs = {**getattr(hf, TEMPLATE_KWARGS_ATTR, {}), **(template_kwargs or {})}
    prepared = [[_with_argument_objects(m) for m in messages] for messages in conversations]
    template = None if tools else _compiled_template(hf, kwargs)
    if template is not None:
        variables = {**_template_globals(hf), **kwargs}
        variables.update(tools=None, documents=None, add_generation_prompt=add_generation_prompt)
        render_one = _renderer(template, variables)
        fast = [render_one(messages) if _plain_turns(messages) else None for messages in prepared]
        rest = [m for m, text in zip(prepared, fast, strict=True) if text is None]
        if not rest:
            return [str(text) for text in fast]
        slow = iter(_apply_template(hf, rest, add_generation_prompt, None, kwargs))
        return [str(text) if text is not None else next(slow) for text in fast]
    return _apply_template(hf, prepared, add_generation_prompt, tools, kwargs)


def _apply_template(
    hf: Any,
    conversations: list[Messages],
    add_generation_prompt: bool,
    tools: list[dict[str, Any]] | None,
    kwargs: dict[str, Any],
) -> list[str]:
    texts = hf.apply_chat_template(
        conversations,
        tools=tools or None,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )
    return [str(text) for text in texts]


_PLAIN_KEYS = frozenset({"role", "content", "name", "tool_call_id"})


def _plain_turns(messages: Messages) -> bool:
    """Turns `apply_chat_template` would pass to the template unchanged: string values only
    (it drops None values and copies other objects) and no reasoning field (it aliases those)."""
    return all(
        type(m) is dict and m.keys() <= _PLAIN_KEYS and all(type(v) is str for v in m.values())
        for m in messages
    )


def _compiled_template(hf: Any, kwargs: dict[str, Any]) -> Any | None:
    """The jinja template `apply_chat_template` would render with (transformers compiles and
    caches it), or None where the fast path cannot promise the same text: a tokenizer class
    with its own apply_chat_template, template kwargs that are not plain values, another
    transformers."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None
    if type(hf).apply_chat_template is not PreTrainedTokenizerBase.apply_chat_template:
        return None
    if not all(_plain_value(v) for v in kwargs.values()):
        return None
    try:
        source = hf.get_chat_template(None, None)
    except ValueError:
        return None  # no template: apply_chat_template raises its own message
    return _compile_jinja_template(source)


def _renderer(template: Any, variables: dict[str, Any]) -> Callable[[Messages], str]:
    """`template.render(messages=..., **variables)` for many conversations: the same root
    render function over the same variables, with the template's globals merged once rather
    than per call (jinja copies them from a ChainMap into every new context: ~40% of
    rendering a short conversation). Async environments take jinja's own path."""
    env = template.environment
    if env.is_async:
        return lambda messages: str(template.render(messages=messages, **variables))
    parent = {**template.globals, **variables}  # what jinja's new_context builds per call
    globals_keys = set(template.globals)
    name, blocks, context_class = template.name, template.blocks, env.context_class

    def render_one(messages: Messages) -> str:
        ctx = context_class(env, {**parent, "messages": messages}, name, blocks)
        ctx.globals_keys = globals_keys
        try:
            return str(env.concat(template.root_render_func(ctx)))
        except Exception:
            env.handle_exception()
            raise  # handle_exception always raises; this line keeps mypy content

    return render_one


def _template_globals(hf: Any) -> dict[str, Any]:
    """The special tokens `apply_chat_template` passes to every template."""
    return {
        k: list(v) if isinstance(v, list) else v
        for k, v in hf.special_tokens_map.items()
        if _plain_value(v)
    }


def _plain_value(value: Any) -> bool:
    if isinstance(value, list):
        return all(type(v) is str for v in value)
    return value is None or type(value) in (str, int, float, bool)


def _with_argument_objects(message: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls")
    if not calls:
        return message
    out_calls = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            with contextlib.suppress(json.JSONDecodeError):  # validate-format reports it
                fn = {**fn, "arguments": json.loads(fn["arguments"])}
            call = {**call, "function": fn}
        out_calls.append(call)
    return {**message, "tool_calls": out_calls}


def encode(tokenizer: Any, text: str) -> list[int]:
    # The template already holds any special tokens; don't let the tokenizer add a second BOS.
    return list(_hf(tokenizer).encode(text, add_special_tokens=False))


ENCODE_BATCH = 4096  # texts per tokenizer call: one Rust batch each, memory bounded


def encode_many(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """`encode` of many texts: batched calls for a fast (Rust) tokenizer, the same ids."""
    hf = _hf(tokenizer)
    backend = _direct_backend(hf)
    if backend is not None:
        return [e.ids for batch in _encode_batches(backend, _batches(texts)) for e in batch]
    if getattr(hf, "backend_tokenizer", None) is None:
        return [encode(tokenizer, text) for text in texts]
    out: list[list[int]] = []
    for i in range(0, len(texts), ENCODE_BATCH):
        batch = hf(
            texts[i : i + ENCODE_BATCH],
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        out.extend(list(ids) for ids in batch["input_ids"])
    return out


def _direct_backend(hf: Any) -> Any | None:
    """The Rust tokenizer under `hf` when its own `encode_batch` gives what `hf(texts,
    add_special_tokens=False)` gives (no truncation or padding set on it, special tokens
    handled alike, transformers' own encoding path): a quarter less CPU than going through
    transformers. None otherwise."""
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    cls = type(hf)
    if (
        cls._encode_plus is not TokenizersBackend._encode_plus
        or cls.__call__ is not PreTrainedTokenizerBase.__call__
        or backend.truncation is not None
        or backend.padding is not None
        or backend.encode_special_tokens != bool(getattr(hf, "split_special_tokens", False))
    ):
        return None
    return backend


def _encode_batches(backend: Any, texts: Iterable[list[str]]) -> Iterator[list[Any]]:
    """The Rust encodings of each batch of `texts`, in order. A batch is tokenized in a
    worker thread (the Rust call releases the GIL) while the next one is produced (rendered)
    and the one before is read, so two cores share the work even with
    TOKENIZERS_PARALLELISM=false; at most two batches are held at a time."""
    from concurrent.futures import Future, ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque[Future[list[Any]]] = deque()
        for batch in texts:
            pending.append(pool.submit(backend.encode_batch, batch, add_special_tokens=False))
            if len(pending) > 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _batches(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + ENCODE_BATCH] for i in range(0, len(items), ENCODE_BATCH)]


def encode_prompt(
    tokenizer: Any,
    messages: Messages,
    *,
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: dict[str, Any] | None = None,
) -> list[int]:
    """Tokens for generation: the conversation so far plus the assistant header."""
    text = render(
        tokenizer,
        messages,
        add_generation_prompt=True,
        tools=tools,
        template_kwargs=template_kwargs,
    )
    return encode(tokenizer, text)


def encode_for_training(
    tokenizer: Any, record: dict[str, Any], *, mask_prompt: bool = True
) -> tuple[list[int], list[bool]]:
    """Tokens of a whole record and a per-token flag: True where the loss is taken.

    Every assistant turn is trained, every system/user turn (and each assistant header) is
    masked; mlx-lm masks only one prefix. Plain text records train on every token.
    """
    return encode_for_training_many(tokenizer, [record], mask_prompt=mask_prompt)[0]


def encode_for_training_many(
    tokenizer: Any, records: list[dict[str, Any]], *, mask_prompt: bool = True
) -> list[tuple[list[int], list[bool]]]:
    """`encode_for_training` of many records: every text they need is rendered in batches
    (`render_many`) and tokenized in batches (`encode_many`). An assistant turn's span runs
    from the length of the prompt before it (with the assistant header) to the length of the
    conversation up to it; for the last turn that is the whole record, rendered once."""
    # (messages, add_generation_prompt, tools) for every text, rendered grouped by flags+tools
    jobs: list[tuple[Messages, bool, list[dict[str, Any]] | None]] = []
    plans: list[tuple[int, list[tuple[int, int]]] | str] = []  # (whole, [(head, upto)]) | text
    for record in records:
        if _is_text(record):
            plans.append(str(record["text"]))
            continue
        messages, tools = record["messages"], record.get("tools")
        whole = len(jobs)
        jobs.append((messages, False, tools))
        spans = []
        if mask_prompt:
            for i, message in enumerate(messages):
                if message["role"] != "assistant":  # tool calls are assistant turns: trained
                    continue
                jobs.append((messages[:i], True, tools))
                head = len(jobs) - 1
                if i == len(messages) - 1:
                    spans.append((head, whole))
                else:
                    jobs.append((messages[: i + 1], False, tools))
                    spans.append((head, len(jobs) - 1))
        plans.append((whole, spans))
    ids = encode_many(tokenizer, _render_jobs(tokenizer, jobs))
    texts = [plan for plan in plans if isinstance(plan, str)]
    text_ids = iter(encode_many(tokenizer, texts))
    eos = getattr(_hf(tokenizer), "eos_token_id", None)
    out: list[tuple[list[int], list[bool]]] = []
    for plan in plans:
        if isinstance(plan, str):
            tokens = next(text_ids)
            if eos is not None and (not tokens or tokens[-1] != eos):
                tokens.append(eos)
            out.append((tokens, [True] * len(tokens)))
            continue
        whole, spans = plan
        tokens = ids[whole]
        if not mask_prompt:
            out.append((tokens, [True] * len(tokens)))
            continue
        mask = [False] * len(tokens)
        for head, upto in spans:
            for j in range(len(ids[head]), min(len(ids[upto]), len(tokens))):
                mask[j] = True
        out.append((tokens, mask))
    return out


def _render_jobs(
    tokenizer: Any, jobs: list[tuple[Messages, bool, list[dict[str, Any]] | None]]
) -> list[str]:
    """Texts of (messages, add_generation_prompt, tools) jobs, in order; one `render_many`
    call per distinct (add_generation_prompt, tools)."""
    groups: dict[tuple[bool, str], list[int]] = {}
    for k, (_, generation, tools) in enumerate(jobs):
        key = (generation, json.dumps(tools, sort_keys=True) if tools else "")
        groups.setdefault(key, []).append(k)
    texts = [""] * len(jobs)
    for members in groups.values():
        _, generation, tools = jobs[members[0]]
        rendered = render_many(
            tokenizer,
            [jobs[k][0] for k in members],
            add_generation_prompt=generation,
            tools=tools,
        )
        for k, text in zip(members, rendered, strict=True):
            texts[k] = text
    return texts


def training_lengths(tokenizer: Any, records: list[dict[str, Any]] | Any) -> list[int]:
    """`len(encode_for_training(tokenizer, r)[0])` for many records, in batches."""
    with TrainingLengths(tokenizer) as counter:
        for record in records:
            counter.add(record)
        return counter.lengths()


LENGTH_WORKERS = 2  # Rust batches tokenized at once: the Rust side is prepare's longest thread


class TrainingLengths:
    """`training_lengths` of records handed over one at a time, so the tokenizer works while
    the caller goes on reading and checking rows: each batch is rendered here, on the
    caller's thread, and tokenized by the Rust tokenizer in worker threads (the call
    releases the GIL), so the cores share the work even with TOKENIZERS_PARALLELISM=false
    (which only stops the Rust library's own threads). Only lengths are kept (no id lists or
    masks). Without a direct Rust backend the records are measured by
    `encode_for_training_many` when `lengths()` is asked."""

    def __init__(self, tokenizer: Any) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._tokenizer = tokenizer
        hf = _hf(tokenizer) if tokenizer is not None else None
        self._backend = _direct_backend(hf) if hf is not None else None
        self._eos = getattr(hf, "eos_token_id", None)
        workers = max(1, min(LENGTH_WORKERS, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lengths")
        self._batch: list[dict[str, Any]] = []
        self._pending: deque[tuple[list[dict[str, Any]], Any]] = deque()
        self._lengths: list[int] = []

    def add(self, record: dict[str, Any]) -> None:
        """Measure `record` (its messages and tools must not change from here on)."""
        self._batch.append(record)
        if self._backend is not None and len(self._batch) >= ENCODE_BATCH:
            self._submit()

    def _submit(self) -> None:
        backend, batch, self._batch = self._backend, self._batch, []
        assert backend is not None
        texts = _whole_texts(self._tokenizer, batch)
        future = self._pool.submit(backend.encode_batch, texts, add_special_tokens=False)
        self._pending.append((batch, future))
        while self._pending and self._pending[0][1].done():  # hold few encodings at a time
            self._take(*self._pending.popleft())

    def _take(self, batch: list[dict[str, Any]], future: Any) -> None:
        for record, encoding in zip(batch, future.result(), strict=True):
            n = len(encoding)
            # a plain-text record trains with EOS appended (encode_for_training_many)
            if (
                _is_text(record)
                and self._eos is not None
                and (n == 0 or encoding.ids[-1] != self._eos)
            ):
                n += 1
            self._lengths.append(n)

    def lengths(self) -> list[int]:
        """Every added record's length, in the order added."""
        if self._backend is None:
            encoded = encode_for_training_many(self._tokenizer, self._batch, mask_prompt=False)
            self._lengths += [len(tokens) for tokens, _ in encoded]
            self._batch = []
        elif self._batch:
            self._submit()
        while self._pending:
            self._take(*self._pending.popleft())
        return list(self._lengths)

    def __enter__(self) -> TrainingLengths:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _is_text(record: dict[str, Any]) -> bool:
    return "text" in record and "messages" not in record


def _whole_texts(tokenizer: Any, records: list[dict[str, Any]]) -> list[str]:
    """The text each record trains on: its whole conversation rendered, or its plain text."""
    jobs = [(r["messages"], False, r.get("tools")) for r in records if not _is_text(r)]
    rendered = iter(_render_jobs(tokenizer, jobs))
    return [str(r["text"]) if _is_text(r) else next(rendered) for r in records]
