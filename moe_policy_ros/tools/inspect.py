"""`moe-policy-ros inspect`: verify a bundle and print what a user needs to know.

Verification is :func:`load_bundle` (manifest schema, stage and checkpoint SHA-256, optional
pinned manifest SHA-256, path containment, graph I/O contract), so a bundle that prints is a
bundle the runtime will load. Parameter counts come from the ONNX initializers (no torch
needed): per stage, per expert (expert stage / E) and active at the default k.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from moe_policy_ros.core.bundle import BundleError, LoadedBundle, load_bundle
from moe_policy_ros.tools import module_main

__all__ = ["add_arguments", "bundle_summary", "onnx_parameter_count", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``moe-policy-ros inspect``."""
    parser.add_argument("bundle", type=Path, help="bundle directory (holds policy.yaml)")
    parser.add_argument("--sha256", default="", help="pinned manifest SHA-256 to check")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def onnx_parameter_count(path: Path) -> int:
    """Values in the initializers and Constant nodes (external data counted by its dims)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    tensors = list(model.graph.initializer)
    tensors += [a.t for node in model.graph.node if node.op_type == "Constant"
                for a in node.attribute if a.name == "value"]
    total = 0
    for t in tensors:
        n = 1
        for d in t.dims:
            n *= int(d)
        total += n
    return total


def _default_k(b: LoadedBundle) -> int | str:
    r = b.manifest.routing
    e = b.manifest.experts.count
    if r.strategy == "dense":
        return e
    if r.strategy == "topk" or (r.strategy == "sticky" and r.sticky_base == "topk"):
        return min(r.k, e)
    return f"{r.k_min}..{r.k_max or e} (gate mass {r.mass} >= {r.tau})"


def bundle_summary(b: LoadedBundle) -> dict[str, Any]:
    m = b.manifest
    e = m.experts.count
    params = {name: onnx_parameter_count(p) for name, p in b.stage_paths.items()}
    k = _default_k(b)
    per_expert = params["experts"] // e
    out: dict[str, Any] = {
        "path": str(b.path),
        "name": m.name,
        "family": m.family,
        "manifest_sha256": b.manifest_sha256,
        "experts": {"count": e, "labels": list(m.experts.labels)},
        "routing_default": m.routing.model_dump(mode="json"),
        "observation": {
            "cameras": [
                {"name": c.name, "height": c.height, "width": c.width, "mean": list(c.mean),
                 "std": list(c.std)}
                for c in m.observation.cameras
            ],
            "proprio_joints": list(m.observation.proprio.joints),
        },
        "action": {
            "dim": m.action.dim,
            "joints": list(m.action.joints),
            "chunk_length": m.action.chunk_length,
            "control_period_s": m.action.control_period_s,
            "chunk_duration_s": round(m.action.chunk_length * m.action.control_period_s, 6),
        },
        "context_dim": m.context_dim,
        "latent_dim": m.latent_dim,
        "sampler": m.sampler.model_dump(mode="json") if m.sampler else None,
        "combination": m.combination_weights,
        "combination_declared": m.combination is not None,
        "novelty": m.novelty.model_dump(mode="json") if m.novelty else None,
        "stages": {
            name: {
                "file": m.stages[name].file,
                "bytes": b.stage_sizes[name],
                "sha256": m.stages[name].sha256,
                "sha256_verified": True,
                "external_data": [str(p) for p in b.external_data.get(name, ())],
                "parameters": params[name],
            }
            for name in ("encoder", "experts")
        },
        "checkpoint_sha256": m.provenance.checkpoint_sha256 or None,
        "parameters": {
            "total": params["encoder"] + params["experts"],
            "per_expert": per_expert,
            "active_at_default_k": (params["encoder"] + per_expert * k)
            if isinstance(k, int) else None,
            "default_k": k,
        },
        "provenance": m.provenance.model_dump(mode="json"),
        "parity_max_abs_err": m.provenance.parity_max_abs_err,
    }
    return out


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _text(s: dict[str, Any]) -> str:
    r = s["routing_default"]
    lines = [
        f"bundle     {s['name']}  ({s['path']})",
        f"family     {s['family']}",
        f"manifest   sha256 {s['manifest_sha256']}",
        f"experts    {s['experts']['count']}: " + ", ".join(
            f"{i}={lab}" for i, lab in enumerate(s["experts"]["labels"])),
        f"routing    default {r['strategy']} (k={r['k']}, tau={r['tau']}, mass={r['mass']}, "
        f"k_min={r['k_min']}, k_max={r['k_max'] or 'E'}, sticky_base={r['sticky_base']}, "
        f"margin={r['margin']}, min_dwell_chunks={r['min_dwell_chunks']})",
    ]
    for c in s["observation"]["cameras"]:
        lines.append(f"camera     {c['name']}: {c['height']}x{c['width']}x3 uint8 RGB, "
                     f"mean {c['mean']} std {c['std']}")
    pj = s["observation"]["proprio_joints"]
    lines.append(f"proprio    {len(pj)}: {', '.join(pj)}")
    a = s["action"]
    lines.append(f"action     {a['dim']} joints x H={a['chunk_length']} steps @ "
                 f"{a['control_period_s']} s = {a['chunk_duration_s']} s/chunk: "
                 + ", ".join(a["joints"]))
    lines.append(f"context    D={s['context_dim']}"
                 + (f", latent Z={s['latent_dim']}" if s["latent_dim"] else ""))
    if s["sampler"]:
        sp = s["sampler"]
        lines.append(f"sampler    {sp['kind']}, {sp['steps']} steps, rank R={sp['rank']}")
    lines.append(f"combine    {s['combination']} weights"
                 + ("" if s["combination_declared"] else " (not declared: family default)"))
    nv = s["novelty"]
    if nv:
        lines.append(f"novelty    {nv['score']} over {nv['samples']} training observations: "
                     f"min {nv['min']:.3g}, p50 {nv['p50']:.3g}, p95 {nv['p95']:.3g}, "
                     f"p99 {nv['p99']:.3g}, max {nv['max']:.3g} (for ood_energy_threshold)")
    elif s["family"] == "dibm":
        lines.append("novelty    not calibrated: energies have no fixed scale")
    for name, st in s["stages"].items():
        ext = f", external data {st['external_data']}" if st["external_data"] else ""
        lines.append(f"stage      {name}: {st['file']} {_fmt_bytes(st['bytes'])}, "
                     f"{st['parameters']:,} params, sha256 {st['sha256'][:16]}... verified{ext}")
    if s["checkpoint_sha256"]:
        lines.append(f"checkpoint exported from sha256 {s['checkpoint_sha256'][:16]}... "
                     "(kept outside the bundle; the torch backend checks it)")
    else:
        lines.append("checkpoint none recorded (torch backend unavailable for this bundle)")
    p = s["parameters"]
    active = (f", active at default k={p['default_k']}: {p['active_at_default_k']:,}"
              if p["active_at_default_k"] is not None else f", default k {p['default_k']}")
    lines.append(f"parameters {p['total']:,} total, {p['per_expert']:,} per expert{active}")
    pv = s["provenance"]
    lines.append(f"provenance exporter {pv['exporter'] or '?'}, created {pv['created'] or '?'}, "
                 f"torch {pv['torch_version'] or '?'}, opset {pv['onnx_opset'] or '?'}")
    if pv["source"]:
        lines.append(f"source     {pv['source']}")
    par = s["parity_max_abs_err"]
    lines.append("parity     " + ("not recorded" if par is None else
                                  f"max abs err {par:g} (onnxruntime vs torch)")
                 + (f"; {pv['notes']}" if pv["notes"] else ""))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Verify and print; 0 when the bundle verifies, 2 (with the reason on stderr) if not."""
    try:
        b = load_bundle(args.bundle, expected_sha256=args.sha256)
        summary = bundle_summary(b)
    except BundleError as err:
        print(f"inspect: bundle refused: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else _text(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    return module_main("python -m moe_policy_ros.tools.inspect", add_arguments,
                       run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
