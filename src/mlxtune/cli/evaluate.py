"""`mlxtune evaluate`: exit 0 every threshold holds, 1 one fails, 2 could not evaluate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlxtune.cli import mlx_lm_flags as mlx
from mlxtune.cli.common import (
    ConfigOpt,
    JsonOpt,
    SetOpt,
    console,
    err_console,
    escape,
    handles_errors,
    resolve,
)
from mlxtune.errors import GateFailed, MlxtuneError, UsageError

if TYPE_CHECKING:
    from mlxtune.config import Config
    from mlxtune.evaluate import EvaluateResult


@handles_errors
def evaluate_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    adapter: Annotated[
        Path | None, typer.Option(help="Run name, path or @alias (default: latest run).")
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
    out: Annotated[Path | None, typer.Option(help="Report directory (default RUN/eval).")] = None,
    allow_template_mismatch: Annotated[
        bool | None,
        typer.Option("--allow-template-mismatch", help="Go on when the run used another template."),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="generation (answers scored) or retrieval (embeddings ranked)."),
    ] = None,
    candidates: Annotated[
        str | None,
        typer.Option(help="With --task retrieval: rank answers, or paraphrases of the fact."),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(help="lm-eval-harness tasks instead, comma-separated (needs lm-eval)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="With --tasks: examples per task.")] = None,
    json_: JsonOpt = False,
    adapter_path: mlx.AdapterPathFlag = None,  # mlx_lm's names (hidden)
    data: mlx.DataFlag = None,
) -> None:
    """Score an adapter beside its base model, per category; exit 1 if a threshold fails.

    Exit codes: 0 every threshold holds, 1 one fails (or the adapter changes nothing),
    2 usage, config or data errors.
    """
    from mlxtune.evaluate import parse_threshold_flags

    try:
        gates = {
            f"evaluate__min__{k}": v for k, v in parse_threshold_flags(min_, "--min").items()
        } | {
            f"evaluate__min_delta__{k}": v
            for k, v in parse_threshold_flags(min_delta, "--min-delta").items()
        }
        cfg = resolve(
            config,
            set_,
            evaluate__adapter=adapter or adapter_path,
            data__dir=data,
            evaluate__split=split,
            evaluate__compare_base=compare_base,
            evaluate__endpoint=endpoint,
            evaluate__endpoint_model=model,
            evaluate__max_examples=max_examples,
            evaluate__out_dir=out,
            evaluate__allow_template_mismatch=allow_template_mismatch,
            evaluate__task=task,
            evaluate__retrieval_candidates=candidates,
            **gates,
        )
        if tasks is not None:
            _run_tasks(cfg, tasks, limit)
            return
        result = _run_evaluate(cfg)
    except (GateFailed, UsageError):
        raise
    except MlxtuneError as e:
        # Exit 1 means one thing to CI: a threshold failed. Anything else could not evaluate.
        raise UsageError(str(e)) from None
    _report(result, json_)


def _run_tasks(cfg: Config, tasks: str, limit: int | None) -> None:
    from mlxtune.evaluate import evaluate_tasks
    from mlxtune.render.output import write_json

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    with err_console.status("running lm-eval tasks"):
        res = evaluate_tasks(cfg, names, limit=limit)
    write_json(res.results, default=str)
    err_console.print(f"wrote {res.path}")


def _run_evaluate(cfg: Config) -> EvaluateResult:
    from mlxtune.evaluate import evaluate

    with err_console.status("evaluating") as status:
        return evaluate(
            cfg, progress=lambda stage, done, total: status.update(f"{stage} {done}/{total}")
        )


def _report(result: EvaluateResult, json_: bool) -> None:
    """Scores to the terminal (or JSON), the markdown to GitHub's step summary, then the gate."""
    from mlxtune.render.evaluate import print_evaluation
    from mlxtune.render.output import write_json

    if json_:
        write_json(result.report.to_dict())
    else:
        print_evaluation(console, result.report)
        console.print(
            f"wrote {result.report_path}, {result.markdown_path.name}, "
            f"{result.predictions_path.name}",
            markup=False,
        )
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(result.markdown + "\n")
    for warning in result.warnings:
        err_console.print(f"[bold red]WARNING:[/bold red] {escape(warning)}", soft_wrap=True)
    if not result.passed:
        raise GateFailed("evaluation gate failed: " + "; ".join(result.failures()))
