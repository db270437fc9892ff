"""What every command shares: the group, logging, config loading, error handling.

Logging is configured here and nowhere else. Under systemd (``JOURNAL_STREAM``
or ``INVOCATION_ID`` set) lines go to stderr without timestamps, because
journald stamps them, and start with a ``<N>`` syslog priority prefix so that
``journalctl -p warning`` filters them. Elsewhere they carry a timestamp.
``--log-format json`` prints one JSON object per line for log shippers.
Every line passes a redacting filter that masks the secrets the config holds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import click

from notifier.config import Config
from notifier.errors import ConfigError, NotifierError
from notifier.model import MIN_SECRET_LENGTH

CONFIG_ENV = "ATLETA_NOTIFIER_CONFIG"
DEFAULT_CONFIG = Path("atleta-notifier.toml")

# Libraries that log request URLs, headers or service URLs at INFO/DEBUG:
# Apprise URLs embed bot tokens and passwords, so these stay at WARNING
# whatever --log-level says.
NOISY_LOGGERS = (
    "httpx",
    "httpcore",
    "apprise",
    "asyncio",
    "apscheduler",
    "uvicorn",
    "uvicorn.access",
    "uvicorn.error",
    "aiosqlite",
)
REDACTED = "[redacted]"
# What click raises for a bare group; click before 8.2 prints its help itself.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())
SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def config_secrets(config: Config) -> list[str]:
    """Every secret a config holds, for a log redactor to mask."""
    secrets: list[str | None] = [config.api.token]
    secrets.extend(watch.token for watch in config.watches)
    for channel in config.channels.values():
        secrets.extend(channel.secrets)
        for url in channel.urls:
            secrets.append(url)
            secrets.extend(url_secrets(url))
    return [s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH]


def url_secrets(url: str) -> list[str]:
    """The parts of an Apprise URL that may be credentials.

    Bot tokens, webhook keys and passwords sit anywhere in such a URL, even
    where a host name would be (``tgram://BOT_TOKEN/CHAT``). A part counts
    when it holds a digit or is long, unless it is a dotted host name or
    address: masking those would blank out harmless log lines.
    """
    pieces = re.split(r"[/:@?&=#,]+", url.split("://", 1)[-1])
    return [
        piece
        for piece in pieces
        if (len(piece) >= 20 or re.search(r"\d", piece))
        and not re.fullmatch(r"[\w-]+(\.[\w-]+)+", piece)
    ]


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    """True when the process runs as a systemd service (journald stamps lines)."""
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


class StderrHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes to whatever ``sys.stderr`` is at emit time.

    Click's test runner swaps ``sys.stderr`` per invocation; holding the
    stream from configuration time would write to a closed file.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` to the current ``sys.stderr``."""
        self.stream = sys.stderr
        super().emit(record)


class RedactingFilter(logging.Filter):
    """Masks registered secrets in every log line, whatever logged them."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: frozenset[str] = frozenset()
        # Longest first, so a secret that contains another is masked whole.
        self._ordered: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str | None]) -> None:
        """Register more values to mask, ignoring ones shorter than
        ``MIN_SECRET_LENGTH`` (see there for why)."""
        fresh = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}
        with self._lock:
            self._secrets = self._secrets | fresh
            self._ordered = tuple(sorted(self._secrets, key=len, reverse=True))

    def redact(self, text: str) -> str:
        """``text`` with every registered secret replaced."""
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message once, mask it, and freeze it on the record."""
        if not self._secrets:
            return True
        message = record.getMessage()
        masked = self.redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


redactor = RedactingFilter()


class JournalFormatter(logging.Formatter):
    """``<priority>LEVEL logger: message`` without a timestamp, for journald."""

    def format(self, record: logging.LogRecord) -> str:
        """Prefix the plain line with its syslog priority."""
        priority = SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>" + super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise ``record`` as a single line of JSON."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(
    level: str = "INFO",
    fmt: str = "text",
    *,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Configure the root logger once for this process (replacing any handlers)."""
    handler = StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif under_systemd(environ):
        handler.setFormatter(JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s",
                datefmt="%Y-%m-%d %H:%M:%S",
            )
        )
    handler.addFilter(redactor)

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet = max(logging.WARNING, root.level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)


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
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"], case_sensitive=False),
    default="text",
    show_default=True,
    help="Log lines as text, or one JSON object per line for log shippers.",
)
@click.pass_context
def cli_group(
    ctx: click.Context, config_path: Path, log_level: str, log_format: str
) -> None:
    """Push notifications for the poll-only Atleta GraphQL API."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["log_level"] = log_level.upper()
    ctx.obj["log_format"] = log_format.lower()
    setup_logging(log_level, log_format.lower())


def _remember_config(
    ctx: click.Context, _param: click.Parameter, value: Path | None
) -> None:
    if value is not None:
        ctx.ensure_object(dict)["config_path"] = value


def accept_config_after(command: click.Command) -> None:
    """Let ``command`` (and a group's subcommands) take ``--config PATH`` too,
    so ``atleta-notifier check --config PATH`` works like
    ``atleta-notifier --config PATH check``."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_config_after(sub)
        return
    command.params.append(
        click.Option(
            ["--config", "config_after"],
            type=click.Path(dir_okay=False, path_type=Path),
            expose_value=False,
            callback=_remember_config,
            help="The TOML config file (the same as --config before the command).",
        )
    )


def run_cli(group: click.Group, argv: Sequence[str] | None) -> int:
    """Run ``group`` and turn our errors into one line on stderr and a code."""
    try:
        # Outside standalone mode click returns the code given to ctx.exit().
        code = group.main(
            args=list(argv) if argv is not None else None, standalone_mode=False
        )
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 1
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.UsageError as error:
        if isinstance(error, _NO_ARGS_IS_HELP):
            # A bare group (`atleta-notifier`, `atleta-notifier schema`): its help.
            error.show()
            return int(error.exit_code)
        # One line, like every other error, instead of click's usage block.
        hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
        click.echo(f"Error: {error.format_message()}{hint}", err=True)
        return error.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except ConfigError as error:
        click.echo(f"Error: {redactor.redact(str(error))}", err=True)
        return 2
    except NotifierError as error:
        click.echo(f"Error: {redactor.redact(str(error))}", err=True)
        return 1
    return code if isinstance(code, int) else 0
