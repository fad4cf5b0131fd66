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

from mlxtune.serve.sampling import Sampling

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


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class Body(BaseModel):
    """Fields shared by chat and text completions. Numbers and booleans are strict, as OpenAI's
    are: "8" is not a max_tokens, 1 is not `true`. Fields we do not honour are kept as extras
    so `openai_fields.check_extras` answers 400 naming them, never ignores them."""

    model_config = ConfigDict(extra="allow")

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
    top_k: StrictInt = Field(0, ge=0, description="Sample from the k most likely tokens (0: all).")
    min_p: StrictFloat = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    presence_penalty: StrictFloat | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: StrictFloat | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    repetition_penalty: StrictFloat | None = Field(
        None, gt=0, le=10, allow_inf_nan=False, description="mlx-lm's; 1 is none."
    )
    logit_bias: dict[str, StrictFloat | StrictInt] | None = Field(
        None, max_length=1024, description="Token id -> bias in [-100, 100]."
    )
    stream_options: StreamOptions | None = None
    user: Text | None = Field(
        None, max_length=256, description="End-user id; keeps a route's variant sticky."
    )

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not key.isdigit() or not -100 <= bias <= 100:
                raise ValueError("logit_bias maps token ids to numbers in [-100, 100]")
        return v

    def sampling(self, logprobs: int | None) -> Sampling:
        return Sampling(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            min_p=self.min_p, seed=self.seed, repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            logit_bias={int(k): float(v) for k, v in (self.logit_bias or {}).items()},
            logprobs=logprobs,
        )  # fmt: skip

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

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


class ToolCallFunction(BaseModel):
    name: Text = Field(..., max_length=256)
    arguments: Text | dict[str, Any] = "{}"


class ToolCall(BaseModel):
    id: Text | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: Text = Field(..., description="A base64 `data:` URI (remote URLs are refused).")


class ImagePart(BaseModel):
    """An image for a vision-language model (docs/vision.md)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["image_url"]
    image_url: ImageUrl


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text | list[Annotated[ContentPart | ImagePart, Field(discriminator="type")]] | None = (
        None
    )
    tool_calls: list[ToolCall] | None = Field(None, max_length=64)
    tool_call_id: Text | None = None
    name: Text | None = None

    def text(self) -> str:
        if isinstance(self.content, str) or self.content is None:
            return self.content or ""
        return "".join(p.text for p in self.content if isinstance(p, ContentPart))

    def image_urls(self) -> list[str]:
        if isinstance(self.content, str) or self.content is None:
            return []
        return [p.image_url.url for p in self.content if isinstance(p, ImagePart)]

    def as_message(self) -> dict[str, Any]:
        """The message as `formats.encode_prompt` takes it; "developer" is OpenAI's new name
        for "system", which chat templates know."""
        role = "system" if self.role == "developer" else self.role
        out: dict[str, Any] = {"role": role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump(exclude_none=True) for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


class ChatBody(Body):
    messages: list[ChatMessage] = Field(..., min_length=1)
    tools: list[dict[str, Any]] | None = Field(
        None, max_length=128, description="Functions the model may call."
    )
    tool_choice: Literal["none", "auto"] | None = Field(
        None, description="'auto' (default with tools) or 'none'; forcing a call is a 400."
    )
    parallel_tool_calls: Literal[True] | None = None
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="Extra chat template variables, e.g. {enable_thinking: false}."
    )

    def chars(self) -> int:
        return sum(len(m.text()) for m in self.messages) + len(str(self.tools or ""))

    def tools_in_use(self) -> list[dict[str, Any]] | None:
        return self.tools if self.tools and self.tool_choice != "none" else None

    def logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def image_urls(self) -> list[str]:
        return [url for m in self.messages for url in m.image_urls()]


class CompletionBody(Body):
    prompt: Text | list[Text] | list[StrictInt] | list[list[StrictInt]] = Field(
        ..., description="Raw prompt text or token ids (no chat template); a list is a batch."
    )
    logprobs: StrictInt | None = Field(None, ge=0, le=20, description="Alternatives per token.")
    echo: Literal[False] = False
    best_of: Literal[1] | None = None

    @field_validator("prompt")
    @classmethod
    def _not_empty(
        cls, v: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        if not v or (isinstance(v, list) and any(isinstance(p, str | list) and not p for p in v)):
            raise ValueError("prompt must not be empty")
        return v

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def chars(self) -> int:
        """Characters, or token ids counted as one each: the cheap check before tokenizing."""
        return sum(len(p) for p in self.prompts())


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
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    choices: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A whole (non-streamed) chat.completion or text_completion. `choices` (from `choice`)
    replaces the one built from text, for a batch of completion prompts."""
    if choices is None:
        choices = [
            choice(0, text, finish_reason, chat=chat, tool_calls=tool_calls, logprobs=logprobs)
        ]
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def choice(
    index: int,
    text: str,
    finish_reason: str,
    *,
    chat: bool,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "finish_reason": finish_reason, "logprobs": None}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message["content"] = text or None
            message["tool_calls"] = tool_calls
            out["finish_reason"] = "tool_calls"
        out["message"] = message
        if logprobs is not None:
            out["logprobs"] = {"content": logprobs}
    else:
        out["text"] = text
        if logprobs is not None:
            out["logprobs"] = legacy_logprobs(logprobs)
    return out


def legacy_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Chat-style logprob entries in the text completions shape."""
    offsets, at = [], 0
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
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
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    no_choices: bool = False,
) -> dict[str, Any]:
    """One streamed piece. Chat chunks carry a `delta` (the first one the role), text
    completion chunks a `text`; the last one has the finish reason and the usage. With
    `no_choices`, the usage-only chunk `stream_options.include_usage` asks for."""
    piece: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        if tool_calls:
            delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(tool_calls)]
        piece["delta"] = delta
        if logprobs:
            piece["logprobs"] = {"content": logprobs}
    else:
        piece["text"] = text or ""
        if logprobs:
            piece["logprobs"] = legacy_logprobs(logprobs)
    out: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [] if no_choices else [piece],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def model_entry(
    name: str, created: int, base: str, adapter: str | None, fingerprint: str | None
) -> dict[str, Any]:
    """One entry of GET /v1/models, as vLLM lists LoRA modules: `root` is what the id serves
    (the adapter's run directory, or the base model), `parent` the base an adapter sits on
    (None for the base). `adapter` and `adapter_sha256` are ours."""
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "mlxtune",
        "root": adapter or base,
        "parent": base if adapter else None,
        "adapter": adapter,
        "adapter_sha256": fingerprint,
    }


def model_list(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": entries}
