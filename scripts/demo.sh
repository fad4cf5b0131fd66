#!/usr/bin/env bash
# The whole lifecycle on the shipped data and a tiny model built here, in about 3 minutes on
# a 2-core CPU: tiny-model -> prepare -> validate-format -> train -> evaluate (answers, retrieval) -> serve
# (chat and one embeddings call) -> bench.
# Every figure in the closing summary is read back from what the steps wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
CFG=configs/demo.yaml
OUT=build/demo
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
rm -rf build/runs/demo build/runs/demo-lora build/.mlxtune "$OUT"/*
TIMES="$OUT/timings.tsv"
: >"$TIMES"

step() {  # step NAME COMMAND...: run, time, and stop the demo on failure
  local name=$1
  shift
  printf '\n\033[1m== %s\033[0m  %s\n' "$name" "$*"
  local t0=$EPOCHREALTIME
  "$@"
  printf '%s\t%s\t%s\n' "$name" "$t0" "$EPOCHREALTIME" >>"$TIMES"
}

step tiny-model "$BIN/mlxtune" tiny-model --out build/tiny-model --force
step prepare "$BIN/mlxtune" prepare -c "$CFG" --force
step validate-format "$BIN/mlxtune" validate-format -c "$CFG"
step train "$BIN/mlxtune" train -c "$CFG"
# Trained questions must be learned (the gate fails the demo otherwise); held-out
# paraphrases are reported as they come out.
step evaluate-train "$BIN/mlxtune" evaluate -c "$CFG" --split train --min keyword_accuracy=0.9
ln -sfn ../runs/demo/eval "$OUT/eval-train"  # the run keeps its report; the summary reads it here
step evaluate-test "$BIN/mlxtune" evaluate -c "$CFG" --split test --out "$OUT/eval-test"
# Embeddings of the same run: does a held-out paraphrase retrieve its fact's answer?
step evaluate-retrieval "$BIN/mlxtune" evaluate -c "$CFG" --task retrieval --out "$OUT/retrieval"
step serve "$BIN/python" scripts/demo_serve.py -c "$CFG" --out "$OUT/serve.json"
step bench "$BIN/mlxtune" bench -c "$CFG" --what generate --json "$OUT/bench.json"
# A second, cheaper run so the registry has something to compare, promote and roll back.
step train-lora "$BIN/mlxtune" train -c "$CFG" --name demo-lora --method lora --iters 60 \
  --set train.learning_rate=2e-4 --set train.lora_rank=16
step runs "$BIN/mlxtune" runs list -c "$CFG"
"$BIN/mlxtune" runs compare -c "$CFG" demo demo-lora
"$BIN/mlxtune" runs promote -c "$CFG" demo
step report "$BIN/mlxtune" report -c "$CFG" demo --out "$OUT/report"
step export "$BIN/mlxtune" export -c "$CFG" demo --out "$OUT/fused" --force
"$BIN/python" scripts/demo_summary.py "$OUT"
