"""What makes serve fast must not change its answers: adapters folded into their layers
(`serve.fuse_adapters`) and the prompt cache (`serve.prompt_cache_size`) give what raw mlx-lm
generates, token for token, on the tiny model."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import make_adapter
from mlxtune.config import Config
from test_serve import chat_prompt_ids, mlx_lm_greedy


def _config(model_dir: Path, adapter: Path, fuse: bool) -> Config:
    return Config.model_validate(
        {
            "model": {"path": str(model_dir)},
            "serve": {"adapters": {"ad1": str(adapter)}, "fuse_adapters": fuse},
        }
    )


def _lora_layers(model: Any) -> int:
    from mlx_lm.tuner.lora import LoRALinear

    return sum(isinstance(m, LoRALinear) for _, m in model.named_modules())


@pytest.mark.e2e
def test_fused_adapter_answers_like_its_lora_layers(tiny_model: Path, tmp_path: Path) -> None:
    import mlx.core as mx

    from mlxtune.serve.models import load_models

    adapter = make_adapter(tiny_model, tmp_path / "ad1", b_scale=0.05)
    fused = load_models(_config(tiny_model, adapter, fuse=True))
    layered = load_models(_config(tiny_model, adapter, fuse=False))
    assert _lora_layers(fused["ad1"].model) == 0
    assert _lora_layers(layered["ad1"].model) > 0
    prompt = mx.array([chat_prompt_ids(tiny_model)])
    logits = {name: m["ad1"].model(prompt) for name, m in (("f", fused), ("l", layered))}
    base = fused["base"].model(prompt)
    assert mx.allclose(logits["f"], logits["l"], atol=1e-4).item()
    assert not mx.allclose(logits["f"], base, atol=1e-2).item(), "the adapter must matter"
    # the base keeps its own weights: folding went into the adapter's copy
    assert mx.array_equal(base, layered["base"].model(prompt)).item()


def _answer(engine: Any, model: str, prompt: list[int], n: int) -> str:
    from mlxtune.serve import GenRequest

    done = threading.Event()
    req = GenRequest(
        model=model, prompt=prompt, max_tokens=n, stream=False,
        emit=lambda kind, _payload: done.set() if kind in ("done", "error") else None,
    )  # fmt: skip
    engine.submit(req)
    assert done.wait(60)
    return req.text


@pytest.mark.e2e
def test_prompt_cache_reuses_prefixes_and_keeps_answers(tiny_model: Path, tmp_path: Path) -> None:
    from mlxtune.serve import Engine
    from mlxtune.serve.models import load_models

    adapter = make_adapter(tiny_model, tmp_path / "ad1", b_scale=0.05)
    models = load_models(_config(tiny_model, adapter, fuse=True))
    engine = Engine(models, max_queue=4, max_batch_size=4, prompt_cache_size=4)
    prompt = chat_prompt_ids(tiny_model)
    longer = prompt + chat_prompt_ids(tiny_model)[1:]  # shares all of `prompt`
    expected = {len(p): mlx_lm_greedy(tiny_model, adapter, p, 12)[0] for p in (prompt, longer)}
    engine.start()
    try:
        assert _answer(engine, "ad1", prompt, 12) == expected[len(prompt)]
        assert engine.reused_prompt_tokens == 0
        assert _answer(engine, "ad1", prompt, 12) == expected[len(prompt)]
        assert engine.reused_prompt_tokens == len(prompt) - 1  # the last token is fed again
        assert _answer(engine, "ad1", longer, 12) == expected[len(longer)]
        assert engine.reused_prompt_tokens >= 2 * len(prompt) - 1
        # another model never sees this one's cache
        before = engine.reused_prompt_tokens
        _answer(engine, "base", prompt, 4)
        assert engine.reused_prompt_tokens == before
    finally:
        engine.stop()
