"""Polls end to end: the fake Atleta API over HTTP, a real SQLite file, the engine."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from notifier import engine
from notifier.atleta import AtletaClient
from notifier.cli import main_group
from notifier.cli.engine_cmds import describe_outcome, parse_moment
from notifier.config import load_config
from notifier.engine import PollOutcome, plan_poll
from notifier.errors import IncompleteWalkError
from notifier.model import (
    Change,
    Channel,
    Event,
    PollCommit,
    Project,
    Rule,
    Snapshot,
    SnapshotRecord,
    Watch,
)
from notifier.schema import PRESETS
from notifier.store import Store

PROJECT = Project(id="TEST", name="Test Project")
CHANNELS = {
    "team": Channel(
        name="team",
        kind="apprise",
        urls=("json://127.0.0.1:9/a", "json://127.0.0.1:9/b"),
    ),
    "ops": Channel(
        name="ops",
        kind="apprise",
        urls=("json://127.0.0.1:9/ops",),
        events=("watch.*",),
    ),
}


async def _no_sleep(seconds: float) -> None:
    """Skip backoff waits: the tests count attempts, not seconds."""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A real SQLite store in the test's directory."""
    opened = await Store.open(tmp_path / "notifier.sqlite")
    yield opened
    await opened.close()


@pytest.fixture
async def client(fake_api: Any) -> AsyncIterator[AtletaClient]:
    """A client of the fake API that never retries, so a fault fails the poll."""
    opened = AtletaClient(
        fake_api.url,
        rate_limit=1000,
        burst=1000,
        max_retries=0,
        timeout=2,
        sleep=_no_sleep,
    )
    yield opened
    await opened.aclose()


def registrations(api: Any, **overrides: Any) -> Watch:
    """The registrations preset as a watch of the fake's TEST project."""
    preset = PRESETS["registrations"]
    fields: dict[str, Any] = {
        "project": PROJECT,
        "name": "registrations",
        "entity": preset.entity,
        "query": preset.query,
        "records": preset.records,
        "key": preset.key,
        "paginate": preset.paginate,
        "ignore": preset.ignore,
        "channels": ("team", "ops"),
        "per_page": 10,
        "token": api.token,
    }
    fields.update(overrides)
    return Watch(**fields)


async def poll(
    watch: Watch, client: AtletaClient, store: Store, **options: Any
) -> PollOutcome:
    """One poll with the test channels."""
    return await engine.poll(
        watch, client=client, store=store, channels=CHANNELS, **options
    )


async def keys_now(watch: Watch, client: AtletaClient) -> set[str]:
    """The keys the API serves right now (a clean walk)."""
    result = await client.fetch(watch)
    assert result.complete
    return {record["id"] for record in result.records}


async def snapshot_keys(store: Store, watch: Watch) -> set[str]:
    """The keys of the watch's stored snapshot."""
    return set((await store.snapshot(watch.id)).records)


def kinds(events: Iterable[Event]) -> Counter[str]:
    """How many events of each type."""
    return Counter(event.type for event in events)


async def baseline(watch: Watch, client: AtletaClient, store: Store) -> set[str]:
    """Poll once to store the baseline; its keys."""
    outcome = await poll(watch, client, store)
    assert outcome.baseline
    assert outcome.error is None
    return await snapshot_keys(store, watch)


async def settle(watch: Watch, client: AtletaClient, store: Store) -> list[Event]:
    """Poll until no absence is held; every event of those polls."""
    events: list[Event] = []
    for _ in range(3):
        outcome = await poll(watch, client, store)
        assert outcome.error is None
        events.extend(outcome.events)
        if not outcome.held:
            break
    return events


def active_ids(api: Any, count: int) -> list[str]:
    """The ids of the first ``count`` active registrations of TEST."""
    return [r.id for r in api.data.projects["TEST"].active_registrations[:count]]


# Baseline and the three kinds of change


async def test_baseline_stores_the_snapshot_without_events(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """The first poll stores every record and sends nothing."""
    watch = registrations(fake_api)

    outcome = await poll(watch, client, store)

    assert outcome.baseline
    assert outcome.committed
    assert outcome.events == ()
    assert await snapshot_keys(store, watch) == await keys_now(watch, client)
    assert outcome.records == len(await keys_now(watch, client))
    assert await store.events() == []
    assert await store.deliveries() == []


async def test_baseline_events_when_the_watch_opts_in(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """A watch with baseline events on reports every record as created."""
    watch = registrations(fake_api, notify_baseline=True)

    outcome = await poll(watch, client, store)

    assert kinds(outcome.events) == {"registration.created": outcome.records}


async def test_new_registration_gives_one_created_event(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """A new registration is exactly one registration.created, to every target."""
    watch = registrations(fake_api)
    await baseline(watch, client, store)
    new_id = fake_api.data.add_registration("TEST")

    outcome = await poll(watch, client, store)

    (event,) = outcome.events
    assert event.type == "registration.created"
    assert event.key == new_id
    assert event.record["id"] == new_id
    assert event.previous is None
    assert [e.id for e in await store.events()] == [event.id]
    targets = {(d.channel, d.target) for d in await store.deliveries()}
    assert targets == {("team", 0), ("team", 1)}


async def test_changed_registration_gives_one_updated_event(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """A changed registration is one registration.updated naming the changed path."""
    watch = registrations(fake_api)
    await baseline(watch, client, store)
    (changed,) = active_ids(fake_api, 1)
    fake_api.data.change_registration(changed, first_name="Zora")

    outcome = await poll(watch, client, store)

    (event,) = outcome.events
    assert event.type == "registration.updated"
    assert event.key == changed
    assert [c.path for c in event.changes] == ["first_name"]
    assert event.changes[0].after == "Zora"
    assert event.previous["first_name"] == event.changes[0].before


async def test_cancelled_registration_gives_one_deleted_event(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """A cancelled registration leaves the list: one registration.deleted."""
    watch = registrations(fake_api)
    await baseline(watch, client, store)
    (cancelled,) = active_ids(fake_api, 1)
    fake_api.data.cancel_registration(cancelled)

    outcome = await poll(watch, client, store)

    (event,) = outcome.events
    assert event.type == "registration.deleted"
    assert event.key == cancelled
    assert event.record is None
    assert event.previous["id"] == cancelled
    assert cancelled not in await snapshot_keys(store, watch)


async def test_quiet_poll_commits_no_events(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """A poll with nothing new still commits (a new generation) and reports nothing."""
    watch = registrations(fake_api)
    await baseline(watch, client, store)

    outcome = await poll(watch, client, store)

    assert outcome.committed
    assert outcome.events == ()
    assert outcome.generation == 2


# Moving lists: no false event, no lost event


@pytest.mark.parametrize("mode", ["insert", "remove"])
async def test_records_moving_between_pages_mid_walk(
    fake_api: Any, client: AtletaClient, store: Store, mode: str
) -> None:
    """A record added or cancelled mid-walk shifts pages; only it is reported."""
    watch = registrations(fake_api)
    before = await baseline(watch, client, store)
    fake_api.faults.inject("shift", count=1, mode=mode)

    outcome = await poll(watch, client, store)
    if outcome.held:
        # A walk that could not be trusted holds absences for one more poll.
        outcome = await poll(watch, client, store)

    after = await keys_now(watch, client)
    assert outcome.error is None
    assert await snapshot_keys(store, watch) == after
    events = await store.events()
    assert {e.key for e in events if e.kind == "created"} == after - before
    assert {e.key for e in events if e.kind == "deleted"} == before - after
    assert len(events) == len(after ^ before) == 1


async def test_churn_during_a_long_walk(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """Adds, cancels and edits between every page give exactly the true events."""
    watch = registrations(fake_api, per_page=5)
    before = await baseline(watch, client, store)
    rng = random.Random(7)
    edited: set[str] = set()

    def churn(pages_done: int, last_page: int) -> None:
        data = fake_api.data
        fake_api.data.add_registration("TEST")
        active = data.projects["TEST"].active_registrations
        data.cancel_registration(rng.choice(active).id)
        target = rng.choice(data.projects["TEST"].active_registrations).id
        data.change_registration(target, first_name=f"Edit{pages_done}-{rng.random()}")
        edited.add(target)

    outcomes = [await poll(watch, client, store, progress=churn)]
    for _ in range(2):
        outcomes.append(await poll(watch, client, store))

    after = await keys_now(watch, client)
    events = await store.events(limit=10_000)
    created = [e.key for e in events if e.kind == "created"]
    deleted = [e.key for e in events if e.kind == "deleted"]
    updated = {e.key for e in events if e.kind == "updated"}
    assert all(o.error is None for o in outcomes)
    assert await snapshot_keys(store, watch) == after
    # Every creation and deletion reported once; records seen in between
    # and then cancelled may show both, which is true too.
    assert len(created) == len(set(created))
    assert len(deleted) == len(set(deleted))
    assert set(created) - set(deleted) == after - before
    assert set(deleted) - set(created) == before - after
    assert not set(created) & before
    assert updated <= edited
    assert (edited & before & after) <= updated


# Faults: unknown is not empty

FAULTS = [
    "http_500",
    "http_502",
    "http_503",
    "rate_limit",
    "drop",
    "malformed",
    "graphql_errors",
    "partial_errors",
    "slow",
]


@pytest.mark.parametrize("kind", FAULTS)
async def test_fault_leaves_the_snapshot_untouched(
    fake_api: Any, client: AtletaClient, store: Store, kind: str
) -> None:
    """A failed poll changes no snapshot and reports nothing; the next catches up."""
    watch = registrations(fake_api)
    await baseline(watch, client, store)
    before = await store.snapshot(watch.id)
    (cancelled,) = active_ids(fake_api, 1)
    fake_api.data.cancel_registration(cancelled)
    new_id = fake_api.data.add_registration("TEST")
    params = {"seconds": 5.0} if kind == "slow" else {}
    fake_api.faults.inject(kind, count=None, **params)

    outcome = await poll(watch, client, store)

    assert outcome.error is not None
    assert outcome.events == ()
    after = await store.snapshot(watch.id)
    assert after.generation == before.generation
    assert after.records == before.records
    assert await store.events() == []
    state = await store.watch_state(watch.id)
    assert state is not None
    assert state.consecutive_failures == 1
    assert state.last_error_kind == outcome.error.kind

    fake_api.faults.clear()
    caught_up = await settle(watch, client, store)
    assert {(e.type, e.key) for e in caught_up} == {
        ("registration.created", new_id),
        ("registration.deleted", cancelled),
    }


async def test_total_mismatch_holds_absences(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """A walk whose totals do not add up proves no deletion until a sound walk."""
    watch = registrations(fake_api)
    await baseline(watch, client, store)
    (cancelled,) = active_ids(fake_api, 1)
    fake_api.data.cancel_registration(cancelled)
    fake_api.faults.inject("total_mismatch", count=None)

    outcome = await poll(watch, client, store)

    assert all(e.kind != "deleted" for e in outcome.events)
    assert cancelled in await snapshot_keys(store, watch)
    fake_api.faults.clear()
    confirmed = await poll(watch, client, store)
    assert [(e.type, e.key) for e in confirmed.events] == [
        ("registration.deleted", cancelled)
    ]


async def test_half_the_records_vanishing_is_held_until_confirmed(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """A mass vanish is held one poll; the next poll that still misses them deletes."""
    watch = registrations(fake_api)
    before = await baseline(watch, client, store)
    gone = active_ids(fake_api, len(before) // 2 + 1)
    for registration_id in gone:
        fake_api.data.cancel_registration(registration_id)

    held = await poll(watch, client, store)

    assert held.events == ()
    assert held.held == len(gone)
    snapshot = await store.snapshot(watch.id)
    assert set(snapshot.missing) == set(gone)
    assert set(snapshot.records) == before

    confirmed = await poll(watch, client, store)

    assert confirmed.held == 0
    assert sorted(e.key or "" for e in confirmed.events) == sorted(gone)
    assert kinds(confirmed.events) == {"registration.deleted": len(gone)}
    assert await snapshot_keys(store, watch) == before - set(gone)


# Crash safety and races


class Crash(BaseException):
    """The process dying: no ``except Exception`` can swallow it."""


class CrashingStore:
    """A store that dies at the commit: nothing of the poll is written."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.commits: list[PollCommit] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def commit_poll(self, commit: PollCommit, **_: Any) -> int:
        self.commits.append(commit)
        raise Crash


async def test_change_rederived_after_a_crash_keeps_its_event_id(
    fake_api: Any, client: AtletaClient, tmp_path: Path
) -> None:
    """A poll that crashed before its commit is re-derived with the same event ids."""
    path = tmp_path / "notifier.sqlite"
    watch = registrations(fake_api)
    first = await Store.open(path)
    await baseline(watch, client, first)
    fake_api.data.add_registration("TEST")
    (changed,) = active_ids(fake_api, 1)
    fake_api.data.change_registration(changed, last_name="Quist")
    crashing = CrashingStore(first)

    with pytest.raises(Crash):
        await poll(watch, client, crashing)  # type: ignore[arg-type]
    await first.close()
    restarted = await Store.open(path)
    try:
        outcome = await poll(watch, client, restarted)
    finally:
        await restarted.close()

    lost = [event.id for event in crashing.commits[0].events]
    assert len(lost) == 2
    assert outcome.committed
    assert [event.id for event in outcome.events] == lost


async def test_racing_polls_commit_once(
    fake_api: Any, client: AtletaClient, store: Store, tmp_path: Path
) -> None:
    """Two polls of one watch at once (daemon and CLI): one commits, one conflicts."""
    watch = registrations(fake_api)
    await baseline(watch, client, store)
    fake_api.data.add_registration("TEST")
    other = await Store.open(tmp_path / "notifier.sqlite")
    try:
        first, second = await asyncio.gather(
            poll(watch, client, store), poll(watch, client, other)
        )
    finally:
        await other.close()

    assert sorted([first.conflict, second.conflict]) == [False, True]
    assert sorted([first.committed, second.committed]) == [False, True]
    loser = first if first.conflict else second
    assert loser.events == ()
    assert kinds(await store.events()) == {"registration.created": 1}


async def test_dry_run_writes_nothing(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """A dry run finds the changes and stores neither snapshot nor events."""
    watch = registrations(fake_api)
    await baseline(watch, client, store)
    new_id = fake_api.data.add_registration("TEST")

    outcome = await poll(watch, client, store, dry_run=True)

    assert [e.key for e in outcome.events] == [new_id]
    assert not outcome.committed
    assert (await store.snapshot(watch.id)).generation == 1
    assert await store.events() == []
    assert new_id in {e.key for e in (await poll(watch, client, store)).events}


# Rules


async def test_threshold_rule_fires_once_on_the_crossing(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """``waitlist_size >= 50`` fires when crossed, not on every poll while it holds."""
    preset = PRESETS["event"]
    event_id = fake_api.data.projects["TEST"].event_list[0].id
    watch = Watch(
        project=PROJECT,
        name="event",
        entity=preset.entity,
        query=preset.query,
        records=preset.records,
        key=preset.key,
        single=True,
        paginate=False,
        public=True,
        variables={"event": event_id},
        rules=(Rule(when="waitlist_size >= 50"),),
        channels=("team",),
    )
    fired = []
    for size in [10, 49, 50, 55, 60, 20, 70, 70]:
        fake_api.data.edit_event(event_id, waitlist_size=size)
        outcome = await poll(watch, client, store)
        assert outcome.error is None
        fired.append(len(outcome.events))

    assert fired == [0, 0, 1, 0, 0, 0, 1, 0]
    events = await store.events()
    assert kinds(events) == {"event.updated": 2}
    assert all([c.path for c in e.changes] == ["waitlist_size"] for e in events)


async def test_rules_route_events_to_their_channels(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """Only changes passing a rule become events, delivered to the rule's channels."""
    watch = registrations(
        fake_api,
        rules=(Rule(kinds=("created",), channels=("team",)),),
    )
    await baseline(watch, client, store)
    fake_api.data.add_registration("TEST")
    (changed,) = active_ids(fake_api, 1)
    fake_api.data.change_registration(changed, first_name="Noor")

    outcome = await poll(watch, client, store)

    assert len(outcome.changes) == 2
    assert kinds(outcome.events) == {"registration.created": 1}
    assert {d.channel for d in await store.deliveries()} == {"team"}


# Failing and recovered alerts


async def test_failing_alert_once_then_recovered_once(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """N failures in a row give one failing alert; the next success one recovered."""
    watch = registrations(fake_api, failure_threshold=3)
    await baseline(watch, client, store)
    fake_api.faults.inject("http_500", count=None)

    alerts = []
    for _ in range(5):
        outcome = await poll(watch, client, store)
        alerts.append([e.type for e in outcome.events])
    fake_api.faults.clear()
    recovered = await poll(watch, client, store)
    quiet = await poll(watch, client, store)

    assert alerts == [[], [], ["watch.failing"], [], []]
    assert [e.type for e in recovered.events] == ["watch.recovered"]
    assert quiet.events == ()
    events = {e.type: e for e in await store.events()}
    assert set(events) == {"watch.failing", "watch.recovered"}
    failing = events["watch.failing"]
    assert failing.record["failures"] == 3
    assert failing.record["error_kind"] == "server"
    assert failing.record["hint"]
    # Both channels take alerts: "ops" accepts only watch.* events.
    channels = Counter(d.channel for d in await store.deliveries())
    assert channels == {"team": 4, "ops": 2}


async def test_failing_alert_id_is_stable_within_a_streak(
    fake_api: Any, client: AtletaClient, store: Store
) -> None:
    """The failing alert of one streak has one id; a later streak gets another."""
    watch = registrations(fake_api, failure_threshold=1)
    await baseline(watch, client, store)
    fake_api.faults.inject("http_503", count=None)
    first = await poll(watch, client, store)
    await store.set_failing_alerted(watch.id, False)
    again = await poll(watch, client, store)
    fake_api.faults.clear()
    await poll(watch, client, store)
    fake_api.faults.inject("http_503", count=None)
    later = await poll(watch, client, store)

    assert first.events[0].id == again.events[0].id
    assert later.events[0].id != first.events[0].id


# Logging and secrets


async def test_one_info_line_per_poll(
    fake_api: Any, client: AtletaClient, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Each poll logs one INFO line with project, watch, records, changes and ms."""
    watch = registrations(fake_api)
    await baseline(watch, client, store)
    fake_api.data.add_registration("TEST")
    caplog.set_level(logging.INFO, logger="notifier.engine")
    caplog.clear()

    outcome = await poll(watch, client, store)

    lines = [r.getMessage() for r in caplog.records if r.name == "notifier.engine"]
    assert len(lines) == 1
    assert lines[0].startswith(
        f"poll project=TEST watch=registrations records={outcome.records} changes=1 ms="
    )


async def test_token_stays_out_of_logs_store_and_errors(
    fake_api: Any,
    client: AtletaClient,
    store: Store,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The API token never reaches a log line, the SQLite file or an alert."""
    caplog.set_level(logging.DEBUG)
    watch = registrations(fake_api, failure_threshold=1)
    await baseline(watch, client, store)
    fake_api.data.add_registration("TEST")
    await poll(watch, client, store)
    fake_api.revoke_token(fake_api.token)
    failed = await poll(watch, client, store)

    assert failed.error is not None
    assert fake_api.token not in str(failed.error)
    assert fake_api.token not in caplog.text
    assert all(fake_api.token not in repr(e) for e in failed.events)
    stored = await asyncio.to_thread(_read_all, tmp_path)
    assert fake_api.token.encode() not in stored


def _read_all(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(directory.iterdir()))


# Planning, without the API


def _records(*keys: str, mark: str = "a") -> dict[str, SnapshotRecord]:
    return {key: SnapshotRecord(hash=key + mark, record={"id": key}) for key in keys}


def _snapshot(
    records: Mapping[str, SnapshotRecord], missing: Mapping[str, int] | None = None
) -> Snapshot:
    watch = Watch(
        project=PROJECT, name="w", entity="thing", query="q", records="things"
    )
    return Snapshot(
        watch=watch.id,
        generation=3,
        fingerprint=watch.fingerprint(),
        records=records,
        missing=missing or {},
    )


PLAIN = Watch(project=PROJECT, name="w", entity="thing", query="q", records="things")


def test_plan_incomplete_walk_holds_absences() -> None:
    """Absences from an incomplete walk are held, creations are real."""
    old = _records(*"abcdefghij")
    new = {k: v for k, v in old.items() if k != "c"} | _records("z")

    plan = plan_poll(PLAIN, _snapshot(old), new, complete=False)

    assert [(c.kind, c.key) for c in plan.changes] == [("created", "z")]
    assert plan.missing == {"c": 1}
    assert plan.deletes == ()
    assert plan.size == 11


def test_plan_confirms_a_held_absence_on_a_complete_walk() -> None:
    """A key held before and still missing from a complete walk is deleted."""
    old = _records(*"abcdefghij")
    new = {k: v for k, v in old.items() if k != "c"}

    plan = plan_poll(PLAIN, _snapshot(old, {"c": 2}), new, complete=True)

    assert [(c.kind, c.key) for c in plan.changes] == [("deleted", "c")]
    assert plan.deletes == ("c",)
    assert plan.missing == {}


def test_plan_holds_absences_next_to_new_records() -> None:
    """A walk with new records and absences may have skipped one: absences wait."""
    old = _records(*"abcdefghij")
    new = {k: v for k, v in old.items() if k != "c"} | _records("z")

    plan = plan_poll(PLAIN, _snapshot(old), new, complete=True)

    assert [(c.kind, c.key) for c in plan.changes] == [("created", "z")]
    assert plan.missing == {"c": 1}


def test_plan_deletes_a_plain_absence_at_once() -> None:
    """A complete walk with only a few absences deletes them at once."""
    old = _records(*"abcdefghij")
    new = {k: v for k, v in old.items() if k != "c"}

    plan = plan_poll(PLAIN, _snapshot(old), new, complete=True)

    assert [(c.kind, c.key) for c in plan.changes] == [("deleted", "c")]
    assert plan.deletes == ("c",)


def test_plan_held_record_that_returns_is_kept() -> None:
    """A held key seen again leaves ``missing`` with no event."""
    old = _records(*"abcd")

    plan = plan_poll(PLAIN, _snapshot(old, {"c": 1}), dict(old), complete=True)

    assert plan.changes == ()
    assert plan.missing == {}
    assert plan.size == 4


@pytest.mark.parametrize(
    ("total", "vanished", "share", "held"),
    [
        (10, 5, 0.5, False),
        (10, 6, 0.5, True),
        (4, 2, 0.5, False),
        (4, 3, 0.5, True),
        (10, 3, 0.2, True),
        (100, 50, 0.5, False),
    ],
    ids=["half", "over-half", "too-few", "few-but-most", "low-share", "exactly-half"],
)
def test_plan_mass_vanish(total: int, vanished: int, share: float, held: bool) -> None:
    """More than ``vanish_share`` of the records vanishing (3 or more) is held."""
    keys = [f"k{i}" for i in range(total)]
    old = _records(*keys)
    new = {k: v for k, v in old.items() if k not in keys[:vanished]}
    watch = replace(PLAIN, vanish_share=share)

    plan = plan_poll(watch, _snapshot(old), new, complete=True)

    assert (len(plan.missing) == vanished) is held
    assert (len(plan.deletes) == vanished) is not held


def test_plan_baseline_waits_for_a_complete_walk() -> None:
    """A baseline from a walk that could have skipped records is refused."""
    with pytest.raises(IncompleteWalkError):
        plan_poll(PLAIN, Snapshot(watch=PLAIN.id), _records("a"), complete=False)


def test_plan_rebaselines_when_the_watch_changes() -> None:
    """A new fingerprint (query, fields) replaces the snapshot without events."""
    changed = replace(PLAIN, ignore=("updated_at",))

    plan = plan_poll(
        changed, _snapshot(_records("a", "b")), _records("c"), complete=True
    )

    assert plan.baseline
    assert plan.changes == ()
    assert set(plan.upserts) == {"c"}


# The command line: poll and history


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures logging; give the next test the handlers it had."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def config_file(fake_api: Any, tmp_path: Path) -> Path:
    """A config of one registrations watch against the fake API."""
    path = tmp_path / "atleta-notifier.toml"
    path.write_text(
        f"""
[api]
url = "{fake_api.url}"
token = "${{ATLETA_TOKEN}}"
rate_limit = 1000
burst = 1000
max_retries = 0

[storage]
path = "{tmp_path / "notifier.sqlite"}"

[channels.team]
urls = ["json://127.0.0.1:9/hook"]

[[projects]]
id = "TEST"
name = "Test Project"
channels = ["team"]

  [[projects.watches]]
  preset = "registrations"
  per_page = 10
""",
        encoding="utf-8",
    )
    return path


Cli = Callable[..., Result]


@pytest.fixture
def cli(fake_api: Any, config_file: Path) -> Cli:
    """Run the command line on the config, with the fake's token in the environment."""

    def run(*args: str) -> Result:
        return CliRunner().invoke(
            main_group,
            ["--config", str(config_file), *args],
            env={"ATLETA_TOKEN": fake_api.token},
        )

    return run


def test_cli_poll_prints_the_baseline_then_the_changes(fake_api: Any, cli: Cli) -> None:
    """`poll` stores a baseline, then prints each change on its own line."""
    first = cli("poll", "TEST/registrations")
    new_id = fake_api.data.add_registration("TEST")
    (changed,) = active_ids(fake_api, 1)
    fake_api.data.change_registration(changed, first_name="Ines")
    second = cli("poll", "TEST")

    assert first.exit_code == 0, first.output
    assert "TEST/registrations: baseline of 40 records, no events" in first.stdout
    assert second.exit_code == 0, second.output
    lines = second.stdout.splitlines()
    assert lines[0] == "TEST/registrations: 2 changes, 41 records"
    assert f"  + registration.created {new_id}" in lines
    assert any(
        line.startswith(f"  ~ registration.updated {changed}: first_name ")
        and line.endswith('-> "Ines"')
        for line in lines
    )


def test_cli_poll_dry_run_stores_nothing(fake_api: Any, cli: Cli) -> None:
    """`poll --dry-run` prints what it found and leaves no trace in history."""
    cli("poll", "TEST/registrations")
    fake_api.data.add_registration("TEST")

    dry = cli("poll", "TEST/registrations", "--dry-run")
    history = cli("history")

    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith("(dry run, nothing stored) TEST/registrations: 1")
    assert history.stdout == ""


def test_cli_poll_failure_exits_1(fake_api: Any, cli: Cli) -> None:
    """A failed poll prints one error line with its hint and exits 1."""
    fake_api.faults.inject("http_500", count=None)

    result = cli("poll", "TEST/registrations")

    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("Error: TEST/registrations: ")
    assert "Atleta API is failing" in line
    assert fake_api.token not in result.output


def test_cli_poll_unknown_watch_exits_2(cli: Cli) -> None:
    """An unknown PROJECT/WATCH is a usage error naming the configured watches."""
    result = cli("poll", "NOPE/registrations")

    assert result.exit_code == 2
    assert "TEST/registrations" in result.stderr


def test_cli_history_lists_and_filters_events(fake_api: Any, cli: Cli) -> None:
    """`history` prints recorded events newest first, filtered, or as JSON lines."""
    cli("poll", "TEST/registrations")
    new_id = fake_api.data.add_registration("TEST")
    (changed,) = active_ids(fake_api, 1)
    fake_api.data.change_registration(changed, first_name="Ines")
    cli("poll", "TEST/registrations")

    text = cli("history")
    created = cli("history", "--type", "registration.created", "--json")
    recent = cli("history", "--since", "1h", "--watch", "TEST/registrations")
    old = cli("history", "--until", "2001-01-01")
    named = cli("history", "--project", "TEST", "--watch", "registrations")

    assert text.exit_code == 0, text.output
    assert len(text.stdout.splitlines()) == 2
    assert "TEST/registrations  + registration.created " + new_id in text.stdout
    (line,) = created.stdout.splitlines()
    body = json.loads(line)
    assert set(body) == {
        "id", "type", "occurred_at", "project", "watch", "key", "record",
        "previous", "changes",
    }  # fmt: skip
    assert body["key"] == new_id
    assert body["project"] == {"id": "TEST", "name": "Test Project"}
    assert len(recent.stdout.splitlines()) == 2
    assert old.stdout == ""
    assert named.stdout == text.stdout


def test_cli_history_watch_alone_when_one_project_has_it(
    fake_api: Any, cli: Cli
) -> None:
    """`history --watch NAME` needs no --project when only one project has it;
    an empty listing says so on stderr and leaves stdout empty."""
    cli("poll", "TEST/registrations")
    fake_api.data.add_registration("TEST")
    cli("poll", "TEST/registrations")

    bare = cli("history", "--watch", "registrations")
    unknown = cli("history", "--watch", "nope")
    none = cli("history", "--type", "order")

    assert bare.exit_code == 0, bare.output
    assert bare.stdout == cli("history", "--watch", "TEST/registrations").stdout
    assert len(bare.stdout.splitlines()) == 1
    assert unknown.exit_code == 2
    assert "no configured watch is named 'nope'" in unknown.stderr
    assert none.exit_code == 0
    assert none.stdout == ""
    assert "no events match" in none.stderr


def test_cli_history_type_takes_a_bare_entity(fake_api: Any, cli: Cli) -> None:
    """`history --type registration` lists every registration event type."""
    cli("poll", "TEST/registrations")
    fake_api.data.add_registration("TEST")
    (changed,) = active_ids(fake_api, 1)
    fake_api.data.change_registration(changed, first_name="Ines")
    cli("poll", "TEST/registrations")

    bare = cli("history", "--type", "registration")
    star = cli("history", "--type", "registration.*")
    other = cli("history", "--type", "order")

    assert bare.exit_code == 0, bare.output
    assert len(bare.stdout.splitlines()) == 2
    assert bare.stdout == star.stdout
    assert other.stdout == ""


def test_cli_history_rejects_a_bad_time(cli: Cli) -> None:
    """A --since that is neither ISO nor a duration is a usage error."""
    result = cli("history", "--since", "yesterday-ish")

    assert result.exit_code == 2
    assert "neither an ISO time" in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", datetime(2026, 5, 1, 10, 0, tzinfo=UTC)),
        ("90m", datetime(2026, 5, 1, 10, 30, tzinfo=UTC)),
        ("2026-04-30T08:00", datetime(2026, 4, 30, 8, 0, tzinfo=UTC)),
        ("2026-04-30T08:00:00Z", datetime(2026, 4, 30, 8, 0, tzinfo=UTC)),
        ("2026-04-30T10:00+02:00", datetime(2026, 4, 30, 8, 0, tzinfo=UTC)),
    ],
    ids=["hours-ago", "minutes-ago", "naive-iso", "zulu", "offset"],
)
def test_parse_moment(text: str, expected: datetime) -> None:
    """History times are ISO 8601 (UTC when naive) or a duration ago."""
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

    assert parse_moment(text, now=now) == expected


async def test_engine_polls_configured_watches_and_wakes_delivery(
    fake_api: Any, config_file: Path, tmp_path: Path
) -> None:
    """The Engine shared by daemon and CLI polls a configured watch and calls back."""
    config = load_config(config_file, environ={"ATLETA_TOKEN": fake_api.token})
    woken: list[bool] = []
    store = await Store.open(config.storage.path)
    client = engine.Engine.client_for(config)
    try:
        shared = engine.Engine(
            config, client=client, store=store, on_commit=lambda: woken.append(True)
        )
        (watch,) = shared.watches("TEST/registrations")
        assert shared.watches("TEST") == [watch]
        assert shared.watches("OTHER") == []
        first = await shared.poll_watch(watch)
        fake_api.data.add_registration("TEST")
        second = await shared.poll_watch(watch)
    finally:
        await client.aclose()
        await store.close()

    assert first.baseline
    assert kinds(second.events) == {"registration.created": 1}
    assert woken == [True]


@pytest.mark.parametrize(
    ("skipped", "first", "last"),
    [
        (1, "TEST/event: 1 change, 1 record", "  (1 change matched no rule)"),
        (3, "TEST/event: 3 changes, 1 record", "  (3 changes matched no rule)"),
    ],
    ids=["one", "three"],
)
def test_describe_outcome_counts_skipped_changes_in_plain_words(
    skipped: int, first: str, last: str
) -> None:
    """`poll` says how many changes no rule let through, singular or plural."""
    changes = tuple(
        Change(kind="updated", key=f"k{i}", record={}, previous={})
        for i in range(skipped)
    )
    outcome = PollOutcome(watch="TEST/event", records=1, changes=changes)

    lines = describe_outcome(outcome)

    assert (lines[0], lines[-1]) == (first, last)


def test_describe_outcome_of_a_one_record_baseline() -> None:
    """A baseline of a single-object watch reads "1 record", not "1 records"."""
    outcome = PollOutcome(watch="TEST/event", records=1, baseline=True)

    assert describe_outcome(outcome) == ["TEST/event: baseline of 1 record, no events"]
