"""`moe-policy-ros check-config PARAMS.yaml`: validate a parameter file and summarise it."""

from __future__ import annotations

import argparse
import sys

from moe_policy_ros.core.config import DEFAULT_NODE_NAME, ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("params", help="ROS 2 parameter file (/**: ros__parameters: layout)")
    parser.add_argument("--node", default=DEFAULT_NODE_NAME, help="node section to merge")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.params, args.node)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.params}: valid")
    for arm in cfg.robot.arms:
        print(f"  arm {arm.name}: {len(arm.joints)} joints -> {arm.trajectory_topic}")
    for cam in cfg.cameras:
        size = f"{cam.width}x{cam.height}" if cam.width else "the bundle's size"
        print(f"  camera {cam.name}: {cam.topic} {cam.message_type} {size}")
    p = cfg.policy
    print(
        f"  policy: {p.bundle} backend={p.backend} control={p.control_rate_hz} Hz "
        f"inference={p.inference_rate_hz} Hz mode={p.execution.mode}"
    )
    return 0
