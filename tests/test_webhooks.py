"""Standard Webhooks signing and the webhook sender's status handling."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from delivery_helpers import Receiver, free_port
from standardwebhooks.webhooks import Webhook

from notifier import webhooks
from notifier.errors import ConfigError, DeliveryError

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"n" * 32).decode()


def test_published_vector() -> None:
    """The signature matches the published Standard Webhooks test vector."""
    signature = webhooks.sign(
        VECTOR_SECRET,
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        '{"test": 2432232314}',
    )

    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_rotation_signs_with_every_secret() -> None:
    """During a rotation both the old and the new secret verify the request."""
    body = b'{"id": "evt_1"}'
    stamp = int(time.time())
    headers = webhooks.build_headers([SECRET, NEW_SECRET], "evt_1", stamp, body)

    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, NEW_SECRET):
        assert Webhook(secret).verify(body, headers) == {"id": "evt_1"}


@pytest.mark.parametrize(
    "secret",
    ["whsec_not base64!!", "whsec_"],
    ids=["not-base64", "empty"],
)
def test_bad_secret_is_a_config_error_without_the_secret(secret: str) -> None:
    """A secret that cannot sign is a config error that does not repeat it."""
    with pytest.raises(ConfigError) as caught:
        webhooks.sign(secret, "evt_1", 1, b"{}")

    if secret != "whsec_":
        assert "not base64" not in str(caught.value)


def test_no_secret_is_a_config_error() -> None:
    """A webhook without any secret cannot be signed."""
    with pytest.raises(ConfigError, match="needs a secret"):
        webhooks.signature_header([], "evt_1", 1, b"{}")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Wed, 03 Dec 2026 12:01:00 GMT", 60.0),
        ("soon", None),
        (None, None),
    ],
    ids=["seconds", "padded", "http-date", "garbage", "absent"],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After is read as seconds or as an HTTP date."""
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)

    assert webhooks.parse_retry_after(value, now=now) == expected


async def test_request_verifies_with_the_reference_library() -> None:
    """A sent event arrives with headers the spec authors' verifier accepts."""
    body = json.dumps({"id": "evt_42", "type": "registration.created"}).encode()
    with Receiver() as receiver:
        async with webhooks.new_client() as client:
            answer = await webhooks.send(
                client,
                receiver.url + "/hook",
                secrets=[SECRET],
                msg_id="evt_42",
                body=body,
            )

    request = receiver.requests[0]
    assert answer.status == 200
    assert request.headers["webhook-id"] == "evt_42"
    assert request.headers["content-type"] == "application/json"
    assert request.body == body
    assert Webhook(SECRET).verify(request.body, request.headers)["id"] == "evt_42"


@pytest.mark.parametrize(
    ("status", "headers", "permanent", "retry_after"),
    [
        (410, {}, True, None),
        (500, {}, False, None),
        (503, {"retry-after": "30"}, False, 30.0),
        (429, {"retry-after": "5"}, False, 5.0),
        (400, {}, False, None),
        (301, {"location": "/elsewhere"}, False, None),
    ],
    ids=["gone", "server-error", "unavailable", "throttled", "bad-request", "redirect"],
)
async def test_non_2xx_answers(
    status: int, headers: dict[str, str], permanent: bool, retry_after: float | None
) -> None:
    """Only 2xx succeeds; 410 is permanent; Retry-After travels with the error."""
    with Receiver(script=[(status, headers)]) as receiver:
        async with webhooks.new_client() as client:
            with pytest.raises(DeliveryError) as caught:
                await webhooks.send(
                    client, receiver.url, secrets=[SECRET], msg_id="evt_1", body=b"{}"
                )

    assert caught.value.permanent is permanent
    assert caught.value.retry_after == retry_after
    assert str(status) in str(caught.value)
    assert len(receiver.requests) == 1


async def test_hanging_receiver_times_out() -> None:
    """A receiver that never answers is a retryable timeout, not a hang."""
    hold = threading.Event()
    with Receiver(hold=hold) as receiver:
        async with webhooks.new_client() as client:
            with pytest.raises(DeliveryError, match="no answer within") as caught:
                await webhooks.send(
                    client,
                    receiver.url,
                    secrets=[SECRET],
                    msg_id="evt_1",
                    body=b"{}",
                    within=0.3,
                )
        hold.set()

    assert not caught.value.permanent


async def test_refused_connection_is_retryable() -> None:
    """Nothing listening is a retryable failure whose message has no URL."""
    url = f"http://127.0.0.1:{free_port()}/hook?token=abcdef123"
    async with httpx.AsyncClient() as client:
        with pytest.raises(DeliveryError) as caught:
            await webhooks.send(client, url, secrets=[SECRET], msg_id="e", body=b"{}")

    assert not caught.value.permanent
    assert "abcdef123" not in str(caught.value)
    assert "127.0.0.1" not in str(caught.value)


def test_timestamp_is_the_wall_clock() -> None:
    """The signed timestamp is the real send time, checked by receivers."""
    stamp = int(time.time())
    headers = webhooks.build_headers([SECRET], "evt_1", stamp, b"{}")
    late = int((datetime.now(UTC) - timedelta(minutes=10)).timestamp())
    stale = webhooks.build_headers([SECRET], "evt_1", late, b"{}")

    assert Webhook(SECRET).verify(b"{}", headers) == {}
    with pytest.raises(Exception, match="too old"):
        Webhook(SECRET).verify(b"{}", stale)
