"""The ``moe-policy-ros`` subcommands: one module per subcommand.

Each module has the same two hooks, ``add_arguments(parser)`` and ``run(args) -> int``;
:mod:`moe_policy_ros.cli` lists them and imports only the one being run.
"""
