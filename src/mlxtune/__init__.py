"""mlxtune: fine-tune language models with MLX, from one config."""

from mlxtune.runtime import preload_openblas

__version__ = "0.1.0"

# Must run before anything imports mlx.core; costs ~5 ms and imports nothing heavy.
preload_openblas()
