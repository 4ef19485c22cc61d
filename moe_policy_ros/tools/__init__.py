"""The ``moe-policy-ros`` subcommands: one module per subcommand.

Each module has the same two hooks, ``add_arguments(parser)`` and ``run(args) -> int``;
:mod:`moe_policy_ros.cli` lists them and imports only the one being run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, get_args


def module_main(
    prog: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """``python -m moe_policy_ros.tools.<name>``: parse with the command's hook, then run."""
    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser)
    return int(run(parser.parse_args(argv)) or 0)


def add_routing_arguments(
    parser: argparse.ArgumentParser, *, mass: bool = False, k: bool = True,
    default: str = "the bundle's",
) -> None:
    """``--routing``, ``--k`` (unless ``k`` is False), ``--tau`` (and ``--mass``): fields over
    a base routing; ``default`` names that base in the help text."""
    from moe_policy_ros.core.config import RoutingConfig

    strategies = [s for s in get_args(RoutingConfig.model_fields["strategy"].annotation) if s]
    parser.add_argument("--routing", choices=strategies, default=None,
                        help=f"routing strategy (default: {default})")
    if k:
        parser.add_argument("--k", type=int, default=None, help="top-k / sticky k")
    parser.add_argument("--tau", type=float, default=None, help="gate-mass threshold")
    if mass:
        parser.add_argument("--mass", choices=("linear", "quadratic"), default=None)


def routing_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`RoutingConfig` fields :func:`add_routing_arguments`' flags set."""
    given = {"strategy": args.routing or None, "k": getattr(args, "k", None), "tau": args.tau,
             "mass": getattr(args, "mass", None)}
    return {f: v for f, v in given.items() if v is not None}
