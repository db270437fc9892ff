"""Which format and which size limits each Apprise service gets.

Apprise 2.x leaves an oversized message to the service (which then cuts or
rejects it), so every message is sized here, against the figures read from
Apprise's own plugin classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

MessageFormat = Literal["markdown", "html", "text"]
Format = Literal["markdown", "html", "text", "json"]
Dialect = Literal["commonmark", "slack", "telegram", "discord", "html", "text"]


@dataclass(frozen=True, kw_only=True)
class Limit:
    """The size a service accepts and how many detail lines stay readable.

    ``title`` 0 means the service has no title: the renderer puts the title
    in the body itself. ``shared`` means the title counts against ``body``.
    ``items`` caps the detail lines of one section before "and N more".
    """

    title: int
    body: int
    items: int = 20
    shared: bool = False

    @property
    def merged(self) -> bool:
        """True when the title has to travel inside the body."""
        return self.title == 0

    @property
    def budget(self) -> int:
        """The body size aimed at: a margin under the limit for the service's own
        conversions (Markdown dialects, HTML entities)."""
        return self.body - max(self.body // 20, 40)


# Figures from the Apprise 2.3 plugin classes. Slack accepts 35,000
# characters, but a message that long is unreadable in a chat window.
LIMITS: dict[str, Limit] = {
    "tgram": Limit(title=0, body=4096),
    "mmost": Limit(title=0, body=4000),
    "mmosts": Limit(title=0, body=4000),
    "slack": Limit(title=250, body=3500),
    "discord": Limit(title=250, body=2000, items=12, shared=True),
    "ntfy": Limit(title=200, body=7800),
    "ntfys": Limit(title=200, body=7800),
    "mailto": Limit(title=250, body=32768, items=100),
    "mailtos": Limit(title=250, body=32768, items=100),
    "gchat": Limit(title=0, body=4000),
    "msteams": Limit(title=250, body=4000),
    "matrix": Limit(title=250, body=4000),
    "matrixs": Limit(title=250, body=4000),
    "zulip": Limit(title=60, body=10000),
    "rocket": Limit(title=0, body=1000, items=8),
    "rockets": Limit(title=0, body=1000, items=8),
    "pover": Limit(title=250, body=1024, items=8),
    "pagerduty": Limit(title=0, body=1024, items=8),
    "opsgenie": Limit(title=250, body=15000),
    "gotify": Limit(title=250, body=32768),
    "gotifys": Limit(title=250, body=32768),
    "json": Limit(title=250, body=32768, items=100),
    "jsons": Limit(title=250, body=32768, items=100),
    "form": Limit(title=250, body=32768, items=100),
    "forms": Limit(title=250, body=32768, items=100),
    "xml": Limit(title=250, body=32768, items=100),
    "xmls": Limit(title=250, body=32768, items=100),
    "console": Limit(title=250, body=8000),
}
DEFAULT_LIMIT = Limit(title=200, body=2000, items=10)
"""For a service not in :data:`LIMITS`: small enough for most chat services."""

_MARKDOWN = frozenset(
    {
        "slack",
        "mmost",
        "mmosts",
        "tgram",
        "discord",
        "gchat",
        "msteams",
        "matrix",
        "matrixs",
        "zulip",
        "rocket",
        "rockets",
    }
)
_HTML = frozenset({"mailto", "mailtos", "ses", "sendgrid", "mailgun", "sparkpost"})
_DIALECTS: dict[str, Dialect] = {
    "slack": "slack",
    "tgram": "telegram",
    "discord": "discord",
}


def scheme_of(url: str) -> str:
    """The lower-case scheme of an Apprise URL (``tgram`` for ``tgram://...``)."""
    return url.split("://", 1)[0].lower() if "://" in url else url.lower()


def limit_for(url_scheme: str) -> Limit:
    """The size limits of a service, or a safe default for one not listed."""
    return LIMITS.get(url_scheme.lower(), DEFAULT_LIMIT)


def format_for(url_scheme: str, override: str | None = "auto") -> Format:
    """The message format for a service: Markdown for chat, HTML for email, text
    otherwise; ``json`` for a signed webhook (see :func:`webhook_body`).

    ``override`` is the channel's ``format`` setting; anything but ``auto``
    (or None) wins over the scheme, except for webhooks, which are always JSON.
    """
    scheme = url_scheme.lower()
    if scheme == "webhook":
        return "json"
    if override in ("markdown", "html", "text"):
        return cast(MessageFormat, override)
    if scheme in _MARKDOWN:
        return "markdown"
    if scheme in _HTML:
        return "html"
    return "text"


def dialect_for(url_scheme: str, message_format: MessageFormat) -> Dialect:
    """How Markdown is escaped for a service, or the HTML or text serialiser."""
    if message_format == "html":
        return "html"
    if message_format == "text":
        return "text"
    return _DIALECTS.get(url_scheme.lower(), "commonmark")
