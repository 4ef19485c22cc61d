"""Inference cost per stage on ONNX Runtime CPU, fp32, batch 1 (issue 14 item 5).

For each bundle: per-stage median/p99 (``PolicyOutput.timings_ms``) under the bundle's
routing, then the expert stage against k = 1..N (top-k routing) and the bytes of expert
weights the expert stage reads and copies per chunk. Flow bundles are measured twice: with
the active experts' weights gathered once per chunk (``gather_once``, the default) and per
Euler step as before (``gather_once=False``), and with RTC guidance (``rtc``: the previous
chunk shifted by the execution horizon s = 5 as the committed actions, d = 3).

Bundles: the shipped demo bundles, and with ``--large`` two generated ~150M-parameter bundles
(LAR-MoE scale: ``lar`` with MLP experts and ``smp`` with flow experts), exported at bench
time into a temporary directory that is deleted afterwards (never committed).

Bytes per chunk are computed from the graph, not counted by hardware: S = bytes of one
expert's slice of every weight tensor the graph gathers with ``expert_idx``, O = the other
initializers of the expert stage. A Gather reads k*S and writes a k*S copy that its consumer
reads again: per call ``read = 2*k*S + O``, ``copied = k*S``. Hoisted flow (gather once): one
prepare call (read 2*k*S + O_prep) plus per step the boundary tensors actually bound (their
nbytes) + the step graph's initializers.

The machine's load average is recorded with every bundle: on a shared machine the numbers
are provisional.

    python bench/inference.py [--large] [--runs 300] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from moe_policy_ros.core.backends import make_backend  # noqa: E402
from moe_policy_ros.core.backends.ort_hoist import HoistedStage  # noqa: E402
from moe_policy_ros.core.bundle import load_bundle  # noqa: E402
from moe_policy_ros.core.config import RoutingConfig  # noqa: E402
from moe_policy_ros.core.rtc import RtcGuidance  # noqa: E402
from moe_policy_ros.core.runtime import MoEPolicy, synthetic_observation  # noqa: E402

STAGES = ("preprocess", "encoder", "routing", "experts", "total")
POOL = 8

# ~150M parameters: 8 experts x ~17.7M (context 512 -> 4 x 2304 hidden -> H*A = 280) + encoder
LARGE: dict[str, list[str]] = {
    "lar150m": ["--family", "lar", "--experts", "8", "--context-dim", "512",
                "--expert-hidden", "2304", "--expert-depth", "4", "--chunk-length", "20",
                "--action-dim", "14", "--trunk-layers", "2", "--trunk-heads", "8",
                "--vision-channels", "32", "--top-k", "2"],
    "smp150m": ["--family", "smp", "--experts", "8", "--context-dim", "512",
                "--expert-hidden", "2304", "--expert-depth", "4", "--chunk-length", "20",
                "--action-dim", "14", "--trunk-layers", "2", "--trunk-heads", "8",
                "--vision-channels", "32", "--top-k", "2", "--sampler-steps", "10"],
}  # fmt: skip


def _stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, np.float64)
    return {"median": float(np.median(a)), "p99": float(np.percentile(a, 99)),
            "min": float(a.min())}  # fmt: skip


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _params(bundle: Path) -> int:
    import onnx

    n = 0
    for f in ("encoder.onnx", "experts.onnx"):
        m = onnx.load(str(bundle / f))
        n += sum(int(np.prod(t.dims, dtype=np.int64)) for t in m.graph.initializer)
    return n


def gathered_slice_bytes(experts_onnx: Path, num_experts: int) -> tuple[int, int]:
    """(S, O): bytes of one expert's slice of the gathered weights; other initializer bytes."""
    import onnx

    m = onnx.load(str(experts_onnx))
    sizes = {t.name: int(np.prod(t.dims, dtype=np.int64)) * 4 for t in m.graph.initializer}
    gathered = {n.input[0] for n in m.graph.node
                if n.op_type == "Gather" and n.input[1] == "expert_idx" and n.input[0] in sizes}
    s = sum(sizes[g] for g in gathered) // num_experts
    o = sum(v for k, v in sizes.items() if k not in gathered)
    return s, o


def _policy(bundle: Any, backend: Any, routing: RoutingConfig | None,
            gather_once: bool) -> MoEPolicy:  # fmt: skip
    p = MoEPolicy(bundle, backend, routing=routing, gather_once=gather_once)
    p.warmup(3)
    return p


def _time(policy: MoEPolicy, obs: list[Any], runs: int) -> tuple[dict[str, list[float]], float]:
    t: dict[str, list[float]] = {s: [] for s in STAGES}
    ks: list[int] = []
    for i in range(runs):
        out = policy.infer(obs[i % len(obs)])
        for s in STAGES:
            t[s].append(out.timings_ms[s])
        ks.append(out.decision.k)
    return t, float(np.mean(ks))


def bench_bundle(path: Path, runs: int, threads: int, k_runs: int) -> dict[str, Any]:
    bundle = load_bundle(path)
    m = bundle.manifest
    backend = make_backend("onnxruntime", intra_op_threads=threads)
    obs = [synthetic_observation(m, seed=i) for i in range(POOL)]
    e = m.experts.count
    s_bytes, o_bytes = gathered_slice_bytes(bundle.stage_path("experts"), e)
    steps = m.sampler.steps if m.is_flow and m.sampler else 1
    res: dict[str, Any] = {
        "bundle": path.name, "family": m.family, "experts": e, "params": _params(path),
        "flow_steps": steps if m.is_flow else 0, "load_before": _load(),
        "expert_slice_bytes": s_bytes, "expert_other_bytes": o_bytes,
    }  # fmt: skip
    variants = [True, False] if m.is_flow else [True]
    res["default_routing"] = {}
    for once in variants:
        pol = _policy(bundle, backend, None, once)
        t, mean_k = _time(pol, obs, runs)
        res["default_routing"]["gather_once" if once else "gather_per_step"] = {
            "strategy": m.routing.strategy, "mean_k": mean_k,
            **{s: _stats(v) for s, v in t.items()},
        }  # fmt: skip
    if m.is_flow:  # rtc-guided chunks: committed = previous chunk shifted by s, d = 3
        h, s_exec = m.action.chunk_length, min(5, m.action.chunk_length - 1)
        pol = _policy(bundle, backend, None, True)
        prev = pol.infer(obs[0]).actions
        t = {s: [] for s in STAGES}
        for i in range(runs):
            g = RtcGuidance(prev[s_exec:], min(3, h - s_exec), s_exec)
            out = pol.infer(obs[i % len(obs)], guidance=g)
            prev = out.actions
            for s in STAGES:
                t[s].append(out.timings_ms[s])
        res["rtc"] = {"delay_steps": min(3, h - s_exec), "execution_horizon": s_exec,
                      **{s: _stats(v) for s, v in t.items()}}  # fmt: skip
    res["k_sweep"] = []
    for k in range(1, e + 1):
        row: dict[str, Any] = {"k": k}
        for once in variants:
            pol = _policy(bundle, backend, RoutingConfig(strategy="topk", k=k), once)
            t, _ = _time(pol, obs, k_runs)
            key = "gather_once" if once else "gather_per_step"
            row[key] = {"experts": _stats(t["experts"]), "total": _stats(t["total"])}
            stage = pol.stages["experts"]
            if not m.is_flow:
                row["bytes_read"], row["bytes_copied"] = 2 * k * s_bytes + o_bytes, k * s_bytes
            elif isinstance(stage, HoistedStage):
                per_step = stage.bound_bytes() + stage.step_initializer_bytes
                row["bytes_read_once"] = 2 * k * s_bytes + o_bytes + steps * per_step
                row["bytes_copied_once"] = k * s_bytes
            else:
                row["bytes_read_per_step"] = steps * (2 * k * s_bytes + o_bytes)
                row["bytes_copied_per_step"] = steps * k * s_bytes
        res["k_sweep"].append(row)
    res["load_after"] = _load()
    return res


def _export(name: str, argv: list[str], root: Path) -> Path:
    from moe_policy_ros.tools.export import main as export_main

    out = root / name
    t0 = time.monotonic()
    rc = export_main([*argv, "--out", str(out), "--name", name, "--seed", "0"])
    if rc != 0:
        raise SystemExit(f"export of {name} failed ({rc})")
    print(f"exported {name} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return out


def _ms(x: dict[str, float]) -> str:
    return f"{x['median']:.2f} / {x['p99']:.2f}"


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """Markdown tables of a report (what docs/benchmarks.md shows)."""
    lines = [f"{report['date']}, {report['machine']}, onnxruntime {report['onnxruntime']} CPU, "
             f"{report['threads']} intra-op thread(s), fp32, batch 1. `{report['command']}`", ""]
    lines += ["| bundle | params | routing (mean k) | variant | preprocess | encoder | routing "
              "| experts | total | load avg before/after |", "|" + "---|" * 10]
    for r in report["results"]:
        load = f"{r['load_before'][0]} / {r['load_after'][0]}"
        rows = list(r["default_routing"].items())
        if "rtc" in r:
            rtc = r["rtc"]
            label = f"rtc guided (d={rtc['delay_steps']}, s={rtc['execution_horizon']})"
            rows.append((label, rtc))
        for variant, v in rows:
            strat = r["default_routing"]["gather_once"]
            lines.append(
                f"| {r['bundle']} | {r['params'] / 1e6:.1f} M | {strat['strategy']} "
                f"({strat['mean_k']:.2f}) | {variant} | "
                + " | ".join(_ms(v[s]) for s in STAGES) + f" | {load} |"
            )
    lines += ["", "Expert stage vs k (top-k routing), median / p99 ms, and expert weight MB "
              "read / copied per chunk:", ""]
    lines += ["| bundle | k | experts (gather once) | MB read / copied | experts (gather per "
              "step) | MB read / copied |", "|" + "---|" * 6]
    for r in report["results"]:
        for row in r["k_sweep"]:
            once = row["gather_once"]["experts"]
            if "bytes_read" in row:  # MLP experts: one call per chunk
                lines.append(f"| {r['bundle']} | {row['k']} | {_ms(once)} | "
                             f"{_mb(row['bytes_read'])} / {_mb(row['bytes_copied'])} | - | - |")
                continue
            per = row["gather_per_step"]["experts"]
            lines.append(
                f"| {r['bundle']} | {row['k']} | {_ms(once)} | {_mb(row['bytes_read_once'])} / "
                f"{_mb(row['bytes_copied_once'])} | {_ms(per)} | "
                f"{_mb(row['bytes_read_per_step'])} / {_mb(row['bytes_copied_per_step'])} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundles", nargs="*", type=Path,
                   default=[REPO / "models" / "demo_smp", REPO / "models" / "demo_adamoe"])
    p.add_argument("--large", action="store_true", help="also generate and bench ~150M bundles")
    p.add_argument("--runs", type=int, default=300, help="chunks per default-routing run")
    p.add_argument("--k-runs", type=int, default=100, help="chunks per k of the sweep")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--markdown", type=Path, default=None,
                   help="print the Markdown tables of a saved JSON report and exit")
    args = p.parse_args(argv)  # fmt: skip
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    import onnxruntime

    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "onnxruntime": onnxruntime.__version__, "threads": args.threads,
        "command": " ".join(["python", "bench/inference.py", *(argv or sys.argv[1:])]),
        "results": [],
    }  # fmt: skip
    for b in args.bundles:
        print(f"bench {b} ...", file=sys.stderr)
        report["results"].append(bench_bundle(b, args.runs, args.threads, args.k_runs))
    if args.large:
        with tempfile.TemporaryDirectory(prefix="moe_bench_") as tmp:
            for name, exp in LARGE.items():
                path = _export(name, exp, Path(tmp))
                print(f"bench {name} ...", file=sys.stderr)
                runs, k_runs = max(50, args.runs // 6), max(20, args.k_runs // 5)
                report["results"].append(bench_bundle(path, runs, args.threads, k_runs))
                if args.json:  # partial results survive a later failure
                    args.json.write_text(json.dumps(report, indent=1))
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
