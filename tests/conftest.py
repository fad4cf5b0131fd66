"""Shared fixtures: no test reaches a hub; one tiny model is built per session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOMAIN_DATA = REPO / "data" / "domain" / "universal_ai_tools.jsonl"


@pytest.fixture(autouse=True)
def offline_hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every hub cache at a temp dir and forbid downloads."""
    home = tmp_path_factory.getbasetemp() / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    # A train plan in this process sets MLX's eval width (`runtime.order_evals_for_streams`);
    # undone after each test, so no later child inherits it as if the user had set it.
    monkeypatch.delenv("MLX_BFS_MAX_WIDTH", raising=False)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init Llama whose tokenizer was trained on the shipped data."""
    from mlxtune.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    # Pinned to the domain facts, so data added under data/ does not shift every token count.
    build_tiny_model(out, preset="tiny", seed=0, corpus=[DOMAIN_DATA])
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init BERT-style embedding model (needs the `embed` extra)."""
    pytest.importorskip("mlx_embeddings", reason="pip install 'mlxtune[embed]'")
    from mlxtune.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("models") / "bert"
    build_tiny_model(out, preset="bert", seed=0, corpus=[DOMAIN_DATA])
    return out


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `python -m mlxtune ARGS` in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "mlxtune", *args],
        cwd=cwd or REPO,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def chdir_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture(scope="session")
def domain_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped dataset as canonical chat train/valid/test.jsonl, split by paraphrase:
    paraphrase d of every fact is test, c of every third fact is valid, the rest train.
    Independent of `mlxtune prepare` so other verbs' tests do not hinge on it."""
    import json

    from mlxtune.formats import to_canonical

    out = tmp_path_factory.mktemp("domain_data")
    splits: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for i, line in enumerate(DOMAIN_DATA.read_text().splitlines()):
        row = json.loads(line)
        suffix = row["id"].rsplit("-", 1)[-1]
        split = "test" if suffix == "d" else "valid" if suffix == "c" and i % 3 == 0 else "train"
        splits[split].append(json.dumps(to_canonical(row)))
    for name, rows in splits.items():
        (out / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    return out


def make_adapter(
    model_dir: Path, out: Path, *, rank: int = 8, b_scale: float = 0.0, seed: int = 0
) -> Path:
    """An mlx-lm LoRA adapter for `model_dir` without training (mlxtune.tiny_model's)."""
    from mlxtune.tiny_model import random_adapter

    return random_adapter(model_dir, out, rank=rank, b_scale=b_scale, seed=seed)
