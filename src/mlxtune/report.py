"""`mlxtune report NAME`: one self-contained HTML page and a markdown file for a run.

Plots are drawn with matplotlib's Agg backend (no display needed) and embedded in the HTML as
base64 PNG, so the page can be mailed or attached to a CI job as a single file. The markdown
references the same PNGs written beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlxtune.io import atomic_write_text
from mlxtune.rundir import RunDir, read_metrics
from mlxtune.runs import (
    LOWER_IS_BETTER,
    METRICS,
    RunRecord,
    find_run,
    loss_series,
    read_run_config,
)

if TYPE_CHECKING:
    from mlxtune.config import Config

SAMPLE_PREDICTIONS = 8
# Field names the evaluation's predictions.jsonl may use, most specific first.
_PRED_FIELDS: dict[str, tuple[str, ...]] = {
    "id": ("id",),
    "category": ("category",),
    "question": ("question", "prompt", "input", "user"),
    "reference": ("reference", "expected", "answer", "target"),
    "base": ("base", "base_prediction", "base_output", "base_answer"),
    "adapter": ("adapter", "prediction", "adapter_prediction", "output", "adapter_answer"),
}


@dataclass
class ReportResult:
    html: Path
    markdown: Path
    plots: list[Path] = field(default_factory=list)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _loss_plot(train: list[tuple[int, float]], val: list[tuple[int, float]]) -> bytes | None:
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="#1f77b4", linewidth=1.6)
    if val:
        ax.plot(
            *zip(*val, strict=True),
            label="validation loss",
            color="#d62728",
            marker="o",
            markersize=4,
            linewidth=1.6,
        )
        best = min(val, key=lambda sv: sv[1])
        ax.annotate(
            f"best {best[1]:.3f} @ {best[0]}",
            best,
            textcoords="offset points",
            xytext=(-6, 10),
            ha="right",
            fontsize=8,
            color="#d62728",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    data = _png(fig)
    plt.close(fig)
    return data


def _eval_metric(report: dict[str, Any]) -> str | None:
    """The metric the per-category chart shows: the first accuracy-like one present."""
    overall = report.get("overall") or {}
    present = set(overall.get("adapter") or {}) | set(overall.get("base") or {})
    for m in ("keyword_accuracy", "token_f1", "exact_match"):
        if m in present:
            return m
    return None


def _eval_plot(report: dict[str, Any], metric: str) -> bytes | None:
    cats = report.get("per_category") or {}
    rows = [("overall", report.get("overall") or {}), *sorted(cats.items())]
    labels, base, tuned = [], [], []
    for label, block in rows:
        b = (block.get("base") or {}).get(metric)
        a = (block.get("adapter") or {}).get(metric)
        if a is None and b is None:
            continue
        labels.append(label)
        base.append(float(b) if b is not None else 0.0)
        tuned.append(float(a) if a is not None else 0.0)
    if not labels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.38
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(labels) + 2), 3.8))
    xs = range(len(labels))
    bars_b = ax.bar([x - width / 2 for x in xs], base, width, label="base", color="#9e9e9e")
    bars_a = ax.bar([x + width / 2 for x in xs], tuned, width, label="fine-tuned", color="#2ca02c")
    for bars in (bars_b, bars_a):
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    crowded = len(labels) > 5 or max(len(x) for x in labels) > 12
    ax.set_xticks(
        list(xs), labels, rotation=20 if crowded else 0, ha="right" if crowded else "center"
    )
    top = max([*base, *tuned, 0.0])
    ax.set_ylim(0, 1.2 if top <= 1 else top * 1.25)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per category: base vs fine-tuned")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=2, fontsize=8, frameon=False)
    data = _png(fig)
    plt.close(fig)
    return data


def _read_predictions(run: RunDir, n: int) -> list[dict[str, str]]:
    path = run.eval_dir / "predictions.jsonl"
    if not path.is_file():
        return []
    out: list[dict[str, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if len(out) >= n:
            break
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict):
            continue
        picked = {}
        for name, keys in _PRED_FIELDS.items():
            value = next((row[k] for k in keys if row.get(k) is not None), None)
            if isinstance(value, dict | list):
                value = json.dumps(value, ensure_ascii=False)
            picked[name] = "" if value is None else str(value)
        out.append(picked)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _lineage(rec: RunRecord) -> list[tuple[str, str]]:
    return [
        ("run", rec.name),
        ("status", rec.status),
        ("method", _fmt(rec.method)),
        ("base model", _fmt(rec.base_model)),
        ("config hash", _fmt(rec.config_hash)),
        ("data manifest sha256", _fmt(rec.data_manifest_sha256)),
        ("mlx / mlx-lm", f"{_fmt(rec.mlx_version)} / {_fmt(rec.mlx_lm_version)}"),
        ("git commit", _fmt(rec.git_commit)),
        ("started / finished", f"{_fmt(rec.started_at)} / {_fmt(rec.finished_at)}"),
        ("aliases", ", ".join(rec.aliases) or "–"),
    ]


def _eval_table(
    report: dict[str, Any],
) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """One row per scope (overall, then categories), one column per metric, each cell
    `base → fine-tuned (delta)`; plus a CSS class per cell (pos = better, neg = worse)."""
    blocks = [("overall", report.get("overall") or {}, report.get("n_examples"))]
    blocks += [(c, b, b.get("n")) for c, b in sorted((report.get("per_category") or {}).items())]
    metrics = [
        m
        for m in METRICS
        if any(m in (b.get("adapter") or {}) or m in (b.get("base") or {}) for _, b, _ in blocks)
    ]
    header = ["scope", "n", *metrics]
    rows, classes = [], []
    for scope, block, n in blocks:
        adapter, base, delta = (block.get(k) or {} for k in ("adapter", "base", "delta"))
        row, cls = [scope, _fmt(n)], ["", "num"]
        for m in metrics:
            a, b, d = adapter.get(m), base.get(m), delta.get(m)
            if d is None and isinstance(a, int | float) and isinstance(b, int | float):
                d = a - b
            text = f"{_fmt(b)} → {_fmt(a)}"
            klass = "num"
            if isinstance(d, int | float):
                text += f" ({d:+.3g})"
                better = d < 0 if m in LOWER_IS_BETTER else d > 0
                klass += "" if d == 0 else " pos" if better else " neg"
            row.append(text)
            cls.append(klass)
        rows.append(row)
        classes.append(cls)
    return header, rows, classes


def _html_table(
    header: list[str],
    rows: list[list[str]],
    cls: str = "",
    classes: list[list[str]] | None = None,
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, v in enumerate(row):
            klass = classes[i][j] if classes else ""
            cells.append(f'<td class="{klass}">{html.escape(v)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><tr>{head}</tr>{"".join(body)}</table>'


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1120px;
margin:24px auto;padding:0 20px;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0}
h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.6em}
.sub{color:#666;margin-top:4px}
table{border-collapse:collapse;margin:8px 0;font-size:0.9em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pos{color:#1a7f37}.neg{color:#c62828}
img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;padding:10px;overflow-x:auto;font-size:0.85em}
.preds td{max-width:300px;white-space:pre-wrap;word-break:break-word}
.row{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.row img{max-width:720px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;background:#eee;font-size:0.85em}
.badge.completed{background:#d7f5dd}.badge.failed{background:#fbd5d5}
"""


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(v: str) -> str:
        return v.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def build_report(cfg: Config, name: str, out_dir: Path | None = None) -> ReportResult:
    """Write report.html (self-contained) and report.md (+ PNGs) for run NAME (or @alias).
    Default output directory: <run>/report/."""
    rec = find_run(cfg, name)
    run = RunDir(rec.path)
    out = Path(out_dir) if out_dir is not None else run.root / "report"
    rows = read_metrics(run.metrics)
    train, val = loss_series(rows, "train_loss"), loss_series(rows, "val_loss")
    evaluation = rec.evaluation or {}
    config = read_run_config(run)
    preds = _read_predictions(run, SAMPLE_PREDICTIONS)

    plots: dict[str, bytes] = {}
    loss_png = _loss_plot(train, val)
    if loss_png:
        plots["loss.png"] = loss_png
    metric = _eval_metric(evaluation) if evaluation else None
    if metric:
        eval_png = _eval_plot(evaluation, metric)
        if eval_png:
            plots["eval.png"] = eval_png

    final_rows = [[k, _fmt(v)] for k, v in rec.final.items()]
    eval_header, eval_rows, eval_classes = _eval_table(evaluation) if evaluation else ([], [], [])
    pred_header = ["id", "category", "question", "reference", "base", "fine-tuned"]
    pred_rows = [
        [p["id"], p["category"], p["question"], p["reference"], p["base"], p["adapter"]]
        for p in preds
    ]
    lineage = [[k, v] for k, v in _lineage(rec)]
    config_text = yaml.safe_dump(config, sort_keys=False) if config else "(no config.yaml)"
    gate = evaluation.get("passed") if evaluation else None
    gate_text = {True: "passed", False: "FAILED", None: "–"}[gate]

    # HTML ---------------------------------------------------------------------------------
    def img(fname: str, alt: str) -> str:
        if fname not in plots:
            return f"<p><em>no data for {html.escape(alt)}</em></p>"
        b64 = base64.b64encode(plots[fname]).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>mlxtune report: {html.escape(rec.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(rec.name)} "
        f"<span class='badge {html.escape(rec.status)}'>{html.escape(rec.status)}</span></h1>",
        f"<p class='sub'>{html.escape(_fmt(rec.method))} on {html.escape(_fmt(rec.base_model))}"
        f" · config {html.escape(_fmt(rec.config_hash))}"
        f" · evaluation gate: {html.escape(gate_text)}</p>",
        "<h2>Training</h2>",
        "<div class='row'>",
        img("loss.png", "loss curves"),
        _html_table(["metric", "value"], final_rows, classes=[["", "num"]] * len(final_rows))
        if final_rows
        else "",
        "</div>",
        "<h2>Evaluation</h2>",
    ]
    if evaluation:
        parts += [
            f"<p>split <b>{html.escape(_fmt(evaluation.get('split')))}</b>, "
            f"{html.escape(_fmt(evaluation.get('n_examples')))} examples; "
            "cells read base → fine-tuned (delta), <span class='pos'>green</span> is better</p>",
            img("eval.png", "evaluation per category"),
            _html_table(eval_header, eval_rows, "eval", eval_classes),
        ]
    else:
        parts.append("<p><em>not evaluated (run mlxtune evaluate)</em></p>")
    parts.append("<h2>Sample predictions</h2>")
    parts.append(
        _html_table(pred_header, pred_rows, "preds") if pred_rows else "<p><em>none</em></p>"
    )
    parts += [
        "<h2>Lineage</h2>",
        _html_table(["field", "value"], lineage),
        "<h2>Config</h2>",
        f"<pre>{html.escape(config_text)}</pre>",
        "</body></html>",
    ]
    html_text = "\n".join(parts)

    # Markdown -----------------------------------------------------------------------------
    md = [
        f"# {rec.name} ({rec.status})",
        "",
        f"{_fmt(rec.method)} on `{_fmt(rec.base_model)}`, config `{_fmt(rec.config_hash)}`, "
        f"evaluation gate: {gate_text}",
        "",
        "## Training",
        "",
    ]
    md += ["![loss curves](loss.png)", ""] if "loss.png" in plots else []
    md += [_md_table(["metric", "value"], final_rows), ""] if final_rows else []
    md += ["## Evaluation", ""]
    if evaluation:
        md += ["![evaluation per category](eval.png)", ""] if "eval.png" in plots else []
        md += [_md_table(eval_header, eval_rows), ""]
    else:
        md += ["_not evaluated_", ""]
    md += ["## Sample predictions", ""]
    md += [_md_table(pred_header, pred_rows) if pred_rows else "_none_", ""]
    md += ["## Lineage", "", _md_table(["field", "value"], lineage), ""]
    md += ["## Config", "", "```yaml", config_text.rstrip(), "```", ""]

    out.mkdir(parents=True, exist_ok=True)
    plot_paths = []
    for fname, data in plots.items():
        from mlxtune.io import atomic_open

        with atomic_open(out / fname, "wb") as f:
            f.write(data)
        plot_paths.append(out / fname)
    atomic_write_text(out / "report.md", "\n".join(md))
    atomic_write_text(out / "report.html", html_text)
    return ReportResult(html=out / "report.html", markdown=out / "report.md", plots=plot_paths)
