#!/usr/bin/env bash
# One bundle under every routing strategy, in-process, then the results table and the plot of
# success against mean active experts (docs/results.md's "routing" figure).
#
#   scripts/routing_sweep.sh BUNDLE TASK EPISODES OUT [extra evaluate flags...]
#   scripts/routing_sweep.sh models/demo_smp transfer_cube 20 out/sweep/smp_cube
#
# Runs, into OUT/<name>/eval.json: dense, top-1, top-2, mass tau 0.5 / 0.7 / 0.9, sticky,
# and the bundle's default; seeds 1000.. (evaluation seeds, never used in training). Then
# `moe-policy-ros results` writes OUT/results_table.md and OUT/success_vs_experts.png.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 4 ]]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
BUNDLE=$1 TASK=$2 EPISODES=$3 OUT=$4
shift 4
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
run() {  # name, routing flags...
  local name=$1
  shift
  echo "== $name" >&2
  "$PY" -m moe_policy_ros.cli evaluate --in-process --bundle "$BUNDLE" --task "$TASK" \
    --episodes "$EPISODES" --seed-start 1000 --no-progress --out "$OUT/$name" "$@" "${EXTRA[@]}"
}
EXTRA=("$@")
run default
run dense --routing dense
run top1 --routing topk --k 1
run top2 --routing topk --k 2
run mass0.5 --routing mass --tau 0.5
run mass0.7 --routing mass --tau 0.7
run mass0.9 --routing mass --tau 0.9
run sticky --routing sticky
"$PY" -m moe_policy_ros.cli results --out "$OUT" --eval \
  "$OUT"/default "$OUT"/dense "$OUT"/top1 "$OUT"/top2 "$OUT"/mass0.5 "$OUT"/mass0.7 \
  "$OUT"/mass0.9 "$OUT"/sticky
