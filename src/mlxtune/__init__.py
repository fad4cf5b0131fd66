"""mlxtune: fine-tune language models with MLX, from one config."""

from mlxtune.runtime import preload_openblas_before_mlx

__version__ = "0.1.0"

# OpenBLAS must load before anything imports mlx.core; deferred to the first `import mlx` so
# `mlxtune --help` pays neither the dlopen nor ctypes.
preload_openblas_before_mlx()
