"""`moe-policy-ros`: the command-line tool.

Subcommands import their implementation lazily, so `inspect` or `up` work on a robot
computer without torch, and `export` works on a training machine without ROS.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# name -> (module in moe_policy_ros.tools with add_arguments(parser) and run(args), help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "export": (
        "moe_policy_ros.tools.export",
        "export a checkpoint or a fresh reference model to a bundle (parity-checked)",
    ),
    "inspect": (
        "moe_policy_ros.tools.inspect",
        "verify a bundle and print what it contains",
    ),
    "bench": (
        "moe_policy_ros.tools.bench",
        "time each inference stage of a bundle under a routing strategy",
    ),
    "check-config": (
        "moe_policy_ros.tools.check_config",
        "validate a ROS parameter file against the runtime schema",
    ),
    "up": (
        "moe_policy_ros.tools.up",
        "start the node graph from a parameter file (no ros2 launch needed)",
    ),
    "monitor": (
        "moe_policy_ros.tools.monitor",
        "live terminal view of mode, experts, gates, latency and rates",
    ),
    "doctor": (
        "moe_policy_ros.tools.doctor",
        "check this machine (ROS, DDS, GL, ONNX Runtime/GPU, RealSense, bundles, a params file)",
    ),
    "demo": (
        "moe_policy_ros.tools.demo",
        "simulated dual-arm robot + bundled model: whole episodes, a report and a video",
    ),
    "record": (
        "moe_policy_ros.tools.record",
        "record scripted ALOHA demonstrations (replayed in the joint-space sim) to HDF5",
    ),
    "train": (
        "moe_policy_ros.tools.train",
        "train an MoE policy family on recorded episodes (checkpoints, rollouts, resume)",
    ),
    "evaluate": (
        "moe_policy_ros.tools.evaluate",
        "success rate of a bundle on a task over fixed seeds (ROS 2 graph; --in-process: no ROS)",
    ),
    "results": (
        "moe_policy_ros.tools.results",
        "tables and figures for docs/results.md from evaluate outputs and phase labels",
    ),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only ``selected``'s module is imported (all when None)."""
    parser = argparse.ArgumentParser(
        prog="moe-policy-ros",
        description="ROS 2 runtime for Mixture-of-Experts manipulation policies",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if selected is not None and name != selected:
            p.add_argument("rest", nargs=argparse.REMAINDER)
            continue
        try:
            add: Callable[[argparse.ArgumentParser], None] = (
                importlib.import_module(module).add_arguments
            )
        except ImportError as err:
            # Keep the command listed; running it reports what is missing.
            p.set_defaults(_import_error=f"{name}: {err}")
            p.add_argument("rest", nargs=argparse.REMAINDER)
            continue
        add(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in _COMMANDS else None)
    args = parser.parse_args(argv)
    missing = getattr(args, "_import_error", None)
    if missing:
        print(f"moe-policy-ros {missing}", file=sys.stderr)
        return 2
    run: Callable[[argparse.Namespace], int] = importlib.import_module(args._module).run
    return int(run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
