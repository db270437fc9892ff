"""What every command shares: the group, config loading, error handling."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import click

from notifier.errors import ConfigError, NotifierError

CONFIG_ENV = "ATLETA_NOTIFIER_CONFIG"
DEFAULT_CONFIG = Path("atleta-notifier.toml")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=CONFIG_ENV,
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The TOML config file.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="Lowest level of log lines to show.",
)
@click.pass_context
def cli_group(ctx: click.Context, config_path: Path, log_level: str) -> None:
    """Push notifications for the poll-only Atleta GraphQL API."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["log_level"] = log_level.upper()
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_cli(group: click.Group, argv: Sequence[str] | None) -> int:
    """Run ``group`` and turn our errors into one line on stderr and a code."""
    try:
        group.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 1
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except ConfigError as error:
        click.echo(f"Error: {error}", err=True)
        return 2
    except NotifierError as error:
        click.echo(f"Error: {error}", err=True)
        return 1
    return 0
