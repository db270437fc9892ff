"""The delivery loop against a real SQLite store and real loopback receivers.

Time is a :class:`FakeClock` the tests move by hand, so schedules that span
a day run in milliseconds; sends still go over real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from delivery_helpers import (
    PROJECT,
    T0,
    HostedApi,
    Receiver,
    alert_event,
    capture_hosted_apis,
    free_port,
    registration_event,
    smtp_server,
)
from standardwebhooks.webhooks import Webhook

from notifier import delivery
from notifier.cli import main_group
from notifier.delivery import DeliveryLoop, digest_close, next_attempt_at, quiet_until
from notifier.model import Channel, Delivery, Event, Target, isoformat
from notifier.notify import SAMPLE_PROJECT, Notifier
from notifier.store import Store

SECRET = "whsec_" + base64.b64encode(b"w" * 32).decode()
TG_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
SLACK_URL = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#race-team"


class FakeClock:
    """A clock that moves only when a test says so."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move on by ``seconds`` and return the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now

    def to(self, moment: datetime) -> datetime:
        """Jump to ``moment``."""
        self.now = moment
        return moment


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at 3 Dec 2026 12:00 UTC."""
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A real SQLite store in a temporary directory."""
    opened = await Store.open(tmp_path / "state.sqlite")
    yield opened
    await opened.close()


@pytest.fixture
def hosted_api(monkeypatch: pytest.MonkeyPatch) -> HostedApi:
    """Capture requests to Slack and Telegram."""
    return capture_hosted_apis(monkeypatch)


def webhook(name: str, url: str, **options: Any) -> Channel:
    """A signed webhook channel."""
    return Channel(name=name, kind="webhook", urls=(url,), secrets=(SECRET,), **options)


def chat(name: str, *urls: str, **options: Any) -> Channel:
    """An Apprise channel."""
    return Channel(name=name, kind="apprise", urls=tuple(urls), **options)


def make_loop(
    store: Store, clock: FakeClock, *channels: Channel, **options: Any
) -> DeliveryLoop:
    """A delivery loop on the fake clock with a seeded jitter."""
    return DeliveryLoop(
        store,
        {channel.name: channel for channel in channels},
        clock=clock,
        rng=random.Random(7),
        **options,
    )


async def enqueue(
    store: Store, clock: FakeClock, events: Sequence[Event], *channels: Channel
) -> None:
    """Commit events with one pending delivery per channel target."""
    pairs = [
        (event.id, target) for event in events for c in channels for target in c.targets
    ]
    await store.add_events(events, pairs, now=clock())


async def rows(store: Store, channel: str | None = None) -> list[Delivery]:
    """Every delivery, oldest first."""
    return await store.deliveries(channel=channel, limit=10_000)


async def drive_until_settled(
    loop: DeliveryLoop, store: Store, clock: FakeClock, *, limit: int = 20
) -> list[datetime]:
    """Jump from one next attempt to the next until nothing is pending."""
    times = []
    for _ in range(limit):
        pending = await store.deliveries(status="pending")
        if not pending:
            break
        moment = clock.to(max(clock(), min(d.next_attempt_at for d in pending)))
        times.append(moment)
        await loop.run_once()
    return times


async def delivered_channels(store: Store) -> list[str]:
    """The channels of the deliveries marked delivered."""
    return [d.channel for d in await rows(store) if d.status == "delivered"]


async def eventually(
    probe: Callable[[], Awaitable[Any]], expected: Any, within: float = 5.0
) -> bool:
    """Poll ``probe`` until it returns ``expected``; False after ``within`` s."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if await probe() == expected:
            return True
        await asyncio.sleep(0.02)
    return False


def database_bytes(folder: Path) -> bytes:
    """The raw bytes of the SQLite file and its WAL."""
    return b"".join(path.read_bytes() for path in folder.glob("state.sqlite*"))


# -- retries and webhook ids


async def test_fails_twice_then_succeeds_with_one_webhook_id(
    store: Store, clock: FakeClock
) -> None:
    """A receiver failing twice gets the event three times under one webhook-id."""
    event = registration_event(1)
    with Receiver(script=[(500, {}), (503, {})]) as receiver:
        channel = webhook("hook", receiver.url + "/in")
        loop = make_loop(store, clock, channel)
        await enqueue(store, clock, [event], channel)

        first = await loop.run_once()
        retry_at = (await rows(store))[0].next_attempt_at
        early = await loop.run_once(clock.advance(1))
        clock.to(retry_at)
        second = await loop.run_once()
        clock.to((await rows(store))[0].next_attempt_at)
        third = await loop.run_once()
        await loop.aclose()

    ids = {request.headers["webhook-id"] for request in receiver.requests}
    final = (await rows(store))[0]
    assert (first.failed, early.failed + early.delivered, second.failed) == (1, 0, 1)
    assert third.delivered == 1
    assert 4.5 <= (retry_at - T0).total_seconds() <= 6
    assert len(receiver.requests) == 3
    assert ids == {event.id}
    for request in receiver.requests:
        assert Webhook(SECRET).verify(request.body, request.headers)["id"] == event.id
    assert (final.status, final.attempts, final.last_error) == ("delivered", 3, None)


async def test_webhook_schedule_spans_about_a_day(
    store: Store, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver that always fails is retried for about a day, then dead."""
    with Receiver(default=500) as receiver:
        channel = webhook("hook", receiver.url)
        loop = make_loop(store, clock, channel)
        await enqueue(store, clock, [registration_event(1)], channel)
        times = await drive_until_settled(loop, store, clock)
        await loop.aclose()

    final = (await rows(store))[0]
    span = (times[-1] - T0).total_seconds() / 3600
    assert len(receiver.requests) == len(delivery.WEBHOOK_BACKOFF) + 1 == 8
    assert 22 <= span <= 34
    assert final.status == "dead"
    assert "HTTP 500" in (final.last_error or "")
    assert any(
        r.levelno == logging.ERROR and "outcome=dead" in r.getMessage()
        for r in caplog.records
    )
    assert any("attempt=2 outcome=failed" in r.getMessage() for r in caplog.records)


async def test_chat_schedule_is_hours(store: Store, clock: FakeClock) -> None:
    """A chat target that keeps failing is retried for a few hours, then dead."""
    with Receiver(default=500) as receiver:
        channel = chat("team", f"json://127.0.0.1:{receiver.port}/in")
        loop = make_loop(store, clock, channel)
        await enqueue(store, clock, [registration_event(1)], channel)
        times = await drive_until_settled(loop, store, clock)
        await loop.aclose()

    span = (times[-1] - T0).total_seconds() / 3600
    assert len(receiver.requests) == len(delivery.MESSAGE_BACKOFF) + 1
    assert 2 <= span <= 6
    assert (await rows(store))[0].status == "dead"


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("120", 120.0), ("86400", 3600.0), ("0", 1.0)],
    ids=["honoured", "clamped-to-an-hour", "at-least-a-second"],
)
async def test_retry_after_sets_the_next_attempt(
    store: Store, clock: FakeClock, retry_after: str, expected: float
) -> None:
    """A Retry-After answer sets the next attempt, clamped to 1 s..1 h."""
    with Receiver(script=[(429, {"retry-after": retry_after})]) as receiver:
        channel = webhook("hook", receiver.url)
        loop = make_loop(store, clock, channel)
        await enqueue(store, clock, [registration_event(1)], channel)
        await loop.run_once()
        await loop.aclose()

    pending = (await rows(store))[0]
    assert pending.status == "pending"
    assert (pending.next_attempt_at - T0).total_seconds() == expected


# -- one target never holds up another


async def test_url_that_succeeded_is_not_sent_again(
    store: Store, clock: FakeClock
) -> None:
    """When one URL of a channel fails, only that URL is retried."""
    with Receiver() as good, Receiver(script=[(500, {})]) as flaky:
        channel = chat(
            "two", f"json://127.0.0.1:{good.port}/a", f"json://127.0.0.1:{flaky.port}/b"
        )
        loop = make_loop(store, clock, channel)
        await enqueue(store, clock, [registration_event(1)], channel)
        await loop.run_once()
        await drive_until_settled(loop, store, clock)
        await loop.aclose()

    assert len(good.requests) == 1
    assert len(flaky.requests) == 2
    assert {d.status for d in await rows(store)} == {"delivered"}


async def test_hanging_receiver_does_not_delay_another(
    store: Store, clock: FakeClock
) -> None:
    """A receiver that never answers holds up only its own channel."""
    hold = threading.Event()
    with Receiver(hold=hold) as stuck, Receiver() as good:
        slow = webhook("slow", stuck.url, timeout=10.0)
        fast = chat("fast", f"json://127.0.0.1:{good.port}/in")
        loop = make_loop(store, clock, slow, fast)
        await enqueue(store, clock, [registration_event(1)], slow, fast)

        scan = asyncio.ensure_future(loop.run_once())
        arrived = await asyncio.to_thread(good.wait_for, 1, 5.0)
        recorded = await eventually(lambda: delivered_channels(store), ["fast"])
        still_waiting = not scan.done()
        hold.set()
        await scan
        await loop.aclose()

    assert arrived
    assert recorded
    assert still_waiting


async def test_refused_connection_does_not_delay_another(
    store: Store, clock: FakeClock
) -> None:
    """A channel whose host refuses connections fails alone; the other delivers."""
    with Receiver() as good:
        down = webhook("down", f"http://127.0.0.1:{free_port()}/in")
        up = webhook("up", good.url)
        loop = make_loop(store, clock, down, up)
        await enqueue(store, clock, [registration_event(1)], down, up)
        report = await loop.run_once()
        await loop.aclose()

    by_channel = {d.channel: d for d in await rows(store)}
    assert (report.delivered, report.failed) == (1, 1)
    assert by_channel["up"].status == "delivered"
    assert by_channel["down"].status == "pending"
    assert "connection failed" in (by_channel["down"].last_error or "")


async def test_running_loop_is_woken_by_a_commit(store: Store) -> None:
    """``run`` sends what a commit adds as soon as it is woken, then stops."""
    with Receiver() as receiver:
        channel = webhook("hook", receiver.url)
        loop = DeliveryLoop(store, {"hook": channel})
        task = asyncio.ensure_future(loop.run())
        await store.add_events(
            [registration_event(1)],
            [("evt_AB12_1_created", Target(channel="hook"))],
            now=datetime.now(UTC),
        )
        loop.wake()
        arrived = await asyncio.to_thread(receiver.wait_for, 1, 5.0)
        loop.stop()
        await asyncio.wait_for(task, 5)

    assert arrived
    assert (await rows(store))[0].status == "delivered"


# -- durability


async def test_restart_mid_retries_loses_nothing(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Closing store and loop between attempts resumes with the same event ids."""
    path = tmp_path / "state.sqlite"
    events = [registration_event(i) for i in range(3)]
    with Receiver(script=[(500, {})] * 2) as receiver, Receiver(default=503) as chat_rx:
        hook = webhook("hook", receiver.url)
        team = chat("team", f"json://127.0.0.1:{chat_rx.port}/in")
        first_store = await Store.open(path)
        first = make_loop(first_store, clock, hook, team)
        await enqueue(first_store, clock, events, hook, team)
        await first.run_once()
        await first.aclose()
        await first_store.close()

        chat_rx.default = 200
        second_store = await Store.open(path)
        second = make_loop(second_store, clock, hook, team)
        await drive_until_settled(second, second_store, clock)
        await second.aclose()
        final = await rows(second_store)
        await second_store.close()

    sent_ids = [request.headers["webhook-id"] for request in receiver.requests]
    assert {d.status for d in final} == {"delivered"}
    assert len(final) == 6
    assert sorted(set(sent_ids)) == sorted(event.id for event in events)
    assert len(chat_rx.requests) == 2


# -- batches, digests, quiet hours, flood cap


async def test_big_poll_makes_one_message_per_chat_target(
    store: Store, clock: FakeClock, hosted_api: HostedApi
) -> None:
    """500 events make one message per chat target, within its size limit."""
    events = [registration_event(i) for i in range(500)]
    with Receiver() as mattermost:
        team = chat(
            "team",
            SLACK_URL,
            f"tgram://{TG_TOKEN}/-100123",
            f"mmost://127.0.0.1:{mattermost.port}/hooktoken1",
        )
        loop = make_loop(store, clock, team)
        await enqueue(store, clock, events, team)
        report = await loop.run_once()
        await loop.aclose()

    slack = hosted_api.payload_to("hooks.slack.com")["attachments"][0]["text"]
    telegram_text = hosted_api.payload_to("api.telegram.org")["text"]
    mattermost_text = mattermost.requests[0].json()["text"]
    assert report.messages == 3
    assert report.delivered == 1500
    assert len(hosted_api.calls) == 2
    assert len(mattermost.requests) == 1
    assert len(slack) <= 35000
    assert len(telegram_text) <= 4096
    assert len(mattermost_text) <= 4000
    assert "500" in telegram_text
    assert "more" in mattermost_text


async def test_webhooks_are_never_batched(store: Store, clock: FakeClock) -> None:
    """Each event goes to a webhook in its own request."""
    events = [registration_event(i) for i in range(5)]
    with Receiver() as receiver:
        channel = webhook("hook", receiver.url)
        loop = make_loop(store, clock, channel)
        await enqueue(store, clock, events, channel)
        await loop.run_once()
        await loop.aclose()

    bodies = [request.json() for request in receiver.requests]
    assert sorted(body["id"] for body in bodies) == sorted(e.id for e in events)


async def test_digest_window_collects_events(store: Store, clock: FakeClock) -> None:
    """A 1 h digest holds events until the hour, then sends one message."""
    with Receiver() as receiver:
        channel = chat(
            "daily", f"json://127.0.0.1:{receiver.port}/in", digest_interval=3600
        )
        loop = make_loop(store, clock, channel)
        clock.to(T0 + timedelta(minutes=5))
        await enqueue(store, clock, [registration_event(1)], channel)
        first = await loop.run_once()
        clock.to(T0 + timedelta(minutes=40))
        await enqueue(store, clock, [registration_event(2, kind="updated")], channel)
        second = await loop.run_once()
        quiet = await loop.run_once(T0 + timedelta(minutes=59))
        clock.to(T0 + timedelta(hours=1, seconds=1))
        sent = await loop.run_once()
        await loop.aclose()

    message = receiver.requests[0].json()
    assert (first.held, second.held, quiet.held + quiet.messages) == (1, 1, 0)
    assert sent.messages == 1
    assert sent.delivered == 2
    assert len(receiver.requests) == 1
    assert "New registrations" in message["message"]
    assert "Runner2" in message["message"]
    assert "digest" in message["title"].lower() or "since" in message["message"]
    assert await store.get_meta(delivery.digest_key("daily", 0)) is not None


async def test_alerts_skip_the_digest(store: Store, clock: FakeClock) -> None:
    """A failing-watch alert on a digest channel goes out at once."""
    with Receiver() as receiver:
        channel = chat(
            "daily", f"json://127.0.0.1:{receiver.port}/in", digest_cron="0 8 * * *"
        )
        loop = make_loop(store, clock, channel)
        await enqueue(
            store, clock, [registration_event(1), alert_event("failing")], channel
        )
        report = await loop.run_once()
        await loop.aclose()

    assert (report.delivered, report.held) == (1, 1)
    assert "failing" in receiver.requests[0].json()["title"]


async def test_quiet_hours_defer_delivery(store: Store, clock: FakeClock) -> None:
    """Events during quiet hours wait for the morning, then go out together."""
    evening = datetime(2026, 12, 3, 21, 30, tzinfo=UTC)  # 23:30 in Tallinn
    morning = datetime(2026, 12, 4, 5, 0, tzinfo=UTC)  # 07:00 in Tallinn
    with Receiver() as receiver:
        channel = chat(
            "night",
            f"json://127.0.0.1:{receiver.port}/in",
            quiet_hours=("22:00", "07:00"),
            timezone="Europe/Tallinn",
        )
        loop = make_loop(store, clock, channel)
        clock.to(evening)
        await enqueue(
            store, clock, [registration_event(1), registration_event(2)], channel
        )
        held = await loop.run_once()
        pending = await rows(store)
        clock.to(morning)
        sent = await loop.run_once()
        await loop.aclose()

    assert held.held == 2
    assert {d.next_attempt_at for d in pending} == {morning}
    assert {d.attempts for d in pending} == {0}
    assert sent.messages == 1
    assert len(receiver.requests) == 1


async def test_flood_cap_folds_the_excess(store: Store, clock: FakeClock) -> None:
    """Past the cap, events wait and then go out as one message, none dropped."""
    with Receiver() as receiver:
        channel = chat("busy", f"json://127.0.0.1:{receiver.port}/in", flood_cap=2)
        loop = make_loop(store, clock, channel)
        for number in range(5):
            clock.advance(5)
            await enqueue(store, clock, [registration_event(number)], channel)
            await loop.run_once()
        early = len(receiver.requests)
        await drive_until_settled(loop, store, clock)
        await loop.aclose()

    assert early == 2
    assert len(receiver.requests) == 3
    assert "3 new registrations" in receiver.requests[2].json()["title"]
    assert {d.status for d in await rows(store)} == {"delivered"}


# -- alerts and disabled channels


async def test_failing_and_recovered_alerts_sent_once_each(
    store: Store, clock: FakeClock, hosted_api: HostedApi
) -> None:
    """The engine's failing and recovered alerts reach each channel once."""
    with Receiver() as receiver:
        slack = chat("slack", SLACK_URL)
        hook = webhook("hook", receiver.url)
        loop = make_loop(store, clock, slack, hook)
        await enqueue(store, clock, [alert_event("failing")], slack, hook)
        await loop.run_once()
        await loop.run_once(clock.advance(60))
        await enqueue(store, clock, [alert_event("recovered", at=clock())], slack, hook)
        await loop.run_once()
        await loop.run_once(clock.advance(60))
        await loop.aclose()

    titles = [
        call_payload["attachments"][0]["title"]
        for call_payload in _payloads(hosted_api)
    ]
    types = [request.json()["type"] for request in receiver.requests]
    assert len(titles) == 2
    assert "failing" in titles[0]
    assert "works again" in titles[1]
    assert types == ["watch.failing", "watch.recovered"]


def _payloads(api: HostedApi) -> list[Any]:
    return [api.payload(i) for i in range(len(api.calls))]


async def test_gone_disables_the_channel_and_reports_once(
    store: Store, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A 410 disables the webhook channel, and the other channel hears once."""
    events = [registration_event(i) for i in range(3)]
    with Receiver(default=410) as gone, Receiver() as team_rx:
        hook = webhook("hook", gone.url)
        team = chat("team", f"json://127.0.0.1:{team_rx.port}/in")
        loop = make_loop(store, clock, hook, team)
        await enqueue(store, clock, events, hook, team)
        await loop.run_once()
        for _ in range(3):
            await loop.run_once(clock.advance(10))
        await loop.aclose()

    hook_rows = await rows(store, "hook")
    alerts = [r.json() for r in team_rx.requests if "failing" in r.json()["title"]]
    # The channel's two senders may each have had a request in flight.
    assert len(gone.requests) <= 2
    assert {d.status for d in hook_rows} == {"dead"}
    assert await store.get_meta(delivery.disabled_key("hook")) is not None
    assert len(alerts) == 1
    assert "hook" in alerts[0]["title"]
    # Both senders failing at once still make one alert and one ERROR line.
    assert len(await store.events(type="channel.failing")) == 1
    disabled_lines = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and "disabled:" in r.getMessage()
    ]
    assert len(disabled_lines) == 1


async def test_unknown_channel_rows_are_dead(store: Store, clock: FakeClock) -> None:
    """Rows for a channel no longer configured are marked dead, not retried."""
    gone = chat("removed", "json://127.0.0.1:9/in")
    await enqueue(store, clock, [registration_event(1)], gone)
    loop = make_loop(store, clock)
    report = await loop.run_once()
    await loop.aclose()

    assert report.dead == 1
    assert "no longer configured" in ((await rows(store))[0].last_error or "")


# -- secrets


async def test_secrets_stay_out_of_logs_errors_and_messages(
    store: Store,
    clock: FakeClock,
    hosted_api: HostedApi,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """Webhook secrets, URL passwords and bot tokens appear nowhere they could leak."""
    caplog.set_level(logging.DEBUG)
    hosted_api.status = 401
    with (
        Receiver(default=500) as hook_rx,
        smtp_server() as (_, smtp_port),
        Receiver() as ok,
    ):
        hook = webhook("hook", hook_rx.url + "/in?token=Query-T0ken-77")
        mail = chat(
            "mail",
            f"mailto://mailer:Pa55word-x9@127.0.0.1:{smtp_port}?to=ops@example.test",
        )
        bot = chat("bot", f"tgram://{TG_TOKEN}/-100123")
        team = chat("team", f"json://127.0.0.1:{ok.port}/in?+X-Api-Key=Header-K3y-55")
        loop = make_loop(store, clock, hook, mail, bot, team)
        await enqueue(store, clock, [registration_event(1)], hook, mail, bot, team)
        await drive_until_settled(loop, store, clock, limit=30)
        await loop.aclose()

    secrets = [
        SECRET,
        SECRET.removeprefix("whsec_"),
        "Query-T0ken-77",
        "Pa55word-x9",
        TG_TOKEN.split(":")[1],
        "Header-K3y-55",
    ]
    errors = " ".join(d.last_error or "" for d in await rows(store))
    messages = " ".join(r.body.decode() for r in ok.requests + hook_rx.requests)
    database = database_bytes(tmp_path)
    assert "channel mail target 0 (mailto://127.0.0.1:" in errors
    assert "channel bot target 0 (tgram://***)" in errors
    for secret in secrets:
        assert secret not in caplog.text
        assert secret not in errors
        assert secret not in messages
        assert secret.encode() not in database


# -- policies


@pytest.mark.parametrize(
    ("local", "expected_end"),
    [
        (datetime(2026, 12, 3, 23, 30), datetime(2026, 12, 4, 7, 0)),
        (datetime(2026, 12, 4, 6, 59), datetime(2026, 12, 4, 7, 0)),
        (datetime(2026, 12, 4, 7, 0), None),
        (datetime(2026, 12, 3, 12, 0), None),
    ],
    ids=["late-evening", "early-morning", "end-is-open", "daytime"],
)
def test_quiet_until(local: datetime, expected_end: datetime | None) -> None:
    """Quiet hours that wrap midnight end at the next morning's end time."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("Europe/Tallinn")
    channel = chat(
        "n",
        "json://x.example/in",
        quiet_hours=("22:00", "07:00"),
        timezone="Europe/Tallinn",
    )

    end = quiet_until(channel, local.replace(tzinfo=zone).astimezone(UTC))

    assert end == (
        expected_end.replace(tzinfo=zone).astimezone(UTC) if expected_end else None
    )


def test_digest_close() -> None:
    """Interval digests close on the interval; cron digests at the next fire time."""
    hourly = chat("h", "json://x.example/in", digest_interval=3600)
    morning = chat(
        "m", "json://x.example/in", digest_cron="0 8 * * *", timezone="Europe/Tallinn"
    )

    assert digest_close(hourly, T0) == T0 + timedelta(hours=1)
    assert digest_close(hourly, T0 + timedelta(minutes=59)) == T0 + timedelta(hours=1)
    assert digest_close(morning, T0) == datetime(2026, 12, 4, 6, 0, tzinfo=UTC)


def test_backoff_totals() -> None:
    """Webhooks retry for about a day in all; chat and email for a few hours."""
    hook = webhook("h", "https://x.example/in")
    team = chat("t", "json://x.example/in")

    assert next_attempt_at(hook, 1, T0) == T0 + timedelta(seconds=5)
    assert next_attempt_at(hook, 8, T0) is None
    assert next_attempt_at(team, 7, T0) is None
    assert 24 <= sum(delivery.WEBHOOK_BACKOFF) / 3600 <= 30
    assert 2 <= sum(delivery.MESSAGE_BACKOFF) / 3600 <= 5
    assert next_attempt_at(hook, 1, T0, retry_after=7200) == T0 + timedelta(hours=1)


def test_project_of_sample_events() -> None:
    """The helper events belong to the test project (guards the fixtures)."""
    assert registration_event(1).project == PROJECT


# -- command line


def write_config(folder: Path, hook_url: str, team_urls: Sequence[str]) -> Path:
    """A config file with a webhook channel and an Apprise channel."""
    path = folder / "atleta-notifier.toml"
    urls = ", ".join(f'"{url}"' for url in team_urls)
    path.write_text(
        f"""
[api]
url = "http://127.0.0.1:9/api/graphql"
[storage]
path = "state.sqlite"
[channels.hook]
kind = "webhook"
url = "{hook_url}"
secret = ["{SECRET}"]
[channels.team]
urls = [{urls}]
[[projects]]
id = "AB12"
channels = ["team", "hook"]
  [[projects.watches]]
  preset = "event"
  name = "city-run"
  variables = {{ event = "AB12aaaaaaaa" }}
"""
    )
    return path


def invoke(config: Path, *args: str) -> Result:
    """Run the command line in-process."""
    return CliRunner().invoke(main_group, ["--config", str(config), *args])


def test_notify_test_prints_each_url(tmp_path: Path) -> None:
    """notify-test sends a sample to every URL and prints masked outcomes."""
    dead_port = free_port()
    with Receiver() as team_rx:
        config = write_config(
            tmp_path,
            "http://127.0.0.1:9/in",
            [
                f"json://127.0.0.1:{team_rx.port}/in",
                f"json://user:Pa55word-x9@127.0.0.1:{dead_port}/in",
            ],
        )
        result = invoke(config, "notify-test", "team")

    lines = result.stdout.splitlines()
    assert result.exit_code == 1
    assert len(team_rx.requests) == 1
    assert lines[0] == "channel team (apprise):"
    assert "delivered" in lines[2]
    assert f"json://127.0.0.1:{dead_port}" in lines[3]
    assert "failed" in lines[3]
    assert "Pa55word-x9" not in result.stdout


def test_notify_test_signs_webhooks(tmp_path: Path) -> None:
    """notify-test on a webhook channel sends one verifiable request."""
    with Receiver() as hook_rx:
        config = write_config(tmp_path, hook_rx.url + "/in", ["json://127.0.0.1:9/x"])
        result = invoke(config, "notify-test", "hook")

    request = hook_rx.requests[0]
    assert result.exit_code == 0, result.stdout
    assert Webhook(SECRET).verify(request.body, request.headers)["type"]


def test_notify_test_unknown_channel(tmp_path: Path) -> None:
    """An unknown channel is a usage error that lists the configured ones."""
    config = write_config(tmp_path, "http://127.0.0.1:9/in", ["json://127.0.0.1:9/x"])

    result = invoke(config, "notify-test", "nope")

    assert result.exit_code == 2
    assert "hook, team" in result.stderr


async def _seed_outbox(path: Path) -> None:
    store = await Store.open(path)
    clock = FakeClock(datetime.now(UTC) - timedelta(minutes=30))
    team = chat("team", "json://127.0.0.1:9/x")
    hook = webhook("hook", "http://127.0.0.1:9/in")
    await enqueue(store, clock, [registration_event(1)], team, hook)
    await enqueue(store, clock, [registration_event(2)], hook)
    ids = [d.id for d in await store.deliveries()]
    await store.mark_failed(
        [ids[0]], error="channel team target 0 (json://127.0.0.1:9): HTTP 500",
        next_attempt_at=None, now=clock(),
    )  # fmt: skip
    await store.mark_delivered([ids[2]], now=clock())
    await store.set_meta(delivery.disabled_key("hook"), "HTTP 410 Gone")
    await store.close()


async def _statuses(path: Path) -> dict[int, str]:
    store = await Store.open(path)
    found = {d.id: d.status for d in await store.deliveries()}
    disabled = await store.get_meta(delivery.disabled_key("hook"))
    await store.close()
    return {**found, 0: str(disabled)}


def test_deliveries_lists_pending_and_dead(tmp_path: Path) -> None:
    """deliveries lists pending and dead rows in aligned columns, with errors."""
    config = write_config(tmp_path, "http://127.0.0.1:9/in", ["json://127.0.0.1:9/x"])
    asyncio.run(_seed_outbox(tmp_path / "state.sqlite"))

    result = invoke(config, "deliveries")

    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("ID"))
    table_lines = lines[header:]
    assert result.exit_code == 0, result.stdout
    assert lines[0] == "channel hook is DISABLED: HTTP 410 Gone"
    assert len(table_lines) == 3
    assert "HTTP 500" in result.stdout
    column = table_lines[0].index("CHANNEL")
    assert {line[column:].split()[0] for line in table_lines[1:]} == {"team", "hook"}


def test_deliveries_retry_replay_enable(tmp_path: Path) -> None:
    """--retry, --replay --since and --enable queue rows and clear the flag."""
    config = write_config(tmp_path, "http://127.0.0.1:9/in", ["json://127.0.0.1:9/x"])
    path = tmp_path / "state.sqlite"
    asyncio.run(_seed_outbox(path))

    retried = invoke(config, "deliveries", "--retry", "1")
    missing = invoke(config, "deliveries", "--retry", "99")
    replayed = invoke(config, "deliveries", "--replay", "--since", "1d")
    enabled = invoke(config, "deliveries", "--enable", "hook")
    statuses = asyncio.run(_statuses(path))

    assert retried.exit_code == 0
    assert missing.exit_code == 1
    assert replayed.exit_code == 0
    assert replayed.stdout.startswith("1 deliveries")
    assert "enabled again" in enabled.stdout
    assert statuses == {1: "pending", 2: "pending", 3: "pending", 0: "None"}


def test_replay_needs_since(tmp_path: Path) -> None:
    """--replay without --since is a usage error."""
    config = write_config(tmp_path, "http://127.0.0.1:9/in", ["json://127.0.0.1:9/x"])

    assert invoke(config, "deliveries", "--replay").exit_code == 2


def drop_team_channel(config: Path) -> None:
    """Remove channel ``team`` from a :func:`write_config` file."""
    text = config.read_text()
    start = text.index("[channels.team]")
    end = text.index("[[projects]]")
    text = text[:start] + text[end:]
    config.write_text(text.replace('["team", "hook"]', '["hook"]'))


def test_deliveries_of_a_removed_channel_stay_listed(tmp_path: Path) -> None:
    """A channel removed from the config keeps its rows listed, marked as
    unsendable; --retry and --replay refuse or skip them and change nothing."""
    config = write_config(tmp_path, "http://127.0.0.1:9/in", ["json://127.0.0.1:9/x"])
    path = tmp_path / "state.sqlite"
    asyncio.run(_seed_outbox(path))
    drop_team_channel(config)
    note = "channel team is not in the config: its deliveries are listed but "

    only = invoke(config, "deliveries", "--channel", "team")
    every = invoke(config, "deliveries")
    retried = invoke(config, "deliveries", "--retry", "1")
    replayed = invoke(
        config, "deliveries", "--replay", "--since", "1d", "--channel", "team"
    )
    replayed_all = invoke(config, "deliveries", "--replay", "--since", "1d")
    statuses = asyncio.run(_statuses(path))

    assert only.exit_code == 0, only.output
    assert note in only.stdout
    assert "HTTP 500" in only.stdout
    assert note in every.stdout
    assert retried.exit_code == 1
    assert "not in the config: it cannot be sent" in retried.stderr
    assert replayed.exit_code == 2
    assert "not in the config" in replayed.stderr
    assert replayed_all.stdout.startswith("1 deliveries")
    assert statuses[1] == "dead"


def test_deliveries_next_attempt_shows_the_zone(tmp_path: Path) -> None:
    """NEXT is written like `history` times: ISO 8601 in UTC with a Z."""
    config = write_config(tmp_path, "http://127.0.0.1:9/in", ["json://127.0.0.1:9/x"])
    path = tmp_path / "state.sqlite"
    asyncio.run(_seed_outbox(path))
    pending = asyncio.run(_pending(path))

    result = invoke(config, "deliveries", "--status", "pending")

    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("ID"))
    column = header.index("NEXT")
    shown = {line[column:].split()[0] for line in lines[lines.index(header) + 1 :]}
    assert result.exit_code == 0, result.output
    assert len(shown) == len(pending) == 1
    assert shown == {isoformat(d.next_attempt_at) for d in pending}
    assert all(when.endswith("Z") for when in shown)


async def _pending(path: Path) -> list[Delivery]:
    store = await Store.open(path)
    try:
        return await store.deliveries(status="pending")
    finally:
        await store.close()


def test_notify_test_uses_a_project_of_the_channel(tmp_path: Path) -> None:
    """notify-test's sample names the first project whose watches use the
    channel; a channel no watch uses gets the neutral sample project."""
    with Receiver() as hook_rx:
        config = write_config(tmp_path, hook_rx.url + "/in", ["json://127.0.0.1:9/x"])
        spare = f'[channels.spare]\nkind = "webhook"\nurl = "{hook_rx.url}/spare"\n'
        spare += f'secret = "{SECRET}"\n'
        text = config.read_text()
        config.write_text(text.replace("[[projects]]", spare + "[[projects]]"))

        used = invoke(config, "notify-test", "hook")
        unused = invoke(config, "notify-test", "spare")

    assert used.exit_code == 0, used.output
    assert unused.exit_code == 0, unused.output
    assert hook_rx.requests[0].json()["project"]["id"] == "AB12"
    assert hook_rx.requests[1].json()["project"]["id"] == SAMPLE_PROJECT.id


class _BrokenNotifier(Notifier):
    """A notifier whose batches hit a bug."""

    async def send_batch(self, channel: Channel, target: int, events: Any) -> Any:
        raise RuntimeError("bug")


async def test_internal_error_backs_off(store: Store, clock: FakeClock) -> None:
    """A bug while sending counts an attempt instead of resending every second."""
    team = chat("team", "json://127.0.0.1:9/x")
    notifier = _BrokenNotifier({"team": team})
    loop = make_loop(store, clock, team, notifier=notifier)
    await enqueue(store, clock, [registration_event(1)], team)

    report = await loop.run_once()
    again = await loop.run_once(clock.advance(1))
    await notifier.aclose()

    row = (await rows(store))[0]
    assert (report.failed, again.failed) == (1, 0)
    assert row.attempts == 1
    assert row.last_error == "channel team: internal error (RuntimeError)"


def test_project_routes() -> None:
    """Routes gather a project's watch channels and rule channels."""
    from notifier.model import Rule, Watch

    watch = Watch(
        project=PROJECT,
        name="registrations",
        entity="registration",
        query="query { x }",
        records="a.b",
        channels=("team",),
        rules=(Rule(channels=("hook",)),),
    )

    assert delivery.project_routes([watch]) == {"AB12": {"team", "hook"}}


async def test_failing_webhook_is_not_flooded(store: Store, clock: FakeClock) -> None:
    """Once a receiver fails, the scan's other events back off without a request."""
    events = [registration_event(i) for i in range(10)]
    with Receiver(default=500) as receiver:
        channel = webhook("hook", receiver.url)
        loop = make_loop(store, clock, channel)
        await enqueue(store, clock, events, channel)
        report = await loop.run_once()
        await loop.aclose()

    pending = await rows(store)
    assert len(receiver.requests) <= 2
    assert report.failed == 10
    assert {(d.status, d.attempts) for d in pending} == {("pending", 1)}
    assert all(d.next_attempt_at > T0 for d in pending)
