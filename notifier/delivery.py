"""The durable delivery loop: sends what the store's outbox says is due.

A poll commits its events and their pending deliveries in one transaction;
only then does this loop see them (a commit wakes it, and it rescans due rows
every second anyway, so a retry asked for from the CLI is picked up). Each
row ends delivered, or failed with its next attempt time, or dead when its
schedule runs out, so a restart resumes exactly where the last run stopped,
re-sending with the same event ids (at least once).

Chat and email rows of one channel target are grouped at send time into one
message; a webhook carries one event per request. Every target is sent on
its own task with its own timeout, so a hanging service holds up nothing but
itself. Holding rows back (a digest window that is still open, quiet hours,
a channel over its flood cap) moves their next attempt to when the hold
ends, without counting an attempt, so held rows never crowd out due ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import random
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from notifier.model import (
    Channel,
    Delivery,
    Event,
    Target,
    Watch,
    isoformat,
    parse_isoformat,
    utcnow,
)
from notifier.notify import ALERT_TYPES, Notifier, SendOutcome, failing_alert
from notifier.store import Store

log = logging.getLogger(__name__)

WEBHOOK_BACKOFF = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""Seconds before each retry of a webhook: eight attempts over about 27 h."""

MESSAGE_BACKOFF = (30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0)
"""Seconds before each retry of a chat or email message: seven attempts, ~4 h."""

RETRY_AFTER_BOUNDS = (1.0, 3600.0)
SCAN_INTERVAL = 1.0
FLOOD_WINDOW = 60.0
SCAN_LIMIT = 5000
SKIPPED = "the receiver failed an earlier event of this scan"

Row = tuple[Delivery, Event]


def disabled_key(channel: str) -> str:
    """The meta key that marks a channel disabled (its value says why)."""
    return f"channel.disabled:{channel}"


def failing_key(channel: str, target: int) -> str:
    """The meta key set while a target's failure has been reported."""
    return f"channel.failing:{channel}:{target}"


def digest_key(channel: str, target: int) -> str:
    """The meta key holding when a target's last digest went out."""
    return f"digest.last:{channel}:{target}"


def next_attempt_at(
    channel: Channel,
    attempts: int,
    now: datetime,
    *,
    retry_after: float | None = None,
    jitter: float = 1.0,
) -> datetime | None:
    """When to try again after ``attempts`` failed attempts; None means dead.

    ``jitter`` scales the scheduled delay (spread retries apart); a
    receiver's ``Retry-After`` replaces the delay, clamped to 1 s..1 h.
    """
    schedule = WEBHOOK_BACKOFF if channel.kind == "webhook" else MESSAGE_BACKOFF
    if attempts > len(schedule):
        return None
    delay = schedule[attempts - 1] * jitter
    if retry_after is not None:
        low, high = RETRY_AFTER_BOUNDS
        delay = min(max(retry_after, low), high)
    return now + timedelta(seconds=delay)


def _parse_hhmm(text: str) -> clock_time:
    hours, _, minutes = text.strip().partition(":")
    return clock_time(int(hours), int(minutes or 0))


def quiet_until(channel: Channel, now: datetime) -> datetime | None:
    """The end of the quiet hours ``now`` falls in, or None outside them."""
    if not channel.quiet_hours:
        return None
    zone = ZoneInfo(channel.timezone)
    local = now.astimezone(zone)
    start, end = (_parse_hhmm(text) for text in channel.quiet_hours)
    moment = local.time().replace(tzinfo=None)
    if start <= end:
        inside = start <= moment < end
    else:
        inside = moment >= start or moment < end
    if not inside:
        return None
    day = local.date()
    if start > end and moment >= start:
        day += timedelta(days=1)
    return datetime.combine(day, end, tzinfo=zone).astimezone(UTC)


def digest_close(channel: Channel, after: datetime) -> datetime:
    """The first digest boundary strictly after ``after``.

    A ``digest_interval`` closes on multiples of the interval since the Unix
    epoch (``1h`` on the hour, UTC); a ``digest_cron`` line fires in the
    channel's timezone.
    """
    if channel.digest_cron:
        trigger = CronTrigger.from_crontab(
            channel.digest_cron, timezone=channel.timezone
        )
        fire = trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
        return fire.astimezone(UTC) if fire else after + timedelta(days=365)
    interval = channel.digest_interval or 0.0
    if interval <= 0:
        return after
    steps = int(after.timestamp() // interval) + 1
    return datetime.fromtimestamp(steps * interval, UTC)


def project_routes(watches: Iterable[Watch]) -> dict[str, set[str]]:
    """The channels that serve each project: its watches' and their rules'."""
    routes: dict[str, set[str]] = defaultdict(set)
    for watch in watches:
        routes[watch.project.id].update(watch.channels)
        for rule in watch.rules:
            routes[watch.project.id].update(rule.channels)
    return dict(routes)


def accepts(channel: Channel, event_type: str) -> bool:
    """Whether a channel's ``events`` patterns let an event type through."""
    return not channel.events or any(
        fnmatch.fnmatchcase(event_type, pattern) for pattern in channel.events
    )


def is_digest(channel: Channel) -> bool:
    """Whether a channel collects its events into digests."""
    return channel.kind != "webhook" and bool(
        channel.digest_interval or channel.digest_cron
    )


@dataclass
class ScanReport:
    """What one scan did, counted in deliveries (rows)."""

    delivered: int = 0
    failed: int = 0
    dead: int = 0
    held: int = 0
    messages: int = 0

    def add(self, other: ScanReport) -> None:
        """Fold another report into this one."""
        self.delivered += other.delivered
        self.failed += other.failed
        self.dead += other.dead
        self.held += other.held
        self.messages += other.messages


@dataclass
class _Flood:
    """Send times of one target within the last flood window."""

    sent: deque[datetime] = field(default_factory=deque)

    def free_at(self, now: datetime, cap: int) -> datetime | None:
        while self.sent and (now - self.sent[0]).total_seconds() >= FLOOD_WINDOW:
            self.sent.popleft()
        if cap <= 0 or len(self.sent) < cap:
            return None
        return self.sent[0] + timedelta(seconds=FLOOD_WINDOW)


class DeliveryLoop:
    """Sends due deliveries, records each outcome, and schedules retries.

    ``routes`` (project id to channel names, see :func:`project_routes`)
    says where a failing channel is reported; without it the loop learns
    it from the deliveries it sees. ``clock`` and ``sleep`` are injectable
    so that tests run day-long schedules at once.
    """

    def __init__(
        self,
        store: Store,
        channels: Mapping[str, Channel],
        *,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        notifier: Notifier | None = None,
        routes: Mapping[str, Iterable[str]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.channels = dict(channels)
        self.clock = clock
        self._sleep = sleep
        self.notifier = notifier or Notifier(self.channels)
        self._own_notifier = notifier is None
        # Which channels serve a project, to report a failing channel to
        # the others; learned from the rows seen when not given.
        self._routes: dict[str, set[str]] = defaultdict(set)
        for project, names in (routes or {}).items():
            self._routes[project].update(names)
        self._rng = rng or random.Random()
        self._woken = asyncio.Event()
        self._stopping = False
        self._busy: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[ScanReport]] = set()
        self._floods: dict[tuple[str, int], _Flood] = defaultdict(_Flood)
        # Sends of one channel run side by side and can fail at once: the
        # check and set of a disabled or failing flag must not interleave,
        # or each of them would log and report the same failure.
        self._flags = asyncio.Lock()

    def wake(self) -> None:
        """Ask for a scan now (called after each poll commit)."""
        self._woken.set()

    def stop(self) -> None:
        """Ask :meth:`run` to return after its current scan."""
        self._stopping = True
        self._woken.set()

    async def run(self) -> None:
        """Scan on every wake and every second until :meth:`stop`."""
        log.info("delivery loop started channels=%d", len(self.channels))
        try:
            while not self._stopping:
                try:
                    await self._dispatch(self.clock())
                except Exception:
                    # A store hiccup must not end delivery; the next scan
                    # retries it.
                    log.exception("delivery scan failed")
                await self._wait()
        finally:
            await self.aclose()
            log.info("delivery loop stopped")

    async def _wait(self) -> None:
        if self._woken.is_set():
            self._woken.clear()
            return
        waker = asyncio.ensure_future(self._woken.wait())
        sleeper = asyncio.ensure_future(self._sleep(SCAN_INTERVAL))
        await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waker, sleeper):
            task.cancel()
        self._woken.clear()

    async def run_once(self, now: datetime | None = None) -> ScanReport:
        """Scan once at ``now`` and wait for every send it started."""
        tasks = await self._dispatch(now or self.clock())
        report = ScanReport()
        for outcome in await asyncio.gather(*tasks):
            report.add(outcome)
        return report

    async def aclose(self, grace: float = 20.0) -> None:
        """Let sends in flight finish (up to ``grace`` s), then release clients.

        A send cut off here stays pending and goes again after a restart.
        """
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*late, return_exceptions=True)
        if self._own_notifier:
            await self.notifier.aclose()

    async def _dispatch(self, now: datetime) -> list[asyncio.Task[ScanReport]]:
        groups: dict[tuple[str, int], list[Row]] = defaultdict(list)
        for delivery, event in await self.store.due_deliveries(now, limit=SCAN_LIMIT):
            self._routes[event.project.id].add(delivery.channel)
            groups[(delivery.channel, delivery.target)].append((delivery, event))
        # One send task per target at a time keeps a target's messages in
        # order; rows that arrive meanwhile go with its next scan.
        return [
            self._start(name, target, group, now)
            for (name, target), group in groups.items()
            if (name, target) not in self._busy
        ]

    def _start(
        self, name: str, target: int, rows: list[Row], now: datetime
    ) -> asyncio.Task[ScanReport]:
        self._busy.add((name, target))

        async def guarded() -> ScanReport:
            try:
                return await self._deliver_group(name, target, rows, now)
            except Exception as error:
                # A bug must not resend the same rows every second: count
                # the attempt so they back off and end dead and listed.
                log.exception("delivery channel=%s target=%d failed", name, target)
                try:
                    return await self._internal_error(name, rows, error)
                except Exception:
                    log.exception("delivery channel=%s: cannot record it", name)
                    return ScanReport()
            finally:
                self._busy.discard((name, target))

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _internal_error(
        self, name: str, rows: Sequence[Row], error: Exception
    ) -> ScanReport:
        now = self.clock()
        channel = self.channels.get(name)
        attempts = max(delivery.attempts for delivery, _ in rows) + 1
        retry = next_attempt_at(channel, attempts, now) if channel else None
        await self.store.mark_failed(
            [delivery.id for delivery, _ in rows],
            error=f"channel {name}: internal error ({type(error).__name__})",
            next_attempt_at=retry,
            now=now,
        )
        return ScanReport(failed=len(rows)) if retry else ScanReport(dead=len(rows))

    async def _deliver_group(
        self, name: str, target: int, rows: list[Row], now: datetime
    ) -> ScanReport:
        channel = self.channels.get(name)
        if channel is None or target >= len(channel.urls):
            return await self._bury(
                rows, f"channel {name} target {target} is no longer configured"
            )
        disabled = await self.store.get_meta(disabled_key(name))
        if disabled is not None:
            return await self._bury(rows, f"channel {name} is disabled: {disabled}")
        quiet_end = quiet_until(channel, now)
        if quiet_end is not None:
            return await self._hold(rows, quiet_end)
        if channel.kind == "webhook":
            return await self._deliver_webhooks(channel, rows)
        return await self._deliver_messages(channel, target, rows, now)

    async def _deliver_webhooks(self, channel: Channel, rows: list[Row]) -> ScanReport:
        report = ScanReport()
        queue = deque(rows)

        async def worker() -> None:
            while queue:
                row = queue.popleft()
                outcome = await self.notifier.send_webhook(channel, row[1])
                report.add(await self._settle(channel, 0, [row], outcome))
                if not outcome.ok and queue:
                    # The receiver is failing: the rest of this scan's events
                    # share the outcome and each backs off on its own
                    # schedule, instead of piling onto it.
                    later = list(queue)
                    queue.clear()
                    skipped = replace(
                        outcome, error=f"{outcome.error} (not sent: {SKIPPED})"
                    )
                    report.add(
                        await self._record_failure(
                            channel, 0, later, skipped, self.clock(), sent=False
                        )
                    )

        await asyncio.gather(*(worker() for _ in range(2)))
        return report

    async def _deliver_messages(
        self, channel: Channel, target: int, rows: list[Row], now: datetime
    ) -> ScanReport:
        report = ScanReport()
        flood = self._floods[(channel.name, target)]
        free_at = flood.free_at(now, channel.flood_cap)
        if free_at is not None:
            # Over the cap: everything waits and then goes out as one message.
            return await self._hold(rows, free_at)
        if not is_digest(channel):
            flood.sent.append(now)
            outcome = await self.notifier.send_batch(
                channel, target, [e for _, e in rows]
            )
            return await self._settle(channel, target, rows, outcome)
        alerts = [row for row in rows if row[1].type in ALERT_TYPES]
        if alerts:
            flood.sent.append(now)
            outcome = await self.notifier.send_batch(
                channel, target, [e for _, e in alerts]
            )
            report.add(await self._settle(channel, target, alerts, outcome))
        others = [row for row in rows if row[1].type not in ALERT_TYPES]
        report.add(await self._deliver_digest(channel, target, others, now))
        return report

    async def _deliver_digest(
        self, channel: Channel, target: int, rows: list[Row], now: datetime
    ) -> ScanReport:
        report = ScanReport()
        waiting: dict[datetime, list[Row]] = defaultdict(list)
        ready: list[Row] = []
        for row in rows:
            close = digest_close(channel, row[0].created_at)
            (ready if close <= now else waiting[close]).append(row)
        for close, held in waiting.items():
            report.add(await self._hold(held, close))
        if not ready:
            return report
        last = await self.store.get_meta(digest_key(channel.name, target))
        events = sorted((e for _, e in ready), key=lambda event: event.occurred_at)
        first = min(delivery.created_at for delivery, _ in ready)
        since = parse_isoformat(last) if last else min(first, events[0].occurred_at)
        self._floods[(channel.name, target)].sent.append(now)
        outcome = await self.notifier.send_digest(
            channel, target, events, since=since, until=now
        )
        if outcome.ok:
            await self.store.set_meta(digest_key(channel.name, target), isoformat(now))
        report.add(await self._settle(channel, target, ready, outcome))
        return report

    async def _hold(self, rows: Iterable[Row], until: datetime) -> ScanReport:
        """Move rows' next attempt to ``until`` without counting an attempt."""
        held = await self.store.defer(
            [delivery.id for delivery, _ in rows], until=until
        )
        return ScanReport(held=held)

    async def _bury(self, rows: Sequence[Row], reason: str) -> ScanReport:
        ids = [delivery.id for delivery, _ in rows]
        await self.store.mark_failed(
            ids, error=reason, next_attempt_at=None, now=self.clock()
        )
        log.error("delivery dead deliveries=%d: %s", len(ids), reason)
        return ScanReport(dead=len(ids))

    async def _settle(
        self, channel: Channel, target: int, rows: Sequence[Row], outcome: SendOutcome
    ) -> ScanReport:
        now = self.clock()
        ids = [delivery.id for delivery, _ in rows]
        if not outcome.ok:
            return await self._record_failure(channel, target, rows, outcome, now)
        await self.store.mark_delivered(ids, now=now)
        log.info(
            "delivery channel=%s target=%d events=%d outcome=delivered ms=%d",
            channel.name, target, len(ids), outcome.ms,
        )  # fmt: skip
        if await self.store.get_meta(failing_key(channel.name, target)) is not None:
            await self.store.set_meta(failing_key(channel.name, target), None)
            log.info("channel %s target %d delivers again", channel.name, target)
        return ScanReport(delivered=len(ids), messages=1)

    async def _record_failure(
        self,
        channel: Channel,
        target: int,
        rows: Sequence[Row],
        outcome: SendOutcome,
        now: datetime,
        *,
        sent: bool = True,
    ) -> ScanReport:
        error = outcome.error or f"channel {channel.name} target {target}: failed"
        if outcome.gone:
            await self._disable(channel, error)
        report = ScanReport(messages=1 if sent else 0)
        by_attempts: dict[int, list[int]] = defaultdict(list)
        for delivery, _ in rows:
            by_attempts[delivery.attempts + 1].append(delivery.id)
        # One jitter per send keeps a batch together on its next attempt.
        jitter = self._rng.uniform(0.9, 1.2)
        for attempt, ids in sorted(by_attempts.items()):
            retry = None
            if not outcome.permanent:
                retry = next_attempt_at(
                    channel,
                    attempt,
                    now,
                    retry_after=outcome.retry_after,
                    jitter=jitter,
                )
            await self.store.mark_failed(
                ids, error=error, next_attempt_at=retry, now=now
            )
            if retry is not None:
                report.failed += len(ids)
                log.warning(
                    "delivery channel=%s target=%d events=%d attempt=%d "
                    "outcome=failed retry_in=%ds: %s",
                    channel.name, target, len(ids), attempt,
                    (retry - now).total_seconds(), error,
                )  # fmt: skip
                continue
            report.dead += len(ids)
            log.error(
                "delivery channel=%s target=%d events=%d attempt=%d outcome=dead: %s",
                channel.name, target, len(ids), attempt, error,
            )  # fmt: skip
            await self._report_failing(channel, target, rows[0][1], outcome, attempt)
        return report

    async def _disable(self, channel: Channel, error: str) -> None:
        async with self._flags:
            if await self.store.get_meta(disabled_key(channel.name)) is not None:
                return
            await self.store.set_meta(disabled_key(channel.name), error)
        log.error(
            "channel %s disabled: %s; re-enable it with "
            "`atleta-notifier deliveries --enable %s`",
            channel.name, error, channel.name,
        )  # fmt: skip

    async def _report_failing(
        self,
        channel: Channel,
        target: int,
        source: Event,
        outcome: SendOutcome,
        attempts: int,
    ) -> None:
        """Tell the project's other channels, once per failure, that one is failing."""
        key = failing_key(channel.name, target)
        now = self.clock()
        async with self._flags:
            if await self.store.get_meta(key) is not None:
                return
            await self.store.set_meta(key, isoformat(now))
        targets: list[Target] = []
        for name in sorted(self._routes[source.project.id] - {channel.name}):
            other = self.channels.get(name)
            if other is None or not accepts(other, "channel.failing"):
                continue
            if await self.store.get_meta(disabled_key(name)) is None:
                targets.extend(other.targets)
        if not targets:
            return
        alert = failing_alert(outcome, source=source, attempts=attempts, now=now)
        await self.store.add_events(
            [alert], [(alert.id, item) for item in targets], now=now
        )
        self.wake()
