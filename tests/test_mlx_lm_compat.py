"""Coming from mlx-lm: its LoRA configs in and out, its flag names, its tool-calling data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, run_cli
from mlxtune.config import load_config, validate_tree
from mlxtune.config_import import (
    KNOWN_KEYS,
    MLX_LM_DEFAULTS,
    from_mlx_lm,
    is_mlx_lm_config,
    to_mlx_lm,
)
from mlxtune.errors import ConfigError

SHIPPED = REPO / "configs" / "mlx-lm-lora.yaml"
TOOLS_DATA = REPO / "examples" / "tools" / "tool_calls.jsonl"


def test_every_key_mlx_lm_reads_is_known_and_defaults_match() -> None:
    from mlx_lm import lora

    args = {a.dest for a in lora.build_parser()._actions if a.dest != "help"}
    read_by_datasets = {"hf_dataset", "prompt_feature", "completion_feature", "chat_feature"}
    assert args | set(lora.CONFIG_DEFAULTS) | read_by_datasets <= KNOWN_KEYS
    for key, value in MLX_LM_DEFAULTS.items():
        assert lora.CONFIG_DEFAULTS[key] == value, key


def test_import_maps_keys_and_takes_mlx_lm_defaults() -> None:
    imported = from_mlx_lm(
        {
            "model": "m",
            "data": "some/dir/",
            "fine_tune_type": "dora",
            "learning_rate": "2e-4",  # how PyYAML reads 2e-4
            "optimizer": "adamw",
            "optimizer_config": {"adamw": {"weight_decay": 0.05, "betas": [0.9, 0.98]}},
            "lr_schedule": {"name": "cosine_decay", "warmup": 10, "arguments": [1e-4, 100, 1e-6]},
            "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.1, "keys": ["q_proj"]},
            "adapter_path": "out/adapters",
            "report_to": "wandb",
        }
    )
    cfg = validate_tree(imported.tree)
    t = cfg.train
    assert (t.method, t.optimizer, t.weight_decay) == ("dora", "adamw", 0.05)
    assert (t.lr_schedule, t.learning_rate, t.min_lr, t.warmup_steps) == ("cosine", 1e-4, 1e-6, 10)
    assert (t.lora_rank, t.effective_lora_scale, t.lora_dropout, t.lora_keys) == (
        4, 10.0, 0.1, ["q_proj"],
    )  # fmt: skip
    assert (str(t.runs_dir), t.name) == ("out", "adapters")
    # left out of the file: mlx-lm's defaults, not mlxtune's
    assert (t.iters, t.steps_per_eval, t.mask_prompt) == (1000, 200, False)
    assert any(n.startswith("report_to:") for n in imported.notes)
    assert any("betas" in n for n in imported.notes)


def test_import_rejects_what_mlx_lm_would_silently_ignore() -> None:
    with pytest.raises(ConfigError, match="learning_rat: not an mlx-lm lora key, did you mean"):
        from_mlx_lm({"model": "m", "learning_rat": 1e-4})
    with pytest.raises(ConfigError, match=r"lr_schedule\.name: 'step_decay' has no equivalent"):
        from_mlx_lm({"lr_schedule": {"name": "step_decay", "arguments": [1, 2, 3]}})


def test_hf_dataset_becomes_a_prepare_source() -> None:
    imported = from_mlx_lm(
        {
            "hf_dataset": {
                "path": "billsum",
                "train_split": "train[:1000]",
                "valid_split": "train[-100:]",
                "prompt_feature": "text",
                "completion_feature": "summary",
            }
        }
    )
    (src,) = validate_tree(imported.tree).prepare.sources
    assert (src.path, src.type, src.split) == ("billsum", "hf", "train[:1000]")
    assert src.columns == {"prompt": "text", "completion": "summary"}
    assert any(n.startswith("hf_dataset.valid_split") for n in imported.notes)


def _comparable(mlx_cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mlx_cfg.items() if k != "train"}


def test_round_trip_both_ways() -> None:
    # mlx-lm -> mlxtune -> mlx-lm gives back every key the file set
    raw = yaml.safe_load(SHIPPED.read_text())
    back = to_mlx_lm(validate_tree(from_mlx_lm(raw).tree)).config
    for key, value in raw.items():
        if key in ("test", "test_batches", "resume_adapter_file"):
            continue
        want = float(value) if key == "learning_rate" else value
        assert back[key] == want, key
    # mlxtune -> mlx-lm -> mlxtune gives back the same training config
    cfg = load_config(REPO / "configs" / "demo.yaml")
    cfg.train.method = "lora"
    again = validate_tree(from_mlx_lm(to_mlx_lm(cfg).config).tree)
    for key in (
        "method", "iters", "batch_size", "learning_rate", "lr_schedule", "min_lr",
        "warmup_steps", "num_layers", "max_seq_length", "mask_prompt", "seed", "lora_rank",
        "lora_scale", "optimizer", "runs_dir", "name", "steps_per_eval", "save_every",
    ):  # fmt: skip
        assert getattr(again.train, key) == getattr(cfg.train, key), key
    assert (again.model.path, again.data.dir) == (cfg.model.path, cfg.data.dir)


def test_detection_tells_the_two_kinds_apart() -> None:
    assert is_mlx_lm_config(yaml.safe_load(SHIPPED.read_text()))
    assert not is_mlx_lm_config(yaml.safe_load((REPO / "configs" / "demo.yaml").read_text()))
    assert not is_mlx_lm_config({"train": {"iters": 3}})


def test_config_import_and_export_commands(tmp_path: Path) -> None:
    out = tmp_path / "mlxtune.yaml"
    proc = run_cli("config", "import", str(SHIPPED), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "not carried over: test:" in proc.stderr
    text = out.read_text()
    assert "# mlx-lm: lora_parameters.scale" in text
    cfg = load_config(out)
    assert cfg.train.lora_keys == ["self_attn.q_proj", "self_attn.v_proj"]
    assert cfg.train.effective_lora_scale == 20.0
    proc = run_cli("config", "export", "--mlx-lm", "-c", str(out))
    assert proc.returncode == 0, proc.stderr
    exported = yaml.safe_load(proc.stdout)
    assert exported["lora_parameters"]["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]
    assert exported["fine_tune_type"] == "lora" and exported["train"] is True


@pytest.mark.e2e
def test_shipped_mlx_lm_config_trains_the_tiny_model(
    tiny_model: Path, domain_data: Path, tmp_path: Path
) -> None:
    """mlx-lm's example config, given as is, with mlx-lm's own flag names for the rest."""
    adapters = tmp_path / "adapters"
    proc = run_cli(
        "train", "-c", str(SHIPPED), "--train",
        "--model", str(tiny_model), "--data", str(domain_data), "--adapter-path", str(adapters),
        "--iters", "3", "--batch-size", "2", "--num-layers", "2", "--fine-tune-type", "lora",
        "--steps-per-eval", "3", "--val-batches", "1", "--max-seq-length", "256",
        "--set", "train.registry_dir=" + str(tmp_path / "reg"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "mlx-lm config converted" in proc.stderr
    config = json.loads((adapters / "adapter_config.json").read_text())
    assert config["lora_parameters"]["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]
    assert config["num_layers"] == 2
    run = json.loads((adapters / "run.json").read_text())
    assert run["final"]["steps"] == 3
