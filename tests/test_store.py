"""The SQLite store: the poll transaction, the outbox and retention."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from notifier.errors import GenerationConflict
from notifier.model import (
    Event,
    FieldChange,
    PollCommit,
    Project,
    SnapshotRecord,
    Target,
    Watch,
)
from notifier.store import Store

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
PROJECT = Project(id="AB12", name="City Run")
WATCH = Watch(
    project=PROJECT,
    name="registrations",
    entity="registration",
    query="query { x }",
    records="project.registrations.data",
    token="tok-never-stored-123",
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "state.sqlite")
    yield opened
    await opened.close()


def record(key: str, title: str = "10 km") -> SnapshotRecord:
    return SnapshotRecord(hash=f"h-{key}-{title}", record={"id": key, "title": title})


def event(event_id: str, *, at: datetime = NOW, kind: str = "created") -> Event:
    return Event(
        id=event_id,
        type=f"registration.{kind}",
        occurred_at=at,
        project=PROJECT,
        watch="registrations",
        key="r1",
        record={"id": "r1"},
        previous=None,
        changes=(FieldChange(path="title", before=None, after="10 km"),),
    )


def commit(
    generation: int,
    *,
    upserts: dict[str, SnapshotRecord] | None = None,
    deletes: tuple[str, ...] = (),
    missing: dict[str, int] | None = None,
    events: tuple[Event, ...] = (),
    targets: tuple[Target, ...] = (Target(channel="ops"),),
    replace_all: bool = False,
) -> PollCommit:
    return PollCommit(
        watch=WATCH.id,
        expected_generation=generation,
        fingerprint=WATCH.fingerprint(),
        upserts=upserts or {},
        deletes=deletes,
        missing=missing or {},
        events=events,
        deliveries=tuple((e.id, t) for e in events for t in targets),
        replace_all=replace_all,
    )


async def test_a_new_watch_has_an_empty_snapshot(store: Store) -> None:
    """A watch never polled is at generation 0 with no records."""
    snapshot = await store.snapshot(WATCH.id)

    assert snapshot.generation == 0
    assert snapshot.records == {}


async def test_commits_build_the_snapshot_and_survive_a_reopen(tmp_path: Path) -> None:
    """Upserts and deletes apply in order, and a new process reads the result."""
    path = tmp_path / "state.sqlite"
    first = await Store.open(path)
    await first.commit_poll(
        commit(0, upserts={"a": record("a"), "b": record("b")}, replace_all=True),
        watch=WATCH,
        records=2,
        now=NOW,
    )
    generation = await first.commit_poll(
        commit(1, upserts={"c": record("c"), "a": record("a", "5 km")}, deletes=("b",)),
        watch=WATCH,
        records=2,
        now=NOW,
    )
    await first.close()

    second = await Store.open(path)
    snapshot = await second.snapshot(WATCH.id)
    await second.close()

    assert generation == 2
    assert snapshot.generation == 2
    assert snapshot.fingerprint == WATCH.fingerprint()
    assert set(snapshot.records) == {"a", "c"}
    assert snapshot.records["a"].record == {"id": "a", "title": "5 km"}


async def test_a_stale_generation_writes_nothing(store: Store) -> None:
    """A poll that diffed against an old snapshot cannot commit its events."""
    await store.commit_poll(
        commit(0, upserts={"a": record("a")}), watch=WATCH, records=1, now=NOW
    )

    with pytest.raises(GenerationConflict):
        await store.commit_poll(
            commit(0, upserts={"z": record("z")}, events=(event("evt_1"),)),
            watch=WATCH,
            records=1,
            now=NOW,
        )

    assert set((await store.snapshot(WATCH.id)).records) == {"a"}
    assert await store.events() == []
    assert await store.deliveries() == []


async def test_another_connection_commit_is_seen(tmp_path: Path) -> None:
    """The in-memory snapshot copy is dropped when another process commits."""
    path = tmp_path / "state.sqlite"
    daemon = await Store.open(path)
    await daemon.commit_poll(
        commit(0, upserts={"a": record("a")}), watch=WATCH, records=1, now=NOW
    )
    await daemon.snapshot(WATCH.id)
    cli = await Store.open(path)
    await cli.commit_poll(
        commit(1, upserts={"b": record("b")}), watch=WATCH, records=2, now=NOW
    )
    await cli.close()

    snapshot = await daemon.snapshot(WATCH.id)
    await daemon.close()

    assert snapshot.generation == 2
    assert set(snapshot.records) == {"a", "b"}


async def test_missing_keys_are_kept_and_replaced_each_poll(store: Store) -> None:
    """Held-missing keys stay in the snapshot with their miss counts."""
    await store.commit_poll(
        commit(0, upserts={"a": record("a"), "b": record("b")}),
        watch=WATCH,
        records=2,
        now=NOW,
    )
    await store.commit_poll(
        commit(1, missing={"b": 1}), watch=WATCH, records=2, now=NOW
    )
    held = await store.snapshot(WATCH.id)
    await store.commit_poll(commit(2), watch=WATCH, records=2, now=NOW)
    cleared = await store.snapshot(WATCH.id)

    assert held.missing == {"b": 1}
    assert set(held.records) == {"a", "b"}
    assert cleared.missing == {}


async def test_events_and_deliveries_are_written_once(store: Store) -> None:
    """Re-adding the same event id (a replayed crash) adds no duplicate."""
    targets = (Target(channel="ops"), Target(channel="chat", index=1))
    await store.commit_poll(
        commit(0, events=(event("evt_1"),), targets=targets),
        watch=WATCH,
        records=0,
        now=NOW,
    )
    await store.add_events(
        [event("evt_1")], [("evt_1", Target(channel="ops"))], now=NOW
    )

    events = await store.events()
    deliveries = await store.deliveries()

    assert [e.id for e in events] == ["evt_1"]
    assert events[0] == event("evt_1")
    assert {(d.channel, d.target) for d in deliveries} == {("ops", 0), ("chat", 1)}


async def test_failed_deliveries_retry_then_die_and_can_be_replayed(
    store: Store,
) -> None:
    """The outbox moves pending -> retry later -> dead -> pending on replay."""
    await store.add_events(
        [event("evt_1")], [("evt_1", Target(channel="ops"))], now=NOW
    )
    [(due, due_event)] = await store.due_deliveries(NOW)
    later = NOW + timedelta(minutes=5)

    await store.mark_failed([due.id], error="HTTP 500", next_attempt_at=later, now=NOW)
    not_yet = await store.due_deliveries(NOW + timedelta(minutes=1))
    await store.mark_failed([due.id], error="HTTP 500", next_attempt_at=None, now=later)
    [dead] = await store.deliveries(status="dead")
    replayed = await store.replay(NOW - timedelta(hours=1), now=later)
    [(again, _)] = await store.due_deliveries(later)

    assert due_event.id == "evt_1"
    assert not_yet == []
    assert dead.attempts == 2
    assert dead.last_error == "HTTP 500"
    assert replayed == 1
    assert again.id == due.id
    assert again.attempts == 0


async def test_retry_makes_a_delivery_due_now(store: Store) -> None:
    """A dead delivery asked for again is due at once; unknown ids say False."""
    await store.add_events(
        [event("evt_1")], [("evt_1", Target(channel="ops"))], now=NOW
    )
    [delivery] = await store.deliveries()
    await store.mark_failed([delivery.id], error="gone", next_attempt_at=None, now=NOW)

    retried = await store.retry_delivery(delivery.id, now=NOW)
    unknown = await store.retry_delivery(9999, now=NOW)

    assert retried is True
    assert unknown is False
    assert len(await store.due_deliveries(NOW)) == 1


async def test_delivered_rows_leave_the_outbox(store: Store) -> None:
    """Delivered rows are not due again and are counted out of the stats."""
    await store.add_events(
        [event("evt_1"), event("evt_2")],
        [("evt_1", Target(channel="ops")), ("evt_2", Target(channel="ops"))],
        now=NOW,
    )
    first, _ = (await store.due_deliveries(NOW))[0]
    await store.mark_delivered([first.id], now=NOW)

    stats = await store.outbox_stats(NOW + timedelta(seconds=30))

    assert len(await store.due_deliveries(NOW)) == 1
    assert stats == {"ops": (1, 0, 30.0)}


async def test_failures_count_up_and_a_commit_resets_them(store: Store) -> None:
    """Consecutive failures are counted per watch and cleared by a good poll."""
    await store.record_failure(WATCH, kind="server", message="HTTP 503", now=NOW)
    state = await store.record_failure(WATCH, kind="auth", message="401", now=NOW)
    await store.set_failing_alerted(WATCH.id, True)
    await store.commit_poll(commit(0), watch=WATCH, records=0, now=NOW)
    after = await store.watch_state(WATCH.id)

    assert state.consecutive_failures == 2
    assert state.last_error_kind == "auth"
    assert after is not None
    assert after.consecutive_failures == 0
    assert after.failing_alerted is True
    assert after.last_success_at == NOW


async def test_events_filter_by_type_and_time(store: Store) -> None:
    """History filters by exact type, type prefix and time window."""
    old = NOW - timedelta(days=2)
    await store.add_events(
        [event("evt_old", at=old), event("evt_new", kind="deleted")], [], now=NOW
    )

    deleted = await store.events(type="registration.deleted")
    everything = await store.events(type="registration.*")
    recent = await store.events(since=NOW - timedelta(hours=1))

    assert [e.id for e in deleted] == ["evt_new"]
    assert [e.id for e in everything] == ["evt_new", "evt_old"]
    assert [e.id for e in recent] == ["evt_new"]


async def test_prune_keeps_events_still_to_deliver(store: Store) -> None:
    """Retention removes old events, never one with a pending delivery."""
    old = NOW - timedelta(days=40)
    await store.add_events(
        [event("evt_done", at=old), event("evt_pending", at=old), event("evt_new")],
        [("evt_done", Target(channel="ops")), ("evt_pending", Target(channel="ops"))],
        now=NOW,
    )
    done = [d for d in await store.deliveries() if d.event_id == "evt_done"]
    await store.mark_delivered([done[0].id], now=NOW)

    removed = await store.prune(max_age=30 * 86400, max_events=None, now=NOW)

    assert removed == 1
    assert {e.id for e in await store.events()} == {"evt_pending", "evt_new"}
    assert [d.event_id for d in await store.deliveries()] == ["evt_pending"]


async def test_prune_by_count_keeps_the_newest_per_watch(store: Store) -> None:
    """Count retention keeps the newest events of each watch."""
    events = [event(f"evt_{i}", at=NOW - timedelta(minutes=i)) for i in range(5)]
    await store.add_events(events, [], now=NOW)

    await store.prune(max_age=None, max_events=2, now=NOW)

    assert [e.id for e in await store.events()] == ["evt_0", "evt_1"]


async def test_the_file_holds_no_secret(tmp_path: Path) -> None:
    """Nothing the store writes contains the watch's token."""
    path = tmp_path / "state.sqlite"
    opened = await Store.open(path)
    await opened.commit_poll(
        commit(0, upserts={"a": record("a")}, events=(event("evt_1"),)),
        watch=WATCH,
        records=1,
        now=NOW,
    )
    await opened.record_failure(WATCH, kind="auth", message="refused", now=NOW)
    await opened.close()

    with sqlite3.connect(path) as conn:
        dump = "\n".join(conn.iterdump())

    assert "tok-never-stored-123" not in dump
    assert "evt_1" in dump


async def test_defer_moves_pending_rows_without_counting_an_attempt(
    store: Store,
) -> None:
    """Held rows come due later with their attempt count untouched."""
    await store.add_events(
        [event("evt_1")], [("evt_1", Target(channel="ops"))], now=NOW
    )
    [delivery] = await store.deliveries()
    later = NOW + timedelta(hours=1)

    moved = await store.defer([delivery.id], until=later)
    [held] = await store.deliveries()

    assert moved == 1
    assert await store.due_deliveries(NOW) == []
    assert held.next_attempt_at == later
    assert held.attempts == 0
