"""``poll`` (one poll now, printing what it found) and ``history`` (recorded events)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from notifier.config import Config, load_config, parse_duration
from notifier.engine import Engine, PollOutcome, select_watches
from notifier.model import JSON, Event, Watch, canonical_json, isoformat, utcnow
from notifier.store import Store

_VALUE_WIDTH = 60


@click.command("poll")
@click.argument("target", metavar="PROJECT[/WATCH]")
@click.option("--dry-run", is_flag=True, help="Fetch and diff, but store nothing.")
@click.pass_context
def poll(ctx: click.Context, target: str, dry_run: bool) -> None:
    """Poll a watch, or every watch of a project, now and print the changes.

    Events and their pending deliveries are stored as a daemon poll would
    store them (a running daemon sends them); with --dry-run nothing is
    written. Exit code 1 when a poll failed.
    """
    config = load_config(ctx.obj["config_path"])
    watches = select_watches(config.watches, target)
    if not watches:
        known = ", ".join(watch.id for watch in config.watches) or "none"
        raise click.UsageError(f"no watch matches {target!r} (configured: {known})")
    outcomes = asyncio.run(_poll_all(config, watches, dry_run=dry_run))
    for outcome in outcomes:
        for line in describe_outcome(outcome):
            click.echo(line)
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    for outcome in failed:
        error = outcome.error
        assert error is not None
        click.echo(f"Error: {outcome.watch}: {error} ({error.hint})", err=True)
    if failed:
        ctx.exit(1)


async def _poll_all(
    config: Config, watches: Sequence[Watch], *, dry_run: bool
) -> list[PollOutcome]:
    store = await Store.open(config.storage.path)
    client = Engine.client_for(config)
    try:
        engine = Engine(config, client=client, store=store)
        outcomes = []
        for watch in watches:
            with _progress(watch) as progress:
                outcomes.append(
                    await engine.poll_watch(watch, dry_run=dry_run, progress=progress)
                )
        return outcomes
    finally:
        await client.aclose()
        await store.close()


class _PageBar:
    """A progress bar of pages walked, drawn on stderr when it is a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar: Any = None

    def __call__(self, pages_done: int, last_page: int) -> None:
        if self._bar is None:
            self._bar = click.progressbar(
                length=max(last_page, 1),
                label=self.label,
                file=sys.stderr,
                show_pos=True,
            )
            self._bar.__enter__()
        self._bar.length = max(last_page, pages_done, 1)
        self._bar.update(pages_done - self._bar.pos)
        if pages_done >= last_page:
            # Close before the poll's log line; a re-walk draws a new bar.
            self.close()

    def close(self) -> None:
        """Finish the bar, if one is drawn."""
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


@contextmanager
def _progress(watch: Watch) -> Iterator[_PageBar | None]:
    """A page bar for a long walk on a terminal; nothing when output is piped."""
    if not sys.stderr.isatty():
        yield None
        return
    bar = _PageBar(f"{watch.id} pages")
    try:
        yield bar
    finally:
        bar.close()


def describe_outcome(outcome: PollOutcome) -> list[str]:
    """Readable lines saying what one poll found (and stored, unless a dry run)."""
    prefix = "(dry run, nothing stored) " if outcome.dry_run else ""
    if outcome.error is not None:
        return [f"{prefix}{outcome.watch}: failed ({outcome.error.kind})"]
    if outcome.conflict:
        return [
            f"{outcome.watch}: another poll committed this watch meanwhile; "
            "its changes are in `history`"
        ]
    records = _count(outcome.records, "record")
    if outcome.baseline:
        lines = [
            f"{prefix}{outcome.watch}: baseline of {records}, "
            + (_count(len(outcome.events), "event") if outcome.events else "no events")
        ]
    else:
        count = len(outcome.changes)
        lines = [f"{prefix}{outcome.watch}: {_count(count, 'change')}, {records}"]
        lines.extend("  " + describe_event(event) for event in outcome.events)
        skipped = count - sum(1 for e in outcome.events if e.entity != "watch")
        if skipped > 0:
            lines.append(f"  ({_count(skipped, 'change')} matched no rule)")
    if outcome.held:
        lines.append(
            f"  {_count(outcome.held, 'absent record')} held until a later poll "
            "confirms them"
        )
    return lines


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


_MARKS = {"created": "+", "updated": "~", "deleted": "-"}


def describe_event(event: Event) -> str:
    """One line for an event: its mark, type, key and what changed."""
    mark = _MARKS.get(event.kind, "!")
    text = f"{mark} {event.type} {event.key or ''}".rstrip()
    if event.entity == "watch":
        record = event.record or {}
        return f"{text}: {record.get('error_kind')}: {record.get('message')}"
    if event.changes:
        text += ": " + "; ".join(
            f"{change.path} {_short(change.before)} -> {_short(change.after)}"
            for change in event.changes
        )
    return text


def _short(value: JSON) -> str:
    text = canonical_json(value)
    if len(text) > _VALUE_WIDTH:
        return text[: _VALUE_WIDTH - 3] + "..."
    return text


# History


def parse_moment(text: str, *, now: datetime) -> datetime:
    """A time from ISO 8601 (UTC when naive) or a duration ago (``2h``, ``90m``).

    :raises click.BadParameter: when ``text`` is neither.
    """
    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an ISO time (2026-05-01T12:00) "
            "nor a duration ago (2h, 30m, 1d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


@click.command("history")
@click.option("--project", help="Only events of this project (its 4-character id).")
@click.option(
    "--watch",
    help="Only events of this watch (PROJECT/WATCH, or WATCH when one project has it).",
)
@click.option(
    "--type",
    "event_type",
    help="Event type (order.created), or every type of an entity (order, order.*).",
)
@click.option("--since", help="From this time: ISO 8601, or a duration ago (2h).")
@click.option("--until", help="Before this time: ISO 8601, or a duration ago.")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="At most this many events.",
)
@click.option("--json", "as_json", is_flag=True, help="Print event JSON, one per line.")
@click.pass_context
def history(
    ctx: click.Context,
    project: str | None,
    watch: str | None,
    event_type: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List recorded events, newest first."""
    config = load_config(ctx.obj["config_path"])
    now = utcnow()
    if watch is not None and "/" not in watch:
        watch = f"{project or _project_of(config, watch)}/{watch}"
    if event_type is not None and "." not in event_type:
        # A bare entity means all of its types, not a type named "order".
        event_type += ".*"
    events = asyncio.run(
        _events(
            config.storage.path,
            project=project,
            watch=watch,
            type=event_type,
            since=parse_moment(since, now=now) if since else None,
            until=parse_moment(until, now=now) if until else None,
            limit=limit,
        )
    )
    if not events and not as_json:
        # On stderr, so that the listing itself stays empty for scripts.
        click.echo("no events match", err=True)
    for event in events:
        if as_json:
            click.echo(json.dumps(event.to_json(), ensure_ascii=False))
        else:
            click.echo(describe_history(event))


def _project_of(config: Config, watch: str) -> str:
    """The one configured project with a watch named ``watch``.

    :raises click.UsageError: when no project or several have one.
    """
    projects = sorted({w.project.id for w in config.watches if w.name == watch})
    if len(projects) == 1:
        return projects[0]
    if projects:
        raise click.UsageError(
            f"projects {', '.join(projects)} each have a watch {watch!r}: "
            "give PROJECT/WATCH, or --project too"
        )
    raise click.UsageError(
        f"no configured watch is named {watch!r}: give PROJECT/WATCH, or --project too"
    )


async def _events(path: Path, **filters: Any) -> list[Event]:
    store = await Store.open(path)
    try:
        return await store.events(**filters)
    finally:
        await store.close()


def describe_history(event: Event) -> str:
    """One line of ``history``: when, which watch, then the event."""
    when = isoformat(event.occurred_at)
    return f"{when}  {event.project.id}/{event.watch}  {describe_event(event)}"


commands: list[click.Command] = [poll, history]
