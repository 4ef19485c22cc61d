"""Closed-loop success under injected inference delay: synchronous loop vs asynchronous merges
(issue 14 item 4).

For each extra inference delay (ms) and each loop, the same episodes (seeds ``--seed-start``
.. ``+ N - 1``) of the ALOHA sim run in-process (``moe_policy_ros.rollout``) through the policy
node's ``PolicyPipeline`` on simulated time: the delay is simulated (a chunk arrives that long
after its observation; the real compute time does not count), so the table is deterministic
and does not depend on the machine. Loops:

* ``sync``: infer, then act, as LeRobot's and openpi's example clients do: the robot holds
  while inference runs, then executes ``--sync-horizon`` steps of the chunk (default: all of
  it), then observes again;
* ``ensemble``, ``blend``, ``rtc``: the asynchronous pipeline with that merge mode (the robot
  keeps executing the held chunks while the next is computed; rtc needs a flow bundle);
  ``rtc_residual``: rtc with ``execution.rtc_residual_blend`` (``core/rtc.py``).

Per cell: success k/N with its Wilson 95% interval, missed deadlines per episode (the robot
had no policy command between two chunks: it waited, or a chunk ran out), the command age
p50/p99 (a command's tick minus the stamp of the newest chunk it came from) and the idle time
per episode, and the seams: the policy command's largest joint change (mrad) from one tick to
the next where the newest chunk in use changed, beside the same at the other ticks (a
continuous merge keeps the first close to the second). Everything else comes from the
parameter file (default: ``make demo``'s),
including the inference trigger and rate.

Every loop runs the same seeds, so two loops are compared seed by seed: a second table gives,
for each loop against ``--reference`` (default ``sync``), the seeds only it succeeded on, the
seeds only the reference succeeded on, and the two-sided exact McNemar p-value of that split
(``evaluation.metrics.mcnemar_exact``). Reports of the same seeds and delays run in separate
processes (loops split for two cores) are put together with ``--combine``.

    python bench/latency_robustness.py BUNDLE --task transfer_cube --episodes 50 \\
        --seed-start 1000 --delays 0,100,200,300 [--loops sync,ensemble,blend,rtc] \\
        [--params config/sim_dual_arm.yaml] [--json out.json] [--markdown out.md]
    python bench/latency_robustness.py --combine a.json b.json [--reference sync] \\
        [--json all.json] [--markdown all.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from moe_policy_ros.core.config import RuntimeConfig, load_config  # noqa: E402
from moe_policy_ros.evaluation.metrics import (  # noqa: E402
    mcnemar_exact,
    percentile,
    wilson_interval,
)
from moe_policy_ros.rollout import (  # noqa: E402
    EpisodeResult,
    InProcessRunner,
    LoopSettings,
    default_params_file,
    resolve_bundle,
)

LOOPS = ("sync", "ensemble", "blend", "rtc", "rtc_residual")


def _with_merge(cfg: RuntimeConfig, loop: str) -> RuntimeConfig:
    """The asynchronous pipeline with merge ``loop``; ``rtc`` is the paper's method alone,
    ``rtc_residual`` rtc with ``execution.rtc_residual_blend`` (core/rtc.py, low-rank
    chunks), whatever the parameter file says."""
    update: dict[str, Any] = {"merge": "rtc" if loop == "rtc_residual" else loop}
    if loop in ("rtc", "rtc_residual"):
        update["rtc_residual_blend"] = loop == "rtc_residual"
    ex = cfg.policy.execution.model_copy(update=update)
    return cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"execution": ex})})


def cell(results: list[EpisodeResult], period_ms: float) -> dict[str, Any]:
    """One table cell from its episodes."""
    n = len(results)
    k = sum(r.success for r in results)
    ages = np.concatenate([np.asarray(r.command_ages_ms) for r in results] or [np.zeros(0)])
    idle = [float(sum(r.idle_gaps_ms)) for r in results]
    seams = np.concatenate([np.asarray(r.seam_jumps_mrad) for r in results] or [np.zeros(0)])
    steps = np.concatenate([np.asarray(r.step_jumps_mrad) for r in results] or [np.zeros(0)])
    return {
        "episodes": n,
        "successes": k,
        "ci95": list(wilson_interval(k, n)),
        "missed_deadlines_per_episode": float(np.mean([r.missed_deadlines for r in results]))
        if n else None,
        "command_age_ms_p50": percentile(ages, 50),
        "command_age_ms_p99": percentile(ages, 99),
        "idle_ms_per_episode": float(np.mean(idle)) if n else None,
        # the policy command's largest joint change (mrad) at a switch to a newer chunk and
        # between the other policy-driven ticks: how continuous the seams are
        "seam_jump_mrad_p50": percentile(seams, 50),
        "seam_jump_mrad_p99": percentile(seams, 99),
        "step_jump_mrad_p50": percentile(steps, 50),
        "step_jump_mrad_p99": percentile(steps, 99),
        "errors": [f"seed {r.seed}: {r.error}" for r in results if r.error],
        "period_ms": period_ms,
        "succeeded_seeds": [r.seed for r in results if r.success],
    }


def paired(report: dict[str, Any], reference: str) -> dict[str, dict[str, Any]]:
    """Each other loop against ``reference``, seed by seed, per delay (``loop@delay``): the
    seeds only the loop succeeded on (``only_loop``), only the reference (``only_reference``)
    and the exact McNemar p-value; empty without the reference loop."""
    cells, out = report["cells"], {}
    if reference not in report["loops"]:
        return out
    for loop in report["loops"]:
        if loop == reference:
            continue
        for d in report["delays_ms"]:
            a, r = cells[f"{loop}@{d:g}"], cells[f"{reference}@{d:g}"]
            mine, theirs = set(a["succeeded_seeds"]), set(r["succeeded_seeds"])
            b, c = sorted(mine - theirs), sorted(theirs - mine)
            out[f"{loop}@{d:g}"] = {"only_loop": b, "only_reference": c,
                                    "p_mcnemar": mcnemar_exact(len(b), len(c))}
    return out


def combine(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Reports of the same bundle, task, seeds and delays (loops run in separate processes)
    as one, loops in order of appearance (the paired comparison is made by the caller)."""
    first = reports[0]
    for r in reports[1:]:
        for key in ("bundle", "task", "seeds", "delays_ms"):
            if r[key] != first[key]:
                raise SystemExit(f"--combine: {key} differs: {first[key]!r} vs {r[key]!r}")
    loops = [loop for r in reports for loop in r["loops"]]
    if len(set(loops)) != len(loops):
        raise SystemExit(f"--combine: a loop appears twice in {loops}")
    return dict(first, loops=loops, cells={k: v for r in reports for k, v in r["cells"].items()},
                command=" ; ".join(r["command"] for r in reports))


def run(args: argparse.Namespace) -> dict[str, Any]:
    params = Path(args.params) if args.params else default_params_file()
    base = load_config(params)
    bundle = resolve_bundle(args.bundle, params)
    delays = [float(d) for d in args.delays.split(",")]
    loops = [s for s in args.loops.split(",") if s]
    bad = [s for s in loops if s not in LOOPS]
    if bad:
        raise SystemExit(f"--loops: unknown {bad}; choose from {list(LOOPS)}")
    seeds = list(range(args.seed_start, args.seed_start + args.episodes))
    period_ms = base.policy.control_period_s * 1e3
    cells: dict[str, dict[str, Any]] = {}
    for loop in loops:
        cfg = base if loop == "sync" else _with_merge(base, loop)
        for delay in delays:
            settings = LoopSettings(
                max_steps=args.max_steps, render_size=tuple(args.render_size),  # type: ignore[arg-type]
                inference_delay_s=delay / 1e3, loop="sync" if loop == "sync" else "async",
                sync_horizon=args.sync_horizon,
            )
            with InProcessRunner(bundle, args.task, cfg, settings=settings,
                                 policy_seed=args.policy_seed) as runner:
                results = [runner.run(s) for s in seeds]
            cells[f"{loop}@{delay:g}"] = cell(results, period_ms)
            c = cells[f"{loop}@{delay:g}"]
            print(f"{loop:>8} {delay:5.0f} ms: {c['successes']}/{c['episodes']}", flush=True)
    p = base.policy
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor()}".strip(),
        "command": " ".join(["python", "bench/latency_robustness.py", *args.argv]),
        "bundle": str(bundle),
        "task": args.task,
        "seeds": seeds,
        "delays_ms": delays,
        "loops": loops,
        "control_rate_hz": p.control_rate_hz,
        "inference_rate_hz": p.inference_rate_hz,
        "inference_trigger": p.inference_trigger,
        "sync_horizon": args.sync_horizon or "chunk length",
        "cells": cells,
    }


def _header(first: str, delays: list[float]) -> list[str]:
    """A table's head: ``first``, then a column per delay."""
    return ["| " + first + " | " + " | ".join(f"+{d:g} ms" for d in delays) + " |",
            "|---" * (len(delays) + 1) + "|"]


def markdown(report: dict[str, Any]) -> str:
    """One table: a row per loop, a column per delay; each cell success (CI), missed
    deadlines per episode, command age p50/p99, idle ms per episode."""
    delays = report["delays_ms"]
    lines = _header("loop", delays)
    for loop in report["loops"]:
        row = [loop]
        for d in delays:
            c = report["cells"][f"{loop}@{d:g}"]
            lo, hi = c["ci95"]
            age50, age99 = c["command_age_ms_p50"], c["command_age_ms_p99"]
            ages = "-" if age50 is None else f"{age50:.0f}/{age99:.0f}"
            seam = c.get("seam_jump_mrad_p50")
            seams = "" if seam is None else (
                f"; seam {seam:.0f}/{c['seam_jump_mrad_p99']:.0f} mrad "
                f"(other steps {c['step_jump_mrad_p50']:.0f}/{c['step_jump_mrad_p99']:.0f})")
            row.append(
                f"{c['successes']}/{c['episodes']} ({100 * lo:.0f}-{100 * hi:.0f}%); "
                f"missed {c['missed_deadlines_per_episode']:.1f}; age {ages} ms; "
                f"idle {c['idle_ms_per_episode']:.0f} ms{seams}"
            )
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Cell: success k/N (Wilson 95% CI); missed deadlines per episode; command age "
                 "p50/p99; idle time per episode (simulated time); the policy command's "
                 "largest joint change p50/p99 at a switch to a newer chunk (seam) and between "
                 "other ticks.")
    pairs, ref = report.get("paired") or {}, report.get("reference", "sync")
    if pairs:
        lines += ["", *_header(f"loop vs {ref} (same seeds)", delays)]
        for loop in report["loops"]:
            if loop == ref:
                continue
            row = [loop]
            for d in delays:
                pr = pairs[f"{loop}@{d:g}"]
                row.append(f"+{len(pr['only_loop'])} / -{len(pr['only_reference'])}, "
                           f"p = {pr['p_mcnemar']:.2g}")
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", f"Paired cell: +seeds only the loop succeeded on / -seeds only {ref} "
                  "succeeded on; p: two-sided exact McNemar test of that split."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", default="")
    ap.add_argument("--combine", nargs="+", default=[], metavar="JSON",
                    help="put reports of separate runs together (no episodes are run)")
    ap.add_argument("--reference", default="sync",
                    help="the loop every other is compared with, seed by seed")
    ap.add_argument("--task", default="transfer_cube")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed-start", type=int, default=1000)
    ap.add_argument("--delays", default="0,100,200,300", help="extra inference delay, ms")
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--params", default="", help="parameter file (default: make demo's)")
    ap.add_argument("--sync-horizon", type=int, default=0,
                    help="control steps per chunk in the sync loop (0 = the chunk length)")
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--render-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    ap.add_argument("--policy-seed", type=int, default=0)
    ap.add_argument("--json", default="")
    ap.add_argument("--markdown", default="")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.combine:
        report = combine([json.loads(Path(f).read_text()) for f in args.combine])
    else:
        if not args.bundle:
            raise SystemExit("a bundle is needed (or --combine JSON...)")
        if args.episodes < 1:
            raise SystemExit(f"--episodes must be >= 1 (got {args.episodes})")
        report = run(args)
    report["paired"] = paired(report, args.reference)
    report["reference"] = args.reference
    table = markdown(report)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
