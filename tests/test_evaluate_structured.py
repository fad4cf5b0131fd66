"""evaluate with an output schema: format compliance base vs adapter, the gate on it, and
`evaluate.constrained` decoding under the same constraint as serve (the random-init tiny
model writes no JSON unless constrained)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_adapter
from mlxtune.cli import app
from mlxtune.config import Config, load_config
from mlxtune.eval_report import EvalReport

pytestmark = pytest.mark.e2e
SCHEMA = json.loads((Path(__file__).parent.parent / "data/structured/schema.json").read_text())


@pytest.fixture(scope="module")
def structured(
    tiny_model: Path, repo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[str]]:
    """The shipped structured config on the tiny model: prepared data and an adapter."""
    from mlxtune.data.prepare import prepare

    root = tmp_path_factory.mktemp("eval-structured")
    adapter = make_adapter(tiny_model, root / "runs" / "live", b_scale=0.05)
    config = repo_root / "configs" / "structured.yaml"  # its output_schema: the shipped one
    overrides = [
        f"model.path={tiny_model}",
        f"data.dir={root / 'data'}",
        f"prepare.sources=[{{path: {repo_root / 'data/structured/domain_facts.jsonl'}}}]",
        f"evaluate.adapter={adapter}",
        "evaluate.compute_loss=false",
    ]
    prepare(load_config(config, overrides))
    return config, overrides


def _cfg(structured: tuple[Path, list[str]], *extra: str) -> Config:
    config, overrides = structured
    settings = ["evaluate.max_examples=8", "evaluate.batch_size=8"]
    return load_config(config, [*overrides, *settings, *extra])


def test_compliance_with_and_without_the_constraint(
    structured: tuple[Path, list[str]], tmp_path: Path
) -> None:
    from mlxtune.evaluate import evaluate

    cfg = _cfg(structured, "evaluate.constrained=true", f"evaluate.out_dir={tmp_path}")
    result = evaluate(cfg)
    overall = json.loads(result.report_path.read_text())["overall"]
    assert overall["base"]["format_compliance"] == 0.0  # it cannot write JSON on its own
    assert overall["adapter"]["format_compliance"] == 0.0
    assert overall["constrained"]["format_compliance"] == 1.0
    assert overall["delta"]["format_compliance"] == 0.0
    assert overall["constrained"]["field_exact_match"] is not None
    assert "loss" not in overall["constrained"]  # same weights as the adapter: not repeated
    rows = [json.loads(line) for line in result.predictions_path.read_text().splitlines()]
    assert len(rows) == 8
    for row in rows:
        assert (
            json.loads(row["constrained"])["category"] in SCHEMA["properties"]["category"]["enum"]
        )
        assert row["scores"]["constrained"]["format_compliance"] == 1.0
    # per-field exact match is the mean over rows of each row's share of matching fields
    fields = [r["scores"]["constrained"]["field_exact_match"] for r in rows]
    assert overall["constrained"]["field_exact_match"] == pytest.approx(sum(fields) / len(fields))
    assert "adapter + constrained" in result.markdown
    # report.json reads back with the constrained scores
    back = EvalReport.from_dict(json.loads(result.report_path.read_text()))
    assert back.has_constrained and back.overall.constrained == overall["constrained"]
    assert all(b.constrained is not None for b in back.per_category.values())


def test_gate_on_format_compliance(structured: tuple[Path, list[str]], tmp_path: Path) -> None:
    config, overrides = structured
    args = ["evaluate", "-c", str(config), "--no-compare-base"]
    for o in [*overrides, "evaluate.max_examples=4"]:
        args += ["--set", o]
    runner = CliRunner()
    # Without a schema there is no format to gate on: a usage error before any model loads.
    result = runner.invoke(
        app, [*args, "--set", "evaluate.output_schema=null", "--min", "format_compliance=0.9"]
    )
    assert result.exit_code == 2, result.output
    assert "format_compliance needs evaluate.output_schema" in result.output
    result = runner.invoke(
        app, [*args, f"--out={tmp_path}", "--min", "format_compliance=0.9", "--json"]
    )
    assert result.exit_code == 1, result.output
    (threshold,) = json.loads((tmp_path / "report.json").read_text())["thresholds"]
    assert (threshold["metric"], threshold["actual"], threshold["passed"]) == (
        "format_compliance",
        0.0,
        False,
    )
