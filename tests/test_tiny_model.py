from __future__ import annotations

from pathlib import Path

import pytest

from mlxtune.errors import MlxtuneError
from mlxtune.io import sha256_file
from mlxtune.tiny_model import build_tiny_model

pytestmark = pytest.mark.e2e


def test_loads_in_mlx_lm_and_transformers(tiny_model: Path) -> None:
    from mlx_lm import generate, load
    from transformers import AutoTokenizer

    model, tokenizer = load(str(tiny_model))
    assert len(model.layers) == 4
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eos in tokenizer.eos_token_ids
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    assert isinstance(generate(model, tokenizer, prompt, max_tokens=3), str)
    hf = AutoTokenizer.from_pretrained(str(tiny_model))
    # trained on the shipped data: domain words are few tokens
    assert len(hf.encode("gateway")) <= 2
    assert hf.eos_token == "<|im_end|>"


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    corpus = [Path(__file__).parent.parent / "configs" / "demo.yaml"]
    a = build_tiny_model(tmp_path / "a", seed=1, corpus=corpus)
    b = build_tiny_model(tmp_path / "b", seed=1, corpus=corpus)
    c = build_tiny_model(tmp_path / "c", seed=2, corpus=corpus)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256_file(a.path / name) == sha256_file(b.path / name), name
    assert sha256_file(a.path / "model.safetensors") != sha256_file(c.path / "model.safetensors")


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x").write_text("keep")
    with pytest.raises(MlxtuneError, match="already exists"):
        build_tiny_model(tmp_path / "m")
    assert (tmp_path / "m" / "x").read_text() == "keep"
