"""One poll of one watch: fetch, diff, decide what is proven, commit.

A poll reads the watch's snapshot, fetches every record, normalises and
diffs them, and writes the new snapshot, its events and their deliveries
in one transaction (``Store.commit_poll``), which applies only if no other
poll committed the watch meanwhile. What a poll may conclude:

- The first poll, or the first after the watch's query or fields changed,
  is a *baseline*: the snapshot is replaced and no event is sent unless the
  watch opts in. A baseline waits for a complete walk, since a record a
  walk skipped would later look new.
- A record seen is real at once: creations and updates become events.
- A record not seen is weaker evidence. After a walk that could have
  skipped records (``complete=False``), or when more than
  ``watch.vanish_share`` of the records vanish at once, absent records are
  *held*: kept in the snapshot and counted in ``missing``. So are the
  absences of a walk that also found new records: a cancellation and a
  registration during a walk keep ``total`` equal but shift the pages, so
  such a walk may have skipped a record. Held records are deleted when a
  later complete walk still misses them.
- A failed poll changes no snapshot. After ``watch.failure_threshold``
  failures in a row one ``watch.failing`` event goes out, and one
  ``watch.recovered`` event with the next successful poll.
"""

from __future__ import annotations

import asyncio
import fnmatch
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

from notifier import diff
from notifier.errors import (
    GenerationConflict,
    IncompleteWalkError,
    MalformedResponseError,
    PollError,
)
from notifier.model import (
    JSON,
    Change,
    Channel,
    Event,
    PollCommit,
    Snapshot,
    SnapshotRecord,
    Target,
    Watch,
    WatchState,
    utcnow,
)

if TYPE_CHECKING:
    from notifier.atleta import AtletaClient, FetchResult, Progress
    from notifier.config import Config
    from notifier.store import Store

logger = logging.getLogger(__name__)

MIN_VANISHED = 3
"""A vanish this small is never held: a few cancellations are ordinary."""

_THREAD_THRESHOLD = 2000
"""Polls with more records diff on a worker thread, keeping the loop responsive."""


@dataclass(frozen=True, kw_only=True)
class PollOutcome:
    """What one poll of one watch found and did.

    ``events`` are the events committed (none after a conflict, and those
    that would have been, on a dry run). ``changes`` are every change the
    poll proved, before rules. ``held`` counts absent records not yet
    deleted. ``generation`` is the watch's generation after the poll.
    """

    watch: str
    records: int = 0
    events: tuple[Event, ...] = ()
    baseline: bool = False
    error: PollError | None = None
    held: int = 0
    ms: float = 0.0
    changes: tuple[Change, ...] = ()
    committed: bool = False
    conflict: bool = False
    dry_run: bool = False
    generation: int = 0
    pages: int = 0


@dataclass(frozen=True, kw_only=True)
class PollPlan:
    """What a poll's records prove against a snapshot, ready to commit."""

    baseline: bool
    changes: tuple[Change, ...]
    upserts: Mapping[str, SnapshotRecord]
    deletes: tuple[str, ...]
    missing: Mapping[str, int]
    size: int
    """How many records the snapshot holds after the commit (held ones too)."""


def index_records(
    watch: Watch, records: Iterable[JSON], previous: Mapping[str, SnapshotRecord]
) -> dict[str, SnapshotRecord]:
    """Normalise and hash fetched records by the watch's key.

    A single-object watch without the key field is keyed by the watch name.

    :raises MalformedResponseError: when a record is not an object or has no key.
    """
    if watch.single:
        items = list(records)
        try:
            return diff.snapshot_records(
                items, key=watch.key, ignore=watch.ignore, previous=previous
            )
        except MalformedResponseError:
            if len(items) != 1 or not isinstance(items[0], dict):
                raise
            record = diff.normalise(items[0], watch.ignore)
            return {
                watch.name: SnapshotRecord(hash=diff.record_hash(record), record=record)
            }
    return diff.snapshot_records(
        records, key=watch.key, ignore=watch.ignore, previous=previous
    )


def plan_poll(
    watch: Watch,
    snapshot: Snapshot,
    records: Mapping[str, SnapshotRecord],
    *,
    complete: bool,
) -> PollPlan:
    """Decide what a poll proves: the changes to report and the snapshot to write.

    :raises IncompleteWalkError: for a baseline from a walk that could have
        skipped records.
    """
    if snapshot.generation == 0 or snapshot.fingerprint != watch.fingerprint():
        return _plan_baseline(watch, records, complete=complete)
    if watch.single:
        return _plan_single(snapshot, records)
    changes = diff.diff(snapshot.records, records)
    absent = [change for change in changes if change.kind == "deleted"]
    vanish = len(absent) >= MIN_VANISHED and len(absent) > (
        watch.vanish_share * len(snapshot.records)
    )
    # A cancellation plus a new record during a walk keeps the total equal
    # yet shifts the pages, so a walk that also found new records could
    # have skipped one: its absences wait for the next poll as well.
    shifted = any(change.kind == "created" for change in changes)
    sound = complete and not vanish and not shifted
    confirmed = [
        change
        for change in absent
        if complete and (change.key in snapshot.missing or sound)
    ]
    proven = {change.key for change in confirmed}
    missing = {
        change.key: snapshot.missing.get(change.key, 0) + 1
        for change in absent
        if change.key not in proven
    }
    real = [change for change in changes if change.kind != "deleted"]
    return PollPlan(
        baseline=False,
        changes=(*real, *confirmed),
        upserts={change.key: records[change.key] for change in real},
        deletes=tuple(change.key for change in confirmed),
        missing=missing,
        size=len(records) + len(missing),
    )


def _plan_single(snapshot: Snapshot, records: Mapping[str, SnapshotRecord]) -> PollPlan:
    if not records:
        # Nothing to compare with: keep the snapshot as it is.
        return PollPlan(
            baseline=False,
            changes=(),
            upserts={},
            deletes=(),
            missing={},
            size=len(snapshot.records),
        )
    old = snapshot.records
    return PollPlan(
        baseline=False,
        changes=tuple(diff.diff(old, records, single=True)),
        upserts={
            key: item
            for key, item in records.items()
            if key not in old or old[key].hash != item.hash
        },
        deletes=tuple(key for key in old if key not in records),
        missing={},
        size=len(records),
    )


def _plan_baseline(
    watch: Watch, records: Mapping[str, SnapshotRecord], *, complete: bool
) -> PollPlan:
    if not complete:
        raise IncompleteWalkError(
            f"watch {watch.id!r}: the records kept moving during the first walk; "
            "the baseline waits for a walk that sees every record"
        )
    changes: tuple[Change, ...] = ()
    if watch.notify_baseline and not watch.single:
        changes = tuple(diff.diff({}, records))
    return PollPlan(
        baseline=True,
        changes=changes,
        upserts=records,
        deletes=(),
        missing={},
        size=len(records),
    )


def accepts(channel: Channel, event_type: str) -> bool:
    """Whether ``channel`` takes events of ``event_type`` (its ``events`` patterns)."""
    if not channel.events:
        return True
    return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in channel.events)


def route(
    event: Event, channel_names: Iterable[str], channels: Mapping[str, Channel]
) -> list[tuple[str, Target]]:
    """One delivery per target of every named channel that accepts the event."""
    deliveries: list[tuple[str, Target]] = []
    for name in channel_names:
        channel = channels.get(name)
        if channel is None:
            logger.warning("event %s names unknown channel %r", event.id, name)
            continue
        if accepts(channel, event.type):
            deliveries.extend((event.id, target) for target in channel.targets)
    return deliveries


def alert_event(
    watch: Watch, kind: str, state: WatchState, *, generation: int, now: datetime
) -> Event:
    """A ``watch.failing`` or ``watch.recovered`` event from a watch's health.

    Its id depends on the watch, the snapshot generation and the kind only,
    so the alert of one failing streak keeps one id however often it is
    re-derived.
    """
    error_kind = state.last_error_kind
    record = {
        "error_kind": error_kind,
        "message": state.last_error,
        "hint": _hint(error_kind),
        "failures": state.consecutive_failures,
    }
    return Event(
        id=diff.event_id(watch.id, generation, None, kind),
        type=f"watch.{kind}",
        occurred_at=now,
        project=watch.project,
        watch=watch.name,
        key=None,
        record=record,
        previous=None,
    )


def _hint(kind: str | None) -> str:
    for error_type in _error_types(PollError):
        if error_type.kind == kind:
            return error_type.hint
    return PollError.hint


def _error_types(base: type[PollError]) -> list[type[PollError]]:
    found = [base]
    for sub in base.__subclasses__():
        found.extend(_error_types(sub))
    return found


@dataclass(kw_only=True)
class _Poll:
    """The parts of one poll, passed between its steps."""

    watch: Watch
    store: Store
    channels: Mapping[str, Channel]
    now: datetime
    dry_run: bool
    on_commit: Callable[[], None] | None
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return (time.perf_counter() - self.started) * 1000


async def poll(
    watch: Watch,
    *,
    client: AtletaClient,
    store: Store,
    channels: Mapping[str, Channel],
    now: datetime | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    on_commit: Callable[[], None] | None = None,
) -> PollOutcome:
    """Poll ``watch`` once and commit what it proves; never raises PollError.

    A failed poll is recorded in the store and reported in the outcome's
    ``error``. ``dry_run`` fetches and diffs but writes nothing.

    :raises StoreError: when the SQLite file cannot be used.
    """
    run = _Poll(
        watch=watch,
        store=store,
        channels=channels,
        now=now or utcnow(),
        dry_run=dry_run,
        on_commit=on_commit,
    )
    snapshot = await store.snapshot(watch.id)
    try:
        result = await client.fetch(watch, progress=progress)
        records, plan = await prepare(watch, snapshot, result)
    except PollError as error:
        return await _failed(run, error)
    return await _succeeded(run, snapshot, result, records, plan)


async def prepare(
    watch: Watch, snapshot: Snapshot, result: FetchResult
) -> tuple[dict[str, SnapshotRecord], PollPlan]:
    """Index a fetch's records and plan the poll, off the loop when large.

    :raises PollError: when a record has no key, or a baseline walk was
        incomplete.
    """

    def work() -> tuple[dict[str, SnapshotRecord], PollPlan]:
        with _collector_paused():
            records = index_records(watch, result.records, snapshot.records)
            plan = plan_poll(watch, snapshot, records, complete=result.complete)
        return records, plan

    if len(result.records) < _THREAD_THRESHOLD:
        return work()
    return await asyncio.to_thread(work)


_paused = 0
_paused_lock = threading.Lock()
_was_enabled = False


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a poll builds its records.

    Building 100,000 small dicts triggers collections that each walk every
    snapshot held in memory, about a third of the diff's time; records
    hold no reference cycles, so nothing is lost by collecting afterwards.
    Nested and concurrent users share one pause.
    """
    global _paused, _was_enabled
    with _paused_lock:
        if _paused == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _was_enabled:
                gc.enable()


def _events(
    run: _Poll, plan: PollPlan, generation: int
) -> tuple[list[Event], list[tuple[str, Target]]]:
    events: list[Event] = []
    deliveries: list[tuple[str, Target]] = []
    for change, channel_names in diff.apply_rules(run.watch, plan.changes):
        event = diff.build_event(run.watch, change, generation, run.now)
        events.append(event)
        deliveries.extend(route(event, channel_names, run.channels))
    return events, deliveries


async def _succeeded(
    run: _Poll,
    snapshot: Snapshot,
    result: FetchResult,
    records: Mapping[str, SnapshotRecord],
    plan: PollPlan,
) -> PollOutcome:
    watch = run.watch
    events, deliveries = _events(run, plan, snapshot.generation)
    recovery = await _recovery_alert(run, snapshot)
    if recovery is not None:
        events.append(recovery)
        deliveries.extend(route(recovery, watch.channels, run.channels))
    outcome = PollOutcome(
        watch=watch.id,
        records=len(records),
        events=tuple(events),
        baseline=plan.baseline,
        held=len(plan.missing),
        changes=plan.changes,
        dry_run=run.dry_run,
        generation=snapshot.generation,
        pages=result.pages,
    )
    if run.dry_run:
        return _logged(run, outcome)
    return await _commit(
        run, snapshot, plan, outcome, deliveries, recovered=recovery is not None
    )


async def _recovery_alert(run: _Poll, snapshot: Snapshot) -> Event | None:
    """The ``watch.recovered`` event, when a failing alert went out before."""
    state = await run.store.watch_state(run.watch.id)
    if state is None or not state.failing_alerted:
        return None
    return alert_event(
        run.watch, "recovered", state, generation=snapshot.generation, now=run.now
    )


async def _commit(
    run: _Poll,
    snapshot: Snapshot,
    plan: PollPlan,
    outcome: PollOutcome,
    deliveries: Sequence[tuple[str, Target]],
    *,
    recovered: bool,
) -> PollOutcome:
    """Write the poll in one transaction, then wake the delivery loop."""
    watch = run.watch
    commit = PollCommit(
        watch=watch.id,
        expected_generation=snapshot.generation,
        fingerprint=watch.fingerprint(),
        upserts=plan.upserts,
        deletes=plan.deletes,
        missing=plan.missing,
        events=outcome.events,
        deliveries=tuple(deliveries),
        replace_all=plan.baseline,
    )
    try:
        generation = await run.store.commit_poll(
            commit, watch=watch, records=plan.size, now=run.now
        )
    except GenerationConflict as conflict:
        logger.warning("poll discarded: %s", conflict)
        return _logged(
            run, replace(outcome, events=(), conflict=True, generation=conflict.found)
        )
    if recovered:
        await run.store.set_failing_alerted(watch.id, False)
    if outcome.events and run.on_commit is not None:
        run.on_commit()
    return _logged(run, replace(outcome, committed=True, generation=generation))


async def _failed(run: _Poll, error: PollError) -> PollOutcome:
    watch = run.watch
    outcome = PollOutcome(watch=watch.id, error=error, dry_run=run.dry_run)
    if run.dry_run:
        logger.warning(
            "poll failed project=%s watch=%s kind=%s: %s",
            watch.project.id,
            watch.name,
            error.kind,
            error,
        )
        return replace(outcome, ms=run.elapsed())
    state = await run.store.record_failure(
        watch, kind=error.kind, message=str(error), now=run.now
    )
    logger.warning(
        "poll failed project=%s watch=%s kind=%s failures=%d: %s",
        watch.project.id,
        watch.name,
        error.kind,
        state.consecutive_failures,
        error,
    )
    events = await _failing_alert(run, state, error)
    return replace(
        outcome, events=events, generation=state.generation, ms=run.elapsed()
    )


async def _failing_alert(
    run: _Poll, state: WatchState, error: PollError
) -> tuple[Event, ...]:
    """Store one ``watch.failing`` event when failures reach the threshold."""
    watch = run.watch
    if state.consecutive_failures < watch.failure_threshold or state.failing_alerted:
        return ()
    alert = alert_event(
        watch, "failing", state, generation=state.generation, now=run.now
    )
    await run.store.add_events(
        [alert], route(alert, watch.channels, run.channels), now=run.now
    )
    await run.store.set_failing_alerted(watch.id, True)
    logger.error(
        "watch failing project=%s watch=%s failures=%d kind=%s: %s",
        watch.project.id,
        watch.name,
        state.consecutive_failures,
        error.kind,
        error.hint,
    )
    if run.on_commit is not None:
        run.on_commit()
    return (alert,)


def _logged(run: _Poll, outcome: PollOutcome) -> PollOutcome:
    outcome = replace(outcome, ms=run.elapsed())
    extra = []
    if outcome.held:
        extra.append(f"held={outcome.held}")
    if outcome.baseline:
        extra.append("baseline=yes")
    if len(outcome.events) != len(outcome.changes):
        extra.append(f"events={len(outcome.events)}")
    if outcome.conflict:
        extra.append("conflict=yes")
    if outcome.dry_run:
        extra.append("dry_run=yes")
    logger.info(
        "poll project=%s watch=%s records=%d changes=%d ms=%d%s",
        run.watch.project.id,
        run.watch.name,
        outcome.records,
        len(outcome.changes),
        round(outcome.ms),
        "".join(" " + item for item in extra),
    )
    return outcome


class Engine:
    """Polls watches with one client, one store and the configured channels.

    The daemon and the CLI share it. ``on_commit`` is called after every
    commit that added events (the delivery loop's wake-up). Polls of the
    same watch within one process run one at a time.
    """

    def __init__(
        self,
        config: Config,
        *,
        client: AtletaClient,
        store: Store,
        on_commit: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.client = client
        self.store = store
        self.channels: Mapping[str, Channel] = config.channels
        self.on_commit = on_commit
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

    @staticmethod
    def client_for(config: Config) -> AtletaClient:
        """An API client sized by the config's ``[api]`` table."""
        from notifier.atleta import AtletaClient

        api = config.api
        return AtletaClient(
            api.url,
            timeout=api.timeout,
            rate_limit=api.rate_limit,
            burst=api.burst,
            concurrency=api.concurrency,
            max_retries=api.max_retries,
        )

    def watches(self, selector: str | None = None) -> list[Watch]:
        """The enabled watches of ``PROJECT`` or ``PROJECT/WATCH`` (all if None)."""
        return select_watches(self.config.watches, selector)

    async def poll_watch(
        self,
        watch: Watch,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> PollOutcome:
        """Poll one watch now (after any poll of it already running here).

        :raises StoreError: when the SQLite file cannot be used.
        """
        lock = self._locks.setdefault(watch.id, asyncio.Lock())
        async with lock:
            return await poll(
                watch,
                client=self.client,
                store=self.store,
                channels=self.channels,
                now=self._clock(),
                dry_run=dry_run,
                progress=progress,
                on_commit=self.on_commit,
            )


def select_watches(watches: Sequence[Watch], selector: str | None) -> list[Watch]:
    """The enabled watches of ``PROJECT`` or the one ``PROJECT/WATCH`` (all if None)."""
    if selector is None:
        return [watch for watch in watches if watch.enabled]
    project, _, name = selector.partition("/")
    return [
        watch
        for watch in watches
        if watch.project.id == project
        and (not name or watch.name == name)
        and (watch.enabled or bool(name))
    ]
