"""``notify-test`` (a sample event to a channel) and ``deliveries`` (the outbox)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import click

from notifier.cli.common import redactor
from notifier.config import Config, load_config, parse_duration
from notifier.delivery import disabled_key, failing_key
from notifier.errors import ConfigError, DeliveryError
from notifier.model import Channel, Delivery, Project, isoformat, utcnow
from notifier.notify import Notifier, SendOutcome, channel_secrets
from notifier.store import Store

_ERROR_WIDTH = 100


def _load(ctx: click.Context) -> Config:
    config = load_config(ctx.obj["config_path"])
    for channel in config.channels.values():
        redactor.add(channel_secrets(channel))
    return config


def _channel(config: Config, name: str) -> Channel:
    channel = config.channels.get(name)
    if channel is None:
        known = ", ".join(sorted(config.channels)) or "none"
        raise click.UsageError(f"no channel named {name!r} (configured: {known})")
    return channel


@click.command("notify-test")
@click.argument("channel_name", metavar="CHANNEL")
@click.pass_context
def notify_test(ctx: click.Context, channel_name: str) -> None:
    """Send a sample event to every URL of CHANNEL and print each outcome.

    The sample is about the first configured project whose watches use
    CHANNEL (a neutral sample project when none does).
    Nothing is stored. URLs are shown masked (scheme and host only). Exit
    code 1 when any URL failed.

    \f
    :raises DeliveryError: when any URL failed (after printing the table).
    """
    config = _load(ctx)
    channel = _channel(config, channel_name)
    project = next(
        (watch.project for watch in config.watches if channel.name in watch.channels),
        None,
    )
    outcomes = asyncio.run(_send_test(config.channels, channel, project))
    rows = [
        (
            str(outcome.target),
            outcome.url,
            "delivered" if outcome.ok else "failed",
            f"{outcome.ms:.0f} ms" if outcome.ok else (outcome.error or ""),
        )
        for outcome in outcomes
    ]
    click.echo(f"channel {channel.name} ({channel.kind}):")
    for line in table(("TARGET", "URL", "OUTCOME", "DETAIL"), rows):
        click.echo("  " + line)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        raise DeliveryError(
            f"{len(failed)} of {len(outcomes)} URLs of channel {channel.name} failed"
        )


async def _send_test(
    channels: Mapping[str, Channel], channel: Channel, project: Project | None
) -> list[SendOutcome]:
    notifier = Notifier(channels)
    try:
        return await notifier.send_test(channel, project=project)
    finally:
        await notifier.aclose()


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """A ``--since`` value: an ISO 8601 date or time (UTC unless it says), or
    a duration back from now (``90m``, ``2h``, ``1d``).

    :raises click.BadParameter: when it is neither.
    """
    moment = now or utcnow()
    try:
        return moment - timedelta(seconds=parse_duration(text))
    except (ConfigError, ValueError):
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a time (2026-12-03T08:00) nor a duration (2h)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.command("deliveries")
@click.option("--channel", "channel_name", help="Only this channel.")
@click.option(
    "--status",
    type=click.Choice(["pending", "dead", "delivered", "all"]),
    default=None,
    help="Only this status (default: pending and dead).",
)
@click.option("--retry", "retry_id", type=int, help="Send delivery ID again now.")
@click.option(
    "--replay",
    is_flag=True,
    help="Send delivered and dead deliveries again (needs --since).",
)
@click.option("--since", help="With --replay: events since TIME or DURATION ago.")
@click.option(
    "--enable", "enable_name", metavar="CHANNEL", help="Re-enable a disabled channel."
)
@click.option(
    "--limit", type=int, default=200, show_default=True, help="Most rows to list."
)
@click.pass_context
def deliveries(
    ctx: click.Context,
    channel_name: str | None,
    status: str | None,
    retry_id: int | None,
    replay: bool,
    since: str | None,
    enable_name: str | None,
    limit: int,
) -> None:
    """List pending and dead deliveries with their last error, or act on them.

    Deliveries of a channel no longer in the config stay listed; they cannot
    be sent, so --retry refuses them and --replay leaves them out.

    --retry and --replay keep the original event ids, so receivers can
    dedupe; a running daemon picks the queued deliveries up within a second.
    """
    if replay and not since:
        raise click.UsageError("--replay needs --since TIME (or a duration: 2h)")
    if since and not replay:
        raise click.UsageError("--since goes with --replay")
    config = _load(ctx)
    if replay and channel_name is not None and channel_name not in config.channels:
        raise click.UsageError(
            f"channel {channel_name!r} is not in the config: its deliveries can "
            "be listed but not sent again"
        )
    if enable_name is not None:
        _channel(config, enable_name)
    lines = asyncio.run(
        _deliveries(
            config,
            channel=channel_name,
            status=status,
            retry_id=retry_id,
            since=parse_since(since) if replay and since else None,
            enable=enable_name,
            limit=limit,
        )
    )
    for line in lines:
        click.echo(line)


async def _deliveries(
    config: Config,
    *,
    channel: str | None,
    status: str | None,
    retry_id: int | None,
    since: datetime | None,
    enable: str | None,
    limit: int,
) -> list[str]:
    store = await Store.open(config.storage.path)
    try:
        now = utcnow()
        if enable is not None:
            return await _enable(store, config.channels[enable])
        if retry_id is not None:
            return await _retry(store, config, retry_id, now=now)
        if since is not None:
            # Deliveries of channels gone from the config would only die again.
            names = [channel] if channel else sorted(config.channels)
            count = 0
            for name in names:
                count += await store.replay(since, channel=name, now=now)
            return [
                f"{count} deliveries of events since {isoformat(since)} queued again"
            ]
        return await _listing(
            store, config, channel=channel, status=status, limit=limit
        )
    finally:
        await store.close()


async def _retry(
    store: Store, config: Config, delivery_id: int, *, now: datetime
) -> list[str]:
    found = await store.delivery(delivery_id)
    if found is not None and found.channel not in config.channels:
        # The daemon would only mark it dead again.
        raise click.ClickException(
            f"delivery {delivery_id} is for channel {found.channel!r}, which is "
            "not in the config: it cannot be sent"
        )
    if await store.retry_delivery(delivery_id, now=now):
        return [f"delivery {delivery_id} queued to be sent again"]
    raise click.ClickException(f"no pending or dead delivery with id {delivery_id}")


async def _enable(store: Store, channel: Channel) -> list[str]:
    reason = await store.get_meta(disabled_key(channel.name))
    await store.set_meta(disabled_key(channel.name), None)
    for target in channel.targets:
        await store.set_meta(failing_key(channel.name, target.index), None)
    if reason is None:
        return [f"channel {channel.name} was not disabled"]
    return [
        f"channel {channel.name} enabled again; its dead deliveries can be "
        "sent with --replay --since TIME"
    ]


async def _listing(
    store: Store,
    config: Config,
    *,
    channel: str | None,
    status: str | None,
    limit: int,
) -> list[str]:
    wanted = ["pending", "dead"] if status is None else [status]
    found: list[Delivery] = []
    for each in wanted:
        found += await store.deliveries(
            status=None if each == "all" else each, channel=channel, limit=limit
        )
    lines = []
    for name in sorted(config.channels):
        reason = await store.get_meta(disabled_key(name))
        if reason is not None and channel in (None, name):
            lines.append(f"channel {name} is DISABLED: {reason}")
    gone = {d.channel for d in found} | ({channel} if channel else set())
    lines += [
        f"channel {name} is not in the config: its deliveries are listed but "
        "cannot be sent"
        for name in sorted(gone - set(config.channels))
    ]
    if not found:
        return [*lines, "no deliveries" if status else "no pending or dead deliveries"]
    rows = []
    for delivery in sorted(found, key=lambda d: d.id):
        event = await store.event(delivery.event_id)
        rows.append(_row(delivery, event.type if event else "?"))
    header = ("ID", "STATUS", "CHANNEL", "TARGET", "TRIES", "NEXT", "EVENT", "TYPE")
    return [*lines, *table((*header, "LAST ERROR"), rows)]


def _row(delivery: Delivery, event_type: str) -> tuple[str, ...]:
    when = isoformat(delivery.next_attempt_at) if delivery.status == "pending" else "-"
    error = (delivery.last_error or "").replace("\n", " ")
    if len(error) > _ERROR_WIDTH:
        error = error[: _ERROR_WIDTH - 1] + "…"
    return (
        str(delivery.id),
        delivery.status,
        delivery.channel,
        str(delivery.target),
        str(delivery.attempts),
        when,
        delivery.event_id,
        event_type,
        error,
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as lines with aligned columns (the last column is not padded)."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [
            cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines


commands: list[click.Command] = [notify_test, deliveries]
