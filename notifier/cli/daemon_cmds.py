"""Commands to run and watch the daemon: run, status, demo, init."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import click

from notifier.cli.common import config_secrets, redactor
from notifier.cli.demo import demo
from notifier.config import Config, load_config
from notifier.delivery import disabled_key
from notifier.metrics import DEFAULT_MIN_GRACE
from notifier.model import Channel, WatchState, utcnow
from notifier.store import Store

STARTER_CONFIG = """\
# atleta-notifier config. Every key is documented in config.example.toml;
# any value can be overridden from the environment, for instance
# ATLETA_NOTIFIER_API__TIMEOUT=10. "${VAR}" is replaced by that variable.

[api]
# The token of an Atleta app connected to your project. Keep it out of this
# file: export ATLETA_TOKEN=... . Under systemd delete this line: the token
# is then read from the credential the unit loads (atleta-token).
token = "${ATLETA_TOKEN}"

[storage]
# Snapshots, events and the delivery outbox, in one SQLite file. By default
# it sits next to this file, or in $STATE_DIRECTORY under systemd.
# path = "atleta-notifier.sqlite"

[defaults]
interval = "5m"          # how often each watch polls
jitter = "10s"           # random delay so watches do not poll in lockstep

# Where events go. "console" prints to the terminal, to try things out;
# uncomment a channel below, put its name in the project's channels, and
# run `atleta-notifier notify-test NAME` to check it.
[channels.console]
urls = ["console://"]

# [channels.email]
# urls = ["mailtos://user:${SMTP_PASSWORD}@mail.example.org?to=team@example.org"]
# digest = "1h"                 # one message an hour instead of one per change

# [channels.slack]
# urls = ["slack://${SLACK_TOKEN_A}/${SLACK_TOKEN_B}/${SLACK_TOKEN_C}/#registrations"]

# [channels.telegram]
# urls = ["tgram://${TELEGRAM_BOT_TOKEN}/${TELEGRAM_CHAT_ID}"]

# [channels.mattermost]
# urls = ["mmosts://chat.example.org/${MATTERMOST_HOOK}"]

# [channels.ntfy]
# urls = ["ntfys://ntfy.sh/${NTFY_TOPIC}"]
# quiet_hours = "22:00-07:00"

# [channels.webhook]
# kind = "webhook"              # signed JSON (Standard Webhooks), retried for a day
# url = "https://example.org/hooks/atleta"
# secret = "${WEBHOOK_SECRET}"  # whsec_... ; the receiver checks the signature

[[projects]]
id = "ABCD"                     # your 4-character Atleta project code
name = "My race"
channels = ["console"]          # e.g. ["slack", "email"]

  [[projects.watches]]
  preset = "registrations"      # one event per new, changed or cancelled registration
  # interval = "2m"             # this watch's own schedule
  # cron = "*/10 6-22 * * *"    # or clock times, in [defaults] timezone
"""


def register_secrets(config: Config) -> None:
    """Mask every secret of ``config`` in all log lines from now on."""
    redactor.add(config_secrets(config))


@click.command()
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    help="Seconds polls and sends in flight get to finish after SIGTERM or Ctrl-C.",
)
@click.option(
    "--health-grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_MIN_GRACE,
    show_default=True,
    help="Shortest time (s) a watch may go without a good poll before "
    "/healthz reports it; the grace is otherwise 3 intervals.",
)
@click.pass_context
def run(ctx: click.Context, stop_timeout: float, health_grace: float) -> None:
    """Run the daemon: poll every watch on its schedule, deliver the events.

    SIGTERM or Ctrl-C stops it cleanly (a second Ctrl-C at once), SIGHUP
    reloads the config.
    """
    from notifier.daemon import Daemon

    daemon = Daemon(
        ctx.obj["config_path"],
        stop_timeout=stop_timeout,
        min_grace=health_grace,
        on_config=register_secrets,
    )
    ctx.exit(asyncio.run(daemon.run()))


@click.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Show each watch's last good poll and failures, and each channel's outbox."""
    config = load_config(ctx.obj["config_path"])
    register_secrets(config)
    states, outbox, disabled = asyncio.run(_read_status(config))
    click.echo(format_status(config, states, outbox, disabled, now=utcnow()))


async def _read_status(
    config: Config,
) -> tuple[list[WatchState], dict[str, tuple[int, int, float | None]], set[str]]:
    # The daemon may be running: WAL lets this read beside its writes.
    store = await Store.open(config.storage.path)
    try:
        states = await store.watch_states()
        outbox = await store.outbox_stats(utcnow())
        disabled = {
            name
            for name in config.channels
            if await store.get_meta(disabled_key(name)) is not None
        }
    finally:
        await store.close()
    return states, outbox, disabled


def format_status(
    config: Config,
    states: list[WatchState],
    outbox: dict[str, tuple[int, int, float | None]],
    disabled: set[str],
    *,
    now: datetime,
) -> str:
    """The ``status`` screen: a table of watches, then a table of channels."""
    lines = _table(_watch_rows(config, states, now))
    lines += ["", *_table(_channel_rows(config, outbox, disabled))]
    return "\n".join(lines)


def _watch_rows(
    config: Config, states: list[WatchState], now: datetime
) -> list[tuple[str, ...]]:
    by_id = {state.watch: state for state in states}
    rows: list[tuple[str, ...]] = [
        ("WATCH", "SCHEDULE", "LAST GOOD POLL", "FAILURES", "RECORDS")
    ]
    for watch in config.watches:
        state = by_id.get(watch.id)
        schedule = watch.schedule.cron or f"every {_duration(watch.schedule.interval)}"
        if not watch.enabled:
            schedule = "disabled"
        good = ago(state.last_success_at, now) if state else "never"
        failures = "0"
        if state and state.consecutive_failures:
            failures = f"{state.consecutive_failures} ({state.last_error_kind})"
        records = str(state.records) if state else "0"
        if state and state.held:
            records += f" ({state.held} held)"
        rows.append((watch.id, schedule, good, failures, records))
    return rows


def _channel_rows(
    config: Config,
    outbox: dict[str, tuple[int, int, float | None]],
    disabled: set[str],
) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("CHANNEL", "KIND", "PENDING", "OLDEST", "DEAD", "STATE")
    ]
    for name in sorted(set(config.channels) | set(outbox)):
        pending, dead, oldest = outbox.get(name, (0, 0, None))
        channel: Channel | None = config.channels.get(name)
        state = "disabled" if name in disabled else "ok"
        if channel is None:
            state = "not in config"
        kind = channel.kind if channel else "-"
        oldest_text = _duration(oldest) if oldest is not None else "-"
        rows.append((name, kind, str(pending), oldest_text, str(dead), state))
    return rows


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def ago(moment: datetime | None, now: datetime) -> str:
    """``moment`` relative to ``now``: "12 s ago", "3 min ago", "never"."""
    if moment is None:
        return "never"
    return f"{_duration((now - moment).total_seconds())} ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


class _Refused(click.ClickException):
    """A request the command turns down, with the bad-usage exit code."""

    exit_code = 2


@click.command()
@click.argument(
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=False,
)
@click.pass_context
def init(ctx: click.Context, path: Path | None) -> None:
    """Write a starter config (never overwrites an existing file)."""
    target = path or ctx.obj["config_path"]
    if target.exists():
        raise _Refused(
            f"{str(target)!r} already exists; init never overwrites a file. "
            "Pick another path or edit the file you have."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(STARTER_CONFIG, encoding="utf-8")
    click.echo(f"Wrote a starter config to {target}.")
    click.echo("Next: set ATLETA_TOKEN and your project id, uncomment a channel,")
    click.echo(f"then `atleta-notifier --config {target} check` and `... run`.")


commands: list[click.Command] = [run, status, demo, init]
