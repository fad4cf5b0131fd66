#!/usr/bin/env bash
# Held-out paraphrase accuracy of the shipped demo (configs/demo.yaml, as `make demo` trains it)
# for one variant of prepare: NAME, then any --set overrides (e.g. an augment section).
# Same steps for every variant; prints keyword accuracy on the held-out test and the trained split.
#   bash scripts/augment_bench.sh none
#   bash scripts/augment_bench.sh templates --set 'prepare.augment={method: templates, factor: 4}'
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
NAME=$1
shift
OUT=build/augment-bench/$NAME
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ -f build/tiny-model/config.json ] || "$BIN/mlxtune" tiny-model --out build/tiny-model
rm -rf "$OUT"
SETS=("$@" --set "data.dir=$OUT/data" --set "train.runs_dir=$OUT/runs" --set "train.name=$NAME"
  --set "train.registry_dir=$OUT/.mlxtune" --set evaluate.compare_base=false)
"$BIN/mlxtune" prepare -c configs/demo.yaml "${SETS[@]}"
"$BIN/mlxtune" train -c configs/demo.yaml "${SETS[@]}" >"$OUT.train.log"
for split in test train; do
  "$BIN/mlxtune" evaluate -c configs/demo.yaml "${SETS[@]}" --split $split --out "$OUT/eval-$split"
done
"$BIN/python" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for split in ("test", "train"):
    r = json.load(open(f"{out}/eval-{split}/report.json"))
    a = r["overall"]["adapter"]
    print(f"{out} {split}: n={r['n_examples']} keyword_accuracy={a['keyword_accuracy']:.3f} token_f1={a['token_f1']:.3f}")
PY
