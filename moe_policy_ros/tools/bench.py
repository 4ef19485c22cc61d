"""`moe-policy-ros bench`: time each inference stage of a bundle under a routing strategy.

The bundle is verified and loaded like the node does (:func:`load_bundle`, :func:`build_backend`,
:class:`MoEPolicy`), warmed up, then run ``--runs`` times on a fixed pool of seeded random
observations (so gate-dependent strategies see varied inputs). Reported per stage
(``preprocess``, ``encoder``, ``routing``, ``experts``, ``total``, as in
``PolicyOutput.timings_ms``): median, p90, p99, mean and min in ms; plus the mean number of
active experts, the machine, the versions and the date. ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from moe_policy_ros.backend_factory import build_backend
from moe_policy_ros.core.backends import KINDS, BackendUnavailable
from moe_policy_ros.core.bundle import BundleError, load_bundle
from moe_policy_ros.core.config import RoutingConfig
from moe_policy_ros.core.runtime import MoEPolicy, ObservationError, synthetic_observation
from moe_policy_ros.tools import add_routing_arguments, module_main, routing_overrides

MIN_RUNS = 200
STAGES = ("preprocess", "encoder", "routing", "experts", "total")
OBS_POOL = 16

__all__ = ["MIN_RUNS", "add_arguments", "machine_info", "run", "run_header"]


def _runs(text: str) -> int:
    n = int(text)
    if n < MIN_RUNS:
        raise argparse.ArgumentTypeError(
            f"--runs must be >= {MIN_RUNS} (got {n}): p99 needs enough samples"
        )
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``moe-policy-ros bench``."""
    parser.add_argument("bundle", type=Path, help="bundle directory (holds policy.yaml)")
    parser.add_argument("--backend", choices=KINDS, default="auto", help="inference backend")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_routing_arguments(parser, mass=True)
    parser.add_argument("--runs", type=_runs, default=MIN_RUNS, help=f">= {MIN_RUNS}")
    parser.add_argument("--warmup", type=int, default=20, help="untimed chunks first")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: auto)")
    parser.add_argument("--fp16", action="store_true", help="TensorRT FP16 engines")
    parser.add_argument("--seed", type=int, default=0, help="observation and noise seed")
    parser.add_argument("--sha256", default="", help="pinned manifest SHA-256")
    parser.add_argument("--checkpoint", default=None,
                        help="weights-only checkpoint the bundle came from (backend torch)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
    }
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def run_header(script: str, argv: list[str]) -> dict[str, Any]:
    """The fields every ``bench/`` script's result starts with: when, on what, the command
    that repeats it (``python SCRIPT ARGV``) and the load it ran under."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "command": " ".join(["python", script, *argv]),
        "load_average_1min": os.getloadavg()[0],
    }


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "median_ms": round(float(np.median(a)), 4),
        "p90_ms": round(float(np.percentile(a, 90)), 4),
        "p99_ms": round(float(np.percentile(a, 99)), 4),
        "mean_ms": round(float(a.mean()), 4),
        "min_ms": round(float(a.min()), 4),
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark and return the result object (what ``--json`` prints)."""
    bundle = load_bundle(args.bundle, expected_sha256=args.sha256)
    backend = build_backend(args.backend, args.device, intra_op_threads=args.threads,
                            fp16=args.fp16, checkpoint=args.checkpoint)
    overrides = routing_overrides(args)
    routing = RoutingConfig(**overrides) if overrides else None
    policy = MoEPolicy(bundle, backend, routing, seed=args.seed)
    policy.warmup(args.warmup)
    pool = [synthetic_observation(bundle.manifest, seed=args.seed + i) for i in range(OBS_POOL)]
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    ks: list[int] = []
    for i in range(args.runs):
        out = policy.infer(pool[i % OBS_POOL])
        for s in STAGES:
            samples[s].append(out.timings_ms[s])
        ks.append(out.decision.k)
    m = bundle.manifest
    hist = {str(k): int(c) for k, c in zip(*np.unique(ks, return_counts=True), strict=True)}
    return {
        "bundle": str(bundle.path),
        "name": m.name,
        "family": m.family,
        "num_experts": m.experts.count,
        "manifest_sha256": bundle.manifest_sha256,
        "backend": backend.name,
        "backend_description": backend.describe(),
        "routing": policy.routing_config.strategy,
        "routing_config": policy.routing_config.model_dump(mode="json"),
        "runs": args.runs,
        "warmup": args.warmup,
        "mean_active_experts": round(float(np.mean(ks)), 4),
        "active_experts_histogram": hist,
        "stages": {s: _stats(samples[s]) for s in STAGES},
        "machine": machine_info(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(sys.argv),
    }


def _table(r: dict[str, Any]) -> str:
    lines = [
        f"{r['name']} ({r['family']}, {r['num_experts']} experts) on {r['backend_description']}",
        f"routing {r['routing']}: mean active experts {r['mean_active_experts']} "
        f"over {r['runs']} runs (histogram k: count {r['active_experts_histogram']})",
        f"{'stage':<12}{'median ms':>12}{'p90 ms':>12}{'p99 ms':>12}{'mean ms':>12}",
    ]
    for s, st in r["stages"].items():
        lines.append(
            f"{s:<12}{st['median_ms']:>12.3f}{st['p90_ms']:>12.3f}{st['p99_ms']:>12.3f}"
            f"{st['mean_ms']:>12.3f}"
        )
    mi = r["machine"]
    lines.append(f"machine: {mi['cpu']}, {mi['cores']} cores, python {mi['python']}, "
                 f"onnxruntime {mi['onnxruntime']}; {r['date']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Benchmark and print (table or ``--json``); 0 on success, 2 on a bundle/backend error."""
    try:
        result = bench(args)
    except (BundleError, BackendUnavailable, ObservationError, ValueError) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main("python -m moe_policy_ros.tools.bench", add_arguments, run,
                       argv)


if __name__ == "__main__":
    raise SystemExit(main())
