"""Every request field of OpenAI's chat/completions and completions APIs, and what serve does
with it: honoured, or refused with a 400 that names it. docs/serve.md lists the same table
(a test keeps them in step); nothing is dropped silently."""

from __future__ import annotations

from typing import Any

from mlxtune.serve.wire import ApiError

# Honoured by both endpoints (see wire.Body).
COMMON = (
    "model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options",
    "n", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "logit_bias", "user", "logprobs", "response_format",
)  # fmt: skip
HONOURED = {
    "chat": (*COMMON, "messages", "max_completion_tokens", "tools", "tool_choice",
             "parallel_tool_calls", "top_logprobs", "chat_template_kwargs"),
    "completions": (*COMMON, "prompt", "max_completion_tokens", "echo", "best_of"),
    "embeddings": ("input", "model", "encoding_format", "dimensions", "user"),  # all of OpenAI's
}  # fmt: skip

# Fields OpenAI defines that serve cannot honour, and why.
REFUSED = {
    "chat": {
        "audio": "audio output is not supported",
        "modalities": "only text output is supported",
        "prediction": "predicted outputs are not supported",
        "web_search_options": "web search is not supported",
        "functions": "deprecated: use tools",
        "function_call": "deprecated: use tool_choice",
        "store": "completions are not stored",
        "metadata": "completions are not stored",
        "reasoning_effort": "not supported; use chat_template_kwargs (e.g. enable_thinking)",
        "verbosity": "not supported",
        "service_tier": "there is one tier",
        "prompt_cache_key": "not supported",
        "safety_identifier": "not supported",
    },
    "completions": {
        "suffix": "insertion (suffix) is not supported",
    },
    "embeddings": {},
}


def check_extras(extras: dict[str, Any] | None, endpoint: str) -> None:
    """400 for the first field we do not honour: OpenAI's that we refuse, or unknown ones.
    Narrowed values (tool_choice 'required', n > 1, echo) are refused by the body's types."""
    for name in extras or {}:
        reason = REFUSED[endpoint].get(name, "unknown field")
        raise ApiError(400, f"{name}: {reason}", param=name, code="unsupported_parameter")
