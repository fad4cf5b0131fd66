"""The one config model every command reads.

Precedence: defaults < YAML file < `--set section.key=value` < command-line flags.
Every problem is collected and reported at once, one `section.key: message` line each.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from mlxtune.errors import ConfigError

SCHEMA_URL = "https://raw.githubusercontent.com/mlxtune/mlxtune/main/docs/config.schema.json"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    path: str = Field(
        "mlx-community/Qwen2.5-0.5B-Instruct-4bit",
        description="Base model: a local directory in Hugging Face layout or a hub id.",
    )
    chat_template: str | None = Field(
        None,
        description="Chat template used when the tokenizer has none: 'chatml' or a Jinja string.",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra chat template variables, e.g. {enable_thinking: false}; serve "
        "requests may add their own.",
    )
    override_chat_template: bool = Field(
        False, description="Use `chat_template` even when the tokenizer ships its own."
    )
    trust_remote_code: bool = Field(False, description="Allow custom tokenizer code from the hub.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    kind: Literal["auto", "text", "vlm"] = Field(
        "auto",
        description="text or vlm (vision-language, needs the vlm extra); auto reads the model's "
        "config (a vision_config means vlm).",
    )


class DataConfig(Section):
    dir: Path = Field(
        Path("data/prepared"),
        description="Directory with train/valid/test.jsonl that train and evaluate read.",
    )
    system_prompt: str | None = Field(
        None,
        description="System message added to records that have none, in every verb alike.",
    )


GRAPH_SCHEMES = ("bolt://", "bolt+s://", "bolt+ssc://", "neo4j://", "neo4j+s://", "neo4j+ssc://")


class SourceConfig(Section):
    path: str = Field(
        ...,
        description="File, directory, SQLite database, hub dataset id, or a bolt:// graph URI.",
    )
    type: Literal["auto", "jsonl", "json", "csv", "parquet", "hf", "sqlite", "neo4j"] = Field(
        "auto", description="Source type; 'auto' picks by file extension (or bolt:// URI)."
    )
    format: Literal["auto", "chat", "alpaca", "sharegpt", "completions", "text"] = Field(
        "auto", description="Record format; 'auto' detects it from every row."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Rename source columns to format fields, e.g. {instruction: question}.",
    )
    query: str | None = Field(
        None, description="SQL query for a SQLite source; Cypher for a neo4j source."
    )
    split: str = Field("train", description="Split to read from a Hugging Face dataset.")
    name: str | None = Field(None, description="Hugging Face dataset config name.")
    uri: str | None = Field(
        None, description="neo4j: Bolt URI (bolt://host:7687); default `path`. No credentials."
    )
    database: str | None = Field(
        None, description="neo4j: database to query; default the server's."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="neo4j: query parameters, used as $name in the query."
    )
    user_env: str | None = Field(
        None, description="neo4j: environment variable holding the user name."
    )
    password_env: str | None = Field(
        None, description="neo4j: environment variable holding the password (never the file)."
    )
    template: dict[str, str] = Field(
        default_factory=dict,
        description="neo4j: record field -> Jinja template over the returned columns, "
        "e.g. {instruction: 'What does {{ m.name }} do?'}; node columns expose properties.",
    )
    node: str | None = Field(
        None, description="neo4j: column whose node is the record's provenance; default the first."
    )

    @model_validator(mode="before")
    @classmethod
    def _graph_uri(cls, data: Any) -> Any:
        """`uri` and `path` name the same thing for a graph; a Bolt URI picks type neo4j."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "path" not in data and isinstance(data.get("uri"), str):
            data["path"] = data["uri"]
        path = data.get("path")
        auto = data.get("type", "auto") == "auto"
        if auto and isinstance(path, str) and path.startswith(GRAPH_SCHEMES):
            data["type"] = "neo4j"
        if data.get("type") == "neo4j" and not data.get("uri"):
            data["uri"] = path
        return data

    @model_validator(mode="after")
    def _graph_source(self) -> SourceConfig:
        if self.type != "neo4j":
            return self
        uri = self.uri or ""
        if not uri.startswith(GRAPH_SCHEMES):
            raise ValueError(f"uri: {uri!r} is not a Bolt URI (bolt://, neo4j://)")
        if "@" in uri.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError("uri: credentials in the URI; name env vars in user_env/password_env")
        if not self.query:
            raise ValueError("a neo4j source needs `query` (Cypher)")
        if self.columns and self.template:
            raise ValueError("set columns or template, not both")
        return self


class QualityWeights(Section):
    """Weight of each quality factor in the score; 0 turns a factor off."""

    explanation: float = Field(
        1.0, ge=0, description="The answer explains (enough words of prose)."
    )
    length: float = Field(1.0, ge=0, description="The answer's length is within answer_chars.")
    not_copy: float = Field(1.0, ge=0, description="The answer is not a copy of the question.")
    repetition: float = Field(1.0, ge=0, description="The answer has no repetition loops.")
    identifiers: float = Field(
        1.0, ge=0, description="Code names in the answer (`x`, x()) appear in some question."
    )
    language: float = Field(
        0.0, ge=0, description="Prose is in quality.language; python code blocks parse."
    )


class QualityConfig(Section):
    threshold: float = Field(0.5, ge=0, le=1, description="Keep records scoring at least this.")
    weights: QualityWeights = Field(
        default_factory=QualityWeights, description="Weight of each factor; 0 turns it off."
    )
    answer_chars: tuple[int, int] = Field(
        (20, 4000), description="Answer length band [min, max] in characters for `length`."
    )
    explanation_words: int = Field(
        8, gt=0, description="Words of prose for full `explanation` credit."
    )
    copy_ratio: float = Field(
        0.8, gt=0, le=1, description="Answer/question similarity at which `not_copy` is 0."
    )
    language: Literal["en"] = Field("en", description="Expected prose language for `language`.")
    required: list[
        Literal["explanation", "length", "not_copy", "repetition", "identifiers", "language"]
    ] = Field(
        default_factory=lambda: ["not_copy", "repetition"],  # type: ignore[arg-type]
        description="Factors that veto: a record scoring 0 on one of these scores 0.",
    )

    @model_validator(mode="after")
    def _some_weight(self) -> QualityConfig:
        if not any(self.weights.model_dump().values()):
            raise ValueError("weights: at least one factor needs a weight above 0")
        if self.answer_chars[0] > self.answer_chars[1]:
            raise ValueError("answer_chars: [min, max] with min <= max")
        return self


DEFAULT_AUGMENT_TEMPLATES = [
    "Quick question: {question}",
    "{question} Please answer briefly.",
    "Could you explain {topic}?",
    "I'd like to know {topic}.",
    "Tell me {topic}.",
    "Help me understand {topic}.",
]


class AugmentConfig(Section):
    factor: int = Field(2, ge=1, description="Rows per original after augmenting (2 doubles).")
    method: Literal["templates", "model"] = Field(
        "templates", description="templates: fixed rephrasings; model: paraphrases by model_path."
    )
    templates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_AUGMENT_TEMPLATES),
        description="Rephrasings: {question} is the question as written, {topic} the same "
        "without its final mark and capital ('What is X?' -> 'what is X'), {words} its content "
        "words, {words_a} / {words_b} every other content word.",
    )
    splits: list[Literal["train", "valid", "test"]] = Field(
        default_factory=lambda: ["train"],  # type: ignore[arg-type]
        description="Splits that get augmented rows; evaluation data stays original by default.",
    )
    model_path: str | None = Field(
        None, description="model: the paraphrasing model (default model.path)."
    )
    prompt: str = Field(
        "Rewrite this question in other words. Reply with the question only.\n\n{question}",
        description="model: instruction sent for each paraphrase ({question}).",
    )
    max_tokens: int = Field(48, gt=0, description="model: tokens per paraphrase.")
    batch_size: int = Field(16, gt=0, description="model: questions paraphrased together.")
    seed: int = Field(0, description="Seed for template order and any sampling.")

    @model_validator(mode="after")
    def _templates_usable(self) -> AugmentConfig:
        if self.method == "templates" and not self.templates:
            raise ValueError("templates: at least one template")
        from mlxtune.data.augment import PLACEHOLDERS

        for t in self.templates:
            if not any(f"{{{p}}}" in t for p in PLACEHOLDERS):
                names = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                raise ValueError(f"templates: {t!r} names none of {names}")
        return self


class PrepareConfig(Section):
    sources: list[SourceConfig] = Field(
        default_factory=list, description="Raw data to read, in order."
    )
    out_dir: Path | None = Field(None, description="Output directory; defaults to data.dir.")
    valid_ratio: float = Field(0.1, ge=0, lt=1, description="Share of groups for validation.")
    test_ratio: float = Field(0.1, ge=0, lt=1, description="Share of groups for test.")
    seed: int = Field(0, description="Seed for the split; same seed, same split.")
    group_by: str | None = Field(
        None,
        description="Record field whose equal values stay in one split (default: the question).",
    )
    stratify: bool = Field(True, description="Balance splits by `category` when present.")
    dedup: Literal["none", "exact", "normalized"] = Field(
        "normalized", description="Drop duplicates: exact text, or after case/space folding."
    )
    min_answer_chars: int = Field(1, ge=0, description="Drop records with shorter answers.")
    drop_long: bool = Field(
        True, description="Drop records longer than train.max_seq_length tokens."
    )
    quality: QualityConfig | None = Field(
        None, description="Score each record and drop those below quality.threshold."
    )
    augment: AugmentConfig | None = Field(
        None, description="Add rephrased questions to the training split, same group."
    )

    @model_validator(mode="after")
    def _ratios_leave_training_data(self) -> PrepareConfig:
        if self.valid_ratio + self.test_ratio >= 1:
            raise ValueError("valid_ratio + test_ratio must be below 1")
        return self


class TrainConfig(Section):
    method: Literal["lora", "dora", "full"] = Field("lora", description="What to train.")
    name: str | None = Field(None, description="Run name; defaults to a timestamp.")
    runs_dir: Path = Field(Path("runs"), description="Where run directories are written.")
    registry_dir: Path = Field(
        Path(".mlxtune"),
        description="Project directory for the run registry (registry.sqlite: index, aliases).",
    )
    iters: int = Field(200, gt=0, description="Optimizer steps (ignored when epochs is set).")
    epochs: float | None = Field(None, gt=0, description="Train for this many passes instead.")
    batch_size: int = Field(4, gt=0, description="Examples per step; higher uses more memory.")
    grad_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per update.")
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="Decay after warmup."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from 0 to learning_rate.")
    min_lr: float = Field(0.0, ge=0, description="Learning rate at the end of a decay schedule.")
    optimizer: Literal["adam", "adamw", "sgd", "adafactor"] = Field(
        "adam", description="Optimizer."
    )
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (adamw, sgd).")
    grad_clip: float | None = Field(None, gt=0, description="Clip the global gradient norm.")
    lora_rank: int = Field(8, gt=0, description="LoRA rank; higher learns more, costs memory.")
    lora_scale: float = Field(20.0, gt=0, description="LoRA scale (mlx-lm's name for alpha/r).")
    lora_alpha: float | None = Field(
        None, gt=0, description="If set, scale = lora_alpha / lora_rank (PEFT convention)."
    )
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_keys: list[str] | None = Field(
        None, description="Module keys to adapt (e.g. self_attn.q_proj); default all linear."
    )
    num_layers: int = Field(16, ge=-1, description="Adapt the last N blocks; -1 for all.")
    max_seq_length: int = Field(2048, gt=0, description="Longer examples are truncated.")
    grad_checkpoint: bool = Field(False, description="Trade compute for activation memory.")
    quantize_bits: Literal[4, 8] | None = Field(
        None, description="Quantize the base model at load (QLoRA); hub 4-bit models already are."
    )
    mask_prompt: bool = Field(True, description="Train on assistant turns only.")
    packing: bool = Field(False, description="Pack short examples into full sequences.")
    seed: int = Field(0, description="Seed for initialisation, dropout and data order.")
    blas_threads: int = Field(
        0,
        ge=0,
        description="OpenBLAS threads for training's matmuls (Linux CPU); 0: env "
        "OPENBLAS_NUM_THREADS if set, else 1 with several CPU streams (each runs its own "
        "matmuls) or for a model under 512 wide (its matmuls are too small to split), else "
        "OpenBLAS's default (one per CPU).",
    )
    cpu_streams: int = Field(
        0,
        ge=0,
        description="On a CPU: split each batch's rows over this many MLX streams that run at "
        "once, one per core (the gradient is the same sum, added in another order); 0: one per "
        "CPU this process may use, at most the batch size; 1: one stream. A GPU, `mlx.launch` "
        "and vision-language models use one.",
    )
    steps_per_report: int = Field(10, gt=0, description="Steps between train-loss reports.")
    steps_per_eval: int = Field(50, gt=0, description="Steps between validation runs.")
    save_every: int = Field(100, gt=0, description="Steps between checkpoints.")
    val_batches: int = Field(25, ge=-1, description="Validation batches; -1 for the whole set.")
    keep_best: bool = Field(True, description="Keep the best-validation adapter in best/.")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after this many evaluations without improvement."
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="Smallest validation-loss drop that counts as improvement."
    )

    @model_validator(mode="after")
    def _one_scale(self) -> TrainConfig:
        if self.lora_alpha is not None and "lora_scale" in self.model_fields_set:
            raise ValueError("set lora_alpha or lora_scale, not both")
        return self

    @property
    def effective_lora_scale(self) -> float:
        if self.lora_alpha is not None:
            return self.lora_alpha / self.lora_rank
        return self.lora_scale


class EvaluateConfig(Section):
    task: Literal["generation", "retrieval"] = Field(
        "generation",
        description="generation: answer and score; retrieval: does each question's embedding "
        "rank its answer (or paraphrases) first.",
    )
    retrieval_candidates: Literal["answers", "paraphrases"] = Field(
        "answers",
        description="retrieval: rank every distinct answer, or every other question (relevant: "
        "the same `fact`). Candidates come from all splits in data.dir.",
    )
    split: Literal["test", "valid", "train"] = Field("test", description="Split to score.")
    adapter: Path | None = Field(
        None, description="Adapter or run directory; defaults to the latest run in runs_dir."
    )
    compare_base: bool = Field(True, description="Score the base model too, side by side.")
    max_tokens: int = Field(64, gt=0, description="Tokens to generate per answer.")
    batch_size: int = Field(16, gt=0, description="Questions generated together.")
    max_examples: int | None = Field(None, gt=0, description="Score at most this many.")
    include_augmented: bool = Field(
        False, description="Also score rows prepare.augment added (skipped by default)."
    )
    compute_loss: bool = Field(True, description="Also compute loss and perplexity.")
    min: dict[str, float] = Field(
        default_factory=dict,
        description="Gate: metric (or category/metric) -> minimum, e.g. keyword_accuracy: 0.8.",
    )
    min_delta: dict[str, float] = Field(
        default_factory=dict, description="Gate: metric -> minimum improvement over the base."
    )
    out_dir: Path | None = Field(None, description="Reports go here; default <run>/eval.")
    endpoint: str | None = Field(None, description="Score a running OpenAI-compatible server.")
    endpoint_model: str | None = Field(None, description="Model name to ask the endpoint for.")
    allow_template_mismatch: bool = Field(
        False, description="Evaluate even if the run trained with another prompt template."
    )
    output_schema: dict[str, Any] | str | None = Field(
        None,
        description="JSON Schema every answer must match (inline, or a .json file relative to "
        "the config): scored as format_compliance, checked in training data by validate-format.",
    )
    constrained: bool = Field(
        False, description="Also generate under output_schema, as serve's response_format does."
    )

    def resolved_output_schema(self) -> dict[str, Any] | None:
        """output_schema as a checked JSON Schema (read from its file when it is a path)."""
        from mlxtune.structured import ResponseFormatError, check_schema

        value = self.output_schema
        where = "evaluate.output_schema"
        if isinstance(value, str):
            path = Path(value)
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ConfigError(f"{where}: {path}: file not found") from None
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: {path}:{e.lineno}: invalid JSON ({e.msg})") from None
            where = f"{where}: {path}"
        if value is None:
            return None
        try:
            return check_schema(value, where=where)
        except ResponseFormatError as e:
            raise ConfigError(str(e)) from None

    @model_validator(mode="after")
    def _constrained_needs_schema(self) -> EvaluateConfig:
        if self.constrained and self.output_schema is None:
            raise ValueError("constrained needs output_schema")
        return self


# Chosen by measurement (docs/serve.md "Stream interval"); under 100 ms, below what a reader sees.
STREAM_INTERVAL_MS = 50.0


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="Bind address; loopback unless told otherwise.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    adapters: dict[str, Path] = Field(
        default_factory=dict, description="Named adapters to serve: name -> adapter directory."
    )
    routes: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="A/B and gradual rollout: name -> {served model: weight}, e.g. "
        "{assistant: {prod: 90, canary: 10}}; sticky per `user` field or X-Session-Id header.",
    )
    base_name: str = Field("base", description="Model name that selects the base model.")
    default_model: str | None = Field(
        None, description="Model used when a request names none; default the first adapter."
    )
    api_key: str | None = Field(
        None, description="Require `Authorization: Bearer KEY` (or env MLXTUNE_API_KEY)."
    )
    max_queue: int = Field(64, gt=0, description="Waiting requests before 503 Retry-After.")
    max_batch_size: int = Field(16, gt=0, description="Sequences decoded together.")
    prompt_cache_size: int = Field(
        10,
        ge=0,
        description="Recent prompts+answers whose KV each model keeps, so a request sharing a "
        "prefix with one (system prompt, earlier turns) prefills only the rest; 0 turns it off.",
    )
    fuse_adapters: bool = Field(
        True,
        description="Fold each LoRA adapter into its own copy of the layers it adapts: decoding "
        "skips LoRA's extra matmuls (faster), at one copy of those layers per adapter; false "
        "shares the base's weights (N adapters cost one base). Quantized bases stay unfused.",
    )
    blas_threads: int = Field(
        0,
        ge=0,
        description="OpenBLAS threads for the server's matmuls (Linux CPU); 0: env "
        "OPENBLAS_NUM_THREADS if set, else one fewer than the CPUs (at least 1), leaving a core "
        "to HTTP, tokenizing and streaming, which otherwise stall every split matmul.",
    )
    mix_adapters: bool = Field(
        True,
        description="Decode requests for different LoRA adapters of the base (same layers and "
        "rank, two or more) in one batch, LoRA applied per row, instead of one batch per adapter; "
        "those adapters then share the base's weights, unfused. One adapter is served as before.",
    )
    stream_interval_ms: float = Field(
        STREAM_INTERVAL_MS,
        ge=0,
        le=1000,
        description="A stream's text after its first chunk is held up to this long, so each "
        "chunk carries several tokens (fewer events, writes and client parses under load); 0 "
        "sends every token as it comes. The first chunk and the finish are never held.",
    )
    max_tokens_cap: int = Field(1024, gt=0, description="Largest max_tokens a request may ask.")
    default_max_tokens: int = Field(256, gt=0, description="max_tokens when a request omits it.")
    max_prompt_tokens: int = Field(4096, gt=0, description="Longest prompt accepted.")
    max_prompt_chars: int | None = Field(
        None, gt=0,
        description="Prompt characters refused before tokenizing; default 16 x max_prompt_tokens.",
    )  # fmt: skip
    max_messages: int = Field(1024, gt=0, description="Most messages in one chat request.")
    max_body_bytes: int = Field(1_000_000, gt=0, description="Largest request body accepted.")
    usage_db: Path | None = Field(
        None, description="SQLite usage log; default usage.sqlite beside the first adapter."
    )
    usage_retention_days: float = Field(
        90, ge=0, description="Usage rows older than this are deleted (0 keeps them for ever)."
    )
    public_endpoints: list[Literal["/health", "/metrics", "/docs", "/openapi.json"]] = Field(
        default_factory=list,
        description="Open without the key even when one is set (/health: its details).",
    )
    header_timeout_s: float = Field(
        10, gt=0, description="Close a connection whose request headers take longer."
    )
    body_timeout_s: float = Field(30, gt=0, description="408 when a request body takes longer.")
    keep_alive_timeout_s: float = Field(5, gt=0, description="Close idle keep-alive connections.")
    max_connections: int = Field(
        256, gt=0, description="Open connections at most; more are closed at once."
    )
    shutdown_grace_s: float = Field(
        30, gt=0, description="On SIGTERM, streams still running after this end with an error."
    )

    @field_validator("api_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not v.strip():
            raise ValueError("an empty key would turn authentication off; omit api_key instead")
        return v.strip()

    @model_validator(mode="after")
    def _default_within_cap(self) -> ServeConfig:
        # else every request that omits max_tokens would be refused with a 400
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens_cap "
                f"({self.max_tokens_cap})"
            )
        return self

    @property
    def prompt_chars_cap(self) -> int:
        return self.max_prompt_chars or 16 * self.max_prompt_tokens

    def resolved_api_key(self) -> str | None:
        """The key clients must send: `serve.api_key`, else env MLXTUNE_API_KEY. The one place
        that reads the fallback (serve, bench and `evaluate --endpoint` all ask here)."""
        import os

        return self.api_key or os.environ.get("MLXTUNE_API_KEY", "").strip() or None


class EmbedConfig(Section):
    kind: Literal["pooled", "dedicated"] = Field(
        "pooled",
        description="pooled: the language model (and its adapters) pools its hidden states; "
        "dedicated: an embedding model through mlx-embeddings (pip install 'mlxtune[embed]').",
    )
    model: str | None = Field(
        None, description="Dedicated embedding model (kind: dedicated): local directory or hub id."
    )
    name: str | None = Field(
        None, description="Name of the dedicated model in /v1/models; default its directory name."
    )
    pooling: Literal["mean", "last"] = Field(
        "mean", description="pooled kind: average the real tokens' states, or take the last one."
    )
    batch_size: int = Field(
        32, gt=0, description="Inputs embedded in one forward pass; higher is faster, uses memory."
    )
    max_inputs: int = Field(256, gt=0, description="Inputs one request may send (400 beyond).")
    max_tokens_per_input: int = Field(
        512, gt=0, description="Tokens one input may have (400 beyond; never truncated)."
    )
    fail_fast: bool = Field(
        False, description="Answer 503 at once while the model is busy instead of queueing."
    )
    matryoshka_dimensions: list[int] = Field(
        default_factory=list,
        description="Sizes `dimensions` may truncate to (Matryoshka-trained models); default "
        "`matryoshka_dimensions` from the model's config.json, else full size only.",
    )

    @model_validator(mode="after")
    def _model_matches_kind(self) -> EmbedConfig:
        if self.kind == "dedicated" and not self.model:
            raise ValueError("kind: dedicated needs embed.model (an embedding model directory)")
        if self.kind == "pooled" and self.model:
            raise ValueError("embed.model is for kind: dedicated (pooled uses model.path)")
        return self

    @property
    def served_name(self) -> str | None:
        """The dedicated model's name in /v1/models (None for the pooled kind)."""
        if not self.model:
            return None
        return self.name or Path(self.model.rstrip("/")).name


BENCH_SECTIONS = ("train", "generate", "serve")  # what `all` times
# embed, structured, startup and data only when named
_BENCH_ORDER = ("startup", "data", "train", "generate", "embed", "structured", "serve")


def bench_sections(what: str | list[str]) -> list[str]:
    """`bench.what` -> the sections to time, in suite order: "all", one name, or a comma list
    (`train,generate,serve`, what the bench files record and docs/benchmarks.md prints)."""
    parts = what if isinstance(what, list) else str(what).split(",")
    names = [p.strip() for p in parts if p.strip()]
    if not names or any(n not in (*_BENCH_ORDER, "all") for n in names):
        raise ValueError(
            "expected train, generate, serve, embed, structured, startup, data, all or a comma "
            f"list of them, got {what!r}"
        )
    chosen = set(names) | (set(BENCH_SECTIONS) if "all" in names else set())
    return [s for s in _BENCH_ORDER if s in chosen]


ServeMode = Literal["stream", "non-stream"]
SERVE_MODES: tuple[ServeMode, ...] = ("stream", "non-stream")


class BenchConfig(Section):
    what: str = Field(
        "all",
        description="What to time: train, generate, serve, embed, structured, startup, data, a "
        "comma list of them, or all (train, generate and serve; embed, the embeddings load "
        "test, structured, constrained vs free serve load, startup, every command's --help, "
        "and data, prepare and validate-format on synthetic rows, only when named).",
    )
    repeat: int = Field(1, gt=0, description="Repeat each measurement; min/median/max reported.")
    baseline: Literal["none", "mlx-lm"] = Field(
        "none", description="Also run raw mlx-lm on the same workload."
    )
    warmup_steps: int = Field(3, ge=0, description="Untimed steps before measuring.")
    train_steps: int = Field(20, gt=0, description="Timed training steps.")
    prompt_lengths: list[int] = Field(
        default_factory=lambda: [32, 256], description="Prompt lengths for generate."
    )
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 8], description="Batch sizes for generate."
    )
    gen_tokens: int = Field(64, gt=0, description="Tokens generated per request.")
    trials: int = Field(
        3, gt=0, description="Timed runs averaged per generate cell (mlx_lm benchmark -n)."
    )
    concurrency: list[int] = Field(
        default_factory=lambda: [1, 16], description="Concurrent clients for serve."
    )
    serve_modes: list[ServeMode] = Field(
        default_factory=lambda: list(SERVE_MODES),
        description="serve: streamed and/or whole-answer requests, each at every level.",
    )
    requests_per_client: int = Field(
        4, gt=0, description="serve: each client sends this many requests, one after another."
    )
    requests_per_level: int = Field(
        32, gt=0, description="structured: requests sent in each of its two loads."
    )
    seed_levels: bool = Field(
        False,
        description="serve: also the seed project's load levels (1, 5, 10, 20 clients and the "
        "sustained run): requests/s, success %, beside the seed's own figures.",
    )
    sustained_requests: int = Field(
        100, ge=0, description="serve: requests in the sustained run (with seed_levels)."
    )
    time_limit_s: float = Field(300, gt=0, description="Stop any load phase after this long.")
    startup_runs: int = Field(
        3, gt=0, description="startup: runs of each command's --help per repeat (median kept)."
    )
    data_rows: int = Field(
        100_000, gt=0, description="data: synthetic rows `prepare` and `validate-format` check."
    )

    @field_validator("what", mode="before")
    @classmethod
    def _known_sections(cls, value: Any) -> str:
        sections = bench_sections(value)
        return "all" if sections == list(BENCH_SECTIONS) else ",".join(sections)


class Config(Section):
    """Everything mlxtune needs, one section per verb."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)
    # One-line notes for the user from loading (an mlx-lm file converted); the CLI prints them.
    _notices: list[str] = PrivateAttr(default_factory=list)

    @property
    def notices(self) -> list[str]:
        return self._notices

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self, *, portable: bool = False) -> str:
        """The resolved config as YAML, secrets redacted: what `config show` prints and a run
        directory keeps. `portable` writes local paths absolute, so the file means the same
        wherever it is loaded from (paths in a config file are relative to the file)."""
        tree = redact(self.to_dict())
        return yaml.safe_dump(absolute_paths(tree) if portable else tree, sort_keys=False)

    def fingerprint(self) -> str:
        """Stable hash of the resolved config (secrets left out), for run lineage."""
        blob = json.dumps(redact(self.to_dict()), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Paths and secrets in a config tree

# Fields that are always local paths, and fields that are a local path or something else (a
# hub id, a run name, an @alias): those are rebased only when they name something local.
PATH_FIELDS = {
    "data": ("dir",),
    "prepare": ("out_dir",),
    "train": ("runs_dir", "registry_dir"),
    "evaluate": ("out_dir", "output_schema"),  # output_schema: a .json path, or inline
    "serve": ("usage_db",),
}
SECRET_FIELDS = {"serve": ("api_key",)}
REDACTED = "<redacted>"


def _map_paths(
    tree: dict[str, Any], path: Callable[[str], str], ref: Callable[[str], str]
) -> dict[str, Any]:
    """A copy of a raw config tree with `path` applied to every path field and `ref` to every
    field that may name a local path (model.path, prepare.sources[].path, evaluate.adapter,
    serve.adapters.*, embed.model)."""

    def section(name: str) -> dict[str, Any] | None:
        value = tree.get(name)
        if not isinstance(value, dict):
            return None
        tree[name] = value = dict(value)
        return value

    tree = dict(tree)
    for name, keys in PATH_FIELDS.items():
        sec = section(name)
        for key in keys:
            if sec is not None and isinstance(sec.get(key), str):
                sec[key] = path(sec[key])
    if (sec := section("model")) is not None and isinstance(sec.get("path"), str):
        sec["path"] = ref(sec["path"])
    if (sec := section("evaluate")) is not None and isinstance(sec.get("adapter"), str):
        sec["adapter"] = ref(sec["adapter"])
    if (sec := section("embed")) is not None and isinstance(sec.get("model"), str):
        sec["model"] = ref(sec["model"])
    if (sec := section("serve")) is not None and isinstance(sec.get("adapters"), dict):
        sec["adapters"] = {
            k: ref(v) if isinstance(v, str) else v for k, v in sec["adapters"].items()
        }
    if (sec := section("prepare")) is not None and isinstance(sec.get("sources"), list):
        sec["sources"] = [
            {**src, "path": ref(src["path"])}
            if isinstance(src, dict) and isinstance(src.get("path"), str)
            else src
            for src in sec["sources"]
        ]
    return tree


def _names_local(value: str, base: Path) -> bool:
    """A ref names a local path when it is written as one or exists; `@alias`, run names and
    hub ids that name nothing local stay as they are."""
    if value.startswith("@") or Path(value).is_absolute():
        return False
    return value.startswith(("./", "../")) or (base / value).exists()


def relative_to(tree: dict[str, Any], base: Path) -> dict[str, Any]:
    """Paths in a config file are relative to the file's directory, like most tools."""

    def rebase(value: str) -> str:
        return value if Path(value).is_absolute() else os.path.normpath(base / value)

    def rebase_ref(value: str) -> str:
        return rebase(value) if _names_local(value, base) else value

    return _map_paths(tree, rebase, rebase_ref)


def absolute_paths(tree: dict[str, Any]) -> dict[str, Any]:
    def absolute(value: str) -> str:
        return os.path.abspath(value)

    def absolute_ref(value: str) -> str:
        return absolute(value) if _names_local(value, Path.cwd()) else value

    return _map_paths(tree, absolute, absolute_ref)


def redact(tree: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config tree with every secret replaced: secrets never reach artifacts."""
    tree = dict(tree)
    for name, keys in SECRET_FIELDS.items():
        sec = tree.get(name)
        if isinstance(sec, dict):
            tree[name] = {k: REDACTED if k in keys and v else v for k, v in sec.items()}
    return tree


# ---------------------------------------------------------------------------------------------
# Loading


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`section.key=value` strings -> {dotted: value}; values are parsed as YAML."""
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            problems.append(f"--set {item!r}: expected section.key=value")
            continue
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key] = raw
    if problems:
        raise ConfigError(problems)
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc` (for did-you-mean suggestions)."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        inner = getattr(ann, "__args__", None)
        candidates = [ann, *(inner or ())]
        nxt = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if nxt is None:
            return None
        model = nxt
    return model


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "dict": "a mapping",
    "list": "a list",
    "model": "a mapping",
    "path": "a path",
}


def _describe(err: dict[str, Any]) -> str:
    kind: str = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    loc = err["loc"]
    if kind == "extra_forbidden":
        owner = _model_at(loc)
        names = list(owner.model_fields) if owner else []
        guess = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
        hint = f", did you mean {guess[0]}?" if guess else f" (known: {', '.join(names)})"
        return f"unknown key{hint}"
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected')}, got {value!r}"
    for prefix, word in _TYPE_WORDS.items():
        if kind.startswith(prefix + "_") or kind == prefix + "_type":
            return f"expected {word}, got {value!r}"
    bounds = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[kind]} {limit}, got {value!r}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"])


def load_config(
    path: Path | str | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    flag_names: dict[str, str] | None = None,
) -> Config:
    """Build the resolved config: defaults < YAML < --set overrides < flags (None = not given).
    Relative paths in the file are relative to the file; in --set and flags, to the working
    directory. A bad value is blamed on where it came from: the file, `--set KEY` or the flag
    (`flag_names` maps a dotted key to its flag, e.g. {'bench.what': '--what'})."""
    tree: dict[str, Any] = read_yaml(Path(path)) if path else {}
    notices: list[str] = []
    mlx_lm_file = False
    if tree:
        from mlxtune.config_import import from_mlx_lm, is_mlx_lm_config

        if mlx_lm_file := is_mlx_lm_config(tree):
            imported = from_mlx_lm(tree, str(path))
            tree = imported.tree
            dropped = f", {len(imported.notes)} keys not carried over" if imported.notes else ""
            notices.append(
                f"{path}: mlx-lm config converted{dropped} (see: mlxtune config import {path})"
            )
    if path and not mlx_lm_file:  # mlx_lm.lora reads its paths from the working directory
        tree = relative_to(tree, Path(path).parent)
    origin: dict[str, str] = {}
    for dotted, value in parse_overrides(overrides or []).items():
        _set_dotted(tree, dotted, value)
        origin[dotted] = f"--set {dotted}"
    for dotted, value in (flags or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
            origin[dotted] = (flag_names or {}).get(dotted) or f"{dotted} (command line)"
    cfg = validate_tree(tree, str(path) if path else None, origin)
    cfg._notices.extend(notices)
    return cfg


def validate_tree(
    tree: dict[str, Any], source: str | None = None, origin: dict[str, str] | None = None
) -> Config:
    """A config tree -> Config, every problem reported at once, each blamed on where its value
    came from: the file (`source`), or `origin`'s `--set KEY` or flag for that dotted key."""
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        from_file: list[str] = []
        given: list[str] = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "config"
            flag = next((o for key, o in (origin or {}).items() if _within(loc, key)), None)
            (given if flag else from_file).append(f"{flag or loc}: {_describe(dict(err))}")
        if not given:
            raise ConfigError(from_file, source=source) from None
        prefix = f"{source}: " if source else ""
        raise ConfigError([prefix + p for p in from_file] + given) from None


def _within(loc: str, key: str) -> bool:
    return loc == key or loc.startswith(key + ".")


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mlxtune config"
    return schema


def starter_yaml(model_path: str | None = None) -> str:
    """A commented config with every field and its default, generated from the model."""
    lines = [
        f"# yaml-language-server: $schema={SCHEMA_URL}",
        "# mlxtune config. Run: mlxtune train -c THIS_FILE",
        "# Override any key without editing: mlxtune train -c THIS_FILE --set train.iters=500",
        "",
    ]
    defaults = Config().to_dict()
    if model_path:
        defaults["model"]["path"] = model_path
    for section_name, field in Config.model_fields.items():
        section_model = field.annotation
        assert isinstance(section_model, type) and issubclass(section_model, BaseModel)
        lines.append(f"{section_name}:")
        for key, sub in section_model.model_fields.items():
            if sub.description:
                lines.append(f"  # {sub.description}")
            value = yaml.safe_dump({key: defaults[section_name][key]}, sort_keys=False)
            lines.extend("  " + v for v in value.rstrip().splitlines())
        lines.append("")
    return "\n".join(lines)
