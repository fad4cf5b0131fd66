"""Compare grammar engines for constrained JSON decoding: compile time, per-token mask time,
schema coverage. The figures in docs/benchmarks.md ("Grammar engines") come from this script.

    python scripts/grammar_engines.py [--large-vocab 32000] [--out grammar_engines.json]

Each engine is measured if importable: llguidance (mlxtune's dependency), outlines-core and
xgrammar (`pip install outlines-core xgrammar`; xgrammar imports torch at module top).
Every engine walks the same token path (the tokenizer's encoding of a valid compact JSON
instance) so the per-token times compare like for like.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

SERVICE = {
    "type": "object",
    "properties": {
        "service": {"type": "string", "enum": ["gateway", "docs", "metrics", "vector-db"]},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    },
    "required": ["service", "port"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 40},
        "version": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+\\.[0-9]+$"},
        "owner": {
            "type": "object",
            "properties": {"team": {"type": "string"}, "oncall": {"type": "boolean"}},
            "required": ["team", "oncall"],
        },
        "endpoints": {
            "type": "array",
            "minItems": 1,
            "maxItems": 4,
            "items": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "method": {"enum": ["GET", "POST"]},
                    "timeout_s": {"type": "number", "minimum": 0, "maximum": 60},
                },
                "required": ["path", "method"],
            },
        },
    },
    "required": ["name", "version", "owner", "endpoints"],
}
NESTED_INSTANCE = {
    "name": "gateway",
    "version": "1.4.2",
    "owner": {"team": "platform", "oncall": True},
    "endpoints": [
        {"path": "/v1/chat", "method": "POST", "timeout_s": 30},
        {"path": "/health", "method": "GET"},
    ],
}
WIDE = {
    "type": "object",
    "properties": {f"field_{i}": {"type": "string", "maxLength": 20} for i in range(30)},
    "required": [f"field_{i}" for i in range(30)],
}
TIMED = [
    ("service (enum + int range)", SERVICE, {"service": "gateway", "port": 8080}),
    ("nested (objects, array, pattern)", NESTED, NESTED_INSTANCE),
    ("wide (30 required strings)", WIDE, {f"field_{i}": f"value {i}" for i in range(30)}),
]

# (feature, schema, valid instance, invalid instance or None)
COVERAGE: list[tuple[str, dict[str, Any], Any, Any]] = [
    ("enum", {"enum": ["a", "b"]}, "a", "c"),
    ("const", {"const": "x"}, "x", "y"),
    ("nested object + required", NESTED, NESTED_INSTANCE, {"name": "x"}),
    (
        "array minItems/maxItems",
        {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2},
        [1, 2],
        [1, 2, 3],
    ),
    ("pattern", {"type": "string", "pattern": "^[a-z]{3}$"}, "abc", "abcd"),
    ("minLength/maxLength", {"type": "string", "minLength": 2, "maxLength": 3}, "ab", "abcd"),
    ("integer minimum/maximum", {"type": "integer", "minimum": 10, "maximum": 20}, 15, 25),
    ("number minimum/maximum", {"type": "number", "minimum": 0, "maximum": 1}, 0.5, 1.5),
    (
        "additionalProperties false",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
        {"a": 1},
        {"a": 1, "b": 2},
    ),
    (
        "anyOf",
        {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 2}]},
        "ab",
        "abc",
    ),
    (
        "$ref/$defs",
        {
            "$defs": {"port": {"type": "integer", "minimum": 1, "maximum": 9}},
            "type": "object",
            "properties": {"p": {"$ref": "#/$defs/port"}},
            "required": ["p"],
        },
        {"p": 3},
        {"p": 30},
    ),
    ("format date-time", {"type": "string", "format": "date-time"}, "2026-01-02T03:04:05Z", "x"),
]
# A keyword no engine enforces: the right answer is an error, not a silent pass.
UNSUPPORTED = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Engine:
    name = ""

    def compile(self, schema: dict[str, Any]) -> Any: ...
    def matcher(self, compiled: Any) -> Any: ...
    def fill(self, m: Any, mask: np.ndarray) -> None: ...
    def accept(self, m: Any, token: int) -> bool: ...


class LLGuidance(Engine):
    name = "llguidance"

    def __init__(self, hf_tok: Any, vocab: int) -> None:
        import llguidance
        import llguidance.hf

        self.ll = llguidance
        self.tok = llguidance.hf.from_tokenizer(hf_tok, n_vocab=vocab)

    def compile(self, schema: dict[str, Any]) -> Any:
        grammar = self.ll.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False}
        )
        error = self.ll.LLMatcher.validate_grammar(grammar, self.tok)
        if error:
            raise ValueError(error)
        return grammar

    def matcher(self, compiled: Any) -> Any:
        m = self.ll.LLMatcher(self.tok, compiled, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def fill(self, m: Any, mask: np.ndarray) -> None:
        m.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)

    def accept(self, m: Any, token: int) -> bool:
        return bool(m.consume_token(token)) and not m.is_error()


class XGrammar(Engine):
    name = "xgrammar"

    def __init__(self, hf_tok: Any, vocab: int) -> None:
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(hf_tok, vocab_size=vocab)
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile(self, schema: dict[str, Any]) -> Any:
        return self.compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(",", ":"), strict_mode=True
        )

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, m: Any, mask: np.ndarray) -> None:
        m.fill_next_token_bitmask(mask.reshape(1, -1))

    def accept(self, m: Any, token: int) -> bool:
        return bool(m.accept_token(token))


class OutlinesCore(Engine):
    name = "outlines-core"

    def __init__(self, hf_tok: Any, vocab: int) -> None:
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema

        self.oc, self.regex = outlines_core, build_regex_from_schema
        byte_decoder = _byte_decoder()
        special = set(hf_tok.all_special_ids)
        by_bytes: dict[bytes, list[int]] = {}
        for text, i in hf_tok.get_vocab().items():
            if i in special:
                continue
            by_bytes.setdefault(bytes(byte_decoder[c] for c in text), []).append(i)
        self.eos = hf_tok.eos_token_id
        self.vocab = outlines_core.Vocabulary(self.eos, by_bytes)

    def compile(self, schema: dict[str, Any]) -> Any:
        return self.oc.Index(self.regex(json.dumps(schema), None), self.vocab)

    def matcher(self, compiled: Any) -> Any:
        return self.oc.Guide(compiled)

    def fill(self, m: Any, mask: np.ndarray) -> None:
        m.write_mask_into(mask.ctypes.data, mask.size, mask.itemsize)

    def accept(self, m: Any, token: int) -> bool:
        if token == self.eos:  # a Guide ends on EOS rather than advancing past it
            return bool(m.is_finished())
        try:
            m.advance(token)
        except ValueError:
            return False
        return True


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level alphabet -> byte (the inverse of bytes_to_unicode)."""
    bs = [*range(33, 127), *range(161, 173), *range(174, 256)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def allowed(mask: np.ndarray, token: int) -> bool:
    return bool((int(mask[token // 32]) >> (token % 32)) & 1)


def walk(engine: Engine, compiled: Any, tokens: list[int], eos: int, vocab: int) -> list[float]:
    """Fill the mask before each token of the path and before EOS; return the fill times."""
    m = engine.matcher(compiled)
    mask = np.zeros((vocab + 31) // 32, dtype=np.int32)
    times = []
    for token in [*tokens, eos]:
        t0 = time.perf_counter()
        engine.fill(m, mask)
        times.append(time.perf_counter() - t0)
        if not allowed(mask, token) or not engine.accept(m, token):
            raise AssertionError(f"{engine.name}: path token {token} refused")
    return times


def accepts(engine: Engine, compiled: Any, tokens: list[int], eos: int, vocab: int) -> bool:
    m = engine.matcher(compiled)
    mask = np.zeros((vocab + 31) // 32, dtype=np.int32)
    for token in [*tokens, eos]:
        engine.fill(m, mask)
        if not allowed(mask, token) or not engine.accept(m, token):
            return False
    return True


def coverage(engine: Engine, encode: Callable[[str], list[int]], eos: int, vocab: int) -> dict:
    out: dict[str, str] = {}
    for feature, schema, good, bad in COVERAGE:
        try:
            compiled = engine.compile(schema)
        except Exception as e:
            out[feature] = f"compile error: {str(e).splitlines()[0][:80]}"
            continue
        ok_good = accepts(engine, compiled, encode(compact(good)), eos, vocab)
        ok_bad = bad is None or not accepts(engine, compiled, encode(compact(bad)), eos, vocab)
        out[feature] = "ok" if ok_good and ok_bad else ("too loose" if ok_good else "too strict")
    try:
        engine.compile(UNSUPPORTED)
        out["uniqueItems (unsupported)"] = "accepted silently"
    except Exception as e:
        out["uniqueItems (unsupported)"] = f"error: {str(e).splitlines()[0][:80]}"
    return out


def measure(hf_tok: Any, label: str, repeat: int) -> dict[str, Any]:
    vocab = len(hf_tok)
    eos = hf_tok.eos_token_id

    def encode(text: str) -> list[int]:
        return list(hf_tok.encode(text, add_special_tokens=False))

    results: dict[str, Any] = {"tokenizer": label, "vocab": vocab, "engines": {}}
    for cls in (LLGuidance, OutlinesCore, XGrammar):
        try:
            t0 = time.perf_counter()
            engine = cls(hf_tok, vocab)
            setup = time.perf_counter() - t0
        except ImportError as e:
            results["engines"][cls.name] = {"skipped": str(e)}
            continue
        row: dict[str, Any] = {"tokenizer_setup_ms": round(setup * 1000, 1), "schemas": {}}
        for name, schema, instance in TIMED:
            compile_ms = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                compiled = engine.compile(schema)
                engine.matcher(compiled)
                compile_ms.append((time.perf_counter() - t0) * 1000)
            tokens = encode(compact(instance))
            mask_us = [
                t * 1e6 for _ in range(repeat) for t in walk(engine, compiled, tokens, eos, vocab)
            ]
            row["schemas"][name] = {
                "compile_ms": round(statistics.median(compile_ms), 2),
                "mask_us_p50": round(statistics.median(mask_us), 1),
                "mask_us_max": round(max(mask_us), 1),
                "tokens": len(tokens) + 1,
            }
        row["coverage"] = coverage(engine, encode, eos, vocab)
        results["engines"][cls.name] = row
    return results


def large_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE trained on this Python's standard library: a real-size vocabulary
    with the code and punctuation tokens real tokenizers have (no hub here)."""
    import sysconfig

    from transformers import PreTrainedTokenizerFast

    from mlxtune.tiny_model import EOS, train_tokenizer

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(errors="replace") for p in sorted(stdlib.rglob("*.py"))[:3000]]
    tok = train_tokenizer(texts, vocab_size)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-vocab", type=int, default=32000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from mlxtune.tiny_model import build_tiny_model

    report = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        build_tiny_model(model, preset="tiny", corpus=sorted((REPO / "data").rglob("*.jsonl")))
        report.append(measure(AutoTokenizer.from_pretrained(model), "tiny", args.repeat))
    if args.large_vocab:
        tok = large_tokenizer(args.large_vocab)
        report.append(measure(tok, f"stdlib BPE {args.large_vocab}", args.repeat))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
