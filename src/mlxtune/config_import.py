"""mlx-lm LoRA configs, both ways: `mlx_lm.lora -c lora.yaml` files into mlxtune's config tree
(`mlxtune config import`, and `train -c` on such a file), and an mlxtune config back out
(`mlxtune config export --mlx-lm`).

Every key `mlx_lm.lora` 0.32 reads is handled: mapped, or listed as having no equivalent.
Keys the file leaves out take mlx-lm's defaults (not mlxtune's), so the imported config trains
the way the file did under mlx-lm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlxtune.errors import ConfigError

if TYPE_CHECKING:
    from mlxtune.config import Config

# mlx_lm.lora.CONFIG_DEFAULTS (0.32) for what mlxtune maps; a test compares it to mlx-lm's.
MLX_LM_DEFAULTS: dict[str, Any] = {
    "model": "Qwen/Qwen3-0.6b",
    "fine_tune_type": "lora",
    "optimizer": "adam",
    "seed": 0,
    "num_layers": 16,
    "batch_size": 4,
    "iters": 1000,
    "val_batches": 25,
    "learning_rate": 1e-5,
    "steps_per_report": 10,
    "steps_per_eval": 200,
    "adapter_path": "adapters",
    "save_every": 100,
    "max_seq_length": 2048,
    "grad_checkpoint": False,
    "grad_accumulation_steps": 1,
    "lora_parameters": {"rank": 8, "dropout": 0.0, "scale": 20.0},
    "mask_prompt": False,
    "trust_remote_code": False,
}

# Keys mlx-lm reads that mlxtune has no place for, and what to do instead.
NO_EQUIVALENT: dict[str, str] = {
    "train": "`mlxtune train` always trains",
    "test": "run `mlxtune evaluate` after training",
    "test_batches": "`mlxtune evaluate` scores the whole test split (evaluate.max_examples)",
    "resume_adapter_file": "resume a run with `mlxtune train --resume runs/NAME`",
    "clear_cache_threshold": "mlxtune clears no allocator cache between steps",
    "report_to": "mlxtune writes metrics.jsonl in the run directory (see `mlxtune report`)",
    "project_name": "runs are named by train.name",
    "config": "the config file itself",
}
# Dataset column names mlx-lm reads from the top level (and from each hf_dataset entry).
FEATURE_KEYS = {
    "prompt_feature": "prompt",
    "completion_feature": "completion",
    "chat_feature": "messages",
    "text_feature": "text",
}
MAPPED = {
    "model", "fine_tune_type", "optimizer", "optimizer_config", "data", "seed", "num_layers",
    "batch_size", "iters", "val_batches", "learning_rate", "steps_per_report", "steps_per_eval",
    "adapter_path", "save_every", "max_seq_length", "grad_checkpoint", "grad_accumulation_steps",
    "lr_schedule", "lora_parameters", "mask_prompt", "trust_remote_code", "hf_dataset",
}  # fmt: skip
KNOWN_KEYS = MAPPED | set(NO_EQUIVALENT) | set(FEATURE_KEYS)
SECTIONS = {"model", "data", "prepare", "train", "evaluate", "serve", "bench"}
OPTIMIZERS = {"adam", "adamw", "sgd", "adafactor"}


@dataclass
class Imported:
    """An mlxtune config tree, where each value came from, and what did not carry over."""

    tree: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # "train.iters" -> "iters"
    notes: list[str] = field(default_factory=list)  # "key: why it has no equivalent"

    def put(self, dotted: str, value: Any, origin: str) -> None:
        section, key = dotted.split(".", 1)
        self.tree.setdefault(section, {})[key] = value
        self.origin[dotted] = origin


def is_mlx_lm_config(tree: dict[str, Any]) -> bool:
    """An mlx-lm file: its keys are mlx-lm's and none is an mlxtune section holding a mapping
    (mlx-lm's `model` and `data` are strings)."""
    if any(isinstance(tree.get(s), dict) for s in SECTIONS):
        return False
    return bool(set(tree) & KNOWN_KEYS)


def from_mlx_lm(raw: dict[str, Any], source: str = "config") -> Imported:
    """mlx-lm config dict -> mlxtune config tree. Unknown keys are errors (mlx-lm ignores
    them silently; a typo there trains with the default)."""
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        import difflib

        lines = []
        for key in unknown:
            guess = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1, cutoff=0.6)
            hint = f", did you mean {guess[0]}?" if guess else ""
            lines.append(f"{source}: {key}: not an mlx-lm lora key{hint}")
        raise ConfigError(lines)
    given = {k: v for k, v in raw.items() if v is not None}
    if isinstance(given.get("learning_rate"), str):  # PyYAML reads 1e-5 as a string
        given["learning_rate"] = _number(given["learning_rate"], "learning_rate")
    cfg = {**MLX_LM_DEFAULTS, **given}
    out = Imported()

    def origin(key: str) -> str:
        return key if key in given else f"{key} (mlx-lm default)"

    out.put("model.path", str(cfg["model"]), origin("model"))
    if cfg.get("trust_remote_code"):
        out.put("model.trust_remote_code", True, origin("trust_remote_code"))
    _import_data(given, out)
    method = cfg["fine_tune_type"]
    out.put("train.method", method, origin("fine_tune_type"))
    adapter = Path(str(cfg["adapter_path"]))
    out.put("train.runs_dir", str(adapter.parent), origin("adapter_path"))
    out.put("train.name", adapter.name, origin("adapter_path"))
    for key in (
        "iters", "batch_size", "grad_accumulation_steps", "learning_rate", "num_layers",
        "max_seq_length", "grad_checkpoint", "mask_prompt", "seed", "steps_per_report",
        "steps_per_eval", "save_every", "val_batches",
    ):  # fmt: skip
        out.put(f"train.{key}", cfg[key], origin(key))
    _import_optimizer(cfg, given, out)
    if "lr_schedule" in given:
        _import_schedule(given["lr_schedule"], out)
    _import_lora(cfg["lora_parameters"], "lora_parameters" in given, method, out)
    for key, why in NO_EQUIVALENT.items():
        if key in given and key != "config" and not (key == "train" and given[key] is True):
            out.notes.append(f"{key}: no equivalent; {why}")
    return out


def _number(value: Any, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None


def _import_data(given: dict[str, Any], out: Imported) -> None:
    features = {FEATURE_KEYS[k]: str(given[k]) for k in FEATURE_KEYS if k in given}
    if "hf_dataset" in given:
        sets = given["hf_dataset"]
        sources = []
        for ds in sets if isinstance(sets, list) else [sets]:
            if not isinstance(ds, dict) or "path" not in ds:
                raise ConfigError("hf_dataset: each entry needs a path")
            src: dict[str, Any] = {"path": str(ds["path"]), "type": "hf"}
            if ds.get("train_split"):
                src["split"] = str(ds["train_split"])
            hf_config = ds.get("config") or {}
            if isinstance(hf_config, dict) and hf_config.get("name"):
                src["name"] = str(hf_config["name"])
            columns = {**features}
            columns.update({FEATURE_KEYS[k]: str(ds[k]) for k in FEATURE_KEYS if k in ds})
            columns = {f: c for f, c in columns.items() if f != c}
            if columns:
                src["columns"] = columns
            sources.append(src)
            for key in ("valid_split", "test_split"):
                if ds.get(key):
                    out.notes.append(
                        f"hf_dataset.{key}: no equivalent; prepare makes valid/test from "
                        "prepare.valid_ratio and prepare.test_ratio"
                    )
            extra = sorted(
                k for k in (hf_config if isinstance(hf_config, dict) else {}) if k != "name"
            )
            if extra:
                out.notes.append(f"hf_dataset.config: {', '.join(extra)} have no equivalent")
        out.put("prepare.sources", sources, "hf_dataset")
        out.notes.append("hf_dataset: run `mlxtune prepare` first; train reads data.dir")
        if "data" in given:
            out.put("data.dir", str(given["data"]), "data")
        return
    data = str(given.get("data", "data"))
    local = not _looks_like_hub_id(data)
    if local:
        out.put("data.dir", data, "data" if "data" in given else "data (mlx-lm default)")
        if features:
            out.notes.append(
                f"{', '.join(k for k in FEATURE_KEYS if k in given)}: no equivalent for data.dir; "
                "rename the fields, or read the files through prepare.sources[].columns"
            )
    else:
        hub: dict[str, Any] = {"path": data, "type": "hf"}
        columns = {f: c for f, c in features.items() if f != c}
        if columns:
            hub["columns"] = columns
        out.put("prepare.sources", [hub], "data")
        out.notes.append(f"data: {data} is a hub dataset; run `mlxtune prepare` first")


def _looks_like_hub_id(data: str) -> bool:
    """mlx-lm's rule: an existing path is local, anything else a hub dataset. Here a missing
    `owner/name` counts as the hub, so a config can be imported before its data exists."""
    if Path(data).exists():
        return False
    parts = data.split("/")
    return len(parts) == 2 and not data.startswith((".", "/", "~")) and all(parts)


def _import_optimizer(cfg: dict[str, Any], given: dict[str, Any], out: Imported) -> None:
    name = str(cfg["optimizer"]).lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer: {name!r} has no equivalent (mlxtune: {sorted(OPTIMIZERS)})")
    out.put(
        "train.optimizer",
        name,
        "optimizer" if "optimizer" in given else "optimizer (mlx-lm default)",
    )
    options = (given.get("optimizer_config") or {}).get(name) or {}
    for key, value in options.items():
        if key == "weight_decay":
            out.put("train.weight_decay", float(value), f"optimizer_config.{name}.weight_decay")
        else:
            out.notes.append(f"optimizer_config.{name}.{key}: no equivalent; mlx's default is used")
    others = sorted(k for k, v in (given.get("optimizer_config") or {}).items() if v and k != name)
    if others:
        out.notes.append(f"optimizer_config: settings for {', '.join(others)} are unused")


def _import_schedule(schedule: Any, out: Imported) -> None:
    if not isinstance(schedule, dict) or "name" not in schedule:
        raise ConfigError("lr_schedule: expected a mapping with name and arguments")
    name, args = schedule["name"], list(schedule.get("arguments") or [])
    if name == "cosine_decay" and args:
        out.put("train.lr_schedule", "cosine", "lr_schedule.name")
        out.put(
            "train.learning_rate",
            _number(args[0], "lr_schedule.arguments[0]"),
            "lr_schedule.arguments[0]",
        )
        if len(args) > 2:
            out.put(
                "train.min_lr",
                _number(args[2], "lr_schedule.arguments[2]"),
                "lr_schedule.arguments[2]",
            )
        if len(args) > 1:
            out.notes.append(
                "lr_schedule.arguments[1]: decay steps are not set; mlxtune decays over "
                "the steps after warmup"
            )
    elif name == "linear_schedule" and len(args) >= 2:
        start = _number(args[0], "lr_schedule.arguments[0]")
        end = _number(args[1], "lr_schedule.arguments[1]")
        out.put("train.lr_schedule", "constant" if start == end else "linear", "lr_schedule.name")
        out.put("train.learning_rate", start, "lr_schedule.arguments[0]")
        if start != end:
            out.put("train.min_lr", end, "lr_schedule.arguments[1]")
    else:
        raise ConfigError(
            f"lr_schedule.name: {name!r} has no equivalent (mlxtune: cosine_decay, linear_schedule)"
        )
    if schedule.get("warmup"):
        out.put("train.warmup_steps", int(schedule["warmup"]), "lr_schedule.warmup")
    if schedule.get("warmup_init") and _number(schedule["warmup_init"], "warmup_init") != 0:
        out.notes.append("lr_schedule.warmup_init: no equivalent; warmup starts from 0")


def _import_lora(params: Any, given: bool, method: str, out: Imported) -> None:
    if not isinstance(params, dict):
        raise ConfigError("lora_parameters: expected a mapping (rank, scale, dropout, keys)")
    where = "lora_parameters" if given else "lora_parameters (mlx-lm default)"
    params = {**MLX_LM_DEFAULTS["lora_parameters"], **params}
    unknown = sorted(set(params) - {"rank", "scale", "dropout", "keys"})
    if unknown:
        raise ConfigError(f"lora_parameters: unknown keys {', '.join(unknown)}")
    if method == "full":
        return
    out.put("train.lora_rank", int(params["rank"]), f"{where}.rank")
    out.put("train.lora_scale", float(params["scale"]), f"{where}.scale")
    out.put("train.lora_dropout", float(params["dropout"]), f"{where}.dropout")
    if params.get("keys"):
        out.put("train.lora_keys", [str(k) for k in params["keys"]], f"{where}.keys")


def to_yaml(imported: Imported, source: str) -> str:
    """The imported tree as a commented mlxtune config: each value says where it came from."""
    lines = [
        f"# mlxtune config imported from the mlx-lm config {source}.",
        "# Run: mlxtune train -c THIS_FILE   Override: --set train.iters=500",
    ]
    if imported.notes:
        lines.append("# Not carried over:")
        lines.extend(f"#   {note}" for note in imported.notes)
    for section, values in imported.tree.items():
        lines.append(f"{section}:")
        for key, value in values.items():
            flow = yaml.safe_dump(value, default_flow_style=True, width=1000)
            flow = flow.removesuffix("\n").removesuffix("\n...").strip()
            comment = imported.origin.get(f"{section}.{key}")
            lines.append(f"  {key}: {flow}" + (f"  # mlx-lm: {comment}" if comment else ""))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The other way


@dataclass
class Exported:
    config: dict[str, Any]
    notes: list[str]


def to_mlx_lm(cfg: Config) -> Exported:
    """An mlxtune config as the `mlx_lm.lora -c` file that trains the same way, plus what it
    cannot say."""
    t = cfg.train
    notes: list[str] = []
    out: dict[str, Any] = {
        "model": cfg.model.path,
        "train": True,
        "data": str(cfg.data.dir),
        "fine_tune_type": t.method,
        "optimizer": t.optimizer,
        "seed": t.seed,
        "num_layers": t.num_layers,
        "batch_size": t.batch_size,
        "iters": t.iters,
        "val_batches": t.val_batches,
        "learning_rate": t.learning_rate,
        "steps_per_report": t.steps_per_report,
        "steps_per_eval": t.steps_per_eval,
        "adapter_path": str(t.runs_dir / (t.name or "adapters")),
        "save_every": t.save_every,
        "max_seq_length": t.max_seq_length,
        "grad_checkpoint": t.grad_checkpoint,
        "grad_accumulation_steps": t.grad_accumulation_steps,
        "mask_prompt": t.mask_prompt,
    }
    if cfg.model.trust_remote_code:
        out["trust_remote_code"] = True
    if t.weight_decay:
        out["optimizer_config"] = {t.optimizer: {"weight_decay": t.weight_decay}}
    schedule = _export_schedule(t.lr_schedule, t.learning_rate, t.min_lr, t.warmup_steps, t.iters)
    if schedule:
        out["lr_schedule"] = schedule
    if t.method != "full":
        from mlxtune.train.plan import lora_parameters  # mlx-lm's own lora_parameters block

        out["lora_parameters"] = lora_parameters(t)
    if t.name is None:
        notes.append("train.name: unset (a timestamp); adapter_path uses 'adapters'")
    if t.method == "full" and t.num_layers == -1:
        notes.append("train.num_layers: -1 with full also trains embeddings and head in mlxtune")
    for key, differs in (
        ("epochs", t.epochs is not None),
        ("grad_clip", t.grad_clip is not None),
        ("quantize_bits", t.quantize_bits is not None),
        ("packing", t.packing),
        ("early_stopping_patience", t.early_stopping_patience is not None),
        ("lora_keys", bool(t.lora_keys) and t.method == "full"),
    ):
        if differs:
            notes.append(f"train.{key}: no mlx-lm equivalent")
    if t.mask_prompt:
        notes.append(
            "train.mask_prompt: mlx-lm masks one prompt prefix, mlxtune every non-assistant turn"
        )
    if cfg.model.chat_template:
        notes.append("model.chat_template: no mlx-lm lora equivalent (the tokenizer's is used)")
    if cfg.data.system_prompt:
        notes.append("data.system_prompt: no mlx-lm equivalent; bake it into the data")
    return Exported(out, notes)


def _export_schedule(
    kind: str, lr: float, min_lr: float, warmup: int, iters: int
) -> dict[str, Any] | None:
    decay = max(1, iters - warmup)
    if kind == "cosine":
        sched: dict[str, Any] = {"name": "cosine_decay", "arguments": [lr, decay, min_lr]}
    elif kind == "linear":
        sched = {"name": "linear_schedule", "arguments": [lr, min_lr, decay]}
    elif warmup:
        sched = {"name": "linear_schedule", "arguments": [lr, lr, 1]}
    else:
        return None
    if warmup:
        sched["warmup"] = warmup
    return sched


def export_yaml(exported: Exported) -> str:
    lines = ["# mlx-lm LoRA config exported by mlxtune. Run: mlx_lm.lora -c THIS_FILE"]
    if exported.notes:
        lines.append("# Not expressible in mlx-lm:")
        lines.extend(f"#   {n}" for n in exported.notes)
    lines.append(yaml.safe_dump(exported.config, sort_keys=False).rstrip())
    return "\n".join(lines) + "\n"
