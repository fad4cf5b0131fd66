"""Tool calls in generated text, read back with mlx-lm's parser for the model's chat template
(`TokenizerWrapper.tool_parser`, between its `tool_call_start` and `tool_call_end`)."""

from __future__ import annotations

import json
import uuid
from typing import Any


def supports_tools(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "has_tool_calling", False))


def extract_tool_calls(
    text: str, tokenizer: Any, tools: list[dict[str, Any]] | None
) -> tuple[str, list[dict[str, Any]]]:
    """(the text outside tool-call markup, OpenAI `tool_calls`). A call the parser cannot
    read (cut off by max_tokens, say) stays in the text rather than vanish."""
    start, end = tokenizer.tool_call_start, tokenizer.tool_call_end
    parse = tokenizer.tool_parser
    content: list[str] = []
    calls: list[dict[str, Any]] = []
    rest = text
    while (i := rest.find(start)) >= 0:
        j = rest.find(end, i + len(start)) if end else len(rest)
        if j < 0:
            break
        inner = rest[i + len(start) : j]
        try:
            parsed = parse(inner, tools)
        except (ValueError, KeyError, TypeError):
            content.append(rest[: j + len(end or "")])
        else:
            content.append(rest[:i])
            for call in parsed if isinstance(parsed, list) else [parsed]:
                calls.append(_openai_call(call))
        rest = rest[j + len(end or "") :]
    content.append(rest)
    return "".join(content).strip() if calls else text, calls


def _openai_call(call: dict[str, Any]) -> dict[str, Any]:
    arguments = call.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {
        "id": call.get("id") or "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": str(call.get("name", "")), "arguments": arguments},
    }
