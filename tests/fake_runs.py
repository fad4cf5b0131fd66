"""Fabricated run directories that follow the contract in docs/design.md and rundir.py
exactly, so runs/report/export are tested without depending on the train/evaluate verbs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from mlxtune.config import Config
from mlxtune.formats import CHATML_TEMPLATE

CATEGORIES = ("pricing", "setup", "troubleshooting")


def fabricate_run(
    runs_dir: Path,
    name: str,
    *,
    learning_rate: float = 1e-5,
    lora_rank: int = 8,
    iters: int = 100,
    final_loss: float = 1.2,
    accuracy: float = 0.6,
    base_model: str = "models/tiny",
    started_at: str = "2026-11-20T10:00:00Z",
    status: str = "completed",
    adapter_from: Path | None = None,
    with_eval: bool = True,
) -> Path:
    """Write runs_dir/NAME with run.json, metrics.jsonl, config.yaml, chat_template.jinja,
    an adapter (copied from `adapter_from`, else a stub), eval/report.json and predictions."""
    root = runs_dir / name
    root.mkdir(parents=True, exist_ok=True)
    cfg = Config.model_validate(
        {
            "model": {"path": base_model},
            "train": {
                "name": name,
                "runs_dir": str(runs_dir),
                "learning_rate": learning_rate,
                "lora_rank": lora_rank,
                "iters": iters,
            },
        }
    )
    (root / "config.yaml").write_text(cfg.to_yaml())
    (root / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    metrics = []
    for step in range(10, iters + 1, 10):
        loss = final_loss + 2.0 * math.exp(-step / (iters / 4))
        row: dict[str, Any] = {
            "step": step,
            "train_loss": round(loss, 4),
            "lr": learning_rate,
            "it_per_s": 3.0,
            "tokens_per_s": 900.0,
            "peak_memory_gb": 0.4,
            "time": 1.0 * step,
        }
        if step % 50 == 0:
            row["val_loss"] = round(loss + 0.1, 4)
        metrics.append(row)
    (root / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in metrics) + "\n")
    vals = [r["val_loss"] for r in metrics if "val_loss" in r]
    run_json = {
        "name": name,
        "status": status,
        "method": "lora",
        "base_model": base_model,
        "config_hash": cfg.fingerprint(),
        "data_dir": "data/prepared",
        "data_manifest_sha256": "ab" * 32,
        "template_sha": "cd" * 8,
        "versions": {"mlx": "0.32.4", "mlx_lm": "0.32.2", "mlxtune": "0.1.0"},
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "started_at": started_at,
        "finished_at": started_at.replace("10:00", "10:05"),
        "world_size": 1,
        "final": {
            "steps": iters,
            "train_loss": metrics[-1]["train_loss"],
            "val_loss": vals[-1],
            "best_val_loss": min(vals),
            "best_step": 50 * (vals.index(min(vals)) + 1),
            "trained_tokens": 100 * iters,
            "tokens_per_s": 900.0,
            "wall_s": iters / 3.0,
            "peak_memory_gb": 0.4,
        },
    }
    (root / "run.json").write_text(json.dumps(run_json, indent=2))
    if adapter_from is not None:
        for f in ("adapters.safetensors", "adapter_config.json"):
            (root / f).write_bytes((adapter_from / f).read_bytes())
    else:
        (root / "adapters.safetensors").write_bytes(b"stub")
        (root / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora"}))
    if with_eval:
        write_eval(root, name, accuracy)
    return root


def _metrics(acc: float) -> dict[str, float]:
    return {
        "keyword_accuracy": round(acc, 4),
        "exact_match": round(acc / 3, 4),
        "token_f1": round(acc * 0.8, 4),
        "loss": round(3.0 - acc, 4),
        "perplexity": round(math.exp(3.0 - acc), 4),
    }


def write_eval(root: Path, name: str, accuracy: float) -> None:
    base = _metrics(0.2)
    per_category = {}
    for i, cat in enumerate(CATEGORIES):
        a, b = _metrics(min(1.0, accuracy + 0.1 * (i - 1))), _metrics(0.15 + 0.05 * i)
        per_category[cat] = {
            "base": b,
            "adapter": a,
            "delta": {k: round(a[k] - b[k], 4) for k in a},
            "n": 10,
        }
    adapter = _metrics(accuracy)
    report = {
        "schema_version": 1,
        "run": name,
        "split": "test",
        "n_examples": 30,
        "model": "models/tiny",
        "adapter": str(root),
        "template_sha": "cd" * 8,
        "overall": {
            "base": base,
            "adapter": adapter,
            "delta": {k: round(adapter[k] - base[k], 4) for k in adapter},
        },
        "per_category": per_category,
        "thresholds": [
            {
                "metric": "keyword_accuracy",
                "category": None,
                "kind": "min",
                "value": 0.5,
                "actual": accuracy,
                "passed": accuracy >= 0.5,
            }
        ],
        "passed": accuracy >= 0.5,
        "adapter_equals_base": False,
        "timing": {"wall_s": 4.2},
    }
    (root / "eval").mkdir(exist_ok=True)
    (root / "eval" / "report.json").write_text(json.dumps(report, indent=2))
    preds = [
        {
            "id": f"q{i}",
            "category": CATEGORIES[i % 3],
            "question": f"How do I <configure> feature {i} | quickly?",
            "reference": f"Open settings and enable feature {i}.",
            "base": "I am not sure.",
            "adapter": f"Open settings, then enable feature {i}.",
            "keyword_hit": True,
        }
        for i in range(12)
    ]
    (root / "eval" / "predictions.jsonl").write_text("\n".join(json.dumps(p) for p in preds))


def project_config(tmp_path: Path) -> Path:
    """A config file pointing runs_dir and registry_dir into tmp_path."""
    path = tmp_path / "mlxtune.yaml"
    path.write_text(
        yaml.safe_dump(
            {"train": {"runs_dir": str(tmp_path / "runs"), "registry_dir": str(tmp_path / ".mx")}}
        )
    )
    return path
