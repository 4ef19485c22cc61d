"""`moe-policy-ros evaluate`: success rate of a bundle on a task over fixed seeds.

Modes: by default the sim and the policy node run as separate processes over DDS
(:class:`moe_policy_ros.evaluation.ros_runner.RosEpisodeRunner`); ``--in-process`` runs the sim
and the runtime in this process without ROS (:class:`moe_policy_ros.rollout.InProcessRunner`).
A mode is anything with ``run(seed) -> EpisodeResult`` and ``close()``, reported the same way.

Output: a progress bar, one line per episode, a summary and the final line
``success: k/N (p%, 95% CI lo-hi%)`` (Wilson interval); with ``--out`` also ``eval.json``
(settings, per-episode results, summary). Imports neither torch nor rclpy in-process.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from moe_policy_ros.rollout import (
    DEFAULT_EPISODE_STEPS,
    DEFAULT_RENDER_SIZE,
    EpisodeResult,
    LoopSettings,
    default_params_file,
    resolve_bundle,
    summarize,
)
from moe_policy_ros.tools import add_routing_arguments, routing_overrides

TASKS = ("transfer_cube", "insertion")


class EpisodeRunner(Protocol):
    def run(self, seed: int) -> EpisodeResult: ...

    def close(self) -> None: ...


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"want HxW, e.g. 480x640 (got {text!r})") from None
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=TASKS, default="transfer_cube")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed-start", type=int, default=1000,
                        help="first seed (evaluation seeds: 1000.., never used in training)")
    parser.add_argument("--bundle", default="", help="bundle directory (default: make demo's)")
    parser.add_argument("--params", type=Path, default=None,
                        help="parameter file: rates, execution, safety, handover (default: "
                        "config/sim_dual_arm.yaml, make demo's)")
    parser.add_argument("--in-process", action="store_true",
                        help="sim and runtime in this process, no ROS")
    parser.add_argument("--replay", type=Path, default=None, metavar="DATASET",
                        help="instead of a bundle, replay the dataset's recorded commands "
                        "(episodes by seed) through the same control path")
    parser.add_argument("--replay-chunk", type=int, default=25,
                        help="chunk length of the replay (control steps)")
    add_routing_arguments(parser)
    parser.add_argument("--max-steps", type=int, default=DEFAULT_EPISODE_STEPS,
                        help="control steps per episode (50 Hz)")
    parser.add_argument("--render-size", type=_size, default=DEFAULT_RENDER_SIZE,
                        metavar="HxW", help="in-process: sim camera render size before resizing "
                        "(ROS 2 mode: the aloha_sim node's cameras parameters)")
    parser.add_argument("--settle-s", type=float, default=0.0,
                        help="in-process: seconds of physics at each reset before the episode, "
                        "arms held, so that it starts with the objects at rest as through ROS 2 "
                        "(the node holds about 0.4 s before autonomy is engaged; default 0)")
    parser.add_argument("--episode-timeout", type=float, default=600.0,
                        help="wall-clock seconds before an episode counts as failed")
    parser.add_argument("--log-level", default="warn", help="ROS 2 mode: the nodes' log level")
    parser.add_argument("--out", type=Path, default=None, help="directory for eval.json")
    parser.add_argument("--no-progress", action="store_true")


def make_runner(args: argparse.Namespace, bundle: Path, params: Path) -> EpisodeRunner:
    from moe_policy_ros.core.config import RoutingConfig, load_config

    cfg = load_config(params)
    overrides = routing_overrides(args)
    # In-process routing as the policy node gets it: the policy.routing fields the file sets
    # override the bundle's routing (an empty strategy keeps the bundle's; unset fields are
    # the bundle's, see nodes/params.py and core.runtime.merge_routing); then the overrides.
    given = cfg.policy.routing
    routing = RoutingConfig.model_validate(
        {**{f: getattr(given, f) for f in given.model_fields_set}, **overrides})
    settings = LoopSettings(
        max_steps=args.max_steps,
        render_size=tuple(args.render_size),
        episode_timeout_s=args.episode_timeout,
        settle_s=args.settle_s,
    )
    if args.settle_s and not args.in_process:
        raise ValueError(f"--settle-s {args.settle_s} needs --in-process (through ROS 2 the "
                         "scene settles while the node holds before autonomy is engaged)")
    if args.in_process and args.replay is not None:
        from moe_policy_ros.rollout import ReplayRunner

        return ReplayRunner(args.replay, args.task, cfg, settings=settings,
                            chunk_length=args.replay_chunk)
    if args.in_process:
        from moe_policy_ros.rollout import InProcessRunner

        return InProcessRunner(bundle, args.task, cfg, routing=routing, settings=settings)
    if args.replay is not None:
        raise ValueError("--replay needs --in-process")
    from moe_policy_ros.evaluation.ros_runner import RosEpisodeRunner, ros_missing

    missing = ros_missing()
    if missing:
        raise RuntimeError(missing)
    return RosEpisodeRunner(args.task, params, bundle, routing=overrides, settings=settings,
                            log_level=args.log_level)


def _router_info(runner: EpisodeRunner) -> dict[str, Any]:
    """Expert labels, family and effective routing strategy of the runner's bundle."""
    policy = getattr(runner, "policy", None)
    manifest = getattr(runner, "manifest", None)
    if manifest is None:
        return {"labels": list(getattr(runner, "labels", []) or []),
                "family": getattr(runner, "family", None),
                "strategy": getattr(runner, "strategy", None)}
    strategy = policy.strategy if policy is not None else None
    return {"labels": list(manifest.experts.labels), "family": manifest.family,
            "strategy": strategy.name if strategy is not None else None,
            # the effective parameters, also when the bundle's default is in force
            "strategy_k": getattr(strategy, "k", None),
            "strategy_tau": getattr(strategy, "tau", None)}


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        print(f"evaluate: --episodes must be >= 1 (got {args.episodes})", file=sys.stderr)
        return 2
    params = args.params or default_params_file()
    try:
        if args.bundle:
            bundle = resolve_bundle(args.bundle, params)
        else:
            from moe_policy_ros.core.config import load_config

            bundle = resolve_bundle(load_config(params).policy.bundle, params)
        runner = make_runner(args, bundle, params)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    seeds = list(range(args.seed_start, args.seed_start + args.episodes))
    mode = "in-process" if args.in_process else "ros2"
    what = f"the commands recorded in {args.replay}" if args.replay else str(bundle)
    print(f"evaluate {what} on {args.task}, {mode}, seeds {seeds[0]}..{seeds[-1]}", flush=True)
    results: list[EpisodeResult] = []
    t0 = time.monotonic()
    bar = tqdm(seeds, desc="episodes", unit="ep", disable=args.no_progress, file=sys.stderr)
    try:
        for seed in bar:
            r = runner.run(seed)
            results.append(r)
            k = sum(x.success for x in results)
            bar.set_postfix_str(f"success {k}/{len(results)}")
            status = "success" if r.success else "failure"
            detail = f" ({r.error})" if r.error else ""
            experts = (
                f", {r.mean_active_experts:.2f} active experts, {r.switches} switches"
                if r.chunks and r.trace_active
                else ""
            )
            reward = f", max reward {r.max_reward}" if args.in_process else ""
            tqdm.write(
                f"seed {seed}: {status} after {r.steps} steps{reward}{experts}{detail}",
                file=sys.stdout,
            )
    finally:
        bar.close()
        runner.close()
    summary = summarize(results)
    wall = time.monotonic() - t0

    from moe_policy_ros.evaluation.report import error_causes, summary_table

    causes = error_causes([r.error for r in results])
    print(summary_table(summary, mode=mode, wall_s=wall, causes=causes), flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        doc = {
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "mode": mode,
            "bundle": None if args.replay else str(bundle),
            "replay": str(args.replay) if args.replay else None,
            "params": str(params),
            "task": args.task,
            "seeds": seeds,
            "routing": {"strategy": args.routing, "k": args.k, "tau": args.tau},
            **_router_info(runner),
            "max_steps": args.max_steps,
            "settle_s": args.settle_s,
            "render_size": list(args.render_size),
            "machine": f"{platform.node()} {platform.machine()} {platform.processor()}".strip(),
            "wall_s": wall,
            "summary": summary.to_dict(),
            "episodes": [r.to_dict() for r in results],
        }
        path = args.out / "eval.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {path}")
    print(summary.line(), flush=True)
    return 0
