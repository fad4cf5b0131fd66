"""Coming from mlx-lm: its LoRA configs in and out, its flag names, its tool-calling data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, run_cli
from mlxtune.config import Config, load_config, validate_tree
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


# ---------------------------------------------------------------------------------------------
# Tool-calling data, as mlx-lm trains it


def _tool_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in TOOLS_DATA.read_text().splitlines()]


def test_tool_records_keep_tools_and_calls_and_train_the_calls(tiny_model: Path) -> None:
    from mlx_lm.utils import load_tokenizer

    from mlxtune import formats

    tok = load_tokenizer(tiny_model)
    assert tok.has_tool_calling  # mlx-lm reads the tiny template's calls back (json_tools)
    row = next(r for r in _tool_rows() if len(r["messages"]) == 4)
    record = formats.to_canonical(row)
    assert record["tools"] == row["tools"]
    assert record["messages"][1]["tool_calls"] == row["messages"][1]["tool_calls"]
    assert record["messages"][2]["tool_call_id"] == row["messages"][2]["tool_call_id"]
    assert formats.role_order_problem(record["messages"]) is None
    tokens, mask = formats.encode_for_training(tok, record)
    hf = formats._hf(tok)
    trained = hf.decode([t for t, m in zip(tokens, mask, strict=True) if m])
    masked = hf.decode([t for t, m in zip(tokens, mask, strict=True) if not m])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"' in trained
    assert "<tools>" in masked and "<tool_response>" in masked
    assert '"name": "get_weather", "arguments"' not in masked


def test_role_order_with_tool_turns() -> None:
    from mlxtune.formats import role_order_problem

    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]}
    user, tool = {"role": "user", "content": "q"}, {"role": "tool", "content": "r"}
    answer = {"role": "assistant", "content": "a"}
    assert role_order_problem([user, call, tool, tool, answer]) is None
    assert role_order_problem([user, call]) is None
    assert "expected 'tool'" in str(role_order_problem([user, call, answer]))
    assert "expected 'user'" in str(role_order_problem([user, answer, tool]))


def test_validate_format_names_bad_tool_calls_at_file_line(
    tiny_model: Path, tmp_path: Path
) -> None:
    rows = _tool_rows()
    rows[2]["messages"][1]["tool_calls"][0]["function"]["name"] = "get_wether"
    rows[4]["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"city": "Oslo"'
    bad = tmp_path / "train.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: {tiny_model}}}\ntrain: {{batch_size: 2}}\n")
    proc = run_cli("validate-format", str(bad), "-c", str(cfg))
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert f"{bad}:3" in out and "unknown tool 'get_wether'" in out
    assert f"{bad}:5" in out and "not valid JSON" in out
    good = run_cli("validate-format", str(TOOLS_DATA), "-c", str(cfg))
    assert good.returncode == 0, good.stdout + good.stderr


@pytest.mark.e2e
def test_tool_calling_dataset_prepares_and_trains(tiny_model: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "tools.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(tiny_model)},
                "data": {"dir": str(tmp_path / "data")},
                "prepare": {"sources": [{"path": str(TOOLS_DATA)}], "valid_ratio": 0.2,
                            "test_ratio": 0.0, "group_by": "category"},
                "train": {"method": "lora", "iters": 2, "batch_size": 2, "num_layers": 2,
                          "runs_dir": str(tmp_path / "runs"), "name": "tools",
                          "registry_dir": str(tmp_path / "reg"), "steps_per_eval": 2,
                          "val_batches": 1, "learning_rate": 1e-4},
            }
        )
    )  # fmt: skip
    proc = run_cli("prepare", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    prepared = [
        json.loads(line)
        for split in ("train", "valid")
        for line in (tmp_path / "data" / f"{split}.jsonl").read_text().splitlines()
    ]
    assert len(prepared) == len(_tool_rows())
    assert all(r["tools"] for r in prepared)
    assert sum(bool(m.get("tool_calls")) for r in prepared for m in r["messages"]) == 12
    proc = run_cli("train", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    run = json.loads((tmp_path / "runs" / "tools" / "run.json").read_text())
    assert run["status"] == "completed" and run["final"]["trained_tokens"] > 0


def test_dry_run_plan_says_the_lora_scale_loudly_when_not_mlx_lms() -> None:
    from mlxtune.train.plan import lora_summary

    same = lora_summary(Config().train)
    assert same == "rank 8, scale 20 (scale), as mlx-lm"
    peft = Config.model_validate({"train": {"lora_rank": 8, "lora_alpha": 16}}).train
    assert "mlx-lm's default is 20" in str(lora_summary(peft)) and "0.1x" in str(lora_summary(peft))
    assert lora_summary(Config.model_validate({"train": {"method": "full"}}).train) is None
