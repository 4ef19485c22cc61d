#!/usr/bin/env bash
# Export the benchmark bundle: an 8-expert AdaMoE whose experts are wide enough (hidden 1024,
# one hidden layer, ~420k parameters per expert, experts.onnx ~13 MB) that expert compute
# dominates the ONNX Runtime call overhead, so the expert stage at k=2 costs well under
# 0.4x the dense k=8 call on a 2-core CPU. Then time the expert stage for k = 1, 2, 4, 8 with
# onnxruntime directly (2 intra-op threads) and print the k=2 / k=8 ratio.
#
# Usage: bench/make_bench_bundle.sh [OUT_DIR]      (default out/bench_adamoe; run in the venv)
set -euo pipefail
OUT="${1:-out/bench_adamoe}"
cd "$(dirname "$0")/.."
python -c 'from moe_policy_ros.models.export import main; raise SystemExit(main())' \
  --family adamoe --experts 8 --top-k 2 --expert-hidden 1024 --expert-depth 1 \
  --chunk-length 20 --control-period 0.02 --out "$OUT" --name bench_adamoe --seed 0
python - "$OUT" <<'PY'
import sys
import time

import numpy as np
import onnxruntime as ort

opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
opts.log_severity_level = 3
sess = ort.InferenceSession(f"{sys.argv[1]}/experts.onnx", opts,
                            providers=["CPUExecutionProvider"])
ctx = np.random.default_rng(0).standard_normal((1, sess.get_inputs()[0].shape[1]))
ms = {}
for k in (1, 2, 4, 8):
    feeds = {"context": ctx.astype(np.float32), "expert_idx": np.arange(k, dtype=np.int64),
             "expert_weights": np.full(k, 1.0 / k, np.float32)}
    for _ in range(20):
        sess.run(None, feeds)
    ts = []
    for _ in range(200):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        ts.append(time.perf_counter() - t0)
    ms[k] = 1e3 * float(np.median(ts))
print("expert stage median ms:", {k: round(v, 3) for k, v in ms.items()})
print(f"ratio k=2 / k=8: {ms[2] / ms[8]:.3f} (target <= 0.4)")
PY
