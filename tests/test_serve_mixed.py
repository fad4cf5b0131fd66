"""Adapters of one base decoded in one batch (`serve.mix_adapters`, serve/multi_lora.py) give
each request what raw mlx-lm generates with that request's adapter alone, token for token."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import make_adapter
from mlxtune.config import Config
from test_serve import chat_prompt_ids, mlx_lm_greedy

pytestmark = pytest.mark.e2e


def _config(model_dir: Path, adapters: dict[str, Path], **serve: Any) -> Config:
    return Config.model_validate(
        {
            "model": {"path": str(model_dir)},
            "serve": {"adapters": {n: str(p) for n, p in adapters.items()}, **serve},
        }
    )


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three rank-8 adapters (different seeds) and a rank-4 one, which cannot join their batch."""
    tmp = tmp_path_factory.mktemp("mixed")
    out = {
        f"a{seed}": make_adapter(tiny_model, tmp / f"a{seed}", b_scale=0.05, seed=seed)
        for seed in (1, 2, 3)
    }
    out["r4"] = make_adapter(tiny_model, tmp / "r4", rank=4, b_scale=0.05, seed=4)
    return out


def test_mixed_rows_get_their_own_adapter(tiny_model: Path, adapters: dict[str, Path]) -> None:
    """One forward pass over rows of different adapters equals each adapter's own LoRA model."""
    import mlx.core as mx
    from mlx_lm.generate import _merge_caches  # how BatchGenerator batches rows' caches

    from mlxtune.serve.models import load_models

    models = load_models(_config(tiny_model, adapters))
    mixed = models["a1"].mixed
    assert mixed is not None and models["base"].mixed is not None
    assert {id(models[n].mixed.model) for n in ("base", "a1", "a2", "a3")} == {id(mixed.model)}  # type: ignore[union-attr]
    assert models["r4"].mixed is None  # another rank: a batch of its own

    prompt = chat_prompt_ids(tiny_model)[:12]
    names = ["a2", "base", "a1", "a3", "a1"]
    cache = [mixed.model.cache_for(models[n].mixed.index) for n in names]  # type: ignore[union-attr]
    logits = mixed.model(mx.array([prompt] * len(names)), cache=_merge_caches(cache))
    for row, name in enumerate(names):
        alone = models[name].model(mx.array([prompt]))[0]  # unfused LoRA (or the base)
        assert mx.allclose(logits[row], alone, atol=1e-4).item(), name
    assert not mx.allclose(logits[0], logits[1], atol=1e-2).item(), "the adapters must matter"
    with pytest.raises(ValueError, match="cache_for"):
        mixed.model(mx.array([prompt]), cache=None)


def test_one_adapter_is_served_as_before(tiny_model: Path, adapters: dict[str, Path]) -> None:
    from mlx_lm.tuner.lora import LoRALinear

    from mlxtune.serve.models import load_models

    models = load_models(_config(tiny_model, {"a1": adapters["a1"]}))
    assert all(m.mixed is None for m in models.values())
    assert not any(isinstance(m, LoRALinear) for _, m in models["a1"].model.named_modules())
    off = load_models(_config(tiny_model, adapters, mix_adapters=False))
    assert all(m.mixed is None for m in off.values())


def test_only_plain_lora_over_this_base_mixes(
    tiny_model: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    from mlx_lm import load

    from mlxtune.serve.multi_lora import group_adapters, read_lora

    base = load(str(tiny_model))[0]
    odd = {}
    for name, change in (("qlora", {"base_quantization": {"bits": 4, "group_size": 64}}),
                         ("dora", {"fine_tune_type": "dora"})):  # fmt: skip
        odd[name] = shutil.copytree(adapters["a1"], tmp_path / name)
        config = json.loads((odd[name] / "adapter_config.json").read_text())
        (odd[name] / "adapter_config.json").write_text(json.dumps({**config, **change}))
        assert read_lora(odd[name], base) is None, name
    groups = group_adapters(base, {**odd, **adapters})
    assert [sorted(g) for g in groups] == [["a1", "a2", "a3"]]  # r4: another rank, alone


def _submit(engine: Any, model: str, prompt: list[int], n: int, first: threading.Event) -> Any:
    from mlxtune.serve import GenRequest

    done = threading.Event()

    def emit(kind: str, _payload: Any) -> None:
        if kind == "text":
            first.set()
        if kind in ("done", "error"):
            done.set()

    req = GenRequest(model=model, prompt=prompt, max_tokens=n, emit=emit)
    req.done = done  # type: ignore[attr-defined]
    engine.submit(req)
    return req


def test_mixed_batch_answers_like_each_adapter_alone(
    tiny_model: Path, adapters: dict[str, Path]
) -> None:
    """Base + three adapters + an adapter of another rank, staggered arrivals, different
    prompt and answer lengths: greedy text equals mlx-lm's with that adapter alone."""
    from mlxtune.serve import Engine
    from mlxtune.serve.models import load_models

    models = load_models(_config(tiny_model, adapters))
    mixed = models["a1"].mixed.model  # type: ignore[union-attr]
    chat = chat_prompt_ids(tiny_model)
    prompts = [chat, chat[: len(chat) // 2], chat[:5] + chat]
    # (model, prompt, max_tokens); the second wave arrives while the first decodes
    waves = [
        [("a1", 0, 20), ("base", 1, 12), ("a2", 2, 16), ("r4", 0, 10)],
        [("a3", 1, 14), ("a2", 0, 8), ("a1", 2, 18), ("base", 0, 6), ("a3", 0, 20)],
    ]
    engine = Engine(models, max_queue=16, max_batch_size=4, prompt_cache_size=4)
    engine.start()
    try:
        sent = []
        for wave in waves:
            first = threading.Event()
            sent += [(m, p, n, _submit(engine, m, prompts[p], n, first)) for m, p, n in wave]
            assert first.wait(60)
        for *_, req in sent:
            assert req.done.wait(120)
        # once more with the prompt cache warm (KV of an adapter's own earlier answers)
        again = [(m, p, n, _submit(engine, m, prompts[p], n, threading.Event()))
                 for m, p, n in waves[0]]  # fmt: skip
        for *_, req in again:
            assert req.done.wait(120)
    finally:
        engine.stop()
    assert mixed.mixed_calls > 0, "rows of different adapters must have shared a forward pass"
    for model, p, n, req in sent + again:
        want, _ = mlx_lm_greedy(tiny_model, adapters.get(model), prompts[p], n)
        assert req.text == want, (model, p, n)


def test_reload_moves_the_mixed_batch_to_the_new_adapter(tiny_model: Path, tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from mlxtune.serve import create_app

    dirs = {f"a{s}": make_adapter(tiny_model, tmp_path / f"a{s}", b_scale=0.05, seed=s)
            for s in (1, 2)}  # fmt: skip
    cfg = _config(tiny_model, dirs, api_key="k")
    prompt = chat_prompt_ids(tiny_model)
    auth = {"Authorization": "Bearer k"}

    def ask(http: Any, model: str) -> str:
        body = {"model": model, "prompt": prompt, "max_tokens": 10, "temperature": 0}
        r = http.post("/v1/completions", json=body, headers=auth)
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["text"])

    with TestClient(create_app(cfg)) as http:
        state = http.app.state.serve
        old = state.models["a1"].mixed.model
        assert ask(http, "a1") == mlx_lm_greedy(tiny_model, dirs["a1"], prompt, 10)[0]
        make_adapter(tiny_model, dirs["a1"], b_scale=0.05, seed=7)  # a new a1, same place
        r = http.post("/admin/reload", headers=auth)
        assert r.status_code == 200 and r.json()["reloaded"] == ["a1"], r.text
        new = state.models["a1"].mixed.model
        assert new is not old and state.models["a2"].mixed.model is new
        assert state.models["base"].mixed.model is new
        for name in ("a1", "a2", "base"):
            want = mlx_lm_greedy(tiny_model, dirs.get(name), prompt, 10)[0]
            assert ask(http, name) == want, name
