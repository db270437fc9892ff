"""Sending through Apprise, one target at a time, to real loopback servers.

Slack and Telegram cannot be reached from here: their tests capture the
exact request Apprise would send (URL and JSON payload) by replacing
``requests.Session.request``, which both plugins end up calling.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
from delivery_helpers import (
    HostedApi,
    Receiver,
    alert_event,
    capture_hosted_apis,
    free_port,
    registration_event,
    smtp_server,
)
from standardwebhooks.webhooks import Webhook

from notifier import notify
from notifier.model import Channel
from notifier.notify import Notifier, mask_url, scrub, secret_parts

SLACK_URL = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#race-team"
SLACK_SECRET = "TIiajkdnlazkcOXrIdevi7FQ"
TG_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
TG_URL = f"tgram://{TG_TOKEN}/-100123"
SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


def apprise_channel(name: str, *urls: str, **options: Any) -> Channel:
    """An Apprise channel with the given URLs."""
    return Channel(name=name, kind="apprise", urls=tuple(urls), **options)


@pytest.fixture
def hosted_api(monkeypatch: pytest.MonkeyPatch) -> HostedApi:
    """Capture requests to Slack and Telegram and answer as they would."""
    return capture_hosted_apis(monkeypatch)


async def test_email_has_html_and_text_parts() -> None:
    """An email arrives at a real SMTP server with an HTML and a text part."""
    events = [registration_event(i) for i in range(3)]
    with smtp_server() as (sink, port):
        url = (
            f"mailto://127.0.0.1:{port}?from=notifier@example.test&to=ops@example.test"
        )
        channel = apprise_channel("mail", url)
        notifier = Notifier({"mail": channel})
        outcome = await notifier.send_batch(channel, 0, events)
        await notifier.aclose()
        assert sink.wait_for(1)

    message = sink.messages[0]
    parts = {part.get_content_type(): part for part in message.walk()}
    html = parts["text/html"].get_payload(decode=True).decode()
    text = parts["text/plain"].get_payload(decode=True).decode()
    assert outcome.ok, outcome.error
    assert sink.envelopes[0] == ("notifier@example.test", ["ops@example.test"])
    assert "3 new registrations" in message["Subject"]
    assert "Runner1" in html
    assert "<" in html
    assert "Runner1" in text
    assert "<li>" not in text


async def test_mattermost_gets_markdown() -> None:
    """A Mattermost webhook on a local receiver gets the batch as Markdown."""
    events = [registration_event(i) for i in range(2)]
    with Receiver() as receiver:
        channel = apprise_channel("mm", f"mmost://127.0.0.1:{receiver.port}/hooktoken1")
        notifier = Notifier({"mm": channel})
        outcome = await notifier.send_batch(channel, 0, events)
        await notifier.aclose()

    request = receiver.requests[0]
    text = request.json()["text"]
    assert outcome.ok, outcome.error
    assert request.path == "/hooks/hooktoken1"
    assert "**" in text
    assert "2 new registrations" in text
    assert len(text) <= 4000


async def test_slack_request(hosted_api: HostedApi) -> None:
    """Slack gets one webhook POST with the batch in its mrkdwn attachment."""
    channel = apprise_channel("slack", SLACK_URL)
    notifier = Notifier({"slack": channel})
    outcome = await notifier.send_batch(
        channel, 0, [registration_event(i) for i in range(3)]
    )
    await notifier.aclose()

    call = hosted_api.calls[0]
    payload = hosted_api.payload()
    attachment = payload["attachments"][0]
    assert outcome.ok
    assert outcome.url == "slack://***"
    assert call["method"] == "POST"
    assert call["url"] == (
        "https://hooks.slack.com/services/T1JJ3T3L2/A1BRTD4JD/" + SLACK_SECRET
    )
    assert payload["channel"] == "#race-team"
    assert payload["mrkdwn"] is True
    assert attachment["title"] == "3 new registrations for City Run 2027"
    assert "*Runner2 Tamm*" in attachment["text"]


async def test_telegram_request(hosted_api: HostedApi) -> None:
    """Telegram gets sendMessage with Markdown, the title as the first line."""
    channel = apprise_channel("tg", TG_URL)
    notifier = Notifier({"tg": channel})
    outcome = await notifier.send_batch(channel, 0, [registration_event(1)])
    await notifier.aclose()

    call = hosted_api.calls[-1]
    payload = hosted_api.payload(-1)
    assert outcome.ok
    assert outcome.url == "tgram://***"
    assert call["url"] == f"https://api.telegram.org/bot{TG_TOKEN}/sendMessage"
    assert payload["chat_id"] == -100123
    assert payload["parse_mode"].lower() == "markdown"
    assert payload["text"].startswith("*")
    assert "Runner1" in payload["text"]
    assert len(payload["text"]) <= 4096


async def test_large_batch_fits_every_chat_service(hosted_api: HostedApi) -> None:
    """500 events make one readable message per service, within its limit."""
    events = [registration_event(i) for i in range(500)]
    channel = apprise_channel("chat", SLACK_URL, TG_URL)
    notifier = Notifier({"chat": channel})
    outcomes = [await notifier.send_batch(channel, i, events) for i in range(2)]
    await notifier.aclose()

    slack_text = hosted_api.payload(0)["attachments"][0]["text"]
    telegram_text = hosted_api.payload(1)["text"]
    assert all(outcome.ok for outcome in outcomes)
    assert len(hosted_api.calls) == 2
    assert len(slack_text) <= 35000
    assert len(telegram_text) <= 4096
    assert "more" in telegram_text
    assert "500" in telegram_text


async def test_alerts_use_the_failure_type(hosted_api: HostedApi) -> None:
    """A failing-watch alert goes out as an Apprise failure, in plain words."""
    channel = apprise_channel("slack", SLACK_URL)
    notifier = Notifier({"slack": channel})
    outcome = await notifier.send_batch(channel, 0, [alert_event("failing")])
    await notifier.aclose()

    attachment = hosted_api.payload()["attachments"][0]
    assert outcome.ok
    assert "failing" in attachment["title"]
    assert "token" in attachment["text"]
    assert attachment["color"] != "#3AA3E3"


async def test_webhook_verifies_with_standard_webhooks() -> None:
    """A webhook channel sends the event JSON signed for the reference verifier."""
    event = registration_event(5)
    with Receiver() as receiver:
        channel = Channel(
            name="hook",
            kind="webhook",
            urls=(receiver.url + "/in?key=querysecret1",),
            secrets=(SECRET,),
        )
        notifier = Notifier({"hook": channel})
        outcome = await notifier.send_webhook(channel, event)
        await notifier.aclose()

    request = receiver.requests[0]
    assert outcome.ok
    assert outcome.url == f"http://127.0.0.1:{receiver.port}"
    assert request.headers["webhook-id"] == event.id
    assert Webhook(SECRET).verify(request.body, request.headers) == event.to_json()


async def test_one_failed_url_leaves_the_other() -> None:
    """Each URL of a channel has its own result; a failure names its URL masked."""
    with Receiver() as good:
        refused = f"json://user:pw-s3cret@127.0.0.1:{free_port()}/in"
        channel = apprise_channel("two", f"json://127.0.0.1:{good.port}/in", refused)
        notifier = Notifier({"two": channel})
        outcomes = await notifier.send_test(channel)
        await notifier.aclose()

    assert [outcome.ok for outcome in outcomes] == [True, False]
    assert len(good.requests) == 1
    error = outcomes[1].error or ""
    assert error.startswith("channel two target 1 (json://127.0.0.1:")
    assert "pw-s3cret" not in error
    assert "user" not in error


async def test_bad_url_is_permanent() -> None:
    """A URL Apprise cannot parse fails at once and for good."""
    channel = apprise_channel("bad", "nosuchscheme://whatever/token123")
    notifier = Notifier({"bad": channel})
    outcome = await notifier.send_batch(channel, 0, [registration_event(1)])
    await notifier.aclose()

    assert not outcome.ok
    assert outcome.permanent
    assert "token123" not in (outcome.error or "")


async def test_smtp_password_stays_out_of_errors_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused SMTP login reports the channel and host, never the password."""
    caplog.set_level(logging.DEBUG)
    with smtp_server() as (_, port):
        url = (
            f"mailto://mailer:Pa55word-x9@127.0.0.1:{port}"
            "?from=notifier@example.test&to=ops@example.test"
        )
        channel = apprise_channel("mail", url)
        notifier = Notifier({"mail": channel})
        outcome = await notifier.send_batch(channel, 0, [registration_event(1)])
        await notifier.aclose()

    assert not outcome.ok
    assert f"127.0.0.1:{port}" in (outcome.error or "")
    assert "Pa55word-x9" not in (outcome.error or "")
    assert "Pa55word-x9" not in caplog.text


async def test_bot_token_stays_out_of_logs(
    hosted_api: HostedApi, caplog: pytest.LogCaptureFixture
) -> None:
    """Apprise's debug lines name the Telegram API URL; the token is scrubbed."""
    caplog.set_level(logging.DEBUG)
    # The CLI holds Apprise's logger at WARNING; an earlier CLI test in the
    # same process may have done so already.
    caplog.set_level(logging.DEBUG, logger="apprise")
    channel = apprise_channel("tg", TG_URL)
    notifier = Notifier({"tg": channel})
    await notifier.send_batch(channel, 0, [registration_event(1)])
    await notifier.aclose()

    assert "api.telegram.org" in caplog.text
    assert TG_TOKEN.split(":")[1] not in caplog.text


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "mailto://user:pass@smtp.example.org:587?to=a@b.c",
            "mailto://smtp.example.org:587",
        ),
        ("json://127.0.0.1:8080/hook?+X-Token=abc", "json://127.0.0.1:8080"),
        ("https://hooks.example.com/in?token=abc", "https://hooks.example.com"),
        (SLACK_URL, "slack://***"),
        (TG_URL, "tgram://***"),
        ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV", "discord://***"),
        ("ntfy://my-secret-topic", "ntfy://***"),
        ("mmosts://chat.example.com/tok", "mmosts://chat.example.com"),
        ("json://localhost/x", "json://localhost"),
        ("not a url", "<not a URL>"),
    ],
    ids=[
        "mailto",
        "json-header",
        "https-query",
        "slack",
        "telegram",
        "discord",
        "ntfy-topic",
        "mattermost",
        "localhost",
        "garbage",
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    """Masked URLs keep the scheme and a real host, never credentials."""
    assert mask_url(url) == masked


def test_scrub_removes_url_secrets() -> None:
    """Every credential-like piece of a URL is scrubbed from text."""
    url = "mailto://mailer:Pa55w0rd@smtp.example.org?to=ops@example.org&key=k3y-value"
    text = "login mailer:Pa55w0rd failed, key k3y-value"

    cleaned = scrub(text, secret_parts(url))

    assert "Pa55w0rd" not in cleaned
    assert "k3y-value" not in cleaned
    assert "ops@example.org" not in secret_parts(url)


def test_webhook_secret_is_a_channel_secret() -> None:
    """A webhook's whsec_ key, with and without prefix, counts as a secret."""
    channel = Channel(
        name="h", kind="webhook", urls=("https://x.example/in",), secrets=(SECRET,)
    )

    found = notify.channel_secrets(channel)

    assert SECRET in found
    assert SECRET.removeprefix("whsec_") in found


def test_library_log_lines_show_masked_urls(caplog: pytest.LogCaptureFixture) -> None:
    """URLs in Apprise's log lines are cut down to scheme and host."""
    caplog.set_level(logging.DEBUG)

    logging.getLogger("apprise").error(
        "Could not load URL: %s", "mailto://mailer:Pa55word@smtp.example.org?to=a@b.c"
    )

    assert "Could not load URL: mailto://smtp.example.org" in caplog.text
    assert "Pa55word" not in caplog.text
