from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fake_runs import fabricate_run, project_config
from mlxtune.cli import app
from mlxtune.config import Config, load_config
from mlxtune.errors import MlxtuneError
from mlxtune.eval_report import EvalReport
from mlxtune.render.documents import evaluation_markdown
from mlxtune.report import build_report

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    config = load_config(project_config(tmp_path))
    fabricate_run(config.train.runs_dir, "r1", accuracy=0.7)
    fabricate_run(config.train.runs_dir, "no-eval", with_eval=False)
    return config


def test_html_is_self_contained_with_both_plots(cfg: Config, tmp_path: Path) -> None:
    result = build_report(cfg, "r1", tmp_path / "out")
    text = result.html.read_text()
    # No external resources: every image is an inline PNG, no stylesheets or scripts fetched.
    assert not re.search(r"""(src|href)=["'](?!data:)""", text)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 2
    for b64 in images:
        assert base64.b64decode(b64).startswith(PNG_MAGIC)
    for section in ("Training", "Evaluation", "Sample predictions", "Lineage", "Config"):
        assert f"<h2>{section}</h2>" in text
    # Per-category rows, lineage and config values are on the page.
    for needle in ("troubleshooting", "0.25 → 0.8 (+0.55)", "ab" * 32, "learning_rate"):
        assert needle in text
    # Prediction text is escaped, not injected as markup.
    assert "&lt;configure&gt;" in text and "<configure>" not in text
    assert sorted(p.name for p in result.plots) == ["eval.png", "loss.png"]


def test_markdown_references_written_plots(cfg: Config, tmp_path: Path) -> None:
    result = build_report(cfg, "r1", tmp_path / "out")
    md = result.markdown.read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(Path(ref).name for ref in refs) == ["eval.png", "loss.png"]
    for ref in refs:
        assert (result.markdown.parent / ref).read_bytes().startswith(PNG_MAGIC)
    assert "| scope | n | keyword_accuracy |" in md
    assert "feature 0 \\| quickly?" in md  # pipes in cells are escaped
    assert "```yaml" in md


def test_better_and_worse_deltas_are_coloured_by_direction(cfg: Config, tmp_path: Path) -> None:
    text = build_report(cfg, "r1", tmp_path / "out").html.read_text()
    # Loss went down: that is better, so green (pos), not red.
    assert re.search(r'<td class="num pos">2\.8 → 2\.3 \(-0\.5\)</td>', text)


def test_run_without_evaluation_still_reports(cfg: Config) -> None:
    result = build_report(cfg, "no-eval")
    assert result.html.parent == cfg.train.runs_dir.resolve() / "no-eval" / "report"
    text = result.html.read_text()
    assert "not evaluated" in text and text.count("data:image/png") == 1


def test_report_cli(cfg: Config, tmp_path: Path) -> None:
    cfg_path = tmp_path / "mlxtune.yaml"
    res = runner.invoke(app, ["report", "r1", "-c", str(cfg_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "report.html").is_file()
    res = runner.invoke(app, ["report", "missing", "-c", str(cfg_path)])
    assert res.exit_code == 1 and "no run named 'missing'" in res.output


def test_unknown_run(cfg: Config) -> None:
    with pytest.raises(MlxtuneError, match="no run named 'zzz'"):
        build_report(cfg, "zzz")


def _report_json(cfg: Config) -> dict:
    return json.loads((cfg.train.runs_dir / "r1" / "eval" / "report.json").read_text())


def _top_level_keys(jsonc: str) -> set[str]:
    """Keys of the outermost object of a JSON-with-comments example."""
    text = re.sub(r"//[^\n]*", "", jsonc)
    keys, depth = set(), 0
    for m in re.finditer(r'"(\w+)"\s*:|[{}\[\]]', text):
        token = m.group(0)
        if token in "{[":
            depth += 1
        elif token in "}]":
            depth -= 1
        elif depth == 1:
            keys.add(m.group(1))
    return keys


def test_eval_report_round_trips_the_documented_schema(cfg: Config) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "evaluate.md").read_text()
    block = doc.split("### `report.json`", 1)[1].split("```jsonc", 1)[1].split("```", 1)[0]
    written = EvalReport.from_dict(_report_json(cfg)).to_dict()
    assert set(written) == _top_level_keys(block)
    assert EvalReport.from_dict(written).to_dict() == written


def test_evaluation_markdown_without_base_lists_warnings_and_failures(cfg: Config) -> None:
    data = _report_json(cfg)
    data |= {"passed": False, "warnings": ["template mismatch: x"], "labels": {"adapter": "a"}}
    data["overall"] |= {"base": None, "delta": None}
    for block in data["per_category"].values():
        block |= {"base": None, "delta": None}
    data["thresholds"][0] |= {"actual": 0.4, "passed": False}
    md = evaluation_markdown(EvalReport.from_dict(data))
    assert md.startswith("## mlxtune evaluate: FAILED\n")
    assert (
        "- scored: `a`\n\n> **WARNING:** template mismatch: x\n\n| category | n | metric | value |"
        in md
    )
    assert "| **overall** | 30 | keyword_accuracy | 0.700 |" in md
    assert "| keyword_accuracy | >= 0.5 | 0.400 | **FAIL** |" in md
    assert "delta" not in md.split("| check |")[0]
