"""Whole flows across modules: TOML config, fake API, engine, store, delivery, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from delivery_helpers import Receiver, free_port
from standardwebhooks import Webhook

from notifier import engine
from notifier.cli import main_group
from notifier.cli.common import run_cli
from notifier.config import Config, load_config
from notifier.daemon import Daemon
from notifier.delivery import DeliveryLoop
from notifier.fake_atleta import FakeAtleta
from notifier.model import Event, Watch
from notifier.store import Store

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PASSWORD = "pw-SECRET-apprise"
T0 = datetime(2026, 12, 3, 23, 10, tzinfo=UTC)

Write = Callable[..., Config]


@pytest.fixture
def write_config(tmp_path: Path, fake_api: FakeAtleta) -> Write:
    """Write a config for the fake API with the given tables, and load it."""

    def writer(tables: str, defaults: str = "", storage: str = "") -> Config:
        path = tmp_path / "notifier.toml"
        head = f"""\
            [api]
            url = "{fake_api.url}"
            token = "{fake_api.token}"
            rate_limit = 100
            burst = 100
            max_retries = 0

            [storage]
            path = "state.sqlite"

            [defaults]
            timezone = "UTC"
            failure_threshold = 2
            """
        text = textwrap.dedent(head) + defaults + "\n" + textwrap.dedent(tables)
        text = text.replace(
            'path = "state.sqlite"\n', f'path = "state.sqlite"\n{storage}'
        )
        path.write_text(text, "utf-8")
        return load_config(path, environ={})

    return writer


async def poll(
    config: Config, name: str, store: Store, *, now: datetime | None = None
) -> tuple[Event, ...]:
    """Poll the watch ``TEST/name`` of ``config`` once; its events."""
    watch = next(w for w in config.watches if w.id == f"TEST/{name}")
    client = engine.Engine.client_for(config)
    try:
        outcome = await engine.poll(
            watch, client=client, store=store, channels=config.channels, now=now
        )
    finally:
        await client.aclose()
    assert outcome.error is None, outcome.error
    return outcome.events


async def cli(args: list[str]) -> int:
    """Run the CLI in a thread, as a command of its own (it runs its own loop)."""
    return await asyncio.to_thread(run_cli, main_group, args)


def event_id(api: FakeAtleta) -> str:
    """The first public event of project TEST."""
    return api.data.project("TEST").event_list[0].id


Change = Callable[[FakeAtleta], Any]

PRESET_CASES: list[tuple[str, Change, str, str]] = [
    (
        "registrations",
        lambda api: api.data.add_registration("TEST"),
        "registration.created",
        "1 new registration",
    ),
    (
        "orders",
        lambda api: api.data.change_order(
            api.data.project("TEST").order_list[0].id, total_amount=4200
        ),
        "order.updated",
        "EUR 42.00",
    ),
    (
        "events",
        lambda api: api.data.edit_event(event_id(api), title="City Run 2027"),
        "event.updated",
        "title: ",
    ),
    (
        "event",
        lambda api: api.data.edit_event(event_id(api), title="City Run 2027"),
        "event.updated",
        "→ City Run 2027",
    ),
    (
        "resale",
        lambda api: api.data.open_resale(event_id(api)),
        "resale.created",
        "open the offer: https://",
    ),
]


@pytest.mark.parametrize(
    ("preset", "change", "expected", "reads"),
    PRESET_CASES,
    ids=[case[0] for case in PRESET_CASES],
)
async def test_each_preset_turns_a_change_into_one_signed_webhook(
    write_config: Write,
    fake_api: FakeAtleta,
    preset: str,
    change: Change,
    expected: str,
    reads: str,
) -> None:
    """A preset polled from TOML finds records; one change in the fake API
    becomes one event of the expected type, a chat message that reads well
    and a webhook that verifies."""
    public = preset in ("event", "resale")
    with Receiver() as receiver:
        config = write_config(
            f"""\
            [channels.hook]
            kind = "webhook"
            url = "{receiver.url}/hook"
            secret = ["{SECRET}"]

            [channels.chat]
            urls = ["json://127.0.0.1:{receiver.port}/chat"]
            format = "text"

            [[projects]]
            id = "TEST"
            channels = ["hook", "chat"]
              [[projects.watches]]
              preset = "{preset}"
            """
            + (
                f'  variables = {{ event = "{event_id(fake_api)}" }}\n'
                if public
                else ""
            )
        )
        store = await Store.open(config.storage.path)
        try:
            assert await poll(config, preset, store) == ()
            baseline = await store.watch_state(f"TEST/{preset}")
            change(fake_api)
            events = await poll(config, preset, store)
            loop = DeliveryLoop(store, config.channels)
            report = await loop.run_once()
            await loop.aclose()
        finally:
            await store.close()

    assert baseline is not None
    assert baseline.records > 0 or preset == "resale"
    assert [event.type for event in events] == [expected]
    assert report.delivered == 2
    by_path = {request.path: request for request in receiver.requests}
    chat = by_path["/chat"].json()
    assert reads in chat["title"] + "\n" + chat["message"]
    request = by_path["/hook"]
    body = Webhook(SECRET).verify(request.body, request.headers)
    assert body == events[0].to_json()
    assert request.headers["webhook-id"] == events[0].id


async def test_threshold_rule_fires_once_on_the_edge_through_delivery(
    write_config: Write, fake_api: FakeAtleta
) -> None:
    """A `when` rule on the event preset sends one message when the count
    crosses, none while it holds, and none for other changes."""
    with Receiver() as chat:
        config = write_config(
            f"""\
            [channels.team]
            urls = ["json://127.0.0.1:{chat.port}/team"]

            [[projects]]
            id = "TEST"
            channels = ["team"]
              [[projects.watches]]
              preset = "event"
              variables = {{ event = "{event_id(fake_api)}" }}
                [[projects.watches.rules]]
                when = "registrations_for_sale_count > 0"
            """
        )
        for offer in _open_offers(fake_api):
            fake_api.data.close_resale(offer)
        store = await Store.open(config.storage.path)
        loop = DeliveryLoop(store, config.channels)
        try:
            await poll(config, "event", store)
            fake_api.data.open_resale(event_id(fake_api))
            crossing = await poll(config, "event", store)
            fake_api.data.open_resale(event_id(fake_api))
            holding = await poll(config, "event", store)
            fake_api.data.edit_event(event_id(fake_api), title="Renamed")
            renamed = await poll(config, "event", store)
            report = await loop.run_once()
        finally:
            await loop.aclose()
            await store.close()

    assert [event.type for event in crossing] == ["event.updated"]
    assert holding == renamed == ()
    assert report.messages == 1
    assert len(chat.requests) == 1


def _open_offers(api: FakeAtleta) -> list[str]:
    event = api.data.events[event_id(api)]
    project = api.data.project(event.project)
    return [
        registration.resale.id
        for registration in project.active_registrations
        if registration.resale is not None and registration.event.id == event.id
    ]


async def test_digest_and_quiet_hours_from_toml_hold_then_send(
    write_config: Write, fake_api: FakeAtleta
) -> None:
    """Channels configured with `digest` and `quiet_hours` hold a poll's
    events and send them once their window closes, on an injected clock."""
    with Receiver() as chat:
        config = write_config(
            f"""\
            [channels.hourly]
            urls = ["json://127.0.0.1:{chat.port}/hourly"]
            digest = "1h"

            [channels.night]
            urls = ["json://127.0.0.1:{chat.port}/night"]
            quiet_hours = "22:00-07:00"

            [[projects]]
            id = "TEST"
            channels = ["hourly", "night"]
              [[projects.watches]]
              preset = "registrations"
            """
        )
        store = await Store.open(config.storage.path)
        now = [T0]
        loop = DeliveryLoop(store, config.channels, clock=lambda: now[0])
        sent: dict[str, list[str]] = {}
        try:
            await poll(config, "registrations", store, now=T0)
            fake_api.data.add_registration("TEST")
            await poll(config, "registrations", store, now=T0 + timedelta(minutes=1))
            for minutes in (2, 45, 55, 8 * 60):
                now[0] = T0 + timedelta(minutes=minutes)
                await loop.run_once(now[0])
                sent[f"+{minutes}m"] = [r.path for r in chat.requests]
        finally:
            await loop.aclose()
            await store.close()

    assert sent["+2m"] == sent["+45m"] == []
    assert sent["+55m"] == ["/hourly"]
    assert sent["+480m"] == ["/hourly", "/night"]
    assert "digest" in chat.requests[0].json()["title"]


async def test_status_counts_records_held_after_a_mass_vanish(
    write_config: Write,
    fake_api: FakeAtleta,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`status` shows how many records a watch holds as missing, unconfirmed."""
    config = write_config(
        """\
        [[projects]]
        id = "TEST"
          [[projects.watches]]
          preset = "registrations"
        """
    )
    store = await Store.open(config.storage.path)
    try:
        await poll(config, "registrations", store)
        active = fake_api.data.project("TEST").active_registrations
        gone = [registration.id for registration in active[: len(active) // 2 + 1]]
        for registration_id in gone:
            fake_api.data.cancel_registration(registration_id)
        assert await poll(config, "registrations", store) == ()
        state = await store.watch_state("TEST/registrations")
    finally:
        await store.close()

    code = await cli(["--config", str(config.path), "status"])

    out = capsys.readouterr().out
    assert code == 0
    assert state is not None
    assert state.held == len(gone)
    assert f"({len(gone)} held)" in out


async def test_no_secret_leaves_the_config(
    write_config: Write,
    fake_api: FakeAtleta,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Token, webhook secret and Apprise password stay out of every output,
    log line and the SQLite files, through failed sends and polls."""
    down = free_port()
    config = write_config(
        f"""\
        [channels.hook]
        kind = "webhook"
        url = "http://127.0.0.1:{down}/hook"
        secret = ["{SECRET}"]

        [channels.chat]
        urls = ["json://bob:{PASSWORD}@127.0.0.1:{down}/chat"]

        [[projects]]
        id = "TEST"
        channels = ["hook", "chat"]
          [[projects.watches]]
          preset = "registrations"
        """
    )
    path = str(config.path)
    commands = [
        ["poll", "TEST/registrations"],
        ["notify-test", "hook"],
        ["notify-test", "chat"],
        ["status"],
        ["history", "--json"],
        ["deliveries", "--status", "all"],
    ]
    await cli(["--config", path, *commands[0]])
    fake_api.data.add_registration("TEST")
    await cli(["--config", path, *commands[0]])
    fake_api.revoke_token(fake_api.token)
    for command in commands:
        await cli(["--config", path, *command])
    store = await Store.open(config.storage.path)
    try:
        loop = DeliveryLoop(store, config.channels)
        await loop.run_once()
        await loop.aclose()
    finally:
        await store.close()
    await cli(["--config", path, "deliveries"])

    captured = capsys.readouterr()
    seen = captured.out + captured.err + caplog.text
    files = _database_bytes(tmp_path)
    assert "registration.created" in captured.out
    for secret in (fake_api.token, SECRET, SECRET.removeprefix("whsec_"), PASSWORD):
        assert secret not in seen
        assert secret.encode() not in files


def _database_bytes(folder: Path) -> bytes:
    """The SQLite file and its -wal and -shm companions, concatenated."""
    return b"".join(path.read_bytes() for path in folder.glob("state.sqlite*"))


async def test_daemon_reports_a_dead_channel_to_a_channel_without_deliveries(
    write_config: Write, fake_api: FakeAtleta
) -> None:
    """In `run`, a webhook that answers 410 is reported to the project's other
    channel even when no delivery of that channel went through the loop yet."""
    with Receiver(default=410) as gone, Receiver() as team:
        config = write_config(
            f"""\
            [channels.team]
            urls = ["json://127.0.0.1:{team.port}/team"]

            [channels.hook]
            kind = "webhook"
            url = "{gone.url}/hook"
            secret = ["{SECRET}"]

            [[projects]]
            id = "TEST"
            channels = ["team", "hook"]
              [[projects.watches]]
              preset = "registrations"
                [[projects.watches.rules]]
                kinds = ["created"]
                channels = ["hook"]
            """,
            defaults='interval = "1s"\njitter = "0s"\n',
        )
        polled = asyncio.Event()
        daemon = Daemon(
            config.path,
            environ={},
            install_signals=False,
            on_poll=lambda _watch, _outcome: polled.set(),
        )
        running = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(polled.wait(), 10)
            fake_api.data.add_registration("TEST")
            heard = await asyncio.to_thread(team.wait_for, 1, 10.0)
        finally:
            daemon.request_stop()
            code = await running

    assert code == 0
    assert heard
    assert len(gone.requests) >= 1
    alert = team.requests[0].json()
    assert "hook" in alert["title"]


async def test_daemon_applies_the_configured_retention(
    write_config: Write, fake_api: FakeAtleta
) -> None:
    """`run` prunes events past `[storage] retention_events` of each watch."""
    config = write_config(
        """\
        [[projects]]
        id = "TEST"
          [[projects.watches]]
          preset = "registrations"
        """,
        storage="retention_events = 1\n",
    )
    store = await Store.open(config.storage.path)
    try:
        await poll(config, "registrations", store)
        for _ in range(3):
            fake_api.data.add_registration("TEST")
            await poll(config, "registrations", store)
    finally:
        await store.close()
    before = await asyncio.to_thread(_event_count, config)
    daemon = Daemon(config.path, environ={}, install_signals=False)
    running = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        for _ in range(200):
            if await asyncio.to_thread(_event_count, config) == 1:
                break
            await asyncio.sleep(0.05)
    finally:
        daemon.request_stop()
        code = await running

    assert code == 0
    assert before == 3
    assert await asyncio.to_thread(_event_count, config) == 1


def _event_count(config: Config) -> int:
    with contextlib.closing(sqlite3.connect(config.storage.path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])


async def test_daemon_sends_one_failing_then_one_recovered_alert(
    write_config: Write, fake_api: FakeAtleta
) -> None:
    """Through `run`, polls failing past the threshold give exactly one
    `watch.failing` message, and the first good poll one `watch.recovered`."""
    with Receiver() as team:
        config = write_config(
            f"""\
            [channels.team]
            urls = ["json://127.0.0.1:{team.port}/team"]

            [[projects]]
            id = "TEST"
            channels = ["team"]
              [[projects.watches]]
              preset = "registrations"
            """,
            defaults='interval = "1s"\njitter = "0s"\n',
        )
        outcomes: list[str] = []
        polled = asyncio.Event()

        def on_poll(_watch: Watch, outcome: engine.PollOutcome) -> None:
            outcomes.append(outcome.error.kind if outcome.error else "ok")
            polled.set()

        daemon = Daemon(config.path, environ={}, install_signals=False, on_poll=on_poll)
        running = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.ready.wait(), 10)
            fake_api.faults.inject("http_503", count=None)
            failing = await asyncio.to_thread(team.wait_for, 1, 10.0)
            for _ in range(2):  # more failed polls after the alert stay quiet
                polled.clear()
                await asyncio.wait_for(polled.wait(), 10)
            fake_api.faults.clear()
            recovered = await asyncio.to_thread(team.wait_for, 2, 10.0)
        finally:
            daemon.request_stop()
            code = await running

    titles = [request.json()["title"] for request in team.requests]
    assert code == 0
    assert failing
    assert recovered
    assert len(titles) == 2, titles
    assert "failing" in titles[0]
    assert "works again" in titles[1]
    assert outcomes.count("server") >= 4
