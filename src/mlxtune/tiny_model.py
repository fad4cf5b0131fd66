"""Build a tiny random-init model with a locally trained tokenizer, in Hugging Face layout.

No hub is reachable in tests, CI or the demo, so they all run on a model built here:
- `tiny`/`small`: a Llama with a byte-level BPE tokenizer trained with `tokenizers` on the
  project's data and a ChatML template; `mlx_lm.load` and `transformers` both load it.
- `bert`: a BERT-style encoder with a WordPiece tokenizer, in the layout `mlx-embeddings`
  loads (a dedicated embedding model; building it needs the `embed` extra).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxtune.errors import UsageError
from mlxtune.formats import CHATML_TEMPLATE
from mlxtune.io import atomic_dir

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


def chat_tokenizer(
    texts: Iterable[str], vocab_size: int, template: str, extra_special: Iterable[str] = ()
) -> Any:
    """A `transformers` fast tokenizer trained on `texts`, with ChatML's special tokens and
    the given chat template: what the tiny text and vision models both ship."""
    from transformers import PreTrainedTokenizerFast

    tok = train_tokenizer(texts, vocab_size, extra_special=extra_special)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=SPECIAL_TOKENS[0],
        model_max_length=2048,
    )
    hf_tok.chat_template = template
    return hf_tok


def _build_tiny_bert(out: Path, p: Preset, texts: list[str], seed: int) -> int:
    """A random-init BERT-style encoder with a WordPiece tokenizer, in the layout mlx-embeddings
    loads (a dedicated embedding model); returns its parameter count."""
    from mlxtune.embeddings import import_mlx_embeddings

    import_mlx_embeddings()  # the extra is needed to use the model, so check before building
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_embeddings.models import bert
    from transformers import PreTrainedTokenizerFast

    max_positions = 512
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=train_wordpiece(texts, p.vocab_size),
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
    mx.random.seed(seed)  # before the layers are built: their init draws from it
    weights = dict(tree_flatten(bert.Model(bert.ModelArgs.from_dict(config)).parameters()))
    mx.eval(weights)
    with atomic_dir(out) as tmp:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        hf_tok.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(
            f"# mlxtune tiny model (bert, seed {seed})\n\nRandom-init BERT-style embedding model "
            "for tests and demos (mlx-embeddings). Built by `mlxtune tiny-model`.\n"
        )
    return sum(v.size for v in weights.values())


def build_tiny_model(
    out: Path,
    *,
    preset: str = "tiny",
    seed: int = 0,
    corpus: list[Path] | None = None,
    force: bool = False,
) -> TinyModelResult:
    """Train the tokenizer on the corpus, initialise the weights from the seed, write it all
    to `out` at once (a failed build leaves nothing behind)."""
    out = Path(out)
    files = _check_request(out, preset, corpus, force)
    texts = list(corpus_texts(files)) if files else [FALLBACK_CORPUS]
    if preset == "vlm":  # vision-language: its own module, needs the `vlm` extra
        from mlxtune.vlm.tiny import build_tiny_vlm

        n, vocab = build_tiny_vlm(out, texts, seed)
        return TinyModelResult(out, preset, seed, n, vocab, [str(f) for f in files])
    p = PRESETS[preset]
    if preset == "bert":  # a dedicated embedding model: needs the `embed` extra
        n = _build_tiny_bert(out, p, texts, seed)
        return TinyModelResult(out, preset, seed, n, p.vocab_size, [str(f) for f in files])

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    hf_tok = chat_tokenizer(texts, p.vocab_size, CHATML_TEMPLATE)
    config = llama_config(p, hf_tok)
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)

    with atomic_dir(out) as tmp:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        gen = {"eos_token_id": config["eos_token_id"], "pad_token_id": hf_tok.pad_token_id}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        hf_tok.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(
            f"# mlxtune tiny model ({preset}, seed {seed})\n\nRandom-init Llama for tests and "
            "demos; it knows nothing until fine-tuned. Built by `mlxtune tiny-model`.\n"
        )
    n_params = sum(v.size for v in weights.values())
    return TinyModelResult(
        path=out,
        preset=preset,
        seed=seed,
        parameters=n_params,
        vocab_size=p.vocab_size,
        corpus_files=[str(f) for f in files],
    )


def _check_request(out: Path, preset: str, corpus: list[Path] | None, force: bool) -> list[Path]:
    """The corpus files to train the tokenizer on, after checking what the user asked for."""
    if preset not in (*PRESETS, "vlm"):
        raise UsageError(f"--preset: unknown preset {preset!r} (choose {', '.join(PRESETS)}, vlm)")
    if out.exists() and any(out.iterdir()) and not force:
        raise UsageError(f"{out}: already exists and is not empty (use --force to replace)")
    files = corpus if corpus is not None else default_corpus()
    for f in files:
        if not f.is_file():
            raise UsageError(f"{f}: corpus file not found")
    return files


def llama_config(p: Preset, hf_tok: Any) -> dict[str, Any]:
    """config.json of a Llama that both mlx-lm and transformers load."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden_size,
        "num_hidden_layers": p.num_hidden_layers,
        "intermediate_size": p.intermediate_size,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_attention_heads,
        "head_dim": p.hidden_size // p.num_attention_heads,
        "rms_norm_eps": 1e-5,
        # embeddings keep the preset size even if BPE stops short
        "vocab_size": p.vocab_size,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "eos_token_id": hf_tok.convert_tokens_to_ids(EOS),
        "pad_token_id": hf_tok.pad_token_id,
        "bos_token_id": None,
        "torch_dtype": "float32",
    }


def random_adapter(
    model_dir: Path, out: Path, *, rank: int = 8, b_scale: float = 0.0, seed: int = 0
) -> Path:
    """Write an mlx-lm LoRA adapter for `model_dir` without training (tests, and bench when no
    adapter is configured). b_scale=0 gives an adapter that changes nothing (LoRA's B starts at
    zero); b_scale>0 one that does."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model = load(str(model_dir))[0]
    model.freeze()
    params = {"rank": rank, "scale": 20.0, "dropout": 0.0}
    linear_to_lora_layers(model, -1, params)
    mx.random.seed(seed)
    weights = dict(tree_flatten(model.trainable_parameters()))
    for k, v in weights.items():
        if k.endswith("lora_b"):
            weights[k] = mx.random.normal(v.shape) * b_scale
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    config = {
        "fine_tune_type": "lora",
        "num_layers": -1,
        "lora_parameters": params,
        "model": str(model_dir),
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out
