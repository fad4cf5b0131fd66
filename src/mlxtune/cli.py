"""The `mlxtune` command line: flags -> load_config -> one core call -> render the result.

Typer and Rich live here only. Core modules never print and never import typer; they raise
MlxtuneError, which `handles_errors` turns into one red line on stderr and an exit code.
Heavy imports (mlx, mlx_lm, datasets, transformers) happen inside the commands that need them.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from mlxtune import __version__
from mlxtune.errors import MlxtuneError

if TYPE_CHECKING:
    from mlxtune.config import Config

app = typer.Typer(
    name="mlxtune",
    help="Fine-tune language models with MLX: prepare, validate, train, evaluate, serve, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
config_app = typer.Typer(help="Show, check and create config files.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file.", show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a config value: section.key=value (value parsed as YAML). Repeatable.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def handles_errors(fn: F) -> F:
    """Known errors become one red line and their exit code; bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlxtuneError as e:
            if os.environ.get("MLXTUNE_DEBUG"):
                raise
            for line in str(e).splitlines() or [type(e).__name__]:
                err_console.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def resolve(config: Path | None, sets: list[str] | None, **flags: Any) -> Config:
    """Load the config with flags given as dotted keys: flags={'train.iters': 100}."""
    from mlxtune.config import load_config  # pydantic costs ~0.25 s: keep it off --help

    dotted = {k.replace("__", "."): v for k, v in flags.items()}
    return load_config(config, sets, dotted)


def version_callback(value: bool) -> None:
    if value:
        console.print(f"mlxtune {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=version_callback, is_eager=True, help="Show version."),
    ] = False,
) -> None:
    """Fine-tune language models with MLX."""


# ---------------------------------------------------------------------------------------------
# config


@config_app.command("show")
@handles_errors
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config (defaults < file < --set) as YAML."""
    cfg = resolve(config, set_)
    sys.stdout.write(cfg.to_yaml())


@config_app.command("schema")
@handles_errors
def config_schema(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to a file.")] = None,
) -> None:
    """Print the JSON Schema of the config, for editors (yaml-language-server)."""
    from mlxtune.config import json_schema
    from mlxtune.io import atomic_write_text

    text = json.dumps(json_schema(), indent=2) + "\n"
    if out:
        atomic_write_text(out, text)
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


@config_app.command("init")
@handles_errors
def config_init(
    out: Annotated[Path, typer.Argument(help="Where to write the starter config.")] = Path(
        "mlxtune.yaml"
    ),
    model: Annotated[str | None, typer.Option(help="Base model path or hub id.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter config with every field and its default."""
    from mlxtune.config import starter_yaml
    from mlxtune.io import atomic_write_text

    if out.exists() and not force:
        raise MlxtuneError(f"{out}: already exists (use --force to overwrite)")
    atomic_write_text(out, starter_yaml(model))
    console.print(f"wrote {out}")


@config_app.command("validate")
@handles_errors
def config_validate(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Check a config file and report every problem at once."""
    resolve(config, set_)
    console.print(f"[green]ok[/green] {config or '(defaults)'}")


# ---------------------------------------------------------------------------------------------
# doctor and tiny-model


@app.command()
@handles_errors
def doctor(json_: JsonOpt = False) -> None:
    """Check this machine: versions, device, BLAS speed, memory, hub cache and offline state."""
    from mlxtune.doctor import run_doctor

    report = run_doctor()
    if json_:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        table = Table(title="mlxtune doctor", show_header=True)
        table.add_column("check")
        table.add_column("value")
        table.add_column("status")
        for check in report.checks:
            mark = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]"}.get(
                check.status, "[red]fail[/red]"
            )
            table.add_row(check.name, check.value, mark)
        console.print(table)
        for check in report.checks:
            if check.fix:
                console.print(f"[yellow]fix[/yellow] {check.name}: {check.fix}")
    if not report.ok:
        raise typer.Exit(1)


@app.command("tiny-model")
@handles_errors
def tiny_model(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the model to.")],
    preset: Annotated[str, typer.Option(help="tiny (hidden 256, 4 layers) or small.")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed: same seed, same files.")] = 0,
    corpus: Annotated[
        list[Path] | None,
        typer.Option(help="Files to train the tokenizer on (default: every file in data/)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing directory.")] = False,
) -> None:
    """Build a random-init Llama with a locally trained tokenizer (for tests and demos)."""
    from mlxtune.tiny_model import build_tiny_model

    with console.status("building tiny model"):
        result = build_tiny_model(out, preset=preset, seed=seed, corpus=corpus, force=force)
    console.print(
        f"wrote {result.path}: {result.preset}, {result.parameters / 1e6:.2f}M parameters, "
        f"vocab {result.vocab_size}, tokenizer trained on {len(result.corpus_files)} file(s)"
    )


# ---------------------------------------------------------------------------------------------
# prepare / validate-format  (issue 4)


@app.command()
@handles_errors
def prepare(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output directory.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output directory (default: data.dir).", show_default=False
        ),
    ] = None,
) -> None:
    """Read, clean, deduplicate and split raw data into train/valid/test.jsonl + manifest.json."""
    from mlxtune.data.prepare import prepare as run_prepare

    cfg = resolve(config, set_, prepare__out_dir=out)
    with err_console.status("preparing") as status:
        result = run_prepare(cfg, force=force, progress=lambda msg: status.update(msg))
    table = Table(title=f"prepare -> {result.out_dir}", show_header=True)
    table.add_column("step")
    table.add_column("rows", justify="right")
    table.add_column("dropped", justify="right")
    table.add_row("read", str(result.read), "")
    for f in result.filters:
        table.add_row(f.name, str(f.after), str(f.dropped) if f.dropped else "")
    for split, n in result.splits.items():
        table.add_row(f"[bold]{split}[/bold]", str(n), "")
    console.print(table)
    if any(result.categories):
        cats = Table(title="per category", show_header=True)
        cats.add_column("category")
        for split in result.splits:
            cats.add_column(split, justify="right")
        for name, counts in result.categories.items():
            cats.add_row(name or "(none)", *(str(counts[s]) for s in result.splits))
        console.print(cats)
    lengths = result.manifest["token_lengths"]["all"]
    console.print(
        f"tokens p50 {lengths['p50']}, p95 {lengths['p95']}, max {lengths['max']} "
        f"(max_seq_length {result.manifest['max_seq_length']}); "
        f"template {result.manifest['template']['fingerprint']}; {result.wall_s:.1f} s"
    )
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


@app.command("validate-format")
@handles_errors
def validate_format(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="JSONL files or directories (default: data.dir).", show_default=False),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
    show: Annotated[
        int, typer.Option("--show", help="Print N rendered examples: prompt dim, answer bold.")
    ] = 0,
) -> None:
    """Check every row: JSON, format, schema, roles, lengths, leakage, batch size, prompt.

    Exit 0 when clean, 1 when the data has problems, 2 on a usage or config error."""
    from rich.markup import escape

    from mlxtune.data.validate import validate_format as run_validate

    cfg = resolve(config, set_)
    result = run_validate(cfg, paths or None, show=show)
    if json_:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        for problem in result.problems:
            console.print(escape(str(problem)), highlight=False, soft_wrap=True)
        # without colour (a pipe, NO_COLOR) the trained part is marked with «guillemets»
        plain = not console.is_terminal or console.no_color
        for ex in result.examples:
            console.rule(f"{ex.where}: {ex.tokens} tokens, {ex.trained_tokens} trained")
            console.print(
                "".join(
                    (
                        f"«{escape(s.text)}»"
                        if plain
                        else f"[bold green]{escape(s.text)}[/bold green]"
                    )
                    if s.trained
                    else f"[dim]{escape(s.text)}[/dim]"
                    for s in ex.segments
                ),
                highlight=False,
                soft_wrap=True,
            )
        if show:
            legend = "«trained answer»" if plain else "[bold green]trained answer[/bold green]"
            console.print(f"[dim]masked prompt[/dim]  {legend}")
        files = ", ".join(f"{f.split} {f.rows}" for f in result.files)
        counts = ", ".join(f"{k} {v}" for k, v in result.counts().items())
        if result.ok:
            console.print(
                f"[green]ok[/green] {result.rows} rows ({files}), format {result.format}, "
                f"template {result.template_fingerprint}"
            )
        else:
            console.print(
                f"[red]{len(result.problems)} problem(s)[/red] in {result.rows} rows "
                f"({files}): {counts}"
            )
    if not result.ok:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------
# train  (issue 5)


@app.command("train")
@handles_errors
def train_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue runs/NAME from its last checkpoint, exactly.", show_default=False
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the plan and every config problem; train nothing."),
    ] = False,
    json_: Annotated[
        bool, typer.Option("--json", help="Emit JSON lines (train, val, save, done events).")
    ] = False,
    name: Annotated[str | None, typer.Option(help="Run name (train.name).")] = None,
    iters: Annotated[int | None, typer.Option(help="Optimizer steps (train.iters).")] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="Peak learning rate (train.learning_rate).")
    ] = None,
    method: Annotated[str | None, typer.Option(help="lora, dora or full (train.method).")] = None,
    launch: Annotated[
        int | None,
        typer.Option(help="Run data-parallel on N local ranks under mlx.launch (ring backend)."),
    ] = None,
    hostfile: Annotated[
        Path | None, typer.Option(help="mlx.launch hostfile (with --launch) for a cluster.")
    ] = None,
    backend: Annotated[str, typer.Option(help="mlx.launch backend with --launch.")] = "ring",
) -> None:
    """Fine-tune with LoRA, DoRA or full training; resumes exactly, keeps the best adapter."""
    from mlxtune import train as core
    from mlxtune.render.train import TrainRenderer, print_plan, print_train_result
    from mlxtune.train.launch import strip_launch_args

    if resume is not None and config is None and (resume / "config.yaml").is_file():
        config = resume / "config.yaml"  # the run's own resolved config
    cfg = resolve(
        config,
        set_,
        train__name=name,
        train__iters=iters,
        train__learning_rate=learning_rate,
        train__method=method,
    )
    if launch:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="mlxtune-ranks-") as tmp:
            launched = core.launch(
                strip_launch_args(sys.argv[2:]),
                launch,
                backend=backend,
                hostfile=hostfile,
                status_dir=Path(tmp),
            )
        core.check_launch(launched)
        if not json_:
            console.print(f"[green]ok[/green] {launch} ranks completed")
        return
    with TrainRenderer(console, json_=json_) as render:
        result = core.train(cfg, resume=resume, dry_run=dry_run, callback=render)
    if dry_run:
        print_plan(console, err_console, result.plan, json_)
        if result.plan.problems:
            raise typer.Exit(2)
    elif not json_:
        print_train_result(console, result)


# ---------------------------------------------------------------------------------------------
# evaluate  (issue 6)


@app.command("evaluate")
@handles_errors
def evaluate_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    adapter: Annotated[
        Path | None, typer.Option(help="Adapter or run directory (default: latest run).")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split to score: test, valid or train.")] = None,
    compare_base: Annotated[
        bool | None,
        typer.Option("--compare-base/--no-compare-base", help="Score the base model beside it."),
    ] = None,
    min_: Annotated[
        list[str] | None,
        typer.Option("--min", help="Gate: METRIC=V or CATEGORY/METRIC=V (repeatable)."),
    ] = None,
    min_delta: Annotated[
        list[str] | None,
        typer.Option("--min-delta", help="Gate on improvement over the base (repeatable)."),
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="Score a running OpenAI-compatible server at this URL.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model name to ask --endpoint for.")
    ] = None,
    max_examples: Annotated[int | None, typer.Option(help="Score at most N examples.")] = None,
    out: Annotated[Path | None, typer.Option(help="Report directory (default <run>/eval).")] = None,
    allow_template_mismatch: Annotated[
        bool | None,
        typer.Option("--allow-template-mismatch", help="Go on when the run used another template."),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(help="lm-eval-harness tasks instead, comma-separated (needs lm-eval)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="With --tasks: examples per task.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Score an adapter beside its base model, per category; exit 1 if a threshold fails.

    Exit codes: 0 every threshold holds, 1 one fails (or the adapter changes nothing),
    2 usage, config or data errors.
    """
    from mlxtune.errors import GateFailed
    from mlxtune.evaluate import evaluate, evaluate_tasks, parse_threshold_flags

    gates = {f"evaluate__min__{k}": v for k, v in parse_threshold_flags(min_, "--min").items()} | {
        f"evaluate__min_delta__{k}": v
        for k, v in parse_threshold_flags(min_delta, "--min-delta").items()
    }
    cfg = resolve(
        config,
        set_,
        evaluate__adapter=adapter,
        evaluate__split=split,
        evaluate__compare_base=compare_base,
        evaluate__endpoint=endpoint,
        evaluate__endpoint_model=model,
        evaluate__max_examples=max_examples,
        evaluate__out_dir=out,
        evaluate__allow_template_mismatch=allow_template_mismatch,
        **gates,
    )
    try:
        if tasks is not None:
            names = [t.strip() for t in tasks.split(",") if t.strip()]
            with err_console.status("running lm-eval tasks"):
                res = evaluate_tasks(cfg, names, limit=limit)
            sys.stdout.write(json.dumps(res.results, indent=2, default=str) + "\n")
            err_console.print(f"wrote {res.path}")
            return
        with err_console.status("evaluating") as status:
            result = evaluate(
                cfg, progress=lambda stage, done, total: status.update(f"{stage} {done}/{total}")
            )
    except MlxtuneError as e:
        # Exit 1 means one thing to CI: a threshold failed. Anything else could not evaluate.
        if not isinstance(e, GateFailed):
            e.exit_code = 2
        raise
    if json_:
        sys.stdout.write(json.dumps(result.report, indent=2) + "\n")
    else:
        _render_evaluate(result.report)
        console.print(
            f"wrote {result.report_path}, {result.markdown_path.name}, "
            f"{result.predictions_path.name}"
        )
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(result.markdown + "\n")
    for warning in result.warnings:
        err_console.print(f"[bold red]WARNING:[/bold red] {warning}", soft_wrap=True)
    if not result.passed:
        raise GateFailed("evaluation gate failed: " + "; ".join(result.failures()))


def _render_evaluate(report: dict[str, Any]) -> None:
    from mlxtune.metrics import METRICS

    def fmt(v: float | None, signed: bool = False) -> str:
        if v is None:
            return "-"
        text = f"{v:+.3f}" if signed else f"{v:.3f}"
        if signed:
            return f"[green]{text}[/green]" if v > 0 else f"[red]{text}[/red]" if v < 0 else text
        return text

    has_base = report["overall"]["base"] is not None
    title = (
        f"evaluate {report['split']}: {report['n_examples']} examples, "
        f"{report['labels']['adapter']}"
    )
    table = Table(title=title)
    for col in (
        "category",
        "n",
        "metric",
        *(("base", "adapter", "delta") if has_base else ("value",)),
    ):
        table.add_column(col, justify="right" if col not in ("category", "metric") else "left")
    blocks = [("overall", report["overall"] | {"n": report["n_examples"]})]
    blocks += list(report["per_category"].items())
    for bi, (name, block) in enumerate(blocks):
        shown = [
            m
            for m in METRICS
            if block["adapter"].get(m) is not None
            or (has_base and block["base"].get(m) is not None)
        ]
        for i, metric in enumerate(shown):
            cells = [name if i == 0 else "", str(block["n"]) if i == 0 else "", metric]
            if has_base:
                cells += [
                    fmt(block["base"][metric]),
                    fmt(block["adapter"][metric]),
                    fmt(block["delta"][metric], signed=True),
                ]
            else:
                cells.append(fmt(block["adapter"][metric]))
            table.add_row(*cells, end_section=i == len(shown) - 1 and bi < len(blocks) - 1)
    console.print(table)
    if report["thresholds"] or report["guards"]:
        gate = Table(title="gate")
        for col in ("check", "required", "actual", "result"):
            gate.add_column(col)
        for t in report["thresholds"]:
            key = f"{t['category']}/{t['metric']}" if t["category"] else t["metric"]
            op = ">=" if t["kind"] == "min" else "delta >="
            ok = "[green]pass[/green]" if t["passed"] else "[bold red]FAIL[/bold red]"
            gate.add_row(key, f"{op} {t['value']:g}", fmt(t["actual"]), ok)
        for g in report["guards"]:
            ok = "[green]pass[/green]" if g["passed"] else "[bold red]FAIL[/bold red]"
            gate.add_row(g["name"], "-", g["message"], ok)
        console.print(gate)
    timing = report["timing"]
    console.print(
        f"{timing['mode']} generation (batch {timing['batch_size']}): "
        + ", ".join(f"{k} {v:.1f}s" for k, v in timing["generate_s"].items())
        + f"; total {timing['total_s']:.1f}s"
    )
    verdict = "[green]PASSED[/green]" if report["passed"] else "[bold red]FAILED[/bold red]"
    console.print(f"gate {verdict}")


# ---------------------------------------------------------------------------------------------
# serve  (issue 7)


@app.command()
@handles_errors
def serve(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    host: Annotated[
        str | None, typer.Option(help="Bind address (default 127.0.0.1).", show_default=False)
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port (default 8000; 0 = any).", show_default=False)
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter", help="Serve an adapter: NAME=PATH. Repeatable.", show_default=False
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Require this bearer token (or env MLXTUNE_API_KEY).", show_default=False
        ),
    ] = None,
) -> None:
    """Serve the base model and named adapters with an OpenAI-compatible API."""
    from mlxtune.serve import serve as run_server

    flags: dict[str, Any] = {"serve__host": host, "serve__port": port, "serve__api_key": api_key}
    for item in adapter or []:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or "." in name or not path.strip():
            raise MlxtuneError(f"--adapter {item!r}: expected NAME=PATH")
        flags[f"serve__adapters__{name.strip()}"] = path.strip()
    cfg = resolve(config, set_, **flags)
    if cfg.serve.host not in ("127.0.0.1", "localhost", "::1") and not (
        cfg.serve.resolved_api_key()
    ):
        err_console.print(
            f"[yellow]warning:[/yellow] binding {cfg.serve.host} with no API key: anyone who "
            "can reach this port can use the models (set serve.api_key or MLXTUNE_API_KEY)"
        )

    def ready(url: str, names: list[str]) -> None:
        console.print(f"[green]serving[/green] {', '.join(names)} at {url}  (docs: {url}/docs)")

    err_console.print("loading models ...")
    result = run_server(cfg, on_ready=ready)
    console.print(f"stopped after {result.requests} request(s)")


# ---------------------------------------------------------------------------------------------
# bench  (issue 8)


def _fmt_num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"


def _fmt_spread(values: list[float]) -> str:
    from statistics import median

    if not values:
        return "-"
    if len(values) == 1:
        return _fmt_num(values[0])
    lo, mid, hi = min(values), median(values), max(values)
    return f"{_fmt_num(mid)} [dim]({_fmt_num(lo)}–{_fmt_num(hi)})[/dim]"


@app.command("bench")
@handles_errors
def bench_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    what: Annotated[
        str | None, typer.Option("--what", help="train, generate, serve or all.")
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", help="none, or mlx-lm: run raw mlx-lm beside each figure."),
    ] = None,
    repeat: Annotated[
        int | None, typer.Option("--repeat", help="Runs per figure; min/median/max shown.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write figures and environment to FILE.")
    ] = None,
) -> None:
    """Time train, generate and serve (speed and memory), beside raw mlx-lm with the ratio."""
    from mlxtune.bench import bench
    from mlxtune.io import atomic_write_json

    cfg = resolve(config, set_, bench__what=what, bench__baseline=baseline, bench__repeat=repeat)
    with console.status("bench") as status:
        result = bench(cfg, progress=lambda msg: status.update(f"bench: {msg}"))
    env = result.environment
    table = Table(
        title=f"mlxtune bench · {result.settings['model']} · repeat {result.repeat}",
        caption=(
            f"{env['cpu']} · {env['device']} · mlx {env['versions']['mlx']} · "
            f"mlx-lm {env['versions']['mlx_lm']} · load {env['loadavg_start'][0]:.1f}"
            " · median (min–max)"
        ),
    )
    for col in ("what", "case", "metric", "mlxtune"):
        table.add_column(col, justify="right" if col == "mlxtune" else "left")
    has_baseline = result.baseline != "none"
    if has_baseline:
        table.add_column(result.baseline, justify="right")
        table.add_column("ratio", justify="right")
    for fig in result.figures:
        row = [fig.section, fig.case, f"{fig.metric} ({fig.unit})", _fmt_spread(fig.mlxtune)]
        if has_baseline:
            r = fig.ratio
            good = r is not None and (r >= 0.95 if fig.higher_is_better else r <= 1.05)
            ratio_txt = "-" if r is None else f"[{'green' if good else 'yellow'}]{r:.2f}x[/]"
            row += [_fmt_spread(fig.baseline), ratio_txt]
        table.add_row(*row)
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note[/yellow] {note}")
    if json_out:
        atomic_write_json(json_out, result.to_dict())
        console.print(f"wrote {json_out}")


# ---------------------------------------------------------------------------------------------
# runs / report / export  (issue 9)


runs_app = typer.Typer(
    help="The run registry: list, show, compare, promote and roll back runs.",
    no_args_is_help=True,
)
app.add_typer(runs_app, name="runs")

AliasOpt = Annotated[
    str, typer.Option("--as", help="Alias to point at the run (serve it as '@ALIAS').")
]


def _delta_cell(m: Any) -> str:
    d = m.delta
    if d is None:
        return "–"
    colour = {True: "green", False: "red", None: "white"}[m.better]
    return f"[{colour}]{d:+.4g}[/{colour}]"


def _num_cell(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@runs_app.command("list")
@handles_errors
def runs_list(config: ConfigOpt = None, set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Every run in train.runs_dir, indexed in the registry (rescanned each time)."""
    from mlxtune.runs import list_runs

    cfg = resolve(config, set_)
    records = list_runs(cfg)
    if json_:
        sys.stdout.write(json.dumps([r.to_dict() for r in records], indent=2) + "\n")
        return
    if not records:
        console.print(f"no runs in {cfg.train.runs_dir} (run mlxtune train first)")
        return
    table = Table(title=f"runs in {cfg.train.runs_dir}")
    table.add_column("name", no_wrap=True)
    for col in ("status", "method", "base model", "steps", "val loss", "eval acc", "alias"):
        table.add_column(
            col, justify="right" if col in ("steps", "val loss", "eval acc") else "left"
        )
    for r in records:
        ev = r.eval_overall
        metric = next((m for m in ("keyword_accuracy", "token_f1") if m in ev), None)
        table.add_row(
            r.name,
            r.status,
            r.method or "–",
            Path(r.base_model).name if r.base_model else "–",
            _num_cell(r.final.get("steps")),
            _num_cell(r.final.get("val_loss")),
            f"{ev[metric]:.3f}" + ("" if metric == "keyword_accuracy" else " f1")
            if metric
            else "–",
            ", ".join(f"@{a}" for a in r.aliases),
        )
    console.print(table)


@runs_app.command("show")
@handles_errors
def runs_show(
    name: Annotated[str, typer.Argument(help="Run name or @alias.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """One run: lineage, final metrics, a loss sparkline, evaluation and its config."""
    import yaml
    from rich.syntax import Syntax

    from mlxtune.runs import show_run, sparkline

    detail = show_run(resolve(config, set_), name)
    if json_:
        sys.stdout.write(json.dumps(detail.to_dict(), indent=2) + "\n")
        return
    r = detail.record
    console.print(f"[bold]{r.name}[/bold]  {r.status}  {r.path}")
    lineage = Table(show_header=False, box=None)
    for k, v in (
        ("method", r.method),
        ("base model", r.base_model),
        ("config hash", r.config_hash),
        ("data manifest", r.data_manifest_sha256),
        ("mlx / mlx-lm", f"{r.mlx_version or '–'} / {r.mlx_lm_version or '–'}"),
        ("git commit", r.git_commit),
        ("started", r.started_at),
        ("finished", r.finished_at),
        ("aliases", ", ".join(f"@{a}" for a in r.aliases)),
    ):
        lineage.add_row(f"[dim]{k}[/dim]", str(v) if v else "–")
    console.print(lineage)
    for label, series in (("train loss", detail.train_loss), ("val loss", detail.val_loss)):
        if series:
            vals = [v for _, v in series]
            console.print(
                f"{label:>10}  {vals[0]:.3f} [cyan]{sparkline(vals)}[/cyan] {vals[-1]:.3f}"
                f"  (steps {series[0][0]}–{series[-1][0]})",
                highlight=False,
            )
    if r.final:
        console.print(
            "final: " + ", ".join(f"{k} {_num_cell(v)}" for k, v in r.final.items()),
            highlight=False,
        )
    if r.evaluation:
        table = Table(title=f"evaluation ({r.evaluation.get('split', '?')})")
        for col in ("scope", "metric", "base", "fine-tuned", "delta"):
            table.add_column(col)
        blocks = [("overall", r.evaluation.get("overall") or {})]
        blocks += sorted((r.evaluation.get("per_category") or {}).items())
        for scope, block in blocks:
            adapter, base = block.get("adapter") or {}, block.get("base") or {}
            for metric in adapter:
                d = (block.get("delta") or {}).get(metric)
                table.add_row(
                    scope,
                    metric,
                    _num_cell(base.get(metric)),
                    _num_cell(adapter[metric]),
                    f"{d:+.4g}" if isinstance(d, int | float) else "–",
                )
        console.print(table)
    if detail.config:
        console.print(Syntax(yaml.safe_dump(detail.config, sort_keys=False), "yaml"))


@runs_app.command("compare")
@handles_errors
def runs_compare(
    a: Annotated[str, typer.Argument(help="First run (name or @alias).")],
    b: Annotated[str, typer.Argument(help="Second run; deltas are B - A.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Config diff and metric deltas (B - A), overall and per category."""
    from mlxtune.runs import compare_runs

    cmp = compare_runs(resolve(config, set_), a, b)
    if json_:
        sys.stdout.write(json.dumps(cmp.to_dict(), indent=2, default=str) + "\n")
        return
    diff = Table(title=f"config: {cmp.a.name} vs {cmp.b.name}")
    for col in ("key", cmp.a.name, cmp.b.name):
        diff.add_column(col)
    for key, va, vb in [*cmp.lineage_diff, *cmp.config_diff]:
        diff.add_row(key, json.dumps(va, default=str), json.dumps(vb, default=str))
    if diff.row_count:
        console.print(diff)
    else:
        console.print("config: identical")
    sections = [("training", cmp.training), ("evaluation overall", cmp.overall)]
    sections += [(f"category {c}", ms) for c, ms in cmp.per_category.items()]
    table = Table(title="metrics (delta = B - A; green is better)")
    for col in ("scope", "metric", cmp.a.name, cmp.b.name, "delta"):
        table.add_column(col)
    for scope, metrics in sections:
        for m in metrics:
            table.add_row(scope, m.metric, _num_cell(m.a), _num_cell(m.b), _delta_cell(m))
    console.print(table)


@runs_app.command("promote")
@handles_errors
def runs_promote(
    name: Annotated[str, typer.Argument(help="Run to promote.")],
    alias: AliasOpt = "current",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Point an alias (default 'current') at a run's adapter; the previous target is kept."""
    from mlxtune.runs import promote

    change = promote(resolve(config, set_), name, alias)
    was = f" (was {change.previous})" if change.previous else ""
    console.print(f"@{change.alias} -> {change.run}{was}  {change.path}", highlight=False)


@runs_app.command("rollback")
@handles_errors
def runs_rollback(
    alias: Annotated[str, typer.Argument(help="Alias to move back.")] = "current",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Move an alias back to the run it pointed at before the last promote."""
    from mlxtune.runs import rollback

    change = rollback(resolve(config, set_), alias)
    console.print(
        f"@{change.alias} -> {change.run} (rolled back from {change.previous})  {change.path}",
        highlight=False,
    )


@runs_app.command("history")
@handles_errors
def runs_history(
    alias: Annotated[str, typer.Argument(help="Alias whose history to show.")] = "current",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Every promote and rollback of an alias, oldest first."""
    from mlxtune.runs import alias_history

    events = alias_history(resolve(config, set_), alias)
    if json_:
        sys.stdout.write(json.dumps([e.to_dict() for e in events], indent=2) + "\n")
        return
    table = Table(title=f"@{alias.removeprefix('@')} history")
    for col in ("at", "action", "run", "previous", "undone"):
        table.add_column(col)
    for e in events:
        table.add_row(e.at, e.action, e.run, e.previous or "–", "yes" if e.undone else "")
    console.print(table)


@app.command()
@handles_errors
def report(
    name: Annotated[str, typer.Argument(help="Run name or @alias.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory (default <run>/report).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a self-contained HTML report and markdown: loss curves, evaluation, samples."""
    from mlxtune.report import build_report

    with console.status("drawing report"):
        result = build_report(resolve(config, set_), name, out)
    console.print(f"wrote {result.html}")
    console.print(f"wrote {result.markdown} (+ {len(result.plots)} plot(s))")


@app.command()
@handles_errors
def export(
    name: Annotated[str, typer.Argument(help="Run name or @alias.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the fused model.")],
    de_quantize: Annotated[
        bool, typer.Option("--de-quantize", help="Write full-precision weights.")
    ] = False,
    gguf: Annotated[
        bool, typer.Option("--gguf", help="Also write GGUF (llama, mistral, mixtral only).")
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fuse a run's adapter into a standalone model that mlx_lm.load (and serve) can load."""
    from mlxtune.export import export_run

    cfg = resolve(config, set_)
    with console.status(f"fusing {name}"):
        result = export_run(cfg, name, out, dequantize=de_quantize, gguf=gguf, force=force)
    console.print(
        f"wrote {result.out}: {result.run} fused into {result.base_model} "
        f"({f'{result.fused_layers} adapter layers' if result.fused_layers else 'full weights'}"
        f"{', de-quantized' if result.dequantized else ''})"
    )
    if result.gguf:
        console.print(f"wrote {result.gguf}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
