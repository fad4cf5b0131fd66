"""Per-request sampling as mlx-lm does it: temperature, top_p, top_k, min_p and a seed make the
sampler; repetition/presence/frequency penalties and logit_bias make the logits processors;
logprobs are read from what the batch generator already computes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GREEDY_BELOW = 1e-5  # temperature or top_p this small is greedy (as vLLM): no 1/1e-300 logits


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # None: off; N: the chosen token's plus N alternatives


def make_sampler(s: Sampling) -> Any:
    """Greedy requests share mlx-lm's greedy sampler (one batched argmax); a seeded request
    gets its own random key, so its tokens do not depend on what else is in the batch."""
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, greedy_sampler
    from mlx_lm.sample_utils import make_sampler as mlx_make_sampler

    if s.temperature < GREEDY_BELOW or s.top_p < GREEDY_BELOW:
        return greedy_sampler
    top_p = s.top_p if s.top_p < 1 else 0.0
    if s.seed is None:
        return mlx_make_sampler(s.temperature, top_p=top_p, min_p=s.min_p, top_k=s.top_k)
    state = {"key": mx.random.key(s.seed)}

    def sampler(logprobs: Any) -> Any:
        if top_p:
            logprobs = apply_top_p(logprobs, top_p)
        if s.min_p:
            logprobs = apply_min_p(logprobs, s.min_p)
        if s.top_k:
            logprobs = apply_top_k(logprobs, s.top_k)
        state["key"], sub = mx.random.split(state["key"])
        return mx.random.categorical(logprobs * (1 / s.temperature), key=sub)

    return sampler


def make_processors(s: Sampling) -> list[Any]:
    from mlx_lm.sample_utils import make_logits_processors

    return list(
        make_logits_processors(
            logit_bias=s.logit_bias or None,
            repetition_penalty=s.repetition_penalty,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
        )
    )


def token_logprob(token: int, logprobs: Any, top: int, decode: Any) -> dict[str, Any]:
    """One OpenAI logprobs entry: the chosen token, its log probability and the `top` best."""
    import mlx.core as mx

    def entry(t: int, lp: float) -> dict[str, Any]:
        text = decode(t)
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    out = entry(token, float(logprobs[token].item()))
    alternatives = []
    if top:
        best = mx.argpartition(-logprobs, kth=top - 1)[:top]
        values = logprobs[best]
        order = mx.argsort(-values)
        ids: list[int] = best[order].tolist()  # type: ignore[assignment]
        lps: list[float] = values[order].tolist()
        alternatives = [entry(int(i), float(v)) for i, v in zip(ids, lps, strict=True)]
    out["top_logprobs"] = alternatives
    return out
