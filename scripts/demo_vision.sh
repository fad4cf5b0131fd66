#!/usr/bin/env bash
# The vision lifecycle in under 2 minutes on a 2-core CPU: a tiny Qwen2-VL and a synthetic
# shapes set built here -> prepare from SQLite -> validate-format -> train -> evaluate base vs
# adapter (format compliance, field accuracy) -> serve an image_url request through the openai
# client, whose answer must equal evaluate's for the same image.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
CFG=configs/vision-demo.yaml
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# One BLAS thread: the tiny model's matrices are too small to share, and spare threads only
# spin (1.5-2.5 s of system CPU per training run here, no wall time gained).
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
rm -rf build/runs/demo-vision build/demo-vision build/vision-data

# Each step prints its wall time: most of it is each process importing mlx-vlm/transformers.
step() {
  printf '\n\033[1m== %s\033[0m  %s\n' "$1" "${*:2}"
  local t0=$SECONDS
  "${@:2}"
  printf '\033[2m-- %s: %d s\033[0m\n' "$1" $((SECONDS - t0))
}

step data "$BIN/python" scripts/make_vision_data.py build/vision-data
step tiny-model "$BIN/mlxtune" tiny-model --preset vlm --out build/vision-model --force \
  $(printf -- '--corpus %s ' build/vision-data/labels/*.json)
step prepare "$BIN/mlxtune" prepare -c "$CFG" --force
step validate-format "$BIN/mlxtune" validate-format -c "$CFG"
step train "$BIN/mlxtune" train -c "$CFG"
# The tiny random model is not trained to the 95% target here: the figures are reported,
# not gated (gate a real run with --min format_compliance=0.95).
step evaluate "$BIN/mlxtune" evaluate -c "$CFG"
step serve "$BIN/python" scripts/demo_vision_serve.py -c "$CFG"
printf '\ndemo-vision: %d s wall\n' "$SECONDS"
