"""`mlxtune report NAME`: one self-contained HTML page and a markdown file for a run.

Plots are drawn with matplotlib's Agg backend (no display needed) and embedded in the HTML as
base64 PNG, so the page can be mailed or attached to a CI job as a single file. The markdown
references the same PNGs written beside it.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlxtune.errors import UsageError
from mlxtune.eval_report import EvalReport
from mlxtune.io import atomic_open, atomic_write_text
from mlxtune.render.documents import run_report_html, run_report_markdown
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
SAMPLE_IMAGES = 4  # a vision run's first test images, shown beside base and fine-tuned answers
THUMBNAIL_SIDE = 128  # pixels: small enough to keep the page light
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
    samples: list[Path] = field(default_factory=list)  # image thumbnails (vision runs)


@dataclass
class ImageSample:
    """One test image of a vision run with what each side answered about it."""

    name: str  # the source image's file name
    source: str  # its path, as the prepared record gives it
    file: str  # the thumbnail's name under samples/ ("" when the image is gone)
    question: str
    reference: str
    base: str
    adapter: str


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _pyplot() -> Any:
    """matplotlib's pyplot, headless; it is the `report` extra, not a core dependency."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError(
            "report: the plots need matplotlib: pip install 'mlxtune[report]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _loss_plot(train: list[tuple[int, float]], val: list[tuple[int, float]]) -> bytes | None:
    if not train and not val:
        return None
    plt = _pyplot()

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


def _eval_metric(report: EvalReport) -> str | None:
    """The metric the per-category chart shows: the first accuracy-like one present."""
    present = set(report.overall.adapter) | set(report.overall.base or {})
    for m in ("keyword_accuracy", "token_f1", "exact_match"):
        if m in present:
            return m
    return None


def _eval_plot(report: EvalReport, metric: str) -> bytes | None:
    labels, base, tuned = [], [], []
    for label, block in report.blocks(sort=True):
        b = (block.base or {}).get(metric)
        a = block.adapter.get(metric)
        if a is None and b is None:
            continue
        labels.append(label)
        base.append(float(b) if b is not None else 0.0)
        tuned.append(float(a) if a is not None else 0.0)
    if not labels:
        return None
    plt = _pyplot()

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


def _prediction_rows(run: RunDir) -> Iterator[dict[str, Any]]:
    """The evaluation's predictions.jsonl rows, skipping any line that is not an object."""
    path = run.eval_dir / "predictions.jsonl"
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            yield row


def _read_predictions(run: RunDir, n: int) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for row in itertools.islice(_prediction_rows(run), n):
        picked = {}
        for name, keys in _PRED_FIELDS.items():
            value = next((row[k] for k in keys if row.get(k) is not None), None)
            if isinstance(value, dict | list):
                value = json.dumps(value, ensure_ascii=False)
            picked[name] = "" if value is None else str(value)
        out.append(picked)
    return out


def _image_samples(run: RunDir, n: int) -> tuple[list[ImageSample], dict[str, bytes]]:
    """The first `n` predictions that carry images (evaluate writes `images` for a vision
    run), each with a PNG thumbnail of its first image: samples and thumbnail name -> PNG."""
    samples: list[ImageSample] = []
    thumbnails: dict[str, bytes] = {}
    for row in _prediction_rows(run):
        if len(samples) >= n:
            break
        images = row.get("images")
        if not images or not isinstance(images, list):
            continue
        source = Path(str(images[0]))
        png = _thumbnail(source)
        file = f"sample_{len(samples) + 1}.png" if png else ""
        if png:
            thumbnails[file] = png
        prompt = row.get("prompt")
        question = prompt[-1].get("content", "") if isinstance(prompt, list) and prompt else ""
        samples.append(
            ImageSample(
                source.name, str(source), file, str(question), str(row.get("expected") or ""),
                _fmt(row.get("base")), _fmt(row.get("adapter")),
            )
        )  # fmt: skip
    return samples, thumbnails


def _thumbnail(path: Path) -> bytes | None:
    """A small PNG of the image, or None when it cannot be read (moved or deleted since)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            small = im.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return buf.getvalue()


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


def _eval_table(report: EvalReport) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """One row per scope (overall, then categories), one column per metric, each cell
    `base → fine-tuned (delta)`; plus a CSS class per cell (pos = better, neg = worse)."""
    blocks = report.blocks(sort=True)
    metrics = [m for m in METRICS if any(m in b.adapter or m in (b.base or {}) for _, b in blocks)]
    header = ["scope", "n", *metrics]
    rows, classes = [], []
    for scope, block in blocks:
        adapter, base, delta = block.adapter, block.base or {}, block.delta or {}
        row, cls = [scope, _fmt(block.n)], ["", "num"]
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


def _plots(
    train: list[tuple[int, float]], val: list[tuple[int, float]], evaluation: EvalReport | None
) -> dict[str, bytes]:
    """File name -> PNG for the plots there is data for."""
    plots: dict[str, bytes] = {}
    loss_png = _loss_plot(train, val)
    if loss_png:
        plots["loss.png"] = loss_png
    metric = _eval_metric(evaluation) if evaluation else None
    if evaluation and metric:
        eval_png = _eval_plot(evaluation, metric)
        if eval_png:
            plots["eval.png"] = eval_png
    return plots


def build_report(cfg: Config, name: str, out_dir: Path | None = None) -> ReportResult:
    """Write report.html (self-contained) and report.md (+ PNGs) for run NAME (or @alias).
    Default output directory: <run>/report/."""
    rec = find_run(cfg, name)
    run = RunDir(rec.path)
    out = Path(out_dir) if out_dir is not None else run.root / "report"
    rows = read_metrics(run.metrics)
    evaluation = EvalReport.from_dict(rec.evaluation) if rec.evaluation else None
    plots = _plots(loss_series(rows, "train_loss"), loss_series(rows, "val_loss"), evaluation)
    config = read_run_config(run)
    samples, thumbnails = _image_samples(run, SAMPLE_IMAGES)
    eval_header, eval_rows, eval_classes = _eval_table(evaluation) if evaluation else ([], [], [])
    context = {
        "rec": rec,
        "method": _fmt(rec.method),
        "base_model": _fmt(rec.base_model),
        "config_hash": _fmt(rec.config_hash),
        "gate": {True: "passed", False: "FAILED", None: "–"}[
            evaluation.passed if evaluation else None
        ],
        "final_rows": [[k, _fmt(v)] for k, v in rec.final.items()],
        "evaluation": evaluation,
        "eval_header": eval_header,
        "eval_rows": eval_rows,
        "eval_classes": eval_classes,
        "pred_header": ["id", "category", "question", "reference", "base", "fine-tuned"],
        "pred_rows": [
            [p["id"], p["category"], p["question"], p["reference"], p["base"], p["adapter"]]
            for p in _read_predictions(run, SAMPLE_PREDICTIONS)
        ],
        "samples": samples,
        "lineage": [[k, v] for k, v in _lineage(rec)],
        "config_text": yaml.safe_dump(config, sort_keys=False) if config else "(no config.yaml)",
    }
    inline = {f: base64.b64encode(data).decode() for f, data in (plots | thumbnails).items()}
    html_text = run_report_html(context, inline)
    markdown = run_report_markdown(context, sorted(plots))

    out.mkdir(parents=True, exist_ok=True)
    plot_paths = [_write_png(out / fname, data) for fname, data in plots.items()]
    sample_paths = [_write_png(out / "samples" / f, data) for f, data in thumbnails.items()]
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", html_text)
    return ReportResult(out / "report.html", out / "report.md", plot_paths, sample_paths)


def _write_png(path: Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return path
