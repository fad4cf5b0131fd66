"""Wire shapes of `POST /v1/embeddings` (OpenAI's), as pure functions over numpy arrays."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients may send fields we ignore

    input: EmbeddingInput = Field(..., description="Text, texts, token ids or lists of ids.")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, gt=0)
    user: str | None = None


def encode_vector(vector: Any, encoding_format: str) -> list[float] | str:
    """A float list, or base64 of little-endian float32 (what the openai client decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector.tolist()]


def embedding_response(
    model: str, vectors: Any, encoding_format: str, prompt_tokens: int
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
