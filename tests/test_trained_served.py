"""What was trained is what is evaluated, served, exported and verified (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlxtune.config import Config

N_QUESTIONS = 6
MAX_TOKENS = 12


def qlora_config(tiny_model: Path, data: Path, tmp: Path, **extra: Any) -> Config:
    return Config.model_validate(
        {
            "model": {"path": str(tiny_model)},
            "data": {"dir": str(data)},
            "train": {
                "method": "lora", "runs_dir": str(tmp / "runs"), "name": "q",
                "registry_dir": str(tmp / ".mx"), "iters": 4, "batch_size": 2,
                "learning_rate": 1e-4, "lora_rank": 4, "num_layers": -1,
                "max_seq_length": 64, "steps_per_eval": 100, "val_batches": 1,
                "quantize_bits": 4,
            },
            "evaluate": {
                "max_tokens": MAX_TOKENS, "max_examples": N_QUESTIONS, "compute_loss": False,
                "compare_base": False, "batch_size": 1,
            },
            **extra,
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def qlora_run(
    tiny_model: Path, domain_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Config, Path, list[list[dict[str, str]]], list[list[int]], Any]:
    """A QLoRA run trained here, its test questions and the trained model's greedy answers."""
    from mlxtune.evaluate import load_examples
    from mlxtune.generation import greedy_answers
    from mlxtune.train import train

    tmp = tmp_path_factory.mktemp("qlora")
    cfg = qlora_config(tiny_model, domain_data, tmp)
    result = train(cfg)
    assert result.run_dir is not None
    questions = [ex.prompt for ex in load_examples(domain_data, "test", N_QUESTIONS)]
    trained = greedy_answers(result.model, result.tokenizer, questions, MAX_TOKENS)
    return cfg, result.run_dir, questions, trained, result.tokenizer


@pytest.mark.e2e
def test_qlora_run_records_its_quantization_and_loads_quantized(
    qlora_run: tuple[Config, Path, Any, list[list[int]], Any], tiny_model: Path
) -> None:
    from mlx_lm import load

    from mlxtune.generation import greedy_answers
    from mlxtune.modeling import load_model

    cfg, run, questions, trained, _ = qlora_run
    recorded = {"bits": 4, "group_size": 64, "mode": "affine"}
    assert json.loads((run / "adapter_config.json").read_text())["base_quantization"] == recorded
    assert json.loads((run / "run.json").read_text())["base_quantization"] == recorded
    model, tokenizer, _ = load_model(cfg.model, run)
    assert greedy_answers(model, tokenizer, questions, MAX_TOKENS) == trained
    # The quantization matters: the full-precision base answers otherwise.
    base, _, _ = load_model(cfg.model)
    quantized, _, _ = load_model(cfg.model, quantization=recorded)
    assert greedy_answers(base, tokenizer, questions, MAX_TOKENS) != greedy_answers(
        quantized, tokenizer, questions, MAX_TOKENS
    )
    # Raw mlx-lm cannot quantize the base from the adapter: it refuses, naming the reason.
    with pytest.raises(ValueError, match="QLoRA adapter for a base quantized at load"):
        load(str(tiny_model), adapter_path=str(run))


@pytest.mark.e2e
def test_qlora_run_evaluates_and_serves_what_was_trained(
    qlora_run: tuple[Config, Path, Any, list[list[int]], Any],
) -> None:
    import openai
    from starlette.testclient import TestClient

    from mlxtune.evaluate import evaluate
    from mlxtune.generation import detokenize
    from mlxtune.serve import create_app

    cfg, run, questions, trained, tokenizer = qlora_run
    expected = [detokenize(tokenizer, t) for t in trained]
    assert len(set(expected)) > 1, "answers that all look alike prove nothing"

    cfg_eval = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"adapter": run})})
    result = evaluate(cfg_eval)
    rows = [json.loads(x) for x in result.predictions_path.read_text().splitlines()]
    assert [r["adapter"] for r in rows] == [e.strip() for e in expected]

    cfg_serve = cfg.model_copy(
        update={"serve": cfg.serve.model_copy(update={"adapters": {"q": run}})}
    )
    with TestClient(create_app(cfg_serve)) as http:
        client = openai.OpenAI(
            base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0
        )
        for messages, text, tokens in zip(questions, expected, trained, strict=True):
            r = client.chat.completions.create(
                model="q", messages=messages, max_tokens=MAX_TOKENS, temperature=0
            )
            assert r.choices[0].message.content == text
            assert r.usage is not None and r.usage.completion_tokens == len(tokens)


@pytest.mark.e2e
def test_qlora_export_reports_measured_agreement(
    qlora_run: tuple[Config, Path, Any, list[list[int]], Any], tmp_path: Path
) -> None:
    from mlx_lm import load

    from mlxtune.export import export_run
    from mlxtune.generation import greedy_answers

    cfg, run, questions, trained, _ = qlora_run
    result = export_run(cfg, str(run), tmp_path / "fused")
    assert result.agreement is not None  # fused into 4-bit weights: it rounds, and says so
    model, tokenizer = load(str(tmp_path / "fused"))
    fused = greedy_answers(model, tokenizer, questions, MAX_TOKENS)
    same, total = result.agreement
    assert total == N_QUESTIONS
    assert same == sum(a == b for a, b in zip(fused, trained, strict=True))
