"""`mlxtune evaluate`: score an adapter beside its base model, per category, and gate on it.

One run loads the adapter (then the base model), renders every prompt through
`formats.encode_prompt`, generates greedily in batches with mlx-lm's `BatchGenerator`, and
scores keyword accuracy, exact match and token F1; loss and perplexity are taken over the
answer tokens only (the mask of `formats.encode_for_training`, as training uses it).
`--endpoint` scores a running OpenAI-compatible server instead, with the same metrics.
Exit codes: 0 all thresholds hold, 1 one fails (GateFailed), 2 could not evaluate (UsageError).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune import formats
from mlxtune.config import Config
from mlxtune.errors import ConfigError, DataError, MlxtuneError, UsageError
from mlxtune.eval_report import (
    EvalReport,
    Guard,
    MetricBlock,
    Threshold,
    Timing,
    gate_outcome,
)
from mlxtune.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from mlxtune.metrics import (
    FORMAT_METRICS,
    GATE_METRICS,
    GENERATION_METRICS,
    LOSS_METRICS,
    METRICS,
    RETRIEVAL_METRICS,
    mean,
    score,
    score_format,
)
from mlxtune.provenance import versions
from mlxtune.render.documents import evaluation_markdown
from mlxtune.rundir import RunDir, resolve_run
from mlxtune.vlm.data import image_list

if TYPE_CHECKING:
    import httpx

UNCATEGORIZED = "uncategorized"
SIDES = ("base", "adapter")
CONSTRAINED = "constrained"  # the adapter again, decoding under evaluate.output_schema

# progress(stage, done, total): stage is e.g. "generate adapter", "loss base".
Progress = Callable[[str, int, int], None]


@dataclass
class Example:
    line: int
    id: str | None
    category: str
    prompt: formats.Messages
    expected: str
    keywords: list[str]
    record: dict[str, Any]


@dataclass
class SideOutput:
    """What one model produced on every example."""

    texts: list[str]
    generate_s: float
    generated_tokens: int
    loss_sums: list[float] | None = None
    loss_tokens: list[int] | None = None
    loss_s: float = 0.0
    served_by: dict[str, int] = field(default_factory=dict)  # endpoint: answers per model


@dataclass
class EvaluateResult:
    report: EvalReport
    out_dir: Path
    report_path: Path
    markdown_path: Path
    predictions_path: Path
    markdown: str
    thresholds: list[Threshold] = field(default_factory=list)
    guards: list[Guard] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.report.passed

    @property
    def adapter_equals_base(self) -> bool:
        return self.report.adapter_equals_base

    def failures(self) -> list[str]:
        out = [f"{t.key} {t.kind} {t.value:g}: got {_fmt(t.actual)}" for t in self.thresholds]
        out = [o for o, t in zip(out, self.thresholds, strict=True) if not t.passed]
        return out + [g.message for g in self.guards if not g.passed]


# ---------------------------------------------------------------------------------------------
# Inputs


def parse_threshold_flags(items: list[str] | None, flag: str) -> dict[str, float]:
    """`["keyword_accuracy=0.8", "arch/token_f1=0.5"]` -> {key: value}; bad items: ConfigError."""
    out: dict[str, float] = {}
    problems = []
    for item in items or []:
        key, sep, raw = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            out[key.strip()] = float(raw)
        except ValueError:
            problems.append(f"{flag} {item!r}: expected METRIC=NUMBER or CATEGORY/METRIC=NUMBER")
    if problems:
        raise ConfigError(problems)
    return out


def _thresholds(
    cfg: Config, categories: set[str], has_base: bool, gated: tuple[str, ...] = GATE_METRICS
) -> list[Threshold]:
    problems: list[str] = []
    out: list[Threshold] = []
    for kind, table in (("min", cfg.evaluate.min), ("min_delta", cfg.evaluate.min_delta)):
        for key, value in table.items():
            category, _, metric = key.rpartition("/")
            where = f"evaluate.{kind}.{key}"
            if metric in LOSS_METRICS:
                problems.append(
                    f"{where}: gate on {', '.join(gated)} ({metric} is lower-is-better)"
                )
            elif metric not in gated:
                problems.append(f"{where}: unknown metric (known: {', '.join(gated)})")
            elif metric in FORMAT_METRICS and cfg.evaluate.output_schema is None:
                problems.append(f"{where}: {metric} needs evaluate.output_schema")
            elif category and category not in categories:
                known = ", ".join(sorted(categories)) or "none"
                problems.append(f"{where}: no category {category!r} in the data (known: {known})")
            elif kind == "min_delta" and not has_base:
                problems.append(
                    f"{where}: needs the base model (drop --no-compare-base/--endpoint)"
                )
            else:
                out.append(Threshold(metric, category or None, kind, float(value)))
    if problems:
        raise ConfigError(problems)
    return out


def load_examples(
    data_dir: Path, split: str, max_examples: int | None = None, *, augmented: bool = False
) -> list[Example]:
    """Chat records of `<data_dir>/<split>.jsonl` whose last message is the expected answer;
    rows `prepare.augment` added are skipped unless `augmented`."""
    path = Path(data_dir) / f"{split}.jsonl"
    examples: list[Example] = []
    for n, row in formats.read_records(path):
        if row.get("augmented") and not augmented:
            continue
        if not isinstance(row.get("messages"), list):
            raise DataError(f"{path}:{n}: messages: evaluate needs chat records")
        keywords = row.get("keywords") or []
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            raise DataError(f"{path}:{n}: keywords: expected a list of strings")
        prompt, expected = formats.prompt_and_answer(row)
        examples.append(
            Example(
                line=n,
                id=row.get("id"),
                category=str(row.get("category") or UNCATEGORIZED),
                prompt=prompt,
                expected=expected,
                keywords=keywords,
                record=row,
            )
        )
        if max_examples and len(examples) >= max_examples:
            break
    if not examples:
        raise DataError(f"{path}: no records")
    return examples


# ---------------------------------------------------------------------------------------------
# Running a model


def _generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_tokens: int,
    batch_size: int,
    report: Callable[[int], None],
    processors: list[list[Any]] | None = None,
) -> tuple[list[str], int]:
    """Greedy answers for token prompts (batch_size 1: one at a time, the baseline the batched
    path is measured against) and the number of tokens generated."""
    from mlxtune.generation import greedy_tokens

    tokens = greedy_tokens(
        model, tokenizer, prompts, max_tokens, batch_size, report, processors=processors
    )
    texts = [tokenizer.decode(t).strip() for t in tokens]
    return texts, sum(len(t) for t in tokens)


def _losses(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    max_seq_length: int,
    batch_size: int,
    report: Callable[[int], None],
) -> tuple[list[float], list[int]]:
    """Per-example summed cross-entropy and token count over the answer tokens only."""
    import mlx.core as mx
    import mlx.nn as nn

    encoded = []
    for ex in examples:
        ids, mask = formats.encode_for_training(tokenizer, ex.record, mask_prompt=True)
        encoded.append((ids[:max_seq_length], mask[:max_seq_length]))
    sums = [0.0] * len(examples)
    counts = [0] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(encoded[i][0]))
    done = 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i][0]) for i in idx)
        batch = mx.array([encoded[i][0] + [0] * (width - len(encoded[i][0])) for i in idx])
        flags = mx.array([encoded[i][1] + [False] * (width - len(encoded[i][1])) for i in idx])
        logits = model(batch[:, :-1])
        target_mask = flags[:, 1:].astype(mx.float32)
        ce = nn.losses.cross_entropy(logits, batch[:, 1:]).astype(mx.float32) * target_mask
        row_sums: Any = ce.sum(axis=1).tolist()
        row_counts: Any = target_mask.sum(axis=1).tolist()
        for j, i in enumerate(idx):
            sums[i] = float(row_sums[j])
            counts[i] = int(row_counts[j])
        done += len(idx)
        report(done)
    return sums, counts


def _run_local(
    cfg: Config,
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    label: str,
    progress: Progress | None,
    *,
    constrained: bool = False,
) -> SideOutput:
    ev = cfg.evaluate
    prompts = [formats.encode_prompt(tokenizer, ex.prompt) for ex in examples]
    total = len(examples)
    processors = _constraints(cfg, tokenizer, len(examples)) if constrained else None

    def stage(name: str) -> Callable[[int], None]:
        return lambda done: progress(f"{name} {label}", done, total) if progress else None

    t0 = time.perf_counter()
    texts, n_tokens = _generate(
        model, tokenizer, prompts, ev.max_tokens, ev.batch_size, stage("generate"), processors
    )
    out = SideOutput(texts, time.perf_counter() - t0, n_tokens)
    if ev.compute_loss and not constrained:  # the same weights: the adapter's loss holds
        t0 = time.perf_counter()
        out.loss_sums, out.loss_tokens = _losses(
            model, tokenizer, examples, cfg.train.max_seq_length, ev.batch_size, stage("loss")
        )
        out.loss_s = time.perf_counter() - t0
    return out


def output_format(cfg: Config) -> dict[str, Any]:
    """evaluate.output_schema as the `response_format` serve takes."""
    schema = cfg.evaluate.resolved_output_schema()
    return {"type": "json_schema", "json_schema": {"name": "output_schema", "schema": schema}}


def _constraints(cfg: Config, tokenizer: Any, n: int) -> list[list[Any]]:
    """One fresh output constraint per example, the same structured.py path serve uses."""
    from mlxtune.structured import Grammars, ResponseFormatError, parse_response_format

    try:
        fmt = parse_response_format(output_format(cfg))
        assert fmt is not None
        grammars = Grammars(tokenizer)
        return [[grammars.constraint(fmt, max_tokens=cfg.evaluate.max_tokens)] for _ in range(n)]
    except ResponseFormatError as e:  # name the config field, not the request field
        raise ConfigError(f"evaluate.output_schema: {str(e).partition(': ')[2]}") from None


def _run_endpoint(
    cfg: Config,
    examples: list[Example],
    progress: Progress | None,
    timeout_s: float = 120.0,
    *,
    constrained: bool = False,
) -> SideOutput:
    """Ask a running OpenAI-compatible server; it renders the messages with its own template.
    `constrained`: with evaluate.output_schema as the request's response_format."""
    from concurrent.futures import ThreadPoolExecutor

    from mlxtune import endpoint

    ev = cfg.evaluate
    url = endpoint.chat_url(str(ev.endpoint))
    total = len(examples)
    done = 0
    response_format = output_format(cfg) if constrained else None
    stage = f"generate {CONSTRAINED if constrained else 'endpoint'}"

    def ask(http: httpx.Client, ex: Example) -> tuple[str, int, str]:
        body = {
            "model": ev.endpoint_model,
            "messages": ex.prompt,
            "temperature": 0.0,
            "max_tokens": ev.max_tokens,
            **({"response_format": response_format} if constrained else {}),
        }
        reply = endpoint.ask(http, url, body)
        return (
            reply.text.strip(),
            reply.completion_tokens or 0,
            str(reply.model or ev.endpoint_model),
        )

    t0 = time.perf_counter()
    results: list[tuple[str, int, str]] = []
    with (
        endpoint.client(cfg.serve.resolved_api_key(), timeout_s) as http,
        ThreadPoolExecutor(max_workers=min(ev.batch_size, 8)) as pool,
    ):
        for res in pool.map(lambda ex: ask(http, ex), examples):
            results.append(res)
            done += 1
            if progress:
                progress(stage, done, total)
    out = SideOutput(
        [t for t, _, _ in results], time.perf_counter() - t0, sum(n for _, n, _ in results)
    )
    out.served_by = dict(Counter(m for _, _, m in results))
    return out


# ---------------------------------------------------------------------------------------------
# Scoring and the report


def _aggregate(rows: list[dict[str, Any]], side: str) -> dict[str, float | None]:
    scores = [r["scores"][side] for r in rows]
    out: dict[str, float | None] = {m: mean(s[m] for s in scores) for m in GENERATION_METRICS}
    for m in FORMAT_METRICS:  # only when scored (evaluate.output_schema)
        if any(m in s for s in scores):
            out[m] = mean(s.get(m) for s in scores)
    if side == CONSTRAINED:  # generation only; its loss is the adapter's
        return out
    sums = [r["_loss"][side] for r in rows if r["_loss"].get(side)]
    if sums:
        tokens = sum(n for _, n in sums)
        loss = sum(s for s, _ in sums) / tokens if tokens else None
        out["loss"] = loss
        out["perplexity"] = math.exp(min(loss, 700.0)) if loss is not None else None
    else:
        out["loss"] = out["perplexity"] = None
    return out


def _delta(base: dict[str, float | None], adapter: dict[str, float | None]) -> dict[str, Any]:
    out: dict[str, float | None] = {}
    for m in (m for m in METRICS if m in adapter or m in base):
        a, b = adapter.get(m), base.get(m)
        out[m] = a - b if a is not None and b is not None else None
    return out


def _block(rows: list[dict[str, Any]], has_base: bool, constrained: bool = False) -> MetricBlock:
    adapter = _aggregate(rows, "adapter")
    base = _aggregate(rows, "base") if has_base else None
    delta = _delta(base, adapter) if base else None
    with_constraint = _aggregate(rows, CONSTRAINED) if constrained else None
    return MetricBlock(adapter, base, delta, n=len(rows), constrained=with_constraint)


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _check_template(run: RunDir, template: str, allow: bool) -> str | None:
    """Error (or, when allowed, a warning) if training rendered with another template."""
    recorded: str | None = None
    source = ""
    if run.chat_template.is_file():
        recorded = formats.template_fingerprint(run.chat_template.read_text(encoding="utf-8"))
        source = str(run.chat_template)
    elif run.read_run().get("template_sha"):
        recorded, source = str(run.read_run()["template_sha"]), f"{run.run_json} template_sha"
    ours = formats.template_fingerprint(template)
    if recorded is None or recorded == ours:
        return None
    message = (
        f"{source}: the run trained with template {recorded}, evaluate renders with {ours} "
        "(check model.chat_template; --allow-template-mismatch to go on)"
    )
    if not allow:
        raise UsageError(message)
    return "template mismatch: " + message


def _run_models(
    cfg: Config,
    examples: list[Example],
    has_base: bool,
    warnings: list[str],
    progress: Progress | None,
) -> tuple[RunDir, dict[str, SideOutput], str, float]:
    """The adapter's outputs, then (one model in memory at a time) the base model's.
    Returns the run, outputs per side, the template fingerprint and the seconds spent loading."""
    import mlx.core as mx

    from mlxtune.modeling import load_model
    from mlxtune.vlm.kind import model_kind

    ev = cfg.evaluate
    load: Callable[..., tuple[Any, Any, str]] = load_model
    run_side: Callable[..., SideOutput] = _run_local
    if model_kind(cfg.model) == "vlm":  # same flow; mlx-vlm loads and answers (docs/vision.md)
        from mlxtune.vlm.evaluate import run_vision_side
        from mlxtune.vlm.load import load_vlm

        if ev.constrained:
            raise ConfigError("evaluate.constrained: not supported for vision-language models yet")
        load, run_side = load_vlm, run_vision_side
    try:
        run = resolve_run(ev.adapter, cfg, field="evaluate.adapter")
    except MlxtuneError as e:
        raise UsageError(str(e)) from None
    outputs: dict[str, SideOutput] = {}
    t0 = time.perf_counter()
    model, tokenizer, template = load(cfg.model, run.root)
    load_s = time.perf_counter() - t0
    mismatch = _check_template(run, template, ev.allow_template_mismatch)
    if mismatch:
        warnings.append(mismatch)
    outputs["adapter"] = run_side(cfg, model, tokenizer, examples, "adapter", progress)
    if ev.constrained:
        outputs[CONSTRAINED] = _run_local(
            cfg, model, tokenizer, examples, CONSTRAINED, progress, constrained=True
        )
    del model
    mx.clear_cache()
    if has_base:
        t0 = time.perf_counter()
        model, tokenizer, _ = load(cfg.model)
        load_s += time.perf_counter() - t0
        outputs["base"] = run_side(cfg, model, tokenizer, examples, "base", progress)
        del model
        mx.clear_cache()
    return run, outputs, formats.template_fingerprint(template), load_s


def evaluate(cfg: Config, *, progress: Progress | None = None) -> EvaluateResult:
    """Score the adapter (or an endpoint) and, unless told not to, the base model beside it."""
    ev = cfg.evaluate
    if ev.task == "retrieval":
        return evaluate_retrieval(cfg, progress=progress)
    started = time.perf_counter()
    if ev.endpoint and not ev.endpoint_model:
        raise ConfigError("evaluate.endpoint_model: required with --endpoint (use --model NAME)")
    has_base = ev.compare_base and not ev.endpoint
    examples = load_examples(
        cfg.data.dir, ev.split, ev.max_examples, augmented=ev.include_augmented
    )
    categories = sorted({ex.category for ex in examples})
    thresholds = _thresholds(cfg, set(categories), has_base)
    warnings: list[str] = []
    outputs: dict[str, SideOutput] = {}
    load_s = 0.0
    run: RunDir | None = None
    template_sha: str | None = None

    if ev.endpoint:
        labels = {"adapter": f"{ev.endpoint_model} @ {ev.endpoint}", "base": None}
        outputs["adapter"] = _run_endpoint(cfg, examples, progress)
        if ev.constrained:
            outputs[CONSTRAINED] = _run_endpoint(cfg, examples, progress, constrained=True)
        out_dir = ev.out_dir or cfg.train.runs_dir / "endpoint-eval"
        mode = "endpoint"
    else:
        run, outputs, template_sha, load_s = _run_models(
            cfg, examples, has_base, warnings, progress
        )
        labels = {"adapter": str(run.root), "base": cfg.model.path if has_base else None}
        out_dir = ev.out_dir or run.eval_dir
        mode = "sequential" if ev.batch_size == 1 else "batched"

    rows = _score_rows(examples, outputs, has_base, ev.resolved_output_schema())
    constrained = CONSTRAINED in outputs
    overall = _block(rows, has_base, constrained)
    per_category = {
        c: _block([r for r in rows if r["category"] == c], has_base, constrained)
        for c in categories
    }
    guards = _apply_gate(rows, thresholds, overall, per_category, has_base, warnings)
    passed, adapter_equals_base = gate_outcome(thresholds, guards)
    report = EvalReport(
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        run=run.name if run else None,
        adapter=str(run.root) if run else None,
        endpoint=ev.endpoint,
        endpoint_model=ev.endpoint_model,
        served_by=outputs["adapter"].served_by,
        model=cfg.model.path,
        labels=labels,
        split=ev.split,
        data_dir=str(cfg.data.dir),
        n_examples=len(rows),
        template_sha=template_sha,
        overall=MetricBlock(
            overall.adapter, overall.base, overall.delta, constrained=overall.constrained
        ),
        per_category=per_category,
        thresholds=thresholds,
        guards=guards,
        passed=passed,
        adapter_equals_base=adapter_equals_base,
        warnings=warnings,
        timing=Timing(
            mode=mode,
            batch_size=ev.batch_size,
            max_tokens=ev.max_tokens,
            load_s=round(load_s, 3),
            generate_s={k: round(o.generate_s, 3) for k, o in outputs.items()},
            generated_tokens={k: o.generated_tokens for k, o in outputs.items()},
            loss_s={k: round(o.loss_s, 3) for k, o in outputs.items() if o.loss_sums is not None},
            total_s=round(time.perf_counter() - started, 3),
        ),
        versions=versions(),
    )
    return _write_report(report, rows, Path(out_dir))


def evaluate_retrieval(cfg: Config, *, progress: Progress | None = None) -> EvaluateResult:
    """Retrieval scores (recall@1, recall@5, MRR) of the adapter's pooled embeddings beside the
    base model's, per category, through the same report and gate as generation."""
    from mlxtune.embeddings import load_embedder
    from mlxtune.retrieval import build_task, compare, load_items

    ev = cfg.evaluate
    started = time.perf_counter()
    if ev.endpoint:
        raise UsageError("evaluate.endpoint: --task retrieval runs the models locally")
    if cfg.embed.kind != "pooled":
        raise UsageError("embed.kind: --task retrieval scores the language model and its adapter")
    queries = load_items(cfg.data.dir, ev.split)[: ev.max_examples]
    pool = [
        item
        for split in ("train", "valid", "test")
        if split != ev.split and (Path(cfg.data.dir) / f"{split}.jsonl").is_file()
        for item in load_items(cfg.data.dir, split)
    ]
    task = build_task(queries, pool, ev.retrieval_candidates)
    has_base = ev.compare_base
    categories = sorted({q.category for q in task.queries})
    thresholds = _thresholds(cfg, set(categories), has_base, RETRIEVAL_METRICS)
    try:
        run = resolve_run(ev.adapter, cfg, field="evaluate.adapter")
    except MlxtuneError as e:
        raise UsageError(str(e)) from None
    loaders = {"adapter": lambda: load_embedder(cfg, run.root)}
    if has_base:
        loaders["base"] = lambda: load_embedder(cfg)
    say = (lambda side: progress(f"embed {side}", 0, len(task.queries))) if progress else None
    result = compare(task, loaders, batch_size=cfg.embed.batch_size, progress=say)
    rows = [
        {
            "id": q.id,
            "category": q.category,
            "question": q.question,
            "relevant": [task.candidates[i] for i in sorted(task.relevant[n])],
            "base": result.ranks["base"][n] if has_base else None,
            "adapter": result.ranks["adapter"][n],
        }
        for n, q in enumerate(task.queries)
    ]
    warnings = [f"{task.skipped} questions have no paraphrase to find; skipped"] * bool(
        task.skipped
    )

    def metric_block(raw: dict[str, Any]) -> MetricBlock:
        return MetricBlock(raw["adapter"], raw["base"], raw["delta"], n=raw["n"])

    overall = metric_block(result.overall)
    per_category = {c: metric_block(b) for c, b in result.per_category.items()}
    guards = _apply_gate(rows, thresholds, overall, per_category, has_base, warnings)
    passed, adapter_equals_base = gate_outcome(thresholds, guards)
    report = EvalReport(
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        run=run.name,
        adapter=str(run.root),
        model=cfg.model.path,
        labels={"adapter": str(run.root), "base": cfg.model.path if has_base else None},
        split=ev.split,
        data_dir=str(cfg.data.dir),
        n_examples=len(rows),
        overall=MetricBlock(overall.adapter, overall.base, overall.delta),
        per_category=per_category,
        thresholds=thresholds,
        guards=guards,
        passed=passed,
        adapter_equals_base=adapter_equals_base,
        warnings=warnings,
        timing=Timing(
            mode=f"retrieval {task.mode} ({len(task.candidates)} candidates)",
            batch_size=cfg.embed.batch_size,
            load_s=round(sum(v for k, v in result.timing.items() if k.startswith("load")), 3),
            generate_s={k: v for k, v in result.timing.items() if k.startswith("embed")},
            total_s=round(time.perf_counter() - started, 3),
        ),
        versions=versions(),
    )
    return _write_report(report, rows, Path(ev.out_dir or run.eval_dir))


def _score_rows(
    examples: list[Example],
    outputs: dict[str, SideOutput],
    has_base: bool,
    schema: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One predictions.jsonl row per example (plus `_loss`: (sum, tokens) per side). With an
    output schema, every side is also scored for format compliance and per-field match."""
    rows: list[dict[str, Any]] = []
    for i, ex in enumerate(examples):
        row: dict[str, Any] = {
            "id": ex.id,
            "line": ex.line,
            "category": ex.category,
            "prompt": ex.prompt,
            "expected": ex.expected,
            "keywords": ex.keywords,
            "base": outputs["base"].texts[i] if has_base else None,
            "adapter": outputs["adapter"].texts[i],
            **({CONSTRAINED: outputs[CONSTRAINED].texts[i]} if CONSTRAINED in outputs else {}),
            "scores": {},
            "_loss": {},
        }
        if images := image_list(ex.record.get("images")):  # `mlxtune report` shows them
            row["images"] = images
        for side, out in outputs.items():
            row["scores"][side] = score(out.texts[i], ex.expected, ex.keywords)
            if schema is not None:
                row["scores"][side] |= score_format(out.texts[i], ex.expected, schema)
            if out.loss_sums is not None and out.loss_tokens is not None and out.loss_tokens[i]:
                s, n = out.loss_sums[i], out.loss_tokens[i]
                row["_loss"][side] = (s, n)
                row["scores"][side]["loss"] = s / n
        rows.append(row)
    return rows


def _apply_gate(
    rows: list[dict[str, Any]],
    thresholds: list[Threshold],
    overall: MetricBlock,
    per_category: dict[str, MetricBlock],
    has_base: bool,
    warnings: list[str],
) -> list[Guard]:
    """Fill each threshold's actual value and verdict; return the guards (adapter != base)."""
    for t in thresholds:
        block = per_category[t.category] if t.category else overall
        source = block.adapter if t.kind == "min" else (block.delta or {})
        t.actual = source.get(t.metric)
        t.passed = t.actual is not None and t.actual >= t.value - 1e-12
    if not has_base:
        return []
    same = sum(r["base"] == r["adapter"] for r in rows)
    equal = same == len(rows)
    message = (
        f"adapter outputs equal the base model's on all {len(rows)} examples: "
        "the adapter is not doing anything"
        if equal
        else f"adapter changes {len(rows) - same} of {len(rows)} answers"
    )
    if equal:
        warnings.append(message)
    return [Guard("adapter_differs_from_base", not equal, message)]


def _write_report(report: EvalReport, rows: list[dict[str, Any]], out_dir: Path) -> EvaluateResult:
    """predictions.jsonl, report.md, then report.json (each written whole, then renamed)."""
    markdown = evaluation_markdown(report)
    paths = (out_dir / "report.json", out_dir / "report.md", out_dir / "predictions.jsonl")
    atomic_write_jsonl(paths[2], ({k: v for k, v in r.items() if k != "_loss"} for r in rows))
    atomic_write_text(paths[1], markdown)
    atomic_write_json(paths[0], report.to_dict())
    return EvaluateResult(
        report,
        out_dir,
        *paths,
        markdown,
        report.thresholds,
        report.guards,
        report.warnings,
    )


# ---------------------------------------------------------------------------------------------
# lm-evaluation-harness tasks


LM_EVAL_MISSING = (
    "lm-eval is not installed: pip install lm-eval (or pip install 'mlx-lm[evaluate]')"
)


@dataclass
class TasksResult:
    results: dict[str, Any]
    path: Path


def evaluate_tasks(
    cfg: Config, tasks: list[str], *, limit: int | None = None, num_shots: int | None = None
) -> TasksResult:
    """lm-eval-harness tasks through mlx-lm's `MLXLM`, with the adapter applied (and the base
    model beside it when compare_base is on), which `mlx_lm.evaluate` alone cannot do."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UsageError(LM_EVAL_MISSING)
    if not tasks:
        raise ConfigError("--tasks: name at least one lm-eval task, e.g. hellaswag")
    import lm_eval
    from lm_eval.api.model import LM
    from mlx_lm.evaluate import MLXLM

    from mlxtune.modeling import load_model

    ev = cfg.evaluate
    try:
        run = resolve_run(ev.adapter, cfg, field="evaluate.adapter")
    except MlxtuneError as e:
        raise UsageError(str(e)) from None
    sides = {"adapter": run.root, **({"base": None} if ev.compare_base else {})}
    results: dict[str, Any] = {}
    for side, adapter in sides.items():
        model, tokenizer, _ = load_model(cfg.model, adapter)
        # MLXLM loads by path only; build it around the model load_model gave us.
        lm = MLXLM.__new__(MLXLM)
        LM.__init__(lm)
        lm._model, lm.tokenizer = model, tokenizer
        lm._max_tokens, lm._batch_size, lm._sampler = ev.max_tokens, ev.batch_size, None
        lm.use_chat_template = tokenizer.chat_template is not None
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=num_shots,
            limit=limit,
            apply_chat_template=lm.use_chat_template,
        )
        results[side] = (out or {}).get("results", {})
    path = (ev.out_dir or run.eval_dir) / "lm_eval.json"
    atomic_write_json(path, {"schema_version": 1, "tasks": tasks, "limit": limit, **results})
    return TasksResult(results, path)
