"""The daemon: one scheduled poll per watch, deliveries, signals, health.

One :class:`Daemon` owns one event loop's worth of parts, built once: the
config, the store (opened once), one shared :class:`AtletaClient` (so the
per-token rate limit and the concurrency cap hold across every job), the
delivery loop, an APScheduler 3 ``AsyncIOScheduler`` with one ``async`` job
per enabled watch, and optionally the health and metrics listener.

Signals: SIGTERM and SIGINT stop taking new polls, let running polls finish
their transaction and sends in flight end (within ``stop_timeout`` in all),
and stop cleanly. APScheduler
3's ``shutdown(wait=True)`` cancels running coroutine jobs instead of waiting
for them, hence pause, drain, then shut down. A second SIGINT exits at once.
SIGHUP reloads the config: a bad file is reported and the running config
kept; a good one replaces the jobs. Under systemd (``Type=notify``) the
daemon reports READY, STOPPING and watchdog pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from notifier import console, engine
from notifier.atleta import AtletaClient
from notifier.config import Config, load_config
from notifier.delivery import DeliveryLoop, project_routes
from notifier.errors import ConfigError, NotifierError
from notifier.metrics import (
    DEFAULT_MIN_GRACE,
    HealthReport,
    Metrics,
    MetricsServer,
    assess,
    build_app,
    grace_for,
)
from notifier.model import Channel, Event, Watch, utcnow
from notifier.notify import Notifier, SendOutcome
from notifier.store import Store

logger = logging.getLogger(__name__)

CONSOLE_SCHEME = console.SCHEME
"""Importing :mod:`notifier.console` registers ``console://`` with Apprise."""

DEFAULT_STOP_TIMEOUT = 20.0
"""Seconds polls and sends in flight get to finish on SIGTERM (systemd allows 30)."""
PRUNE_JOB = "prune"
PRUNE_EVERY = 3600.0
"""Seconds between two passes of ``[storage]`` retention (the first at start)."""
EXIT_INTERRUPTED = 130

PollHook = Callable[[Watch, "engine.PollOutcome"], None]


def sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's notify socket; False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as error:
        logger.warning("cannot notify systemd: %s", error)
        return False
    return True


_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def cron_weekdays(field: str) -> str:
    """Translate a crontab day-of-week field (0 or 7 = Sunday) to day names.

    APScheduler 3 numbers weekdays from Monday, crontab from Sunday; names
    mean the same to both, so numbers are expanded into names.
    """
    if "/" not in field and not re.search(r"\d", field):
        return field
    days: list[int] = []
    for item in field.split(","):
        spec, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if spec == "*":
            first, last = 0, 6
        elif "-" in spec:
            low, high = spec.split("-", 1)
            first, last = _cron_day(low), _cron_day(high)
            last = 7 if last == 0 and first > 0 else last
        else:
            first = last = _cron_day(spec)
        days.extend(day % 7 for day in range(first, last + 1, step))
    return ",".join(_CRON_DAYS[day] for day in sorted(set(days)))


def _cron_day(text: str) -> int:
    if text.isdigit():
        return int(text) % 7
    return _CRON_DAYS.index(text.lower()[:3])


def build_trigger(watch: Watch) -> BaseTrigger:
    """The APScheduler trigger of a watch's schedule, in its time zone."""
    schedule = watch.schedule
    zone = ZoneInfo(schedule.timezone)
    jitter = schedule.jitter or None
    if schedule.cron:
        minute, hour, day, month, weekday = schedule.cron.split()
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=cron_weekdays(weekday),
            timezone=zone,
            jitter=jitter,
        )
    return IntervalTrigger(
        seconds=schedule.interval or 300.0, timezone=zone, jitter=jitter
    )


def schedule_period(watch: Watch, now: datetime | None = None) -> float:
    """Seconds between two polls of a watch (for cron: the next gap from now)."""
    if not watch.schedule.cron:
        return watch.schedule.interval or 300.0
    trigger = build_trigger(watch)
    trigger.jitter = None
    moment = now or utcnow()
    first = trigger.get_next_fire_time(None, moment)
    if first is None:
        return 86400.0
    second = trigger.get_next_fire_time(first, first + timedelta(seconds=1))
    if second is None:
        return 86400.0
    return float((second - first).total_seconds())


class Daemon:
    """The long-running notifier: scheduler, polls, deliveries, health."""

    def __init__(
        self,
        config_path: Path,
        *,
        environ: Mapping[str, str] | None = None,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        min_grace: float = DEFAULT_MIN_GRACE,
        on_config: Callable[[Config], None] | None = None,
        on_poll: PollHook | None = None,
        install_signals: bool = True,
    ) -> None:
        self.config_path = config_path
        self._environ = environ
        self.stop_timeout = stop_timeout
        self.min_grace = min_grace
        self._on_config = on_config
        self._on_poll = on_poll
        self._install_signals = install_signals
        self.metrics = Metrics()
        self.started_at = utcnow()
        self.metrics_port: int | None = None
        self._config: Config | None = None
        self._watches: dict[str, Watch] = {}
        self._store: Store | None = None
        self._client: AtletaClient | None = None
        self._retired_clients: list[AtletaClient] = []
        self._delivery: DeliveryLoop | None = None
        self._delivery_task: asyncio.Task[None] | None = None
        self._notifier: CountingNotifier | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._server: MetricsServer | None = None
        self._inflight: set[asyncio.Task[object]] = set()
        self._crashed: set[str] = set()
        self._commands: asyncio.Queue[str] | None = None
        self._stopping = False
        self.ready = asyncio.Event()

    @property
    def config(self) -> Config:
        """The config the daemon runs on now."""
        assert self._config is not None, "the daemon has not started"
        return self._config

    def _load(self) -> Config:
        config = load_config(self.config_path, environ=self._environ)
        if self._on_config is not None:
            self._on_config(config)
        for warning in config.warnings:
            logger.warning("config: %s", warning)
        return config

    # Lifecycle

    async def run(self) -> int:
        """Run until stopped; the exit code (0 after a clean stop).

        :raises ConfigError: when the config cannot be used at start.
        :raises StoreError: when the SQLite file cannot be opened.
        :raises NotifierError: when the metrics listener cannot bind.
        """
        self._commands = asyncio.Queue()
        self._config = self._load()
        self._store = await Store.open(self.config.storage.path)
        try:
            await self._start()
            await self._serve()
        finally:
            await self._shutdown()
        return 0

    async def _start(self) -> None:
        config = self.config
        self.started_at = utcnow()
        self._client = engine.Engine.client_for(config)
        self._start_delivery()
        if config.metrics.enabled:
            await self._start_metrics(config)
        self._scheduler = AsyncIOScheduler(
            timezone=ZoneInfo(config.defaults.timezone),
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self._scheduler.start()
        self._scheduler.add_job(
            self._prune_job,
            trigger="interval",
            seconds=PRUNE_EVERY,
            id=PRUNE_JOB,
            name="prune old events",
            next_run_time=datetime.now(ZoneInfo(config.defaults.timezone)),
        )
        self._apply_watches(config, first=True)
        if self._install_signals:
            self._add_signal_handlers()
        sd_notify(f"READY=1\nSTATUS=polling {len(self._watches)} watches")
        logger.info(
            "daemon started watches=%d channels=%d database=%s",
            len(self._watches),
            len(config.channels),
            config.storage.path,
        )
        self.ready.set()

    async def _start_metrics(self, config: Config) -> None:
        app = build_app(self.health)
        self._server = MetricsServer(app, config.metrics.host, config.metrics.port)
        try:
            await self._server.start()
        except OSError as error:
            self._server = None
            raise NotifierError(
                f"cannot listen for metrics on {config.metrics.host}:"
                f"{config.metrics.port}: {error.strerror or error}"
            ) from error
        self.metrics_port = self._server.port

    async def _serve(self) -> None:
        assert self._commands is not None
        watchdog = asyncio.create_task(self._watchdog())
        try:
            while True:
                command = await self._commands.get()
                if command == "stop":
                    return
                if command == "reload":
                    await self._reload()
        finally:
            watchdog.cancel()

    def request_stop(self) -> None:
        """Stop taking polls and shut down (what SIGTERM does)."""
        if self._commands is not None:
            self._commands.put_nowait("stop")

    def request_reload(self) -> None:
        """Reload the config file (what SIGHUP does)."""
        if self._commands is not None:
            self._commands.put_nowait("reload")

    def _add_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def _on_stop_signal(self, name: str) -> None:
        if self._stopping and name == "SIGINT":
            # Exiting mid-transaction is safe: SQLite (WAL) rolls back any
            # transaction that did not commit when the file is next opened,
            # and a committed poll already holds its events and pending
            # deliveries, which the next start sends (at least once).
            logger.warning("second SIGINT: exiting now")
            logging.shutdown()
            os._exit(EXIT_INTERRUPTED)
        logger.info("%s received: stopping", name)
        self.request_stop()

    async def _watchdog(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", str(os.getpid()))
        if not usec.isdigit() or int(usec) == 0 or pid != str(os.getpid()):
            return
        # A ping from a task on the loop proves the loop itself still turns.
        period = int(usec) / 2_000_000
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(period)

    async def _shutdown(self) -> None:
        self._stopping = True
        sd_notify("STOPPING=1")
        # Polls and sends in flight share one budget, so the whole stop stays
        # within systemd's TimeoutStopSec.
        deadline = time.monotonic() + self.stop_timeout
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()
        await self._drain(self.stop_timeout)
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        await self._stop_delivery(max(2.0, deadline - time.monotonic()))
        if self._server is not None:
            await self._server.stop()
        for client in [self._client, *self._retired_clients]:
            if client is not None:
                await client.aclose()
        if self._store is not None:
            await self._store.close()
        if self._install_signals and self.ready.is_set():
            self._remove_signal_handlers()
        logger.info("daemon stopped")

    async def _drain(self, budget: float) -> None:
        running = {task for task in self._inflight if not task.done()}
        if not running:
            return
        logger.info(
            "waiting up to %.0f s for %d running poll%s",
            budget,
            len(running),
            "" if len(running) == 1 else "s",
        )
        _, pending = await asyncio.wait(running, timeout=budget)
        for task in pending:
            # The poll's transaction either committed or never will: the
            # store writes it on its own thread in one SQLite transaction.
            task.cancel()
        if pending:
            logger.warning("cancelled %d polls still running at stop", len(pending))
            await asyncio.wait(pending, timeout=5)

    # Jobs

    def _apply_watches(self, config: Config, *, first: bool = False) -> None:
        assert self._scheduler is not None
        scheduler = self._scheduler
        wanted = {w.id: w for w in config.watches if w.enabled}
        for job in scheduler.get_jobs():
            if job.id not in wanted and job.id != PRUNE_JOB:
                job.remove()
                logger.info("watch %s removed from the schedule", job.id)
        for watch_id, watch in wanted.items():
            old = self._watches.get(watch_id)
            # Jobs look their watch up at each run, so only a new schedule
            # needs a new job (and keeps the others' timing undisturbed).
            unchanged = old is not None and old.schedule == watch.schedule
            if not first and unchanged and scheduler.get_job(watch_id):
                continue
            period = schedule_period(watch)
            # An interval watch polls soon after start (a newcomer sees the
            # baseline at once); a cron watch keeps to its clock times.
            first_run = (
                {}
                if watch.schedule.cron
                else {"next_run_time": _first_run(watch, period)}
            )
            scheduler.add_job(
                self._poll_job,
                trigger=build_trigger(watch),
                args=[watch_id],
                id=watch_id,
                name=f"poll {watch_id}",
                replace_existing=True,
                misfire_grace_time=max(1, int(period)),
                **first_run,
            )
        self._watches = wanted
        self.metrics.watches.set(len(wanted))

    async def _poll_job(self, watch_id: str) -> None:
        task: asyncio.Task[object] | None = asyncio.current_task()
        watch = self._watches.get(watch_id)
        if watch is None or self._stopping or task is None:
            return
        self._inflight.add(task)
        started = time.monotonic()
        try:
            outcome = await self._poll(watch)
        except asyncio.CancelledError:
            raise
        except NotifierError as error:
            # The store failed (disk full, file gone); the next run retries.
            logger.error("poll of %s failed: %s", watch_id, error)
            self.metrics.observe_poll(watch_id, "store", time.monotonic() - started, [])
            return
        except Exception as error:
            # A bug in a poll must not stop the schedule. The traceback is
            # what a maintainer needs, once per watch rather than every poll.
            if watch_id in self._crashed:
                logger.error("poll of %s crashed again: %r", watch_id, error)
            else:
                self._crashed.add(watch_id)
                logger.exception("poll of %s crashed", watch_id)
            self.metrics.observe_poll(watch_id, "crash", time.monotonic() - started, [])
            return
        finally:
            self._inflight.discard(task)
        outcome_name = _outcome_name(outcome)
        self.metrics.observe_poll(
            watch_id,
            outcome_name,
            outcome.ms / 1000,
            [event.type for event in outcome.events],
        )
        if self._on_poll is not None:
            self._on_poll(watch, outcome)

    async def _poll(self, watch: Watch) -> engine.PollOutcome:
        assert self._client is not None
        assert self._store is not None
        return await engine.poll(
            watch,
            client=self._client,
            store=self._store,
            channels=self.config.channels,
            on_commit=self._wake_delivery,
        )

    async def _prune_job(self) -> None:
        """Apply ``[storage]`` retention; events still to deliver always stay."""
        storage = self.config.storage
        if self._store is None or (
            storage.retention_days is None and storage.retention_events is None
        ):
            return
        max_age = storage.retention_days * 86400 if storage.retention_days else None
        try:
            await self._store.prune(
                max_age=max_age, max_events=storage.retention_events, now=utcnow()
            )
        except NotifierError as error:
            # The next pass retries; old events staying a while longer is harmless.
            logger.error("pruning old events failed: %s", error)

    def _wake_delivery(self) -> None:
        if self._delivery is not None:
            self._delivery.wake()

    # Deliveries

    def _start_delivery(self) -> None:
        assert self._store is not None
        self._notifier = CountingNotifier(self.config.channels, metrics=self.metrics)
        # The configured routes, so that a failing channel is reported to
        # its project's other channels even before they had a delivery.
        self._delivery = DeliveryLoop(
            self._store,
            self.config.channels,
            notifier=self._notifier,
            routes=project_routes(self.config.watches),
        )
        self._delivery_task = asyncio.create_task(self._delivery.run())

    async def _stop_delivery(self, budget: float) -> None:
        if self._delivery is None or self._delivery_task is None:
            return
        self._delivery.stop()
        done, _ = await asyncio.wait({self._delivery_task}, timeout=budget)
        if not done:
            self._delivery_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._delivery_task
        elif self._delivery_task.exception() is not None:
            logger.error("delivery loop failed: %s", self._delivery_task.exception())
        if self._notifier is not None:
            await self._notifier.aclose()
        self._delivery = self._delivery_task = self._notifier = None

    # Reload

    async def _reload(self) -> None:
        logger.info("reloading the config from %s", self.config_path)
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
        try:
            await self._apply_config()
        finally:
            sd_notify(f"READY=1\nSTATUS=polling {len(self._watches)} watches")

    async def _apply_config(self) -> None:
        try:
            config = await asyncio.to_thread(self._load)
        except (NotifierError, OSError) as error:
            # One log line, however many problems the new file has.
            reason = (
                "; ".join(error.problems) if isinstance(error, ConfigError) else error
            )
            logger.error("config reload failed; keeping the running config: %s", reason)
            return
        old = self.config
        if config.storage.path != old.storage.path:
            logger.warning(
                "storage.path changed: the daemon keeps %s until restarted",
                old.storage.path,
            )
        if config.metrics != old.metrics:
            logger.warning("[metrics] changed: it takes effect at the next restart")
        if config.api != old.api:
            # Running polls keep the old client; it is closed at stop.
            if self._client is not None:
                self._retired_clients.append(self._client)
            self._client = engine.Engine.client_for(config)
        self._config = config
        routes_changed = project_routes(config.watches) != project_routes(old.watches)
        if config.channels != old.channels or routes_changed:
            await self._stop_delivery(self.stop_timeout)
            self._start_delivery()
        self._apply_watches(config)
        logger.info("config reloaded watches=%d", len(self._watches))

    # Health

    async def health(self) -> tuple[HealthReport, Metrics]:
        """The current health report, with the store-fed gauges refreshed."""
        assert self._store is not None
        now = utcnow()
        states = await self._store.watch_states()
        outbox = await self._store.outbox_stats(now)
        running = bool(
            self._scheduler is not None
            and self._scheduler.running
            and not self._stopping
            and self._scheduler.state == STATE_RUNNING
        )
        watches = dict(self._watches)
        report = assess(
            running=running,
            graces={
                wid: grace_for(schedule_period(w, now), self.min_grace)
                for wid, w in watches.items()
            },
            states={s.watch: s for s in states if s.watch in watches},
            started_at=self.started_at,
            failure_thresholds={wid: w.failure_threshold for wid, w in watches.items()},
            now=now,
        )
        self.metrics.set_state(
            health=report,
            states=[s for s in states if s.watch in watches],
            outbox=outbox,
        )
        return report, self.metrics


class CountingNotifier(Notifier):
    """A notifier that counts each send's deliveries by channel and outcome."""

    def __init__(self, channels: Mapping[str, Channel], *, metrics: Metrics) -> None:
        super().__init__(channels)
        self._metrics = metrics

    def _count(self, outcome: SendOutcome, deliveries: int) -> SendOutcome:
        if outcome.ok:
            name = "delivered"
        else:
            name = "rejected" if outcome.permanent else "failed"
        self._metrics.observe_delivery(outcome.channel, name, deliveries)
        return outcome

    async def send_batch(
        self, channel: Channel, target: int, events: Sequence[Event]
    ) -> SendOutcome:
        """Send one message and count its deliveries."""
        outcome = await super().send_batch(channel, target, events)
        return self._count(outcome, len(events))

    async def send_digest(
        self, channel: Channel, target: int, events: Sequence[Event], **window: Any
    ) -> SendOutcome:
        """Send one digest and count its deliveries."""
        outcome = await super().send_digest(channel, target, events, **window)
        return self._count(outcome, len(events))

    async def send_webhook(self, channel: Channel, event: Event) -> SendOutcome:
        """POST one event and count it."""
        return self._count(await super().send_webhook(channel, event), 1)


def _first_run(watch: Watch, period: float) -> datetime:
    """When a watch first polls: soon, spread over its jitter (at most a period)."""
    spread = min(watch.schedule.jitter, period)
    zone = ZoneInfo(watch.schedule.timezone)
    return datetime.now(zone) + timedelta(seconds=random.uniform(0, spread))


def _outcome_name(outcome: engine.PollOutcome) -> str:
    if outcome.error is not None:
        return outcome.error.kind
    return "baseline" if outcome.baseline else "ok"
