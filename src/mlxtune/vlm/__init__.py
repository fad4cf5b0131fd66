"""Vision-language models through mlx-vlm (the optional `vlm` extra; see docs/vision.md).

kind.py     text or vlm (config's `vision_config`, or `model.kind`) and the extra's check
tiny.py     `mlxtune tiny-model --preset vlm`: a tiny Qwen2-VL and processor, built locally
"""
