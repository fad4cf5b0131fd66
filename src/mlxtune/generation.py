"""Greedy generation from token prompts: THE local reference that evaluate, export and verify
compare against (a server's answers, a fused model's, the trained model's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def greedy_tokens(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_tokens: int,
    batch_size: int = 1,
    report: Callable[[int], None] | None = None,
    processors: list[list[Any]] | None = None,
) -> list[list[int]]:
    """Each prompt's greedy continuation, without the end-of-sequence token. batch_size 1 is
    true one-at-a-time decoding; otherwise mlx-lm's BatchGenerator. `processors`: each
    prompt's own logits processors (its output constraint)."""
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator, generate_step

    eos = set(tokenizer.eos_token_ids)
    tokens: list[list[int]] = [[] for _ in prompts]
    if batch_size == 1:
        for i, ids in enumerate(prompts):
            own = processors[i] if processors else None
            steps = generate_step(
                mx.array(ids), model, max_tokens=max_tokens, logits_processors=own
            )
            for token, _ in steps:
                if int(token) in eos:
                    break
                tokens[i].append(int(token))
            if report:
                report(i + 1)
        return tokens
    gen = BatchGenerator(
        model,
        stop_tokens=[[t] for t in eos],
        completion_batch_size=batch_size,
        prefill_batch_size=batch_size,
    )
    try:
        uids = gen.insert(prompts, [max_tokens] * len(prompts), logits_processors=processors)
        index = {uid: i for i, uid in enumerate(uids)}
        done = 0
        while responses := gen.next_generated():
            for r in responses:
                if r.finish_reason != "stop":
                    tokens[index[r.uid]].append(int(r.token))
                if r.finish_reason is not None:
                    done += 1
                    if report:
                        report(done)
    finally:
        gen.close()
    return tokens


def greedy_answers(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], max_tokens: int
) -> list[list[int]]:
    """Greedy answer tokens for chat conversations, rendered by the one prompt renderer."""
    from mlxtune.formats import encode_prompt

    prompts = [encode_prompt(tokenizer, messages) for messages in conversations]
    return greedy_tokens(model, tokenizer, prompts, max_tokens)


def detokenize(tokenizer: Any, tokens: list[int]) -> str:
    """The text a streaming server sends for `tokens` (mlx-lm's streaming detokenizer, as
    mlxtune serve and mlx_lm.server use; `tokenizer.decode` may differ in leading spaces)."""
    detok = tokenizer.detokenizer
    detok.reset()
    for token in tokens:
        detok.add_token(token)
    detok.finalize()
    return str(detok.text)
