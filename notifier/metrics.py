"""Health and Prometheus metrics of a running daemon, served on 127.0.0.1.

``/healthz`` answers 200 while the scheduler runs and every watch had a good
poll within its grace, 503 otherwise; its JSON body says why and lists the
overdue and failing watches. ``/metrics`` is the Prometheus text format.
Every :class:`Metrics` has its own registry, so several daemons (or tests)
can live in one process. The listener is a small Starlette app under uvicorn
on the daemon's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notifier.model import WatchState, isoformat

logger = logging.getLogger(__name__)

PREFIX = "atleta_notifier"
GRACE_INTERVALS = 3
"""A watch is overdue after this many intervals without a good poll."""
DEFAULT_MIN_GRACE = 60.0
"""Nor before this many seconds, so one slow poll of a short interval is no alarm."""


class Metrics:
    """The daemon's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.poll_duration = Histogram(
            f"{PREFIX}_poll_duration_seconds",
            "Time one poll took, by outcome (ok, baseline or the error kind).",
            ["outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=reg,
        )
        self.polls = Counter(
            f"{PREFIX}_polls",
            "Polls by watch and outcome (ok, baseline or the error kind).",
            ["watch", "outcome"],
            registry=reg,
        )
        self.events = Counter(
            f"{PREFIX}_events",
            "Events emitted by watch and event type.",
            ["watch", "type"],
            registry=reg,
        )
        self.deliveries = Counter(
            f"{PREFIX}_deliveries",
            "Delivery attempts by channel and outcome.",
            ["channel", "outcome"],
            registry=reg,
        )
        self.records = _gauge(reg, "watch_records", "Records held by a watch.", "watch")
        self.consecutive_failures = _gauge(
            reg, "watch_consecutive_failures", "Failed polls in a row.", "watch"
        )
        self.since_good_poll = _gauge(
            reg,
            "watch_seconds_since_good_poll",
            "Seconds since the last good poll (since start when none yet).",
            "watch",
        )
        self.outbox_pending = _gauge(
            reg, "outbox_pending", "Deliveries waiting to be sent.", "channel"
        )
        self.outbox_dead = _gauge(
            reg, "outbox_dead", "Deliveries given up on (replayable).", "channel"
        )
        self.outbox_oldest = _gauge(
            reg,
            "outbox_oldest_pending_seconds",
            "Age of the oldest pending delivery.",
            "channel",
        )
        self.scheduler_running = Gauge(
            f"{PREFIX}_scheduler_running",
            "1 while the scheduler takes new polls.",
            registry=reg,
        )
        self.watches = Gauge(f"{PREFIX}_watches", "Watches scheduled.", registry=reg)

    def observe_poll(
        self, watch: str, outcome: str, seconds: float, events: Sequence[str]
    ) -> None:
        """Count one poll, its duration, and the types of the events it emitted."""
        self.polls.labels(watch, outcome).inc()
        self.poll_duration.labels(outcome).observe(seconds)
        for event_type in events:
            self.events.labels(watch, event_type).inc()

    def observe_delivery(self, channel: str, outcome: str, count: int = 1) -> None:
        """Count delivery attempts of one channel with one outcome."""
        self.deliveries.labels(channel, outcome).inc(count)

    def set_state(
        self,
        *,
        health: HealthReport,
        states: Sequence[WatchState],
        outbox: Mapping[str, tuple[int, int, float | None]],
    ) -> None:
        """Refresh the gauges read from the store (called before each scrape)."""
        self.scheduler_running.set(1 if health.running else 0)
        self.watches.set(len(health.watches))
        # Rebuilt on each scrape, so a watch or channel removed by a reload
        # leaves no stale series behind.
        for gauge in (
            self.records,
            self.consecutive_failures,
            self.since_good_poll,
            self.outbox_pending,
            self.outbox_dead,
            self.outbox_oldest,
        ):
            gauge.clear()
        for state in states:
            self.records.labels(state.watch).set(state.records)
            self.consecutive_failures.labels(state.watch).set(
                state.consecutive_failures
            )
        for item in health.watches:
            self.since_good_poll.labels(item.watch).set(item.since_good_poll)
        for channel, (pending, dead, oldest) in outbox.items():
            self.outbox_pending.labels(channel).set(pending)
            self.outbox_dead.labels(channel).set(dead)
            self.outbox_oldest.labels(channel).set(oldest or 0.0)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def _gauge(registry: CollectorRegistry, name: str, text: str, label: str) -> Gauge:
    return Gauge(f"{PREFIX}_{name}", text, [label], registry=registry)


@dataclass(frozen=True, kw_only=True)
class WatchHealth:
    """One watch as ``/healthz`` sees it."""

    watch: str
    grace: float
    since_good_poll: float
    last_good_poll: datetime | None
    consecutive_failures: int
    last_error_kind: str | None
    overdue: bool
    failing: bool

    def to_json(self) -> dict[str, Any]:
        """The watch's entry in the ``/healthz`` body."""
        return {
            "watch": self.watch,
            "last_good_poll": (
                isoformat(self.last_good_poll) if self.last_good_poll else None
            ),
            "seconds_since_good_poll": round(self.since_good_poll, 1),
            "grace_seconds": self.grace,
            "consecutive_failures": self.consecutive_failures,
            "last_error_kind": self.last_error_kind,
        }


@dataclass(frozen=True, kw_only=True)
class HealthReport:
    """Whether the daemon is healthy, and why not."""

    running: bool
    watches: tuple[WatchHealth, ...]

    @property
    def healthy(self) -> bool:
        """True while the scheduler runs and no watch is overdue."""
        return self.running and not any(w.overdue for w in self.watches)

    def to_json(self) -> dict[str, Any]:
        """The ``/healthz`` body."""
        overdue = [w.to_json() for w in self.watches if w.overdue]
        failing = [w.to_json() for w in self.watches if w.failing]
        reasons = []
        if not self.running:
            reasons.append("the scheduler is not running")
        if overdue:
            reasons.append(f"{len(overdue)} watch(es) without a good poll in grace")
        return {
            "status": "ok" if self.healthy else "unhealthy",
            "reasons": reasons,
            "watches": len(self.watches),
            "overdue": overdue,
            "failing": failing,
        }


def assess(
    *,
    running: bool,
    graces: Mapping[str, float],
    states: Mapping[str, WatchState],
    started_at: datetime,
    failure_thresholds: Mapping[str, int],
    now: datetime,
) -> HealthReport:
    """Judge every scheduled watch against its grace (``graces``: watch id -> s).

    A watch never polled well is measured from ``started_at``, so a daemon
    that starts against a dead API turns unhealthy after one grace.
    ``seconds_since_good_poll`` in the body is measured the same way.
    """
    items = []
    for watch_id, grace in sorted(graces.items()):
        state = states.get(watch_id)
        good = state.last_success_at if state else None
        # A restart grants a fresh grace: the clock runs from the later of
        # the last good poll and the daemon's start.
        since = (now - max(good or started_at, started_at)).total_seconds()
        failures = state.consecutive_failures if state else 0
        items.append(
            WatchHealth(
                watch=watch_id,
                grace=grace,
                since_good_poll=max(0.0, since),
                last_good_poll=good,
                consecutive_failures=failures,
                last_error_kind=state.last_error_kind if state and failures else None,
                overdue=since > grace,
                failing=failures >= failure_thresholds.get(watch_id, 3),
            )
        )
    return HealthReport(running=running, watches=tuple(items))


def grace_for(period: float, min_grace: float = DEFAULT_MIN_GRACE) -> float:
    """How long a watch polled every ``period`` seconds may go without a good poll."""
    return max(GRACE_INTERVALS * period, min_grace)


HealthSource = Callable[[], Awaitable[tuple[HealthReport, Metrics]]]


def build_app(source: HealthSource) -> Starlette:
    """The ASGI app: ``/healthz`` and ``/metrics`` fed by ``source``."""

    async def healthz(request: Request) -> Response:
        report, _ = await source()
        return JSONResponse(
            report.to_json(), status_code=200 if report.healthy else 503
        )

    async def metrics(request: Request) -> Response:
        _, registry = await source()
        return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the daemon."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing: the daemon owns SIGTERM, SIGINT and SIGHUP."""
        yield


class MetricsServer:
    """The health and metrics listener, running as a task on the current loop."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        self._app = app
        self.host = host
        self.port = port
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind the socket (errors surface here) and serve in the background.

        :raises OSError: when the address cannot be bound.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.listen(64)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        logger.info("metrics listening on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop serving and wait for the server task."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._task, timeout=5)
        self._server = self._task = None
