"""Text embeddings from any mlx-lm model or adapter, or from a dedicated embedding model.

Two kinds (`embed.kind`):
- `pooled`: a language model's final hidden states (after its last norm), pooled over the
  real tokens (mean, or the last token) and L2-normalised. A LoRA adapter changes those
  hidden states, so a fine-tuned run gives its own embeddings with no new weights.
- `dedicated`: a BERT-style (or other) embedding model through `mlx-embeddings` (the `embed`
  extra), using the vectors the model itself produces (`text_embeds`).

Batches are padded on the RIGHT: a causal model's real tokens never attend to later pad
tokens, and pooling masks the pads, so a batch answer equals the one-at-a-time answer (to
float rounding). Left padding without an attention mask shifts every real token's context
and changes the vectors (tests/test_embeddings.py measures both).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mlxtune.errors import MlxtuneError

if TYPE_CHECKING:
    import mlx.core as mx

    from mlxtune.config import Config

Pooling = Literal["mean", "last"]
EMBED_EXTRA_INSTALL = "pip install 'mlxtune[embed]'"


class EmbeddingError(MlxtuneError):
    """A request the embedding model cannot answer as asked (served as HTTP 400)."""


class EmbeddingLimitError(EmbeddingError):
    """An input breaks a configured limit; `limit` names it (e.g. embed.max_inputs)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(f"{limit}: {message}")
        self.limit = limit


class DimensionsNotSupported(EmbeddingError):
    """`dimensions` asked of a model that was not trained to be truncated to that size."""


def import_mlx_embeddings() -> Any:
    """The `mlx_embeddings` module, or a one-line error with the install command.
    (It imports mlx-vlm, seconds of start-up: only dedicated models pay for it.)"""
    try:
        import mlx_embeddings
    except ImportError:
        raise MlxtuneError(
            f"dedicated embedding models need the embed extra: {EMBED_EXTRA_INSTALL}"
        ) from None
    return mlx_embeddings


class Embedder(Protocol):
    """One loaded embedding model. `embed_batch` runs one forward pass over right-padded
    token lists and returns (n, dimensions) float32 L2-normalised vectors."""

    kind: str
    dimensions: int
    allowed_dimensions: tuple[int, ...]
    max_tokens: int | None
    vocab_size: int | None

    def tokenize(self, text: str) -> list[int]: ...

    def embed_batch(self, batch: Sequence[Sequence[int]]) -> mx.array: ...


def _normalize(x: mx.array) -> mx.array:
    import mlx.core as mx

    return x / mx.maximum(mx.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def right_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[mx.array, mx.array]:
    """(token ids, mask), both (n, longest): real tokens first, pads after."""
    import mlx.core as mx

    width = max(len(t) for t in batch)
    ids = [list(t) + [pad_id] * (width - len(t)) for t in batch]
    mask = [[1] * len(t) + [0] * (width - len(t)) for t in batch]
    return mx.array(ids, dtype=mx.int32), mx.array(mask, dtype=mx.float32)


def pool(hidden: mx.array, mask: mx.array, pooling: Pooling) -> mx.array:
    """Masked mean or last-real-token of (n, length, d) hidden states, L2-normalised."""
    import mlx.core as mx

    hidden = hidden.astype(mx.float32)
    if pooling == "last":
        last = mask.sum(axis=1).astype(mx.int32) - 1
        pooled = mx.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0, :]
    else:
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
    return _normalize(pooled)


# Where mlx-lm models keep the stack that returns final (normed) hidden states.
_BACKBONES = ("model", "language_model.model", "backbone", "transformer")


def _backbone(model: Any) -> Any:
    for dotted in _BACKBONES:
        node = model
        for part in dotted.split("."):
            node = getattr(node, part, None)
        if node is not None and callable(node):
            return node
    model_type = getattr(getattr(model, "args", None), "model_type", type(model).__name__)
    raise EmbeddingError(f"model type {model_type}: cannot find its final hidden states")


def model_dir_dimensions(path: str | Path) -> tuple[int, ...]:
    """`matryoshka_dimensions` declared in a local model's config.json, if any."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return ()
    dims = config.get("matryoshka_dimensions") if isinstance(config, dict) else None
    return tuple(int(d) for d in dims) if isinstance(dims, list) else ()


class PooledEmbedder:
    """Embeddings from an mlx-lm language model (base or with an adapter applied)."""

    kind = "pooled"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        pooling: Pooling = "mean",
        matryoshka_dimensions: Sequence[int] = (),
        max_tokens: int | None = None,
    ) -> None:
        self.model, self.tokenizer, self.pooling = model, tokenizer, pooling
        self._backbone = _backbone(model)
        args = getattr(model, "args", None)
        self.vocab_size: int | None = getattr(args, "vocab_size", None)
        self.max_tokens = max_tokens
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if isinstance(pad, int) else 0
        self.dimensions = int(self.embed_batch([[0]]).shape[-1])  # also warms up
        self.allowed_dimensions = (self.dimensions, *matryoshka_dimensions)

    def tokenize(self, text: str) -> list[int]:
        # Plain text, no chat template: special tokens only as the tokenizer adds them (BOS).
        return list(self.tokenizer.encode(text))

    def embed_batch(self, batch: Sequence[Sequence[int]]) -> mx.array:
        import mlx.core as mx

        ids, mask = right_pad(batch, self.pad_id)
        # Causal attention: no real token sees the pads after it, so no attention mask is needed.
        out = pool(self._backbone(ids), mask, self.pooling)
        mx.eval(out)
        return out


class DedicatedEmbedder:
    """An embedding model loaded by mlx-embeddings; its own `text_embeds` are the vectors."""

    kind = "dedicated"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        matryoshka_dimensions: Sequence[int] = (),
        max_tokens: int | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        config = getattr(model, "config", None)
        self.vocab_size = getattr(config, "vocab_size", None)
        positions = getattr(config, "max_position_embeddings", None)
        limits = [n for n in (max_tokens, positions) if n]
        self.max_tokens = min(limits) if limits else None
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if isinstance(pad, int) else 0
        self.dimensions = int(self.embed_batch([[0]]).shape[-1])
        self.allowed_dimensions = (self.dimensions, *matryoshka_dimensions)

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def embed_batch(self, batch: Sequence[Sequence[int]]) -> mx.array:
        import mlx.core as mx

        ids, mask = right_pad(batch, self.pad_id)
        out = self.model(ids, attention_mask=mask)  # bidirectional: the mask hides the pads
        vectors = getattr(out, "text_embeds", None)
        if vectors is None:
            vectors = pool(out.last_hidden_state, mask, "mean")
        vectors = _normalize(vectors.astype(mx.float32))
        mx.eval(vectors)
        return vectors


# ---------------------------------------------------------------------------------------------
# Requests: OpenAI-shaped input -> token lists -> vectors


@dataclass(frozen=True)
class EmbedLimits:
    max_inputs: int
    max_tokens_per_input: int


def encode_inputs(embedder: Embedder, value: Any, limits: EmbedLimits) -> list[list[int]]:
    """OpenAI `input` (a string, a list of strings, a token array, or a list of token
    arrays) as token lists, checked against the limits. Problems raise EmbeddingError."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise EmbeddingError("input: expected a string, a list of strings or token arrays")
    if not items:
        raise EmbeddingError("input: empty list")
    if len(items) > limits.max_inputs:
        raise EmbeddingLimitError(
            "embed.max_inputs", f"{len(items)} inputs, at most {limits.max_inputs} per request"
        )
    max_tokens = limits.max_tokens_per_input
    if embedder.max_tokens:
        max_tokens = min(max_tokens, embedder.max_tokens)
    out: list[list[int]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]" if len(items) > 1 or not isinstance(value, str) else "input"
        if isinstance(item, str):
            tokens = embedder.tokenize(item) if item else []
        elif isinstance(item, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in item
        ):
            tokens = item
            bad = [t for t in tokens if t < 0 or (embedder.vocab_size and t >= embedder.vocab_size)]
            if bad:
                raise EmbeddingError(
                    f"{where}: token id {bad[0]} outside the vocabulary (0..{embedder.vocab_size})"
                )
        else:
            raise EmbeddingError(f"{where}: expected a string or a list of token ids")
        if not tokens:
            raise EmbeddingError(f"{where}: empty input")
        if len(tokens) > max_tokens:
            limit = (
                "embed.max_tokens_per_input"
                if max_tokens == limits.max_tokens_per_input
                else "the model's max_position_embeddings"
            )
            raise EmbeddingLimitError(
                limit, f"{where} has {len(tokens)} tokens, at most {max_tokens}"
            )
        out.append(tokens)
    return out


def embed_tokens(
    embedder: Embedder, token_lists: Sequence[Sequence[int]], *, batch_size: int = 32
) -> mx.array:
    """(n, dimensions) vectors in input order. Inputs are grouped by length so each batch
    pads little; the answer does not depend on the grouping."""
    import mlx.core as mx

    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    parts = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        parts.append(embedder.embed_batch([token_lists[i] for i in chunk]))
    stacked = mx.concatenate(parts, axis=0)
    inverse = [0] * len(order)
    for position, i in enumerate(order):
        inverse[i] = position
    return stacked[mx.array(inverse)]


def embed_texts(embedder: Embedder, texts: Sequence[str], *, batch_size: int = 32) -> mx.array:
    return embed_tokens(embedder, [embedder.tokenize(t) for t in texts], batch_size=batch_size)


def check_dimensions(embedder: Embedder, dimensions: int | None) -> None:
    """Truncation is allowed only at the model's full size or a size it declares
    (embed.matryoshka_dimensions, or `matryoshka_dimensions` in its config.json): cutting a
    vector that was not trained for it loses meaning silently."""
    if dimensions is None or dimensions in embedder.allowed_dimensions:
        return
    sizes = ", ".join(str(d) for d in sorted(set(embedder.allowed_dimensions)))
    raise DimensionsNotSupported(
        f"dimensions: {dimensions} is not supported by this model (supported: {sizes})"
    )


def truncate(vectors: mx.array, dimensions: int | None, embedder: Embedder) -> mx.array:
    """Matryoshka truncation to `dimensions`, renormalised (see check_dimensions)."""
    check_dimensions(embedder, dimensions)
    if dimensions is None or dimensions == embedder.dimensions:
        return vectors
    return _normalize(vectors[:, :dimensions])


# ---------------------------------------------------------------------------------------------
# Loading


def load_embedder(cfg: Config, adapter: Path | str | None = None) -> Embedder:
    """The embedding model `cfg.embed` names: model.path (with `adapter` applied) pooled, or a
    dedicated model through mlx-embeddings."""
    embed = cfg.embed
    if embed.kind == "dedicated":
        assert embed.model is not None  # EmbedConfig checks it
        if adapter is not None:
            raise MlxtuneError("embed.kind: adapters apply to kind: pooled, not dedicated models")
        return load_dedicated(embed.model, cfg)
    from mlxtune.modeling import load_model

    model, tokenizer, _ = load_model(cfg.model, adapter)
    return pooled_embedder(model, tokenizer, cfg)


def pooled_embedder(model: Any, tokenizer: Any, cfg: Config) -> PooledEmbedder:
    """A loaded language model (base or adapted) as an embedder, as `cfg.embed` says."""
    embed = cfg.embed
    return PooledEmbedder(
        model,
        tokenizer,
        pooling=embed.pooling,
        matryoshka_dimensions=embed.matryoshka_dimensions or model_dir_dimensions(cfg.model.path),
        max_tokens=embed.max_tokens_per_input,
    )


def load_dedicated(path: str, cfg: Config) -> DedicatedEmbedder:
    mlx_embeddings = import_mlx_embeddings()
    local = Path(path)
    if (local.is_absolute() or path.startswith(".") or local.exists()) and not local.is_dir():
        raise MlxtuneError(f"embed.model: {path} is not a directory")
    try:
        model, tokenizer = mlx_embeddings.load(path)
    except (FileNotFoundError, ValueError) as e:
        raise MlxtuneError(f"embed.model: cannot load {path}: {e}") from None
    dims = cfg.embed.matryoshka_dimensions or model_dir_dimensions(path)
    return DedicatedEmbedder(
        model,
        tokenizer,
        matryoshka_dimensions=dims,
        max_tokens=cfg.embed.max_tokens_per_input,
    )
