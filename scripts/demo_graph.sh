#!/usr/bin/env bash
# Training data from a code graph, end to end, in under 2 minutes on a 2-core CPU: seed a code
# graph -> serve it over Bolt on loopback -> prepare (quality scoring + augmentation) ->
# validate-format -> a short train -> evaluate -> the funnel. The graph server always stops.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
CFG=configs/graph.yaml
OUT=build/demo-graph
PORT=27687  # the port configs/graph.yaml names
# FalkorDB's Bolt login is redis' default user without a password; the config names the variables.
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false GRAPH_USER=default GRAPH_PASSWORD=
rm -rf "$OUT" build/runs/demo-graph
mkdir -p "$OUT"

step() {  # step NAME COMMAND...: say it, run it, stop the demo on failure
  printf '\n\033[1m== %s\033[0m  %s\n' "$1" "${*:2}"
  "${@:2}"
}

SERVER=
stop_server() {
  if [ -n "$SERVER" ]; then
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=
  fi
}
trap stop_server EXIT

[ -f build/tiny-model/config.json ] || step tiny-model "$BIN/mlxtune" tiny-model --out build/tiny-model
# FalkorDB stops answering after a client closes its session, so one server seeds and saves
# the graph, and a second one serves the saved graph to prepare.
step seed "$BIN/python" -m mlxtune.code_graph seed "$OUT/graph"
printf '\n\033[1m== graph server\033[0m  bolt://127.0.0.1:%s\n' "$PORT"
"$BIN/python" -m mlxtune.code_graph serve --port "$PORT" --data-dir "$OUT/graph" >"$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do
  grep -q '^bolt://' "$OUT/server.log" && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/server.log" >&2; exit 1; }
  sleep 0.2
done
grep '^bolt://' "$OUT/server.log" || { echo "graph server did not start" >&2; exit 1; }

step prepare "$BIN/mlxtune" prepare -c "$CFG" --force --explain 3
stop_server  # prepare read every row it needs
step validate-format "$BIN/mlxtune" validate-format -c "$CFG"
step train "$BIN/mlxtune" train -c "$CFG"
step evaluate "$BIN/mlxtune" evaluate -c "$CFG" --out "$OUT/eval"

"$BIN/python" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
m = json.load(open(f"{out}/data/manifest.json"))
f, q = m["funnel"], m["quality"]
report = json.load(open(f"{out}/eval/report.json"))["overall"]["adapter"]
splits = " / ".join(f"{s} {n}" for s, n in f["splits"].items())
print(f"\nfunnel: {f['extracted']} extracted -> {q['scored']} scored -> {f['kept_by_quality']} kept "
      f"by quality -> +{f['augmented']} augmented -> {splits}")
scores = [f"{name.replace('_', ' ')} {report[name]:.0%}" for name in ("keyword_accuracy", "token_f1")
          if report.get(name) is not None]  # graph answers carry no keywords unless the query adds them
print("test " + ", ".join(scores))
PY
