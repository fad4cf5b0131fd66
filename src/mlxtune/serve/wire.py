"""The OpenAI wire format, both ways: request bodies (what we accept) and response shapes
(completion, stream chunk, usage, error, model list) as small pure functions.

Nothing here touches a model, a socket or the clock: tests check these shapes against the
official openai client's types without a server.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
)

# ---------------------------------------------------------------------------------------------
# Request bodies (OpenAI's, with what we support)


def _utf8(value: str) -> str:
    """JSON may carry lone surrogates ("\\ud800"): nothing downstream can encode them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid UTF-8 (a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]
SEED_MAX = 2**64 - 1  # mx.random.key takes an unsigned 64-bit seed


class Body(BaseModel):
    """Fields shared by chat and text completions. Numbers and booleans are strict, as OpenAI's
    are: "8" is not a max_tokens, 1 is not `true`."""

    model_config = ConfigDict(extra="ignore")

    model: Text | None = Field(
        None, min_length=1, max_length=256,
        description="Model name: the base or a configured adapter; omitted or null: the default.",
    )  # fmt: skip
    max_tokens: StrictInt | None = Field(None, ge=1, description="Tokens to generate at most.")
    max_completion_tokens: StrictInt | None = Field(None, ge=1, description="Alias of max_tokens.")
    temperature: StrictFloat = Field(
        0.0, ge=0, le=2, allow_inf_nan=False, description="0 (or below 1e-5) is greedy."
    )
    top_p: StrictFloat = Field(
        1.0, gt=0, le=1, allow_inf_nan=False, description="Nucleus sampling; below 1e-5 greedy."
    )
    stop: Text | list[Text] | None = Field(None, description="Up to 4 stop strings.")
    seed: StrictInt | None = Field(
        None, ge=0, le=SEED_MAX, description="Seed for reproducible sampling (unsigned 64-bit)."
    )
    stream: StrictBool = False
    n: StrictInt = Field(1, ge=1, le=1, description="Only 1 is supported.")
    response_format: Any = Field(
        None, description="text, json_object or json_schema: decoding is constrained to it."
    )

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s or len(s) > 256 for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings of at most 256 characters")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def chars(self) -> int:
        """Characters of prompt text: the cheap size check made before tokenizing."""
        raise NotImplementedError


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: Text | list[ContentPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    def as_message(self) -> dict[str, str]:
        """The message as `formats.encode_prompt` takes it; "developer" is OpenAI's new name
        for "system", which chat templates know."""
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class ChatBody(Body):
    messages: list[ChatMessage] = Field(..., min_length=1)

    def chars(self) -> int:
        return sum(len(m.text()) for m in self.messages)


class CompletionBody(Body):
    prompt: Text = Field(..., min_length=1, description="Raw prompt text (no chat template).")

    def chars(self) -> int:
        return len(self.prompt)


# ---------------------------------------------------------------------------------------------
# Errors


class ApiError(Exception):
    """An OpenAI-style error response, raised from a handler and rendered by the app."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code,
        )  # fmt: skip
        self.headers = headers or {}
        self.model: str | None = None  # for the usage log
        self.logged = False  # the usage log already has this request

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def validation_error(errors: Sequence[Any]) -> tuple[str, str | None]:
    """pydantic's errors for a request body -> (one-line message, param), first error only."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg', 'invalid')}" if param else "invalid request body"
    return message, param


# ---------------------------------------------------------------------------------------------
# Responses


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    rid: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    usage: dict[str, int],
    *,
    chat: bool,
) -> dict[str, Any]:
    """A whole (non-streamed) chat.completion or text_completion."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


def chunk(
    rid: str,
    created: int,
    model: str,
    text: str | None,
    finish_reason: str | None = None,
    *,
    chat: bool,
    role: bool = False,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One streamed piece. Chat chunks carry a `delta` (the first one the role), text
    completion chunks a `text`; the last one has the finish reason and the usage."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice["delta"] = delta
    else:
        choice["text"] = text or ""
    out: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def model_entry(
    name: str, created: int, root: str, adapter: str | None, fingerprint: str | None
) -> dict[str, Any]:
    """One entry of GET /v1/models; `adapter` and `adapter_sha256` are ours (None: the base)."""
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "mlxtune",
        "root": root,
        "adapter": adapter,
        "adapter_sha256": fingerprint,
    }


def model_list(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": entries}
