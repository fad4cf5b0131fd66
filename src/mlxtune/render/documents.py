"""Markdown and HTML documents through the jinja2 templates in mlxtune/templates/.

No rich and no typer here: core modules (evaluate, report) render their files through it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from mlxtune.metrics import METRICS

if TYPE_CHECKING:
    import jinja2

    from mlxtune.eval_report import EvalReport


def fmt3(value: float | None, signed: bool = False) -> str:
    """A score to three decimals ('–' when missing), signed for deltas."""
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def md_cell(value: str) -> str:
    """A markdown table cell: pipes escaped, newlines folded."""
    return value.replace("|", "\\|").replace("\n", " ")


@functools.cache
def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mlxtune", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",)),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(fmt3=fmt3, md_cell=md_cell)
    return env


def render_template(name: str, **context: Any) -> str:
    """Render templates/NAME; .html templates escape every value, .md ones do not."""
    return _environment().get_template(name).render(**context)


def evaluation_markdown(report: EvalReport) -> str:
    """report.md (and the GitHub step summary): verdict, warnings, scores, gate."""
    return render_template("evaluate.md", report=report, metrics=METRICS)


def run_report_html(context: dict[str, Any], images: dict[str, str]) -> str:
    """report.html of `mlxtune report`: one page, plots inlined as base64 PNG (file -> base64)."""
    return render_template("report.html", images=images, **context)


def run_report_markdown(context: dict[str, Any], plots: list[str]) -> str:
    """report.md of `mlxtune report`: the same sections, plots referenced as files beside it."""
    return render_template("report.md", plots=plots, **context)
