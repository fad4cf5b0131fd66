from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import make_adapter
from fake_runs import fabricate_run, project_config
from mlxtune.cli import app
from mlxtune.config import Config, load_config
from mlxtune.errors import MlxtuneError
from mlxtune.export import export_run

runner = CliRunner()
PROMPTS = [
    [{"role": "user", "content": "How do I reset my password?"}],
    [{"role": "user", "content": "What does the pro plan cost?"}],
]


def greedy(model: Any, tokenizer: Any, messages: list[dict[str, str]], n: int = 16) -> list[int]:
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    from mlxtune.formats import encode_prompt

    prompt = mx.array(encode_prompt(tokenizer, messages))
    out = []
    for (token, _), _ in zip(generate_step(prompt, model, max_tokens=n), range(n), strict=False):
        out.append(int(token))
    return out


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("adapter"), b_scale=0.05)


@pytest.fixture
def project(tmp_path: Path, tiny_model: Path, adapter: Path) -> tuple[Config, Path]:
    cfg_path = project_config(tmp_path)
    cfg = load_config(cfg_path)
    fabricate_run(cfg.train.runs_dir, "tuned", base_model=str(tiny_model), adapter_from=adapter)
    return cfg, cfg_path


@pytest.mark.e2e
def test_fused_model_reproduces_adapter_greedy_output(
    project: tuple[Config, Path], tiny_model: Path, adapter: Path, tmp_path: Path
) -> None:
    import mlx.core as mx
    from mlx_lm import load

    from mlxtune.modeling import load_model

    cfg, _ = project
    result = export_run(cfg, "tuned", tmp_path / "fused")
    weights = mx.load(str(adapter / "adapters.safetensors"))
    lora_layers = [k for k in weights if k.endswith("lora_a")]
    assert result.fused_layers == len(lora_layers) > 0 and result.base_model == str(tiny_model)
    assert not (result.out / "adapter_config.json").exists()

    model_cfg = cfg.model.model_copy(update={"path": str(tiny_model)})
    base, base_tok, _ = load_model(model_cfg)
    tuned, tuned_tok, _ = load_model(model_cfg, cfg.train.runs_dir / "tuned")
    fused, fused_tok = load(str(result.out))[:2]  # plain mlx_lm.load, no mlxtune involved
    assert not any("lora" in k for k in dict(_flat(fused.parameters())))
    # The exported model carries the template the run trained with.
    assert fused_tok.chat_template == tuned_tok.chat_template
    for messages in PROMPTS:
        want = greedy(tuned, tuned_tok, messages)
        assert greedy(fused, fused_tok, messages) == want
    # The adapter changes the model, so equality above is not trivially the base's output.
    assert any(greedy(base, base_tok, m) != greedy(tuned, tuned_tok, m) for m in PROMPTS)


def _flat(params: Any) -> list[tuple[str, Any]]:
    from mlx.utils import tree_flatten

    return list(tree_flatten(params))


@pytest.mark.e2e
def test_gguf_for_llama(
    project: tuple[Config, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cfg, _ = project
    result = export_run(cfg, "tuned", tmp_path / "gguf", gguf=True)
    assert result.gguf is not None and result.gguf.read_bytes()[:4] == b"GGUF"
    assert "Converting" not in capfd.readouterr().out  # mlx-lm's prints stay out of the core


@pytest.mark.e2e
def test_gguf_unsupported_architecture_is_one_clear_line(
    project: tuple[Config, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlxtune.export

    monkeypatch.setattr(mlxtune.export, "GGUF_MODEL_TYPES", ("mistral",))
    cfg, _ = project
    out = tmp_path / "gguf"
    with pytest.raises(MlxtuneError, match=r"^--gguf: mlx-lm writes GGUF for mistral only") as e:
        export_run(cfg, "tuned", out, gguf=True)
    assert "\n" not in str(e.value) and not out.exists()
    assert not list(tmp_path.glob(".gguf.*"))  # no half-written temp directory


def test_export_refuses_to_overwrite_and_needs_an_adapter(
    project: tuple[Config, Path], tmp_path: Path
) -> None:
    cfg, cfg_path = project
    (tmp_path / "taken").mkdir()
    res = runner.invoke(
        app, ["export", "tuned", "--out", str(tmp_path / "taken"), "-c", str(cfg_path)]
    )
    assert res.exit_code == 2 and "already exists" in res.output
    (cfg.train.runs_dir / "tuned" / "adapters.safetensors").unlink()
    with pytest.raises(MlxtuneError, match="no adapter to export"):
        export_run(cfg, "tuned", tmp_path / "x")


@pytest.mark.e2e
def test_export_cli_by_alias(project: tuple[Config, Path], tmp_path: Path) -> None:
    _, cfg_path = project
    c = ["-c", str(cfg_path)]
    assert runner.invoke(app, ["runs", "promote", "tuned", *c]).exit_code == 0
    res = runner.invoke(app, ["export", "@current", "--out", str(tmp_path / "m"), *c])
    assert res.exit_code == 0, res.output
    assert "tuned fused" in " ".join(res.output.split())  # Rich wraps at 80 columns: long paths
    assert (tmp_path / "m" / "config.json").is_file()


@pytest.mark.e2e
def test_de_quantize_a_quantized_base(tiny_model: Path, tmp_path: Path) -> None:
    import contextlib
    import io
    import json

    from mlx_lm import load
    from mlx_lm.convert import convert

    from mlxtune.modeling import load_model

    q_model = tmp_path / "tiny-q4"
    with contextlib.redirect_stdout(io.StringIO()):
        convert(str(tiny_model), str(q_model), quantize=True, q_bits=4, q_group_size=64)
    adapter = make_adapter(q_model, tmp_path / "adapter", b_scale=0.05)
    cfg = load_config(project_config(tmp_path))
    fabricate_run(cfg.train.runs_dir, "qlora", base_model=str(q_model), adapter_from=adapter)

    with pytest.raises(MlxtuneError, match="quantized; add --de-quantize"):
        export_run(cfg, "qlora", tmp_path / "g", gguf=True)
    result = export_run(cfg, "qlora", tmp_path / "fp", dequantize=True)
    config = json.loads((result.out / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    fused, fused_tok = load(str(result.out))[:2]
    tuned, tuned_tok, _ = load_model(
        cfg.model.model_copy(update={"path": str(q_model)}), cfg.train.runs_dir / "qlora"
    )
    for messages in PROMPTS:
        assert greedy(fused, fused_tok, messages) == greedy(tuned, tuned_tok, messages)
