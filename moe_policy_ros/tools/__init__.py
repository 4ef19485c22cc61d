"""The ``moe-policy-ros`` subcommands: one module per subcommand.

Each module has the same two hooks, ``add_arguments(parser)`` and ``run(args) -> int``;
:mod:`moe_policy_ros.cli` lists them and imports only the one being run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


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
