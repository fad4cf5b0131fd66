"""Structured output: an OpenAI `response_format` compiled into a per-request token mask.

`parse_response_format` checks the request field; `Grammars(tokenizer)` compiles a format
once per schema (llguidance, chosen by measurement: docs/design.md) and hands out a fresh
`JsonConstraint` per request. A `JsonConstraint` is an mlx-lm logits processor, so it goes
in that request's own `logits_processors` list: constrained and free requests decode in the
same `BatchGenerator` batch. It tracks the tokens it has accepted and, once the JSON is
complete, allows only EOS.

Answers are compact JSON with Python's separators (`{"a": 1, "b": [2, 3]}`), no free
whitespace: a weak model cannot stall in an endless run of spaces and newlines. Given the
request's `max_tokens`, the last `closing_reserve(max_tokens)` tokens are steered shut:
wherever the grammar allows a token made only of `"`, `}` and `]` (or EOS), only the ones
that leave the least open nesting remain, elsewhere only the longest allowed tokens, so an
answer still open near the budget is closed into valid JSON rather than cut mid-string
(`closed_early` says so).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mlxtune.errors import MlxtuneError

# Matches json.dumps' defaults, so constrained answers look like the shipped training data.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
FORMAT_TYPES = ("text", "json_object", "json_schema")
CLOSERS = frozenset(b'"}]')


def closing_reserve(max_tokens: int) -> int:
    """Tokens kept at the end of the budget for closing the JSON: a third, 16 to 64."""
    return max(16, min(64, max_tokens // 3))


class ResponseFormatError(MlxtuneError):
    """A `response_format` or output schema that cannot be enforced: an unknown type, an
    invalid JSON Schema, a keyword the grammar engine does not implement. Serve answers 400."""

    exit_code = 2


@dataclass(frozen=True)
class ResponseFormat:
    """What a constrained answer must be: JSON matching `schema`."""

    type: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any]
    name: str | None = None
    strict: bool | None = None

    def key(self) -> str:
        """Canonical text of the schema: equal schemas share one compiled grammar."""
        return json.dumps(self.schema, sort_keys=True, separators=(",", ":"))


def parse_response_format(value: Any, *, where: str = "response_format") -> ResponseFormat | None:
    """An OpenAI `response_format` -> a ResponseFormat, or None for free text.

    `{"type": "text"}` or None: unconstrained. `{"type": "json_object"}`: any JSON object.
    `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`: that schema.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ResponseFormatError(f"{where}: expected an object, got {type(value).__name__}")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object", {"type": "object"})
    if kind != "json_schema":
        raise ResponseFormatError(
            f"{where}.type: unknown type {kind!r} (expected one of {', '.join(FORMAT_TYPES)})"
        )
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise ResponseFormatError(f"{where}.json_schema: required object with name and schema")
    name, strict = spec.get("name"), spec.get("strict")
    if name is not None and not isinstance(name, str):
        raise ResponseFormatError(f"{where}.json_schema.name: expected a string")
    if strict is not None and not isinstance(strict, bool):
        raise ResponseFormatError(f"{where}.json_schema.strict: expected true or false")
    if "schema" not in spec:
        raise ResponseFormatError(f"{where}.json_schema.schema: required")
    schema = check_schema(spec["schema"], where=f"{where}.json_schema.schema")
    return ResponseFormat("json_schema", schema, name=name, strict=strict)


def check_schema(schema: Any, *, where: str = "schema") -> dict[str, Any]:
    """`schema` is a valid JSON Schema object (Draft 2020-12 meta-schema), or raise."""
    import jsonschema

    if not isinstance(schema, Mapping):
        raise ResponseFormatError(f"{where}: expected a JSON Schema object")
    try:
        jsonschema.Draft202012Validator.check_schema(dict(schema))
    except jsonschema.SchemaError as e:
        path = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        raise ResponseFormatError(f"{where}{path}: invalid JSON Schema: {e.message}") from None
    return dict(schema)


class Grammars:
    """Compiles response formats for one tokenizer (mlx-lm's wrapper or a Hugging Face fast
    tokenizer). Thread-safe: serve compiles in request handlers, decodes in its loop."""

    def __init__(self, tokenizer: Any, *, vocab_size: int | None = None) -> None:
        import llguidance.hf

        hf = getattr(tokenizer, "_tokenizer", tokenizer)
        eos = sorted(getattr(tokenizer, "eos_token_ids", None) or [hf.eos_token_id])
        self.eos_token_ids = eos
        self.vocab_size = vocab_size or len(hf)
        self._tokenizer = llguidance.hf.from_tokenizer(hf, n_vocab=self.vocab_size, eos_token=eos)
        self._grammars: dict[str, str] = {}
        self._lock = threading.Lock()
        self._closers: Any = None

    def compile(self, fmt: ResponseFormat, *, where: str = "response_format") -> str:
        """The engine's grammar for `fmt`; a schema it cannot enforce raises, naming why."""
        key = fmt.key()
        with self._lock:
            grammar = self._grammars.get(key)
        if grammar is not None:
            return grammar
        import llguidance

        at = f"{where}.json_schema.schema" if fmt.type == "json_schema" else where
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                dict(fmt.schema),
                defaults=JSON_OPTIONS,  # type: ignore[arg-type]
            )
        except ValueError as e:
            raise ResponseFormatError(f"{at}: {e}") from None
        error = llguidance.LLMatcher.validate_grammar(grammar, self._tokenizer)
        if error:
            first = error.strip().splitlines()[0]
            raise ResponseFormatError(f"{at}: cannot be enforced: {_explain(first)}")
        with self._lock:
            self._grammars[key] = grammar
        return grammar

    def constraint(self, fmt: ResponseFormat, *, max_tokens: int | None = None) -> JsonConstraint:
        """A fresh logits processor for one request that may generate `max_tokens`."""
        import llguidance

        matcher = llguidance.LLMatcher(self._tokenizer, self.compile(fmt), log_level=0)
        if matcher.is_error():
            raise ResponseFormatError(f"response_format: {matcher.get_error()}")
        closing_from = None if max_tokens is None else max_tokens - closing_reserve(max_tokens)
        return JsonConstraint(
            matcher,
            self._tokenizer,
            self.vocab_size,
            self.eos_token_ids,
            closers=self.closers() if closing_from is not None else None,
            closing_from=closing_from,
        )

    def closers(self) -> tuple[Any, Any]:
        """Over the vocabulary: which tokens are made only of `"`, `}`, `]` (EOS counts), and
        each token's length in bytes."""
        if self._closers is None:
            import numpy as np

            mask = np.zeros(self.vocab_size, dtype=np.bool_)
            lengths = np.zeros(self.vocab_size, dtype=np.int32)
            for i in range(self.vocab_size):
                text = self._tokenizer.decode_bytes([i])
                mask[i] = bool(text) and set(text) <= CLOSERS
                lengths[i] = len(text)
            mask[self.eos_token_ids] = True
            self._closers = (mask, lengths)
        return self._closers


def _explain(error: str) -> str:
    if error.startswith("Unimplemented keys:"):
        keys = error.partition(":")[2].strip()
        return f"unsupported keyword(s) {keys}"
    return error


class JsonConstraint:
    """mlx-lm logits processor `(tokens, logits) -> logits` for one sequence.

    The first call sees the prompt; each later call first accepts the tokens generated
    since, then masks every token the grammar forbids. After the JSON is complete only EOS
    remains. From generated token `closing_from` on, the answer is steered shut. A token the
    grammar refused (a sampler that ignored the mask) is recorded in `error` and the answer
    is ended with EOS rather than continued off-grammar.
    """

    def __init__(
        self,
        matcher: Any,
        tokenizer: Any,
        vocab_size: int,
        eos_token_ids: list[int],
        *,
        closers: Any = None,
        closing_from: int | None = None,
    ) -> None:
        import numpy as np

        self.matcher = matcher
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.closing_from = closing_from
        self.tokens: list[int] = []  # accepted so far
        self.error: str | None = None
        self.closed_early = False  # steered shut before the model ended the answer itself
        self._tokenizer = tokenizer
        self._closers = closers
        self._nesting = _Nesting()
        self._seen: int | None = None
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    @property
    def complete(self) -> bool:
        """The accepted tokens form a whole answer (nothing is missing before EOS)."""
        return self.error is None and bool(self.matcher.is_accepting())

    def __call__(self, tokens: Any, logits: Any) -> Any:
        import mlx.core as mx
        import numpy as np

        if self._seen is None:
            self._seen = int(tokens.size)
        elif tokens.size > self._seen:
            for token in tokens[self._seen :].tolist():
                self._accept(int(token))
            self._seen = int(tokens.size)
        if self.error is None and not self.matcher.is_stopped():
            self.matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
            if self.matcher.is_error():
                self._fail(self.matcher.get_error())
        width = logits.shape[-1]
        allowed = np.zeros(max(width, self.vocab_size), dtype=np.bool_)
        if self.error is None and not self.matcher.is_stopped():
            bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little")
            allowed[: self.vocab_size] = bits[: self.vocab_size]
            if self.closing_from is not None and len(self.tokens) >= self.closing_from:
                self._steer_shut(allowed)
        else:
            allowed[self.eos_token_ids] = True
        # Logit rows beyond the tokenizer's vocabulary stay forbidden.
        return mx.where(mx.array(allowed[:width]), logits, -mx.inf)

    def _steer_shut(self, allowed: Any) -> None:
        """Keep only the allowed closing tokens that leave the least nesting open."""
        import numpy as np

        closers, lengths = self._closers
        candidates = [int(t) for t in np.flatnonzero(allowed[: self.vocab_size] & closers)]
        if not candidates:
            # Nothing closes here (a required key, `true`, a minLength): take the longest
            # allowed tokens, to get through the forced part in as few tokens as possible.
            ids = np.flatnonzero(allowed[: self.vocab_size])
            if ids.size:
                longest = ids[lengths[ids] == lengths[ids].max()]
                allowed[:] = False
                allowed[longest] = True
                self.closed_early = True
            return
        eos = set(self.eos_token_ids)
        depth = {t: -1 if t in eos else self._nesting.after(self._bytes(t)) for t in candidates}
        best = min(depth.values())
        allowed[:] = False
        allowed[[t for t in candidates if depth[t] == best]] = True
        self.closed_early = self.closed_early or best >= 0

    def _bytes(self, token: int) -> bytes:
        return bytes(self._tokenizer.decode_bytes([token]))

    def _accept(self, token: int) -> None:
        if self.error is not None or self.matcher.is_stopped():
            return
        if not self.matcher.consume_token(token) or self.matcher.is_error():
            self._fail(f"token {token} refused: {self.matcher.get_error() or 'not in grammar'}")
            return
        self.tokens.append(token)
        if self.closing_from is not None:
            self._nesting.feed(self._bytes(token))

    def _fail(self, message: str) -> None:
        self.error = message.strip().splitlines()[0] if message.strip() else "grammar error"


@dataclass
class _Nesting:
    """How much JSON is open after the bytes seen so far: containers, plus one in a string."""

    stack: int = 0
    in_string: bool = False
    escaped: bool = False

    def feed(self, data: bytes) -> None:
        for byte in data:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif byte == 0x5C:  # backslash
                    self.escaped = True
                elif byte == 0x22:
                    self.in_string = False
            elif byte == 0x22:
                self.in_string = True
            elif byte in b"{[":
                self.stack += 1
            elif byte in b"}]":
                self.stack -= 1

    def after(self, data: bytes) -> int:
        probe = _Nesting(self.stack, self.in_string, self.escaped)
        probe.feed(data)
        return probe.stack + probe.in_string
