"""`mlxtune tiny-model`, `prepare` and `validate-format`: the data (and model) to train on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlxtune.cli.common import (
    ConfigOpt,
    JsonOpt,
    SetOpt,
    console,
    err_console,
    handles_errors,
    resolve,
)


@handles_errors
def tiny_model(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the model to.")],
    preset: Annotated[
        str,
        typer.Option(
            help="tiny (hidden 256, 4 layers), small, vlm (tiny Qwen2-VL), or bert (embeddings;"
            " embed extra)."
        ),
    ] = "tiny",
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
        f"vocab {result.vocab_size}, tokenizer trained on {len(result.corpus_files)} file(s)",
        markup=False,
    )


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
    explain: Annotated[
        int,
        typer.Option(
            "--explain", metavar="N", help="Show N records quality dropped, with factor scores."
        ),
    ] = 0,
) -> None:
    """Read, clean, deduplicate and split raw data into train/valid/test.jsonl + manifest.json."""
    from mlxtune.data.prepare import prepare as run_prepare
    from mlxtune.render.data import print_explain, print_prepare

    cfg = resolve(config, set_, prepare__out_dir=out)
    with err_console.status("preparing") as status:
        result = run_prepare(cfg, force=force, progress=lambda msg: status.update(msg))
    print_prepare(console, err_console, result)
    if explain:
        print_explain(console, result, explain)


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
    from mlxtune.data.validate import validate_format as run_validate
    from mlxtune.render.data import print_validation
    from mlxtune.render.output import write_json

    cfg = resolve(config, set_)
    result = run_validate(cfg, paths or None, show=show)
    if json_:
        write_json(result.to_dict(), ensure_ascii=False)
    else:
        print_validation(console, result, show)
    if not result.ok:
        raise typer.Exit(1)
