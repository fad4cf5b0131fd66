"""One way to name a run (rundir.resolve_run): None = latest, "@alias", a name under
train.runs_dir, or a path; every verb that names a run goes through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_adapter
from fake_runs import fabricate_run, project_config
from mlxtune.cli import app
from mlxtune.config import Config, load_config
from mlxtune.errors import MlxtuneError
from mlxtune.rundir import resolve_run
from mlxtune.runs import promote

runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path) -> tuple[Config, Path]:
    cfg_path = project_config(tmp_path)
    runs = tmp_path / "runs"
    fabricate_run(runs, "r1-baseline", started_at="2026-11-20T10:00:00Z")
    fabricate_run(runs, "r2-higher-lr", started_at="2026-11-21T10:00:00Z")
    return load_config(cfg_path), cfg_path


def test_every_form_of_reference_resolves(project: tuple[Config, Path]) -> None:
    cfg, _ = project
    runs = cfg.train.runs_dir
    assert resolve_run(None, cfg).name == "r2-higher-lr"  # the latest started
    assert resolve_run("r1-baseline", cfg).root == runs / "r1-baseline"
    assert resolve_run(runs / "r1-baseline", cfg).root == runs / "r1-baseline"
    promote(cfg, "r1-baseline")
    assert resolve_run("@current", cfg).root == (runs / "r1-baseline").resolve()


def test_unknown_name_lists_close_names(project: tuple[Config, Path]) -> None:
    cfg, _ = project
    with pytest.raises(MlxtuneError) as err:
        resolve_run("r1-baselin", cfg, field="evaluate.adapter")
    message = str(err.value)
    assert message.startswith("evaluate.adapter: no run named 'r1-baselin'")
    assert "did you mean r1-baseline" in message and "\n" not in message
    with pytest.raises(MlxtuneError, match=r"runs: r1-baseline, r2-higher-lr"):
        resolve_run("zzz", cfg)  # nothing close: the runs there are listed
    with pytest.raises(MlxtuneError, match=r"not an adapter directory \(no such directory\)"):
        resolve_run(Path("/nonexistent/run"), cfg)


def test_a_run_without_adapter_is_found_only_when_no_adapter_is_needed(
    project: tuple[Config, Path],
) -> None:
    cfg, _ = project
    (cfg.train.runs_dir / "r1-baseline" / "adapters.safetensors").unlink()
    with pytest.raises(MlxtuneError, match="not an adapter directory"):
        resolve_run("r1-baseline", cfg)
    assert resolve_run("r1-baseline", cfg, need_adapter=False).name == "r1-baseline"


@pytest.mark.parametrize(
    "verb",
    [
        ["runs", "show", "r2-higher-l"],
        ["runs", "compare", "r1-baseline", "r2-higher-l"],
        ["runs", "promote", "r2-higher-l"],
        ["report", "r2-higher-l"],
        ["export", "r2-higher-l", "--out", "unused"],
    ],
    ids=lambda v: " ".join(v[:2]),
)
def test_verbs_name_unknown_runs_in_one_line_with_close_names(
    project: tuple[Config, Path], verb: list[str]
) -> None:
    _, cfg_path = project
    res = runner.invoke(app, [*verb, "-c", str(cfg_path)])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert "no run named 'r2-higher-l'" in lines[0] and "did you mean r2-higher-lr" in lines[0]


def test_verbs_take_a_run_by_path(project: tuple[Config, Path], tmp_path: Path) -> None:
    """A run outside train.runs_dir, named by its path, can be shown and promoted."""
    _, cfg_path = project
    elsewhere = fabricate_run(tmp_path / "other", "outside")
    res = runner.invoke(app, ["runs", "show", str(elsewhere), "-c", str(cfg_path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["name"] == "outside"
    res = runner.invoke(app, ["runs", "promote", str(elsewhere), "-c", str(cfg_path)])
    assert res.exit_code == 0 and "@current -> outside" in res.output


@pytest.mark.e2e
def test_evaluate_adapter_by_alias(tiny_model: Path, domain_data: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_adapter(tiny_model, runs / "tuned", b_scale=0.05)
    make_adapter(tiny_model, runs / "newer", b_scale=0.0)
    config = tmp_path / "eval.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(tiny_model)},
                "data": {"dir": str(domain_data)},
                "train": {"runs_dir": str(runs), "registry_dir": str(tmp_path / ".mlxtune")},
                "evaluate": {"max_tokens": 4, "max_examples": 2, "compute_loss": False},
            }
        )
    )
    c = ["-c", str(config)]
    assert runner.invoke(app, ["runs", "promote", "tuned", *c]).exit_code == 0
    res = runner.invoke(app, ["evaluate", "--adapter", "@current", "--no-compare-base", *c])
    assert res.exit_code == 0, res.output
    report = json.loads((runs / "tuned" / "eval" / "report.json").read_text())
    assert Path(report["adapter"]).resolve() == (runs / "tuned").resolve()
    assert not (runs / "newer" / "eval").exists()
    # An unknown name is one line with close names; evaluate's gate keeps exit 2 for
    # "could not evaluate" (docs/evaluate.md), so CI can tell it from a failed threshold.
    res = runner.invoke(app, ["evaluate", "--adapter", "tuned-x", *c])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        f"error: evaluate.adapter: no run named 'tuned-x' in {runs} (did you mean tuned?)"
    ]
