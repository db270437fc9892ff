"""Signed JSON webhooks, as the Standard Webhooks spec describes them.

Every request carries three headers: ``webhook-id`` (the event id, the same
on every retry, so a receiver can dedupe), ``webhook-timestamp`` (Unix
seconds of this attempt) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256
of "id.timestamp.body">`` for each secret, space-separated, so that a
receiver keeps verifying while a secret is rotated. The body is serialised
once and the same bytes are signed and sent.

Only a 2xx answer is success. Redirects are not followed (a 3xx is a
failure), ``410 Gone`` is permanent (the channel gets disabled) and
everything else, timeouts included, is worth a retry; a ``Retry-After``
answer travels with the error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from notifier.errors import ConfigError, DeliveryError

SECRET_PREFIX = "whsec_"
USER_AGENT = "atleta-notifier"
DEFAULT_TIMEOUT = 15.0
NO_ANSWER = "no answer within"
NO_CONNECTION = "connection failed"


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_<base64>`` secret.

    :raises ConfigError: when the secret is not base64 or is empty; the
        message never repeats the secret.
    """
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # Receivers accept unpadded secrets, so padding is restored here too.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            ["a webhook secret is not valid base64 after its whsec_ prefix"]
        ) from None
    if not key:
        raise ConfigError(["a webhook secret is empty"])
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``v1,<base64>`` signature of one message under one secret.

    :raises ConfigError: when the secret cannot be decoded.
    """
    payload = body.encode() if isinstance(body, str) else body
    content = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated.

    :raises ConfigError: when there is no secret or one cannot be decoded.
    """
    if not secrets:
        raise ConfigError(["a webhook channel needs a secret (whsec_...)"])
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def build_headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Every header of one signed request.

    :raises ConfigError: when the secrets cannot sign.
    """
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
    }


def parse_retry_after(
    value: str | None, *, now: datetime | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True, kw_only=True)
class WebhookResponse:
    """What a receiver answered to an accepted request."""

    status: int
    ms: float


def new_client(timeout: float = DEFAULT_TIMEOUT) -> httpx.AsyncClient:
    """An HTTP client fit for webhooks: no redirects, a bounded timeout."""
    return httpx.AsyncClient(
        follow_redirects=False,
        timeout=httpx.Timeout(timeout),
        headers={"user-agent": USER_AGENT},
    )


async def send(
    client: httpx.AsyncClient,
    url: str,
    *,
    secrets: Sequence[str],
    msg_id: str,
    body: bytes,
    within: float = DEFAULT_TIMEOUT,
    timestamp: int | None = None,
) -> WebhookResponse:
    """POST one signed event and return the 2xx answer within ``within`` seconds.

    ``timestamp`` defaults to the wall clock: receivers compare it with their
    own clock (five minutes either way), so it must be the real send time
    even when the caller's scheduling clock is simulated.

    :raises DeliveryError: on any other answer, a timeout or a network
        failure; ``permanent`` on 410, ``retry_after`` from the answer. The
        message names neither the URL nor the secret.
    :raises ConfigError: when the secrets cannot sign.
    """
    stamp = int(time.time()) if timestamp is None else timestamp
    headers = build_headers(secrets, msg_id, stamp, body)
    started = time.perf_counter()
    try:
        # The client's timeout bounds each phase; this bounds the whole
        # request, so a receiver dripping bytes cannot hold it open.
        async with asyncio.timeout(within):
            response = await client.post(
                url, content=body, headers=headers, timeout=within
            )
    except (httpx.TimeoutException, TimeoutError):
        raise DeliveryError(f"{NO_ANSWER} {within:g} s") from None
    except httpx.ConnectError:
        raise DeliveryError(f"{NO_CONNECTION} (refused or unreachable)") from None
    except httpx.HTTPError as error:
        raise DeliveryError(f"request failed: {type(error).__name__}") from None
    ms = (time.perf_counter() - started) * 1000
    if 200 <= response.status_code < 300:
        return WebhookResponse(status=response.status_code, ms=ms)
    raise _status_error(response)


def _status_error(response: httpx.Response) -> DeliveryError:
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 410:
        return DeliveryError(
            "HTTP 410 Gone: the receiver asked to stop", permanent=True
        )
    if 300 <= status < 400:
        return DeliveryError(f"HTTP {status}: redirects are not followed")
    reason = response.reason_phrase or "error"
    return DeliveryError(f"HTTP {status} {reason}", retry_after=retry_after)
