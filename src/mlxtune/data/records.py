"""Checks and cleaning shared by `prepare` and `validate-format`: one implementation of each
rule, so the two commands can never disagree about what a good row is."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, cast

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
# jsonschema, which also words the message. It is generated as one Python function (nested
# lambdas cost ~35 us a row, this ~5): 100k rows ~8 s with jsonschema -> ~0.5 s.
_SIMPLE_KEYWORDS = {
    "$schema", "title", "description", "type", "required", "properties", "items", "enum",
    "minItems", "minLength", "additionalProperties",
}  # fmt: skip
_TYPES = {
    "object": "isinstance({v}, dict)",
    "array": "isinstance({v}, list)",
    "string": "isinstance({v}, str)",
    "integer": "(isinstance({v}, int) and not isinstance({v}, bool))",
    "number": "(isinstance({v}, (int, float)) and not isinstance({v}, bool))",
    "boolean": "isinstance({v}, bool)",
    "null": "{v} is None",
}


class _Unsupported(Exception):
    """A schema keyword or value the generated test does not handle: use jsonschema."""


def _emit(node: dict[str, Any], v: str, depth: int, out: list[str], consts: list[Any]) -> None:
    """Lines checking the value named `v` against `node`; each failed check returns False."""
    if not set(node) <= _SIMPLE_KEYWORDS or node.get("additionalProperties", True) is not True:
        raise _Unsupported
    pad = "    " * depth
    if "type" in node:
        names = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not names or not all(n in _TYPES for n in names):
            raise _Unsupported
        tests = " or ".join(_TYPES[n].format(v=v) for n in names)
        out.append(f"{pad}if not ({tests}): return False")
    if "enum" in node:
        allowed = node["enum"]
        if all(type(a) is str for a in allowed):  # the same test as below, as one set lookup
            consts.append(frozenset(allowed))
            test = f"type({v}) is str and {v} in C[{len(consts) - 1}]"
        else:
            consts.append(tuple(allowed))
            test = f"any({v} == a and type({v}) is type(a) for a in C[{len(consts) - 1}])"
        out.append(f"{pad}if not ({test}): return False")
    if "required" in node:
        keys = " and ".join(f"{k!r} in {v}" for k in node["required"]) or "True"
        out.append(f"{pad}if isinstance({v}, dict) and not ({keys}): return False")
    if "minItems" in node:
        out.append(
            f"{pad}if isinstance({v}, list) and len({v}) < {int(node['minItems'])}: return False"
        )
    if "minLength" in node:  # JSON Schema counts code points, as len() does
        out.append(
            f"{pad}if isinstance({v}, str) and len({v}) < {int(node['minLength'])}: return False"
        )
    if "properties" in node:
        out.append(f"{pad}if isinstance({v}, dict):")
        out.append(f"{pad}    pass")
        for key, sub in node["properties"].items():
            child = f"v{depth + 1}"
            out.append(f"{pad}    if {key!r} in {v}:")
            out.append(f"{pad}        {child} = {v}[{key!r}]")
            _emit(sub, child, depth + 2, out, consts)
    if "items" in node:
        child = f"v{depth + 1}"
        out.append(f"{pad}if isinstance({v}, list):")
        out.append(f"{pad}    for {child} in {v}:")
        _emit(node["items"], child, depth + 2, out, consts)


def _compile(schema_node: dict[str, Any]) -> Callable[[Any], bool] | None:
    out = ["def accept(v1):"]
    consts: list[Any] = []
    try:
        _emit(schema_node, "v1", 1, out, consts)
    except _Unsupported:
        return None
    out.append("    return True")
    scope: dict[str, Any] = {"C": consts}
    exec("\n".join(out), scope)  # our own code, generated from the shipped schemas
    return cast("Callable[[Any], bool]", scope["accept"])


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
    if not text.isascii():  # both are no-ops on ASCII
        text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    # each rule runs only where it can match (the regexes cost more than the scans)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if " \n" in text or "\t\n" in text:
        text = _TRAILING_SPACE.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def clean_record(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    if "messages" in record:
        out["messages"] = [{**m, "content": clean_text(m["content"])} for m in record["messages"]]
    else:
        out["text"] = clean_text(record["text"])
    return out


# ASCII text folds by one byte table (NFKC and casefold are lower() there; the non-word
# characters, _ included, become spaces): 3x faster than the regex on 100k rows
_ASCII_FOLD = bytes(
    (ord(chr(c).lower()) if chr(c).isalnum() else 32) if c < 128 else c for c in range(256)
)


def fold(text: str) -> str:
    """Text for normalised comparison: case-folded, punctuation and spacing collapsed."""
    if text.isascii():
        return b" ".join(text.encode().translate(_ASCII_FOLD).split()).decode()
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
# weights never decide tokens or the template: the model fingerprint skips them
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".gguf", ".npz", ".npy", ".pt", ".pth", ".h5", ".onnx"}
# the libraries that render and tokenize: a new version may render or split differently
_RENDERING_DISTS = ("mlxtune", "mlx-lm", "transformers", "tokenizers", "jinja2")


def model_fingerprint(model_cfg: ModelConfig) -> str | None:
    """What decides a record's tokens and prompt, read without loading the tokenizer: every
    file of the local model directory but its weights (tokenizer, template, configs), the
    config's template settings and the versions of the libraries that render and tokenize.
    None for a hub model (its files are not ours to hash)."""
    from mlxtune.modeling import local_model_dir
    from mlxtune.provenance import package_version

    try:
        local = local_model_dir(model_cfg.path)
    except UsageError:
        return None  # loading the tokenizer says what is wrong
    if local is None:
        return None
    h = hashlib.sha256()
    for f in sorted(local.iterdir()):
        if f.is_file() and f.suffix not in _WEIGHT_SUFFIXES:
            h.update(f"{f.name}\0{sha256_file(f)}\0".encode())
    settings = model_cfg.model_dump(
        include={"chat_template", "chat_template_kwargs", "override_chat_template"}
    )
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for dist in _RENDERING_DISTS:
        h.update(f"{dist}={package_version(dist)}\0".encode())
    return h.hexdigest()[:16]


def write_lengths(
    directory: Path,
    tokenizer: Any,
    template: str,
    model_cfg: ModelConfig,
    files: dict[str, list[int]],
) -> None:
    """Beside prepared splits: each file's sha256, its rows' token lengths and the prompt
    check of its first conversation, under the tokenizer's fingerprint and the model
    directory's (`model_fingerprint`), so validate-format need not render and tokenize rows
    prepare has just measured, nor load the tokenizer when nothing changed."""
    fingerprint = formats.tokenizer_fingerprint(tokenizer)
    if fingerprint is None:
        return
    entries: dict[str, dict[str, Any]] = {}
    for name, lengths in files.items():
        entries[name] = {"sha256": sha256_file(directory / name), "lengths": lengths}
        first = _first_conversation(directory / name)
        if first is not None:
            line, record = first
            entries[name]["prompt"] = {
                "line": line,
                "problems": prompt_mismatches(tokenizer, record),
            }
    atomic_write_json(
        directory / LENGTHS_FILE,
        {
            "tokenizer": fingerprint,
            "model": model_fingerprint(model_cfg),
            "template": formats.template_fingerprint(template),
            "files": entries,
        },
    )


def _first_conversation(path: Path) -> tuple[int, dict[str, Any]] | None:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            record = json.loads(line)
            if "messages" in record:
                return number, record
    return None


@dataclass
class CachedFile:
    """What prepare measured for a file still byte for byte as it wrote it."""

    lengths: list[int]
    prompt_line: int | None  # line of its first conversation, checked against the template
    prompt_problems: list[str]
    template: str  # the template's fingerprint


def cached_file(
    path: Path, *, tokenizer: str | None = None, model: str | None = None
) -> CachedFile | None:
    """The entry `write_lengths` recorded for `path`, if the file is byte for byte the one
    measured and either the loaded tokenizer's fingerprint (`tokenizer`) or the model
    directory's (`model`) is the one it was measured with; else None."""
    sidecar = path.parent / LENGTHS_FILE
    if (tokenizer is None and model is None) or not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
        entry = data["files"][path.name]
        same = (tokenizer is not None and data["tokenizer"] == tokenizer) or (
            model is not None and data.get("model") == model
        )
        if not same or entry["sha256"] != sha256_file(path):
            return None
        prompt = entry.get("prompt") or {}
        return CachedFile(
            lengths=[int(n) for n in entry["lengths"]],
            prompt_line=int(prompt["line"]) if "line" in prompt else None,
            prompt_problems=[str(m) for m in prompt.get("problems", [])],
            template=str(data.get("template", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None


def prompt_mismatches(tokenizer: Any, record: dict[str, Any]) -> list[str]:
    """Render one record the way train does and the way evaluate/serve do; say where they
    differ. Also compare with how raw mlx-lm tokenizes the same record."""
    out = []
    prompt, _ = formats.prompt_and_answer(record)
    generation = formats.encode_prompt(tokenizer, prompt, tools=record.get("tools"))
    tokens, mask = formats.encode_for_training(tokenizer, record, mask_prompt=True)
    starts = [i for i in range(1, len(mask)) if mask[i] and not mask[i - 1]]
    start = starts[-1] if starts else len(tokens)
    trained_prompt = tokens[:start]
    if trained_prompt != generation:
        at = next(
            (i for i, (a, b) in enumerate(zip(trained_prompt, generation, strict=False)) if a != b),
            min(len(trained_prompt), len(generation)),
        )
        out.append(
            f"training prompt ({len(trained_prompt)} tokens) differs from the generation "
            f"prompt ({len(generation)} tokens) at token {at}"
        )
    raw = formats._hf(tokenizer).apply_chat_template(
        record["messages"], tools=record.get("tools"), return_dict=False
    )
    if list(raw) != tokens:
        out.append(
            f"raw mlx-lm tokenizes this record to {len(raw)} tokens, mlxtune to {len(tokens)}"
        )
    return out


def length_stats(values: Sequence[int]) -> dict[str, int]:
    return {
        "p50": round(percentile(values, 50) or 0),
        "p95": round(percentile(values, 95) or 0),
        "max": max(values, default=0),
    }
