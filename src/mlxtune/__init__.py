"""mlxtune: fine-tune language models with MLX, from one config."""

from mlxtune.runtime import preload_openblas_before_mlx, widen_transformers_import_cache

__version__ = "0.1.0"

# OpenBLAS must load before anything imports mlx.core; deferred to the first `import mlx` so
# `mlxtune --help` pays neither the dlopen nor ctypes.
preload_openblas_before_mlx()
# transformers' import table is scanned twice per process unless its folder cache is widened
# (see runtime.widen_transformers_import_cache); also deferred until transformers is imported.
widen_transformers_import_cache()
