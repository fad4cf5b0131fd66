from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fake_runs import fabricate_run, project_config
from mlxtune.cli import app
from mlxtune.config import Config, load_config
from mlxtune.errors import MlxtuneError
from mlxtune.runs import (
    Registry,
    alias_history,
    compare_runs,
    list_runs,
    promote,
    resolve_alias,
    rollback,
    show_run,
    sparkline,
)

runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path) -> tuple[Config, Path]:
    cfg_path = project_config(tmp_path)
    runs = tmp_path / "runs"
    fabricate_run(runs, "r1-baseline", learning_rate=1e-5, accuracy=0.5, final_loss=1.4)
    fabricate_run(
        runs,
        "r2-higher-lr",
        learning_rate=1e-4,
        lora_rank=16,
        accuracy=0.7,
        final_loss=1.1,
        started_at="2026-11-21T10:00:00Z",
    )
    return load_config(cfg_path), cfg_path


def test_registry_defaults_to_project_dir() -> None:
    assert Config().train.registry_dir == Path(".mlxtune")


def test_sync_indexes_runs_and_is_idempotent(project: tuple[Config, Path]) -> None:
    cfg, _ = project
    with Registry.open(cfg, create=True) as reg:
        first = reg.sync()
        assert sorted(first.added) == ["r1-baseline", "r2-higher-lr"]
        again = reg.sync()
        assert (again.added, again.updated, again.removed, again.unchanged) == ([], [], [], 2)
        rec = reg.get("r2-higher-lr")
    assert rec.method == "lora"
    assert rec.mlx_version == "0.32.4" and rec.mlx_lm_version == "0.32.2"
    assert rec.data_manifest_sha256 == "ab" * 32
    run_json = json.loads((cfg.train.runs_dir / "r2-higher-lr" / "run.json").read_text())
    assert (rec.git_commit, rec.config_hash) == (run_json["git_commit"], run_json["config_hash"])
    assert rec.final["steps"] == 100
    assert rec.eval_overall["keyword_accuracy"] == 0.7
    assert (cfg.train.registry_dir / "registry.sqlite").is_file()


def test_sync_follows_changes_and_removals(project: tuple[Config, Path]) -> None:
    cfg, _ = project
    with Registry.open(cfg, create=True) as reg:
        reg.sync()
    run_json = cfg.train.runs_dir / "r1-baseline" / "run.json"
    info = json.loads(run_json.read_text())
    info["status"] = "failed"
    run_json.write_text(json.dumps(info) + "\n")
    shutil.rmtree(cfg.train.runs_dir / "r2-higher-lr")
    with Registry.open(cfg) as reg:
        result = reg.sync()
        assert result.updated == ["r1-baseline"] and result.removed == ["r2-higher-lr"]
        assert reg.get("r1-baseline").status == "failed"


def test_indexes_a_run_written_by_raw_mlx_lm(project: tuple[Config, Path]) -> None:
    cfg, _ = project
    raw = cfg.train.runs_dir / "raw"
    raw.mkdir()
    (raw / "adapters.safetensors").write_bytes(b"x")
    (raw / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "dora", "model": "m"}))
    rec = next(r for r in list_runs(cfg) if r.name == "raw")
    assert (rec.method, rec.base_model, rec.status) == ("dora", "m", "completed")


def test_show_has_loss_series_config_and_eval(project: tuple[Config, Path]) -> None:
    cfg, _ = project
    detail = show_run(cfg, "r1-baseline")
    assert len(detail.train_loss) == 10 and detail.train_loss[0][0] == 10
    assert [s for s, _ in detail.val_loss] == [50, 100]
    assert detail.config["train"]["learning_rate"] == 1e-5
    assert detail.record.evaluation is not None
    assert detail.record.evaluation["overall"]["adapter"]["keyword_accuracy"] == 0.5


def test_unknown_run_suggests_a_name(project: tuple[Config, Path]) -> None:
    cfg, _ = project
    with pytest.raises(MlxtuneError, match="did you mean r1-baseline"):
        show_run(cfg, "r1-baselin")


def test_compare_reports_config_diff_and_deltas(project: tuple[Config, Path]) -> None:
    cfg, _ = project
    cmp = compare_runs(cfg, "r1-baseline", "r2-higher-lr")
    diff = {k: (a, b) for k, a, b in cmp.config_diff}
    assert diff["train.learning_rate"] == (1e-5, 1e-4)
    assert diff["train.lora_rank"] == (8, 16)
    assert "train.name" not in diff  # differs by construction
    assert "config_hash" in {k for k, _, _ in cmp.lineage_diff}
    acc = next(m for m in cmp.overall if m.metric == "keyword_accuracy")
    assert acc.delta == pytest.approx(0.2) and acc.better is True
    loss = next(m for m in cmp.overall if m.metric == "loss")
    assert loss.delta == pytest.approx(-0.2) and loss.better is True  # lower loss is better
    assert set(cmp.per_category) == {"pricing", "setup", "troubleshooting"}
    cat = next(m for m in cmp.per_category["setup"] if m.metric == "keyword_accuracy")
    assert cat.delta == pytest.approx(0.2)
    final = {
        n: json.loads((cfg.train.runs_dir / n / "run.json").read_text())["final"]
        for n in ("r1-baseline", "r2-higher-lr")
    }
    train = next(m for m in cmp.training if m.metric == "train_loss")
    want = final["r2-higher-lr"]["train_loss"] - final["r1-baseline"]["train_loss"]
    assert want < 0 and train.delta == pytest.approx(want) and train.better is True


def test_promote_rollback_and_resolve_alias(project: tuple[Config, Path]) -> None:
    cfg, _ = project
    runs = cfg.train.runs_dir.resolve()
    with pytest.raises(MlxtuneError, match="no run registry"):
        resolve_alias("@current", cfg)
    assert promote(cfg, "r1-baseline").previous is None
    assert resolve_alias("@current", cfg) == runs / "r1-baseline"
    change = promote(cfg, "r2-higher-lr")
    assert change.previous == "r1-baseline"
    assert resolve_alias("current", cfg) == runs / "r2-higher-lr"
    back = rollback(cfg)
    assert (back.run, back.previous) == ("r1-baseline", "r2-higher-lr")
    assert resolve_alias("@current", cfg) == runs / "r1-baseline"
    with pytest.raises(MlxtuneError, match="no earlier run"):
        rollback(cfg)
    history = alias_history(cfg)
    assert [(e.action, e.run, e.undone) for e in history] == [
        ("promote", "r1-baseline", False),
        ("promote", "r2-higher-lr", True),
        ("rollback", "r1-baseline", False),
    ]
    # Aliases are independent; run records list the aliases pointing at them.
    promote(cfg, "r2-higher-lr", "canary")
    assert resolve_alias("@canary", cfg) == runs / "r2-higher-lr"
    by_name = {r.name: r.aliases for r in list_runs(cfg)}
    assert by_name == {"r1-baseline": ["current"], "r2-higher-lr": ["canary"]}
    with pytest.raises(MlxtuneError, match="points at no run"):
        resolve_alias("@staging", cfg)


def test_alias_to_deleted_run_is_a_clear_error(project: tuple[Config, Path]) -> None:
    cfg, _ = project
    promote(cfg, "r1-baseline")
    shutil.rmtree(cfg.train.runs_dir / "r1-baseline")
    with pytest.raises(MlxtuneError, match="no adapter any more"):
        resolve_alias("@current", cfg)


def test_promote_needs_an_adapter(project: tuple[Config, Path]) -> None:
    cfg, _ = project
    (cfg.train.runs_dir / "r1-baseline" / "adapters.safetensors").unlink()
    with pytest.raises(MlxtuneError, match="no adapter to promote"):
        promote(cfg, "r1-baseline")
    with pytest.raises(MlxtuneError, match="plain name"):
        promote(cfg, "r2-higher-lr", "@bad")


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([3, 2, 1]) == "█▅▁"
    assert len(sparkline([float(i) for i in range(500)], width=30)) == 30
    assert sparkline([1.0, 1.0]) == "▄▄"


def test_cli_list_show_compare_promote_rollback(project: tuple[Config, Path]) -> None:
    _, cfg_path = project
    c = ["-c", str(cfg_path)]
    res = runner.invoke(app, ["runs", "list", *c])
    assert res.exit_code == 0, res.output
    assert "r1-baseline" in res.output and "r2-higher-lr" in res.output
    res = runner.invoke(app, ["runs", "list", *c, "--json"])
    assert [r["name"] for r in json.loads(res.output)] == ["r1-baseline", "r2-higher-lr"]
    res = runner.invoke(app, ["runs", "show", "r1-baseline", *c])
    assert res.exit_code == 0, res.output
    assert "train loss" in res.output and "█" in res.output and "keyword_accuracy" in res.output
    res = runner.invoke(app, ["runs", "compare", "r1-baseline", "r2-higher-lr", *c, "--json"])
    data = json.loads(res.output)
    assert {"key": "train.learning_rate", "a": 1e-5, "b": 1e-4} in data["config_diff"]
    res = runner.invoke(app, ["runs", "compare", "r1-baseline", "r2-higher-lr", *c])
    assert res.exit_code == 0 and "train.lora_rank" in res.output
    res = runner.invoke(app, ["runs", "promote", "r1-baseline", *c])
    assert res.exit_code == 0 and "@current -> r1-baseline" in res.output
    res = runner.invoke(app, ["runs", "promote", "r2-higher-lr", "--as", "current", *c])
    assert "(was r1-baseline)" in res.output
    res = runner.invoke(app, ["runs", "rollback", *c])
    assert res.exit_code == 0 and "@current -> r1-baseline" in res.output
    res = runner.invoke(app, ["runs", "show", "@current", *c, "--json"])
    assert json.loads(res.output)["name"] == "r1-baseline"
    res = runner.invoke(app, ["runs", "history", *c])
    assert res.exit_code == 0 and "rollback" in res.output


def test_cli_errors_are_one_line(project: tuple[Config, Path]) -> None:
    _, cfg_path = project
    res = runner.invoke(app, ["runs", "show", "nope", "-c", str(cfg_path)])
    assert res.exit_code == 1
    assert "no run named 'nope'" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["runs", "rollback", "-c", str(cfg_path)])
    assert res.exit_code == 1 and "nothing to roll back" in res.output


def test_set_overrides_runs_dir(tmp_path: Path) -> None:
    fabricate_run(tmp_path / "elsewhere", "only")
    res = runner.invoke(
        app,
        [
            "runs",
            "list",
            "--json",
            "--set",
            f"train.runs_dir={tmp_path / 'elsewhere'}",
            "--set",
            f"train.registry_dir={tmp_path / 'reg'}",
        ],
    )
    assert res.exit_code == 0, res.output
    assert [r["name"] for r in json.loads(res.output)] == ["only"]


def test_runs_commands_import_nothing_heavy(project: tuple[Config, Path]) -> None:
    import subprocess
    import sys

    from conftest import cli_env

    _, cfg_path = project
    code = (
        "import sys, json\n"
        "from mlxtune.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner()\n"
        f"for args in (['runs', 'list'], ['runs', 'show', 'r1-baseline'],\n"
        f"             ['runs', 'compare', 'r1-baseline', 'r2-higher-lr']):\n"
        f"    res = r.invoke(app, [*args, '-c', {str(cfg_path)!r}])\n"
        "    assert res.exit_code == 0, res.output\n"
        "heavy = ['mlx', 'mlx.core', 'mlx_lm', 'datasets', 'transformers', 'matplotlib']\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_empty_runs_dir(tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "runs",
            "list",
            "--set",
            f"train.runs_dir={tmp_path / 'none'}",
            "--set",
            f"train.registry_dir={tmp_path / 'reg'}",
        ],
    )
    assert res.exit_code == 0 and "no runs" in res.output


def test_serve_adapters_follow_promote_and_rollback(project: tuple[Config, Path]) -> None:
    from mlxtune.serve.models import resolve_adapters

    cfg, cfg_path = project
    runs = cfg.train.runs_dir
    cfg = load_config(
        cfg_path, [f"serve.adapters={{prod: '@current', pinned: {runs}/r1-baseline}}"]
    )
    promote(cfg, "r1-baseline")
    promote(cfg, "r2-higher-lr")
    served = resolve_adapters(cfg)
    assert served["prod"].name == "r2-higher-lr" and served["pinned"].name == "r1-baseline"
    rollback(cfg)
    assert resolve_adapters(cfg)["prod"].name == "r1-baseline"


def test_corrupt_registry_is_a_clear_error(project: tuple[Config, Path]) -> None:
    cfg, _ = project
    cfg.train.registry_dir.mkdir(parents=True)
    (cfg.train.registry_dir / "registry.sqlite").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(MlxtuneError, match="not a usable run registry"):
        list_runs(cfg)
