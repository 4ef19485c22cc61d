#!/usr/bin/env bash
# Expert-stage cost vs routing: export an 8-expert AdaMoE bundle sized so that the expert
# stage dominates (context 256, expert MLP 2 x 1024 hidden, H=20, A=14), then bench it on
# ONNX Runtime under dense, top-k (k=2) and gate-mass (tau) routing, and print a Markdown
# summary with the expert-stage ratio k=2 / dense (acceptance: <= 0.4 on the 2-core CPU).
#
# Usage: bench/run_benchmarks.sh [OUT_DIR]   (env: BACKEND, DEVICE, RUNS, WARMUP, THREADS, TAU)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/bench}"
BACKEND="${BACKEND:-onnxruntime}"
DEVICE="${DEVICE:-cpu}"
RUNS="${RUNS:-300}"
WARMUP="${WARMUP:-30}"
THREADS="${THREADS:-0}"
TAU="${TAU:-0.6}"
PY="${PYTHON:-python3}"
BUNDLE="$OUT/adamoe8"
mkdir -p "$OUT"

if [ ! -f "$BUNDLE/policy.yaml" ]; then
  "$PY" -m moe_policy_ros.tools.export --family adamoe --experts 8 --out "$BUNDLE" \
    --name adamoe8_bench --context-dim 256 --expert-hidden 1024 --expert-depth 2 \
    --chunk-length 20 --action-dim 14 --seed 0
fi

common=(--backend "$BACKEND" --device "$DEVICE" --runs "$RUNS" --warmup "$WARMUP"
        --threads "$THREADS" --json)
"$PY" -m moe_policy_ros.tools.bench "$BUNDLE" --routing dense "${common[@]}" > "$OUT/dense.json"
"$PY" -m moe_policy_ros.tools.bench "$BUNDLE" --routing topk --k 2 "${common[@]}" \
  > "$OUT/topk2.json"
"$PY" -m moe_policy_ros.tools.bench "$BUNDLE" --routing mass --tau "$TAU" "${common[@]}" \
  > "$OUT/mass.json"

"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rs = {n: json.loads((out / f"{n}.json").read_text()) for n in ("dense", "topk2", "mass")}
d = rs["dense"]
m = d["machine"]
print(f"machine: {m['cpu']}, {m['cores']} cores, python {m['python']}, "
      f"onnxruntime {m['onnxruntime']}, numpy {m['numpy']}; backend {d['backend']}; "
      f"date {d['date']}; runs {d['runs']} (+{d['warmup']} warmup)")
print()
print("| routing | mean active experts | experts median ms | experts p99 ms "
      "| encoder median ms | total median ms | experts vs dense |")
print("|---|---|---|---|---|---|---|")
dense_ms = d["stages"]["experts"]["median_ms"]
for name, r in rs.items():
    cfg = r["routing_config"]
    label = {"dense": "dense", "topk2": f"topk k={cfg['k']}",
             "mass": f"mass tau={cfg['tau']} ({cfg['mass']})"}[name]
    st = r["stages"]
    print(f"| {label} | {r['mean_active_experts']:.2f} | {st['experts']['median_ms']:.2f} "
          f"| {st['experts']['p99_ms']:.2f} | {st['encoder']['median_ms']:.2f} "
          f"| {st['total']['median_ms']:.2f} "
          f"| {st['experts']['median_ms'] / dense_ms:.2f}x |")
ratio = rs["topk2"]["stages"]["experts"]["median_ms"] / dense_ms
print()
print(f"expert stage k=2 / dense (medians): {ratio:.3f} "
      f"({'PASS' if ratio <= 0.4 else 'FAIL'}: acceptance <= 0.4)")
PYEOF
