#!/usr/bin/env bash
# Quick benchmark suite (make bench): the tiny and small presets, mlxtune beside raw mlx-lm.
# Writes build/bench/<preset>.json and .md, prints the tables. Under 10 minutes on 2 CPU cores.
# Env: PRESETS="tiny small" (default), REPEAT (default: the config's), WHAT=all, PY=python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=build/bench
mkdir -p "$OUT/models"

# Canonical chat data that both `mlxtune train` and raw `mlx_lm lora` read (as tests/conftest.py).
"$PY" - "$OUT/data" <<'PY'
import json, sys
from pathlib import Path
from mlxtune.formats import to_canonical
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
splits = {"train": [], "valid": [], "test": []}
for i, line in enumerate(Path("data/domain/universal_ai_tools.jsonl").read_text().splitlines()):
    row = json.loads(line)
    suffix = row["id"].rsplit("-", 1)[-1]
    split = "test" if suffix == "d" else "valid" if suffix == "c" and i % 3 == 0 else "train"
    splits[split].append(json.dumps(to_canonical(row)))
for name, rows in splits.items():
    (out / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
PY

# The small preset (25M parameters) decodes ~6x slower than tiny: one repeat and a lighter serve
# load keep the suite under 10 minutes once both sides run (tiny ~4 min, small ~2 min here).
SMALL_SETS=(--set bench.repeat=1 --set bench.train_steps=6 --set bench.gen_tokens=32
  --set "bench.prompt_lengths=[128]" --set "bench.concurrency=[1,8]"
  --set bench.requests_per_level=8 --set bench.sustained_requests=32)

start=$(date +%s)
for preset in ${PRESETS:-tiny small}; do
  model="$OUT/models/$preset"
  [ -f "$model/config.json" ] || "$PY" -m mlxtune tiny-model --preset "$preset" --out "$model" --force
  sets=()
  [ "$preset" = small ] && sets=("${SMALL_SETS[@]}")
  [ -n "${REPEAT:-}" ] && sets+=(--set "bench.repeat=$REPEAT")
  "$PY" -m mlxtune bench -c configs/bench.yaml --what "${WHAT:-all}" --baseline mlx-lm \
    --set model.path="$model" --set data.dir="$OUT/data" ${sets[@]+"${sets[@]}"} \
    --json "$OUT/$preset.json"
  "$PY" scripts/bench_to_md.py "$OUT/$preset.json" > "$OUT/$preset.md"
done
echo "bench suite: $(( $(date +%s) - start )) s; JSON and markdown in $OUT/"
