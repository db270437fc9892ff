"""Messages for people and bodies for machines.

:func:`render` turns a batch of events into one :class:`Message` for one
Apprise service, :func:`render_digest` turns a window of events into a small
report, and :func:`webhook_body` is the JSON body of a signed webhook. All
are pure functions of events and a channel; every message fits the size
limit of the service it goes to (see :mod:`notifier.render.limits`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from notifier.model import JSON, Channel, Event, utcnow
from notifier.render.batch import build_batch
from notifier.render.digest import build_digest
from notifier.render.document import Document, fit_title, size
from notifier.render.document import fit as fit_document
from notifier.render.limits import (
    DEFAULT_LIMIT,
    LIMITS,
    Format,
    Limit,
    MessageFormat,
    dialect_for,
    format_for,
    limit_for,
    scheme_of,
)
from notifier.render.templates import check_templates, clip_lines, render_custom
from notifier.render.values import money

__all__ = [
    "DEFAULT_LIMIT",
    "LIMITS",
    "Format",
    "Limit",
    "Message",
    "MessageFormat",
    "check_templates",
    "fit",
    "format_for",
    "limit_for",
    "money",
    "render",
    "render_digest",
    "scheme_of",
    "webhook_body",
]


@dataclass(frozen=True, kw_only=True)
class Message:
    """One message for one service.

    ``format`` is the Apprise ``body_format`` of ``body``. For email,
    ``text`` is the plain-text part that goes with the HTML body. For a
    service without titles (Telegram, Mattermost...) ``title`` is empty and
    the title is the body's first, bold line.
    """

    title: str
    body: str
    format: MessageFormat
    text: str | None = None


def fit(message: Message, url_scheme: str) -> Message:
    """A message built elsewhere, cut to a service's limits between whole lines.

    Built-in messages already fit; this is for text made outside
    :func:`render` (a flood summary, a test message).
    """
    limit = limit_for(url_scheme)
    title = fit_title(message.title, limit.title or limit.body)
    cost = size(title) + 2 if title and (limit.shared or limit.merged) else 0
    body = clip_lines(message.body, limit.budget - cost)
    text = clip_lines(message.text, limit.budget) if message.text else message.text
    return Message(title=title, body=body, format=message.format, text=text)


def webhook_body(event: Event) -> bytes:
    """The JSON body of a webhook for one event, serialised once (it is signed).

    It is always valid JSON: a non-finite number, which JSON cannot carry,
    becomes null.
    """
    data = event.to_json()
    try:
        encoded = json.dumps(data, ensure_ascii=False, allow_nan=False)
    except ValueError:
        encoded = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False)
    return encoded.encode("utf-8")


def _finite(value: JSON) -> JSON:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def render(
    events: Sequence[Event],
    channel: Channel,
    *,
    url_scheme: str,
    event_titles: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Message:
    """One message for a batch of events, for the service at ``url_scheme``.

    ``event_titles`` maps event ids to race titles, for records that
    select ``event { id }`` but not its title. A channel's templates, when
    set, replace the built-in title and body.

    :raises DeliveryError: a channel template failed (the message names the
        channel); retrying does not help, so it is marked permanent.
    """
    moment = now or utcnow()
    doc = build_batch(
        events, titles=event_titles or {}, moment=moment, timezone=channel.timezone
    )
    return _finish(doc, events, channel, url_scheme, moment, titles=event_titles or {})


def render_digest(
    events: Sequence[Event],
    channel: Channel,
    *,
    since: datetime,
    until: datetime,
    url_scheme: str,
    event_titles: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Message:
    """A digest report of the events between ``since`` and ``until``: totals
    per race and ticket as bars, then the notable changes.

    :raises DeliveryError: a channel template failed.
    """
    doc = build_digest(
        events,
        titles=event_titles or {},
        since=since,
        until=until,
        timezone=channel.timezone,
    )
    return _finish(
        doc,
        events,
        channel,
        url_scheme,
        now or until,
        digest=(since, until),
        titles=event_titles or {},
    )


def _finish(
    doc: Document,
    events: Sequence[Event],
    channel: Channel,
    url_scheme: str,
    moment: datetime,
    *,
    digest: tuple[datetime, datetime] | None = None,
    titles: Mapping[str, str],
) -> Message:
    chosen = format_for(url_scheme, channel.format)
    message_format: MessageFormat = "text" if chosen == "json" else chosen
    limit = limit_for(url_scheme)
    title = fit_title(doc.title, limit.title or limit.body)
    body = fit_document(
        doc, dialect_for(url_scheme, message_format), limit, title=title
    )
    plain = fit_document(doc, "text", limit) if message_format == "html" else None
    if channel.title_template or channel.body_template:
        title, body = render_custom(
            channel,
            events,
            built_title=title,
            built_body=body,
            message_format=message_format,
            limit=limit,
            now=moment,
            digest=digest,
            titles=titles,
        )
        if message_format == "html" and channel.body_template:
            plain = None
    elif limit.merged:
        # The title already leads the body; a service without titles would
        # otherwise glue an unescaped copy on top.
        title = ""
    return Message(title=title, body=body, format=message_format, text=plain)
