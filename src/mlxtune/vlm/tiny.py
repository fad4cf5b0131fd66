"""`mlxtune tiny-model --preset vlm`: a tiny random-init Qwen2-VL and its processor, built here.

No hub, no torch: the tokenizer is trained with `tokenizers` (as for the text presets), the
weights come from mlx-vlm's own Qwen2-VL module, and every processor file mlx-vlm reads is
written, because a missing one makes it try a hub download. 56x56 images become 4 image tokens
(14-pixel patches, 2x2 merge). Qwen2-VL, because mlx-vlm's LLaVA path fails on transformers 5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlxtune.io import atomic_dir
from mlxtune.tiny_model import EOS, chat_tokenizer

IMAGE_TOKEN = "<|image_pad|>"
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", IMAGE_TOKEN, "<|video_pad|>"]
IMAGE_SIDE = 56  # pixels; min_pixels = max_pixels = 56*56, so every image is 4 tokens
VOCAB_SIZE = 1024

# ChatML with image parts, as Qwen2-VL renders them: one <|image_pad|> per image, which the
# processor expands to the image's token count.
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def vlm_config(tok: Any) -> dict[str, Any]:
    """config.json: Qwen2-VL, hidden 64, 2 layers, a 2-layer vision tower. Types matter:
    transformers validates them (mlp_ratio must be an int)."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in [EOS, *VISION_TOKENS]}
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},  # sums to head_dim / 2
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "eos_token_id": ids[EOS],
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.pad_token_id,  # transformers' Qwen2-VL default is outside our vocab
        "image_token_id": ids[IMAGE_TOKEN],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_config": {
            "model_type": "qwen2_vl",
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
    }


def preprocessor_config() -> dict[str, Any]:
    pixels = IMAGE_SIDE * IMAGE_SIDE
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "rescale_factor": 1 / 255,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "min_pixels": pixels,
        "max_pixels": pixels,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }


def build_tiny_vlm(out: Path, texts: list[str], seed: int) -> tuple[int, int]:
    """Write the model to `out` (atomically); returns (parameter count, vocab size)."""
    from mlxtune.vlm.kind import require_mlx_vlm

    require_mlx_vlm()
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.models import qwen2_vl
    from mlx_vlm.utils import update_module_configs

    hf_tok = chat_tokenizer(texts, VOCAB_SIZE, VLM_CHAT_TEMPLATE, extra_special=VISION_TOKENS)
    config = vlm_config(hf_tok)
    mx.random.seed(seed)
    # Configured as mlx-vlm's loader configures it, so the saved names are the loaded ones.
    raw = json.loads(json.dumps(config))
    model_config = qwen2_vl.ModelConfig.from_dict(raw)
    model_config = update_module_configs(model_config, qwen2_vl, raw, ["text", "vision"])
    model = qwen2_vl.Model(model_config)
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    with atomic_dir(out) as tmp:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        _write_json(tmp / "config.json", config)
        gen = {"eos_token_id": config["eos_token_id"], "pad_token_id": hf_tok.pad_token_id}
        _write_json(tmp / "generation_config.json", gen)
        hf_tok.save_pretrained(str(tmp))
        for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
            _write_json(tmp / name, preprocessor_config())
        _write_json(tmp / "processor_config.json", {"processor_class": "Qwen2VLProcessor"})
        (tmp / "README.md").write_text(
            f"# mlxtune tiny vision-language model (Qwen2-VL, seed {seed})\n\nRandom-init, "
            "for tests and demos; built by `mlxtune tiny-model --preset vlm`.\n"
        )
    return sum(int(v.size) for v in weights.values()), VOCAB_SIZE


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
