"""The command line: every command, its output and exit codes.

This package is the only place that prints or configures logging. Exit
codes: 0 ok, 1 runtime failure, 2 bad usage or config.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from notifier.cli import config_cmds, daemon_cmds, delivery_cmds, engine_cmds, fake_cmds
from notifier.cli.common import accept_config_after, cli_group, run_cli

# Commands that read no config file.
_NO_CONFIG = frozenset({"demo", "fake-api"})

main_group: click.Group = cli_group
for module in (config_cmds, engine_cmds, delivery_cmds, daemon_cmds, fake_cmds):
    for command in module.commands:
        main_group.add_command(command)
        if command.name not in _NO_CONFIG:
            accept_config_after(command)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line and exit with its code."""
    sys.exit(run_cli(main_group, argv))
