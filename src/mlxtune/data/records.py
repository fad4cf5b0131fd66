"""Checks and cleaning shared by `prepare` and `validate-format`: one implementation of each
rule, so the two commands can never disagree about what a good row is."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from mlxtune import formats
from mlxtune.errors import UsageError
from mlxtune.io import atomic_write_json, sha256_file
from mlxtune.stats import percentile

if TYPE_CHECKING:
    from pathlib import Path

    from mlxtune.config import ModelConfig

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
_NON_WORD = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class Located:
    """Where a record came from: shown as `path:line`."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


# ---------------------------------------------------------------------------------------------
# Formats and schemas


@cache
def _validator(fmt: str) -> Any:
    import jsonschema

    cls = jsonschema.validators.validator_for(formats.schema(fmt))
    return cls(formats.schema(fmt))


def _json_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# A fast acceptance test compiled from the shipped schemas for the keywords they use.
# Rows it accepts are valid; anything else (or a schema using other keywords) goes to
# jsonschema, which also words the message. 100k rows: ~8 s -> ~0.5 s.
_SIMPLE_KEYWORDS = {
    "$schema", "title", "description", "type", "required", "properties", "items", "enum",
    "minItems", "minLength", "additionalProperties",
}  # fmt: skip
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _compile(node: dict[str, Any]) -> Callable[[Any], bool] | None:
    if not set(node) <= _SIMPLE_KEYWORDS or node.get("additionalProperties", True) is not True:
        return None
    checks: list[Callable[[Any], bool]] = []
    if "type" in node:
        names = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not all(n in _TYPES for n in names):
            return None
        tests = [_TYPES[n] for n in names]
        checks.append(lambda v: any(t(v) for t in tests))
    if "enum" in node:
        allowed = node["enum"]
        checks.append(lambda v: any(v == a and type(v) is type(a) for a in allowed))
    if "required" in node:
        required = list(node["required"])
        checks.append(lambda v: not isinstance(v, dict) or all(k in v for k in required))
    if "properties" in node:
        props = {}
        for key, sub in node["properties"].items():
            compiled = _compile(sub)
            if compiled is None:
                return None
            props[key] = compiled
        checks.append(
            lambda v: not isinstance(v, dict) or all(props[k](v[k]) for k in props if k in v)
        )
    if "items" in node:
        item = _compile(node["items"])
        if item is None:
            return None
        checks.append(lambda v: not isinstance(v, list) or all(item(x) for x in v))
    if "minItems" in node:
        least = node["minItems"]
        checks.append(lambda v: not isinstance(v, list) or len(v) >= least)
    if "minLength" in node:
        shortest = node["minLength"]
        # JSON Schema counts code points, as len() does
        checks.append(lambda v: not isinstance(v, str) or len(v) >= shortest)
    return lambda v: all(c(v) for c in checks)


@cache
def _fast(fmt: str) -> Callable[[Any], bool] | None:
    return _compile(formats.schema(fmt))


def schema_problems(row: dict[str, Any], fmt: str) -> list[tuple[str, str]]:
    """(field, message) for every JSON Schema violation of `row` in format `fmt`."""
    fast = _fast(fmt)
    if fast is not None and fast(row):
        return []
    out = []
    for err in sorted(_validator(fmt).iter_errors(row), key=lambda e: list(e.absolute_path)):
        field = _json_path(err.absolute_path)
        message = err.message
        if err.validator == "required":
            missing = re.search(r"'([^']+)' is a required property", err.message)
            field = _json_path([*err.absolute_path, missing.group(1)]) if missing else field
            message = "required field missing"
        elif err.validator == "enum":
            message = f"{err.instance!r} is not one of {', '.join(map(repr, err.validator_value))}"
        out.append((field or fmt, message))
    return out


def majority_format(
    found: Sequence[tuple[str, Located]],
) -> tuple[str | None, tuple[Located, str] | None]:
    """(format most rows are in, (first row of another format, message) or None)."""
    if not found:
        return None, None
    counts = Counter(fmt for fmt, _ in found)
    major = counts.most_common(1)[0][0]
    if len(counts) == 1:
        return major, None
    minority = min((f for f in counts if f != major), key=lambda f: (counts[f], f))
    first = next(where for fmt, where in found if fmt == minority)
    mix = ", ".join(f"{n} {f}" for f, n in counts.most_common())
    return major, (
        first,
        f"mixed formats ({mix}); this is the first {minority} row, the rest are {major}",
    )


# ---------------------------------------------------------------------------------------------
# Cleaning and keys


def clean_text(text: str) -> str:
    """NFKC, no zero-width characters, \\n line ends, no trailing spaces, at most one blank
    line in a row, trimmed. Inner spacing is kept: indentation in code answers matters."""
    text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_RUNS.sub("\n\n", text).strip()


def clean_record(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    if "messages" in record:
        out["messages"] = [{**m, "content": clean_text(m["content"])} for m in record["messages"]]
    else:
        out["text"] = clean_text(record["text"])
    return out


def fold(text: str) -> str:
    """Text for normalised comparison: case-folded, punctuation and spacing collapsed."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_key(record: dict[str, Any]) -> str:
    """The whole conversation (never the answer alone: paraphrases share answers)."""
    if "messages" in record:
        turns = "\x1e".join(f"{m['role']}\x1f{m['content']}{_calls(m)}" for m in record["messages"])
        return turns + _images_key(record)
    return str(record["text"])


def normalized_key(record: dict[str, Any]) -> str:
    if "messages" in record:
        turns = "\x1e".join(
            f"{m['role']}\x1f{fold(m['content'])}{_calls(m)}" for m in record["messages"]
        )
        return turns + _images_key(record)
    return fold(str(record["text"]))


def _images_key(record: dict[str, Any]) -> str:
    """Same question about a different image is not a duplicate."""
    return "\x1d" + "\x1f".join(record["images"]) if record.get("images") else ""


def _calls(message: dict[str, Any]) -> str:
    calls = message.get("tool_calls")
    return "\x1f" + json.dumps(calls, sort_keys=True) if calls else ""


def question(record: dict[str, Any]) -> str:
    """Everything before the final answer (the whole text for plain-text records)."""
    if "messages" not in record:
        return str(record["text"])
    prompt, _ = formats.prompt_and_answer(record)
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in prompt) + _images_key(record)


def question_key(record: dict[str, Any]) -> str:
    return fold(question(record))


def empty_turns(record: dict[str, Any]) -> list[int]:
    """Indexes of messages whose content is empty after cleaning."""
    return [
        i
        for i, m in enumerate(record.get("messages", []))
        if not m["content"].strip() and not m.get("tool_calls")
    ]


def answer(record: dict[str, Any]) -> str:
    if "messages" not in record:
        return str(record["text"])
    return formats.prompt_and_answer(record)[1]


# ---------------------------------------------------------------------------------------------
# Tokenizer and lengths


def load_tokenizer(model_cfg: ModelConfig) -> tuple[Any, str, str]:
    """The tokenizer only (no weights) with the run's template installed:
    (tokenizer, template, "tokenizer" or "config" for where the template came from)."""
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    from mlxtune.modeling import first_line, local_model_dir

    path = model_cfg.path
    local = local_model_dir(path)
    try:
        tokenizer = mlx_load_tokenizer(
            local or path,
            tokenizer_config_extra={"trust_remote_code": model_cfg.trust_remote_code},
        )
    except Exception as e:  # hub, file and tokenizer errors come in many types
        raise UsageError(
            f"model.path: cannot load the tokenizer of {path} ({first_line(e)})"
        ) from None
    own = getattr(tokenizer, "chat_template", None)
    template = formats.resolve_template(tokenizer, model_cfg)
    return tokenizer, template, "tokenizer" if own and template == own else "config"


LENGTHS_FILE = "token_lengths.json"


def write_lengths(directory: Path, tokenizer: Any, files: dict[str, list[int]]) -> None:
    """Beside prepared splits: each file's sha256 and its rows' token lengths, so
    validate-format need not render and tokenize rows prepare has just measured."""
    fingerprint = formats.tokenizer_fingerprint(tokenizer)
    if fingerprint is None:
        return
    entries = {
        name: {"sha256": sha256_file(directory / name), "lengths": lengths}
        for name, lengths in files.items()
    }
    atomic_write_json(directory / LENGTHS_FILE, {"tokenizer": fingerprint, "files": entries})


def cached_lengths(path: Path, fingerprint: str | None) -> list[int] | None:
    """The token lengths `write_lengths` recorded for `path`, if the file and the tokenizer
    (and template) are byte for byte the ones measured; else None."""
    from mlxtune.io import sha256_file

    sidecar = path.parent / LENGTHS_FILE
    if fingerprint is None or not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
        entry = data["files"][path.name]
        if data["tokenizer"] != fingerprint or entry["sha256"] != sha256_file(path):
            return None
        return [int(n) for n in entry["lengths"]]
    except (ValueError, KeyError, TypeError):
        return None


def length_stats(values: Sequence[int]) -> dict[str, int]:
    return {
        "p50": round(percentile(values, 50) or 0),
        "p95": round(percentile(values, 95) or 0),
        "max": max(values, default=0),
    }
