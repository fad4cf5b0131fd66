"""`mlxtune export NAME --out DIR`: fuse a run's adapter into a standalone model.

The steps are mlx-lm's `fuse` command (mlx_lm/fuse.py), called in-process: load base + adapter,
`module.fuse()` every LoRA/DoRA layer, optionally dequantize, `mlx_lm.utils.save`, and
optionally `mlx_lm.gguf.convert_to_gguf`. The result loads with `mlx_lm.load(DIR)`.
The directory is built beside DIR and renamed into place, so a failed export leaves nothing.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import MlxtuneError, UsageError
from mlxtune.generation import greedy_answers
from mlxtune.io import atomic_dir
from mlxtune.rundir import RunDir
from mlxtune.runs import find_run

if TYPE_CHECKING:
    from mlxtune.config import Config
    from mlxtune.evaluate import Example

# Architectures mlx-lm's GGUF writer handles (mlx_lm/fuse.py checks the same list).
GGUF_MODEL_TYPES = ("llama", "mixtral", "mistral")
GGUF_NAME = "ggml-model-f16.gguf"


@dataclass
class ExportResult:
    run: str
    base_model: str
    out: Path
    fused_layers: int
    dequantized: bool
    gguf: Path | None
    # Fusing into quantized weights rounds the adapter: greedy answers on the test split that
    # the fused model gives exactly as the run does, out of those compared (None: no rounding).
    agreement: tuple[int, int] | None = None


def export_run(
    cfg: Config,
    name: str,
    out: Path,
    *,
    dequantize: bool = False,
    gguf: bool = False,
    force: bool = False,
) -> ExportResult:
    from mlx_lm.utils import _download, dequantize_model, load_config

    from mlxtune.modeling import base_quantization, load_model
    from mlxtune.vlm.kind import model_kind

    rec = find_run(cfg, name)
    run = RunDir(rec.path)
    out = Path(out)
    _check_target(run, rec.name, out, force)
    # The base the adapter was trained on (run.json, the run's config), else model.path.
    base = rec.base_model or cfg.model.path
    model_cfg = cfg.model.model_copy(update={"path": base})
    if model_kind(model_cfg) == "vlm":
        from mlxtune.vlm.export import export_vlm

        return export_vlm(cfg, run, rec.name, model_cfg, out, dequantize=dequantize, gguf=gguf)
    model, tokenizer, template = load_model(model_cfg, run.root)
    model_path = _download(base, revision=cfg.model.revision)
    config = load_config(model_path)
    _check_gguf(config, base, gguf=gguf, dequantize=dequantize)
    quantization = base_quantization(run.root)
    if quantization is not None and not dequantize:  # the fused weights stay quantized
        config["quantization"] = config["quantization_config"] = quantization
    rounds = not dequantize and "quantization" in config
    _, examples = test_examples(cfg, run.read_run().get("data_dir")) if rounds else (None, [])
    questions = [ex.prompt for ex in examples]
    reference = greedy_answers(model, tokenizer, questions, cfg.evaluate.max_tokens)

    model, fused = fuse_adapters(model, config, dequantize_model if dequantize else None)
    fused_answers = greedy_answers(model, tokenizer, questions, cfg.evaluate.max_tokens)
    same = sum(a == b for a, b in zip(reference, fused_answers, strict=True))

    # The exact template training rendered with, so the fused model prompts the same.
    exact = run.chat_template.read_bytes() if run.chat_template.is_file() else None
    template_bytes = exact if exact is not None else template.encode("utf-8")
    _write_model(out, model_path, model, tokenizer, config, template_bytes, base=base, gguf=gguf)
    return ExportResult(
        run=rec.name,
        base_model=base,
        out=out,
        fused_layers=fused,
        dequantized=dequantize,
        gguf=out / GGUF_NAME if gguf else None,
        agreement=(same, len(questions)) if rounds else None,
    )


def fuse_adapters(
    model: Any, config: dict[str, Any], dequantize: Callable[[Any], Any] | None
) -> tuple[Any, int]:
    """Fuse every LoRA/DoRA layer into its base (`module.fuse()`: mlx-lm's layers and
    mlx-vlm's alike); with a `dequantize` function, plain weights and a config that says so.
    Returns the model and how many layers were fused."""
    from mlx.utils import tree_unflatten

    fused = [(n, m.fuse(dequantize=dequantize is not None)) for n, m in model.named_modules()
             if hasattr(m, "fuse")]  # fmt: skip
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dequantize is not None:
        model = dequantize(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    return model, len(fused)


AGREEMENT_EXAMPLES = 16  # test questions compared when fusing rounds (or evaluate.max_examples)


def test_examples(cfg: Config, data_dir: str | None) -> tuple[Path, list[Example]]:
    """The run's test split file and its first examples (none if it is gone)."""
    from mlxtune.evaluate import load_examples

    for folder in (data_dir, cfg.data.dir):
        if folder and (Path(folder) / "test.jsonl").is_file():
            limit = cfg.evaluate.max_examples or AGREEMENT_EXAMPLES
            return Path(folder) / "test.jsonl", load_examples(Path(folder), "test", limit)
    return Path(cfg.data.dir) / "test.jsonl", []


def _check_target(run: RunDir, name: str, out: Path, force: bool) -> None:
    if not run.is_adapter():
        raise UsageError(f"{run.root}: run {name!r} has no adapter to export")
    if out.exists() and not force:
        raise UsageError(f"{out}: already exists (use --force to replace it)")
    if out.resolve() == run.root.resolve() or run.root.resolve() in out.resolve().parents:
        raise UsageError(f"{out}: choose a directory outside the run directory")


def _check_gguf(config: dict[str, Any], base: str, *, gguf: bool, dequantize: bool) -> None:
    model_type = str(config.get("model_type", "?"))
    if gguf and model_type not in GGUF_MODEL_TYPES:
        raise UsageError(
            f"--gguf: mlx-lm writes GGUF for {', '.join(GGUF_MODEL_TYPES)} only; "
            f"{base} is {model_type!r} (export without --gguf, or convert with llama.cpp)"
        )
    if gguf and config.get("quantization") and not dequantize:
        raise UsageError(f"--gguf: {base} is quantized; add --de-quantize for a GGUF export")


def _write_model(
    out: Path,
    model_path: Path,
    model: Any,
    tokenizer: Any,
    config: dict[str, Any],
    template: bytes,
    *,
    base: str,
    gguf: bool,
) -> None:
    """Save (and convert) into a temp directory beside `out`, then rename it into place."""
    from mlx.utils import tree_flatten
    from mlx_lm.gguf import convert_to_gguf
    from mlx_lm.utils import save

    # mlx-lm prints progress; core modules stay silent (the CLI shows a spinner).
    with atomic_dir(out) as tmp, contextlib.redirect_stdout(io.StringIO()):
        save(tmp, str(model_path), model, tokenizer, config, donate_model=False)
        (tmp / "chat_template.jinja").write_bytes(template)
        if gguf:
            weights = dict(tree_flatten(model.parameters()))
            try:
                convert_to_gguf(tmp, weights, config, str(tmp / GGUF_NAME))
            except (ValueError, NotImplementedError, KeyError, TypeError) as e:
                raise MlxtuneError(
                    f"--gguf: mlx-lm could not convert {base} to GGUF "
                    f"({type(e).__name__}: {e}); export without --gguf"
                ) from None
