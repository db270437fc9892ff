"""Sending to channels: one Apprise URL or one signed webhook at a time.

A channel target is one URL of a channel. Each send builds its own
``Apprise`` object holding that single URL, so the result read back is that
target's alone: a URL that succeeded is never sent again because another URL
of the same channel is being retried. Apprise runs its plugins on one thread
pool shared by the whole process, so each channel gets its own cap on
concurrent sends and a hanging service cannot take every thread.

Apprise URLs carry bot tokens and passwords. Nothing that leaves this module
(outcomes, errors, log lines) shows more of a URL than its scheme and, when
the URL names a real host, that host: see :func:`mask_url`. A log filter
also scrubs the URLs' secret parts from what Apprise and urllib3 log at
debug level.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qsl, unquote, urlsplit

import apprise
import httpx

from notifier import render, webhooks
from notifier.errors import ConfigError, DeliveryError
from notifier.model import (
    MIN_SECRET_LENGTH,
    Channel,
    Event,
    FieldChange,
    Project,
    utcnow,
)

log = logging.getLogger(__name__)

# Apprise's email plugin imports ``imghdr``, deprecated since Python 3.11,
# the first time an email goes out; loading it once here, quietly, keeps
# that warning from surfacing mid-delivery (it changes nothing else).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    with contextlib.suppress(ImportError):
        import imghdr  # noqa: F401

ALERT_TYPES = frozenset({"watch.failing", "watch.recovered", "channel.failing"})
"""The notifier's own alerts: sent at once, never held for a digest."""

DEFAULT_CONCURRENCY = 2
"""Concurrent sends per channel (Apprise shares one thread pool)."""

_HOST_LABEL = re.compile(r"^[A-Za-z0-9-]+$")

# Query keys of Apprise URLs that configure a send and hold nothing secret;
# every other query value is treated as a possible credential.
_PLAIN_QUERY_KEYS = frozenset(
    {
        "format", "overflow", "mode", "retry", "wait", "cto", "rto", "optional",
        "verify", "from", "to", "name", "cc", "bcc", "method", "priority",
        "smtp", "port", "tags", "image", "avatar", "footer", "title", "emojis",
    }
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class SendOutcome:
    """The result of one send to one channel target.

    ``error`` is free of secrets and names the channel and the masked URL.
    ``permanent`` marks failures that retrying cannot fix; ``gone`` is a
    webhook receiver's ``410 Gone`` (the channel gets disabled);
    ``retry_after`` carries what the receiver asked for, in seconds, and
    ``kind`` names the failure in a word (``timeout``, ``network``, ``gone``,
    ``rejected``, ``template``).
    """

    channel: str
    target: int
    url: str
    ok: bool
    error: str | None = None
    permanent: bool = False
    retry_after: float | None = None
    gone: bool = False
    kind: str = ""
    ms: float = 0.0


def _looks_like_host(host: str) -> bool:
    if host == "localhost" or (host.startswith("[") and host.endswith("]")):
        return True
    labels = host.split(".")
    return len(labels) > 1 and all(_HOST_LABEL.match(label) for label in labels)


def mask_url(url: str) -> str:
    """``scheme://host[:port]`` of a URL, or ``scheme://***`` when the host
    part is itself a credential (Slack and Telegram tokens, ntfy topics)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>"
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        end = hostport.find("]") + 1
        host, port = hostport[:end], hostport[end + 1 :]
    else:
        host, _, port = hostport.partition(":")
    if host and _looks_like_host(host):
        return f"{scheme.lower()}://{host}" + (f":{port}" if port.isdigit() else "")
    return f"{scheme.lower()}://***"


def url_scheme(url: str) -> str:
    """The lower-case scheme of a URL (``slack``, ``mailto``, ``https``)."""
    return url.partition("://")[0].lower()


def _tokenish(segment: str) -> bool:
    # Path words ("hooks", "services") are not secrets; tokens carry digits
    # or mixed case.
    return len(segment) >= 8 and (
        any(char.isdigit() for char in segment)
        or (segment.lower() != segment and segment.upper() != segment)
    )


def secret_parts(url: str) -> set[str]:
    """The pieces of a URL that may be credentials, for scrubbing text."""
    parts: set[str] = set()
    try:
        split = urlsplit(url)
    except ValueError:
        return {url}
    netloc = split.netloc
    userinfo, _, hostport = netloc.rpartition("@")
    parts.update(userinfo.split(":", 1) if userinfo else ())
    if mask_url(url).endswith("***"):
        parts.add(hostport)
        parts.update(hostport.split(":"))
    parts.update(segment for segment in split.path.split("/") if _tokenish(segment))
    for key, value in parse_qsl(split.query, keep_blank_values=False):
        if key.lstrip("+-:").lower() not in _PLAIN_QUERY_KEYS:
            parts.add(value)
    parts.update({unquote(part) for part in parts})
    return {part for part in parts if len(part) >= MIN_SECRET_LENGTH}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret piece of ``MIN_SECRET_LENGTH`` or more
    characters replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, "***")
    return text


def channel_secrets(channel: Channel) -> set[str]:
    """Every credential a channel holds: its URLs' secret parts and webhook keys."""
    found: set[str] = set()
    for url in channel.urls:
        found.update(secret_parts(url))
    for secret in channel.secrets:
        found.add(secret)
        found.add(secret.removeprefix(webhooks.SECRET_PREFIX))
    return {piece for piece in found if len(piece) >= MIN_SECRET_LENGTH}


_URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)


class _Redactor(logging.Filter):
    """Scrubs secrets from records of loggers that print request URLs.

    Every URL in a line is cut down to :func:`mask_url` (Apprise's own
    "privacy" form still shows a password's first and last character), and
    the known secret parts of the channels' URLs are replaced.
    """

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = _URL_IN_TEXT.sub(lambda found: mask_url(found.group(0)), message)
        cleaned = scrub(cleaned, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_redactor = _Redactor()
for _name in ("apprise", "urllib3.connectionpool", "httpx", "httpcore"):
    logging.getLogger(_name).addFilter(_redactor)


def protect(channels: Iterable[Channel]) -> None:
    """Keep these channels' credentials out of library log lines."""
    for channel in channels:
        _redactor.secrets.update(channel_secrets(channel))


def notify_type(events: Sequence[Event]) -> apprise.NotifyType:
    """The Apprise message type that suits a batch (failure for alerts)."""
    types = {event.type for event in events}
    if types & {"watch.failing", "channel.failing"}:
        return apprise.NotifyType.FAILURE
    if types == {"watch.recovered"}:
        return apprise.NotifyType.SUCCESS
    return apprise.NotifyType.INFO


def webhook_body(event: Event) -> bytes:
    """The exact bytes a webhook carries for ``event`` (valid JSON)."""
    body = render.webhook_body(event)
    return body.encode() if isinstance(body, str) else body


SAMPLE_PROJECT = Project(id="TEST", name="Test project")


def sample_event(
    channel: Channel, *, project: Project | None = None, now: datetime | None = None
) -> Event:
    """A made-up event that shows how a channel's messages look.

    ``project`` should be one whose watches use the channel, so the sample
    reads like the real thing; without one a neutral sample project is used.
    """
    moment = now or utcnow()
    return Event(
        id=f"test_{uuid.uuid4().hex}",
        type="registration.created",
        occurred_at=moment,
        project=project or SAMPLE_PROJECT,
        watch="registrations",
        key="0",
        record={
            "id": "0",
            "first_name": "Test",
            "last_name": "Athlete",
            "ticket": {"name": "10 km"},
            "price": 4200,
            "currency": "EUR",
        },
        previous=None,
        changes=(FieldChange(path="status", before=None, after="registered"),),
    )


_FAILING_HINTS = {
    "gone": "fix the receiver, then run `atleta-notifier deliveries --enable` "
    "and `--replay`",
    "timeout": "check the service; dead deliveries can be sent again with "
    "`atleta-notifier deliveries --replay`",
    "network": "check that the service can be reached from this machine",
    "rejected": "run `atleta-notifier notify-test` on the channel and check its URL",
    "template": "fix the channel's template, then replay the dead deliveries",
    "config": "fix the channel's secret in the config",
}


def failing_alert(
    outcome: SendOutcome, *, source: Event, attempts: int, now: datetime
) -> Event:
    """The ``channel.failing`` event that tells other channels one gave up.

    Its id is stable for one failure (channel, target, time) so that
    storing it twice keeps one copy.
    """
    seed = f"{outcome.channel}|{outcome.target}|{now.isoformat()}"
    return Event(
        id="chf_" + hashlib.sha256(seed.encode()).hexdigest()[:24],
        type="channel.failing",
        occurred_at=now,
        project=source.project,
        watch=source.watch,
        key=outcome.channel,
        record={
            "channel": outcome.channel,
            "target": outcome.target,
            "url": outcome.url,
            "failures": attempts,
            "error_kind": outcome.kind,
            "hint": _FAILING_HINTS.get(outcome.kind, _FAILING_HINTS["rejected"]),
            "message": outcome.error,
        },
        previous=None,
    )


class Notifier:
    """Sends messages and webhooks to channel targets, one target per send."""

    def __init__(
        self,
        channels: Mapping[str, Channel] | None = None,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._concurrency = concurrency
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._http = http or webhooks.new_client()
        self._own_http = http is None
        self._asset = apprise.AppriseAsset(
            app_id="atleta-notifier",
            app_desc="Atleta notifier",
            storage_mode="memory",
            secure_logging=True,
        )
        protect((channels or {}).values())

    async def aclose(self) -> None:
        """Close the webhook HTTP client (when this notifier made it)."""
        if self._own_http:
            await self._http.aclose()

    def _limit(self, channel: str) -> asyncio.Semaphore:
        if channel not in self._limits:
            self._limits[channel] = asyncio.Semaphore(self._concurrency)
        return self._limits[channel]

    async def send_batch(
        self, channel: Channel, target: int, events: Sequence[Event]
    ) -> SendOutcome:
        """Send ``events`` as one message to one Apprise target of ``channel``."""
        scheme = url_scheme(channel.urls[target])
        try:
            message = render.render(events, channel, url_scheme=scheme)
        except DeliveryError as error:
            return self._failed(
                channel, target, str(error), permanent=True, kind="template"
            )
        return await self.send_message(
            channel, target, message, kind=notify_type(events)
        )

    async def send_digest(
        self,
        channel: Channel,
        target: int,
        events: Sequence[Event],
        *,
        since: datetime,
        until: datetime,
    ) -> SendOutcome:
        """Send one digest message covering ``events`` to one Apprise target."""
        scheme = url_scheme(channel.urls[target])
        try:
            message = render.render_digest(
                events, channel, since=since, until=until, url_scheme=scheme
            )
        except DeliveryError as error:
            return self._failed(
                channel, target, str(error), permanent=True, kind="template"
            )
        return await self.send_message(channel, target, message)

    async def send_message(
        self,
        channel: Channel,
        target: int,
        message: render.Message,
        *,
        kind: apprise.NotifyType = apprise.NotifyType.INFO,
    ) -> SendOutcome:
        """Send one rendered message to one Apprise URL and read its result."""
        url = channel.urls[target]
        protect((channel,))
        client = apprise.Apprise(asset=self._asset)
        if not client.add(url):
            return self._failed(
                channel,
                target,
                "Apprise does not understand this URL",
                permanent=True,
                kind="rejected",
            )
        started = time.perf_counter()
        async with self._limit(channel.name):
            try:
                # Apprise keeps its own deadline; this one also covers a
                # plugin stuck before its first request.
                async with asyncio.timeout(channel.timeout + 5):
                    result = await client.async_notify(
                        body=message.body,
                        title=message.title,
                        body_format=message.format,
                        notify_type=kind,
                        timeout=channel.timeout,
                    )
            except TimeoutError:
                return self._failed(
                    channel,
                    target,
                    f"no answer within {channel.timeout:g} s",
                    kind="timeout",
                )
        ms = (time.perf_counter() - started) * 1000
        return self._outcome(channel, target, result, ms=ms)

    def _outcome(
        self,
        channel: Channel,
        target: int,
        result: apprise.AppriseResult,
        *,
        ms: float,
    ) -> SendOutcome:
        """What Apprise's result for one URL means: sent, timed out or rejected."""
        url = channel.urls[target]
        if result.status == apprise.AppriseResultStatus.SUCCESS:
            return SendOutcome(
                channel=channel.name, target=target, url=mask_url(url), ok=True, ms=ms
            )
        detail = _result_detail(result)
        timed_out = result.status == apprise.AppriseResultStatus.TIMEOUT
        return self._failed(
            channel,
            target,
            scrub(detail, secret_parts(url)),
            kind="timeout" if timed_out else "rejected",
            ms=ms,
        )

    async def send_webhook(self, channel: Channel, event: Event) -> SendOutcome:
        """POST one event, signed, to a webhook channel."""
        url = channel.urls[0]
        protect((channel,))
        body = webhook_body(event)
        async with self._limit(channel.name):
            try:
                response = await webhooks.send(
                    self._http,
                    url,
                    secrets=channel.secrets,
                    msg_id=event.id,
                    body=body,
                    within=channel.timeout,
                )
            except DeliveryError as error:
                return self._failed(
                    channel,
                    0,
                    str(error),
                    permanent=error.permanent,
                    retry_after=error.retry_after,
                    gone=error.permanent,
                    kind=_webhook_kind(error),
                )
            except ConfigError as error:
                return self._failed(
                    channel, 0, str(error), permanent=True, kind="config"
                )
        return SendOutcome(
            channel=channel.name,
            target=0,
            url=mask_url(url),
            ok=True,
            ms=response.ms,
        )

    async def send_test(
        self, channel: Channel, *, project: Project | None = None
    ) -> list[SendOutcome]:
        """Send a sample event (about ``project``, if given) to every target of
        ``channel``, all at once."""
        event = sample_event(channel, project=project)
        if channel.kind == "webhook":
            return [await self.send_webhook(channel, event)]
        sends = [
            self.send_batch(channel, index, [event])
            for index in range(len(channel.urls))
        ]
        return list(await asyncio.gather(*sends))

    def _failed(
        self,
        channel: Channel,
        target: int,
        detail: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        gone: bool = False,
        kind: str = "rejected",
        ms: float = 0.0,
    ) -> SendOutcome:
        masked = mask_url(channel.urls[target])
        error = f"channel {channel.name} target {target} ({masked}): {detail}"
        return SendOutcome(
            channel=channel.name,
            target=target,
            url=masked,
            ok=False,
            error=scrub(error, channel_secrets(channel)),
            permanent=permanent,
            retry_after=retry_after,
            gone=gone,
            kind=kind,
            ms=ms,
        )


def _webhook_kind(error: DeliveryError) -> str:
    """A webhook failure in a word, for alerts."""
    message = str(error)
    if error.permanent:
        return "gone"
    if message.startswith(webhooks.NO_ANSWER):
        return "timeout"
    if message.startswith(webhooks.NO_CONNECTION):
        return "network"
    return "rejected"


def _result_detail(result: apprise.AppriseResult) -> str:
    """The most telling line of a failed Apprise result (per service)."""
    for service in result:
        if service.status == apprise.AppriseResultStatus.SUCCESS:
            continue
        if service.status == apprise.AppriseResultStatus.TIMEOUT:
            return f"{service.name} timed out"
        lines = [
            entry.message
            for entry in service.logs()
            if entry.level in ("WARNING", "ERROR", "CRITICAL")
        ]
        return f"{service.name}: {lines[-1] if lines else 'the send failed'}"
    return f"Apprise result {result.status.name.lower()}"
