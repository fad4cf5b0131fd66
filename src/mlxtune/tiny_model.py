"""Build a tiny random-init model with a locally trained tokenizer, in Hugging Face layout.

No hub is reachable in tests, CI or the demo, so they all run on a model built here:
- `tiny`/`small`: a Llama with a byte-level BPE tokenizer trained with `tokenizers` on the
  project's data and a ChatML template; `mlx_lm.load` and `transformers` both load it.
- `bert`: a BERT-style encoder with a WordPiece tokenizer, in the layout `mlx-embeddings`
  loads (a dedicated embedding model; building it needs the `embed` extra).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxtune.errors import UsageError
from mlxtune.formats import CHATML_TEMPLATE

EOS = "<|im_end|>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", EOS]


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int


PRESETS = {
    "tiny": Preset(256, 4, 512, 4, 2048),
    "small": Preset(512, 8, 1024, 8, 4096),
    "bert": Preset(128, 2, 256, 4, 2048),
}
BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Used when no corpus files are given and no data/ directory is at hand, so the command
# still works from any directory; real runs train the tokenizer on the project's data.
FALLBACK_CORPUS = (
    "You are a helpful assistant. What is the capital of France? Paris is the capital.\n"
    "How do I list files? Use the ls command. Which port does the gateway use? Port 8080.\n"
    "Fine-tuning adapts a pretrained language model to new data with LoRA or full training.\n"
)


@dataclass
class TinyModelResult:
    path: Path
    preset: str
    seed: int
    parameters: int
    vocab_size: int
    corpus_files: list[str]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def corpus_texts(files: Iterable[Path]) -> Iterator[str]:
    """Every string in the given JSONL/JSON files (plain text files are read as is)."""
    for path in files:
        if path.suffix in (".jsonl", ".json"):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    yield from _strings(json.loads(line))
                except json.JSONDecodeError:
                    yield line
        else:
            yield path.read_text(encoding="utf-8", errors="replace")


def default_corpus(root: Path = Path("data")) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.suffix in (".jsonl", ".json", ".txt"))


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, extra_special: Iterable[str] = ()
) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> Any:
    """A BERT-style uncased WordPiece tokenizer that wraps inputs in [CLS] ... [SEP]."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=BERT_SPECIAL_TOKENS, show_progress=False
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tok


@dataclass
class _Built:
    weights: dict[str, Any]
    config: dict[str, Any]
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    generation_config: dict[str, Any] | None
    description: str


def _random_weights(make_model: Callable[[], Any], seed: int) -> dict[str, Any]:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    mx.random.seed(seed)  # before the layers are built: their init draws from it
    weights = dict(tree_flatten(make_model().parameters()))
    mx.eval(weights)
    return weights


def _llama(p: Preset, texts: list[str], seed: int) -> _Built:
    from mlx_lm.models import llama
    from transformers import PreTrainedTokenizerFast

    tok = train_tokenizer(texts, p.vocab_size)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token="<|endoftext|>",
        model_max_length=2048,
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    eos_id = hf_tok.convert_tokens_to_ids(EOS)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden_size,
        "num_hidden_layers": p.num_hidden_layers,
        "intermediate_size": p.intermediate_size,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_attention_heads,
        "head_dim": p.hidden_size // p.num_attention_heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": p.vocab_size,  # embeddings keep the preset size even if BPE stops short
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "eos_token_id": eos_id,
        "pad_token_id": hf_tok.pad_token_id,
        "bos_token_id": None,
        "torch_dtype": "float32",
    }
    return _Built(
        weights=_random_weights(lambda: llama.Model(llama.ModelArgs.from_dict(config)), seed),
        config=config,
        tokenizer=hf_tok,
        generation_config={"eos_token_id": eos_id, "pad_token_id": hf_tok.pad_token_id},
        description="Random-init Llama for tests and demos; it knows nothing until fine-tuned.",
    )


def _bert(p: Preset, texts: list[str], seed: int) -> _Built:
    from mlxtune.embeddings import import_mlx_embeddings

    import_mlx_embeddings()  # the extra is needed to use the model, so check before building
    from mlx_embeddings.models import bert
    from transformers import PreTrainedTokenizerFast

    tok = train_wordpiece(texts, p.vocab_size)
    max_positions = 512
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_positions,
    )
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": p.hidden_size,
        "num_hidden_layers": p.num_hidden_layers,
        "intermediate_size": p.intermediate_size,
        "num_attention_heads": p.num_attention_heads,
        "vocab_size": p.vocab_size,
        "max_position_embeddings": max_positions,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "pad_token_id": hf_tok.pad_token_id,
        "torch_dtype": "float32",
    }
    return _Built(
        weights=_random_weights(lambda: bert.Model(bert.ModelArgs.from_dict(config)), seed),
        config=config,
        tokenizer=hf_tok,
        generation_config=None,
        description="Random-init BERT-style embedding model for tests and demos (mlx-embeddings).",
    )


def build_tiny_model(
    out: Path,
    *,
    preset: str = "tiny",
    seed: int = 0,
    corpus: list[Path] | None = None,
    force: bool = False,
) -> TinyModelResult:
    if preset not in (*PRESETS, "vlm"):
        raise UsageError(f"--preset: unknown preset {preset!r} (choose {', '.join(PRESETS)}, vlm)")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UsageError(f"{out}: already exists and is not empty (use --force to replace)")
    files = corpus if corpus is not None else default_corpus()
    for f in files:
        if not f.is_file():
            raise UsageError(f"{f}: corpus file not found")
    texts = list(corpus_texts(files)) if files else [FALLBACK_CORPUS]
    if preset == "vlm":  # vision-language: its own module, needs the `vlm` extra
        from mlxtune.vlm.tiny import build_tiny_vlm

        n, vocab = build_tiny_vlm(out, texts, seed)
        return TinyModelResult(out, preset, seed, n, vocab, [str(f) for f in files])
    p = PRESETS[preset]
    built = (_bert if preset == "bert" else _llama)(p, texts, seed)

    import mlx.core as mx

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        mx.save_safetensors(
            str(tmp / "model.safetensors"), built.weights, metadata={"format": "mlx"}
        )
        (tmp / "config.json").write_text(json.dumps(built.config, indent=2) + "\n")
        if built.generation_config is not None:
            gen = json.dumps(built.generation_config, indent=2) + "\n"
            (tmp / "generation_config.json").write_text(gen)
        built.tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(
            f"# mlxtune tiny model ({preset}, seed {seed})\n\n{built.description} "
            "Built by `mlxtune tiny-model`.\n"
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TinyModelResult(
        path=out,
        preset=preset,
        seed=seed,
        parameters=sum(v.size for v in built.weights.values()),
        vocab_size=p.vocab_size,
        corpus_files=[str(f) for f in files],
    )
