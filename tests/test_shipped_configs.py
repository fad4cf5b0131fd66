"""Every shipped config runs every verb it configures, as shipped (the hub model swapped for
the tiny one, iterations cut to a few): a config that names a run nothing creates fails here."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import REPO, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Configs whose model or source this generic walk cannot stand in for; each runs end to end
# in its own tests and demo instead.
OWN_FIXTURE = {
    "graph.yaml": "a Bolt graph server: tests/test_graph_data.py, make demo-graph",
    "mlx-lm-lora.yaml": "mlx-lm's example, placeholder data path: tests/test_mlx_lm_compat.py",
    "vision-demo.yaml": "a vision-language model: tests/test_vlm.py, make demo-vision",
}
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name not in OWN_FIXTURE)


def test_every_shipped_config_is_walked_or_has_its_own_test() -> None:
    names = {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert set(OWN_FIXTURE) <= names, "a config listed as having its own test no longer exists"
    for reason in OWN_FIXTURE.values():
        test_file = reason.split(": ")[1].split(",")[0]
        assert (REPO / test_file).is_file(), test_file


FAST = {
    "train": [
        "train.iters=2", "train.steps_per_eval=2", "train.save_every=2",
        "train.steps_per_report=1", "train.val_batches=1", "train.batch_size=2",
    ],
    "evaluate": ["evaluate.max_examples=2", "evaluate.max_tokens=4", "evaluate.batch_size=2"],
    "bench": [
        "bench.what=generate", "bench.baseline=none", "bench.repeat=1", "bench.trials=1",
        "bench.prompt_lengths=[8]", "bench.batch_sizes=[1]", "bench.gen_tokens=4",
        "bench.warmup_steps=0",
    ],
}  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_runs_every_verb_it_configures(
    config: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """The config is copied to the same place in a scratch project (data/ linked), so its
    relative paths mean what they mean in the repository."""
    (tmp_path / "configs").mkdir()
    shutil.copy(config, tmp_path / "configs" / config.name)
    (tmp_path / "data").symlink_to(REPO / "data")
    sections = set(yaml.safe_load(config.read_text()))
    # The hub model swapped for the tiny one, and the layer count that goes with it.
    model = [f"model.path={tiny_model}", "train.num_layers=-1"]
    cfg = ["-c", f"configs/{config.name}", *(x for s in model for x in ("--set", s))]

    def cli(*args: str, sets: tuple[str, ...] = (), ok: tuple[int, ...] = (0,)) -> Any:
        flags = [x for s in sets for x in ("--set", s)]
        proc = run_cli(*args, *cfg, *flags, cwd=tmp_path, timeout=300)
        assert proc.returncode in ok, f"{' '.join(args)}: {proc.stderr[-2000:]}"
        return proc

    if "prepare" in sections:
        cli("prepare")
    if "train" in sections:
        cli("train", sets=tuple(FAST["train"]))
    if "evaluate" in sections:
        # A two-step run may not pass a shipped gate; the verb itself must run and report.
        proc = cli("evaluate", sets=tuple(FAST["evaluate"]), ok=(0, 1))
        assert proc.returncode == 0 or "gate failed" in proc.stderr, proc.stderr[-2000:]
    if "serve" in sections:
        _serve_answers(tmp_path, cfg)
    if "bench" in sections:
        cli("bench", sets=tuple(FAST["bench"]))


def _serve_answers(project: Path, cfg: list[str]) -> None:
    from mlxtune.bench.procs import running_server

    def cmd(port: int) -> list[str]:
        return [sys.executable, "-m", "mlxtune", "serve", *cfg, "--port", str(port)]

    with running_server(cmd, project / "serve.log", 90, cwd=project) as srv:
        health = httpx.get(srv.url + "/health", timeout=10).json()
        assert health["adapters"], health  # the configured run is served
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        r = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
