"""What one failed attempt means: its error kind, whether to retry, how long to wait.

:class:`Failure` carries one failed attempt until the retries are over and
the client raises the public :class:`~notifier.errors.PollError` subclass
it names. :func:`graphql_failure` reads GraphQL ``errors`` (retryable only
when they say the caller is rate limited), and :func:`parse_retry_after`
reads a ``Retry-After`` value. :func:`scrub` masks a token in text that
may reach a log line or an error message.
"""

from __future__ import annotations

import email.utils
import math
import re
from datetime import UTC, datetime

from notifier.errors import GraphQLResponseError, PollError, RateLimitedError
from notifier.model import JSON, MIN_SECRET_LENGTH, canonical_json

_RATE_LIMIT_WORDS = re.compile(r"rate.?limit|too many requests|throttl", re.IGNORECASE)


class Failure(Exception):
    """One failed attempt, before it becomes the public error after the retries."""

    def __init__(
        self,
        error: type[PollError],
        detail: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after


def parse_retry_after(
    value: str | None, *, now: datetime | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date).

    Returns None when the value is absent or unreadable, and never less
    than zero.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def graphql_failure(errors: JSON) -> Failure:
    """A failure for GraphQL ``errors``, retryable if it reads as a rate limit."""
    items = errors if isinstance(errors, list) else [errors]
    parts = [_describe_error(item) for item in items[:3]]
    if len(items) > 3:
        parts.append(f"and {len(items) - 3} more")
    detail = "GraphQL errors: " + "; ".join(parts)
    limits = [_rate_limit_of(item) for item in items if isinstance(item, dict)]
    if any(limited for limited, _ in limits):
        retry_after = next((after for _, after in limits if after is not None), None)
        return Failure(
            RateLimitedError, detail, retryable=True, retry_after=retry_after
        )
    return Failure(GraphQLResponseError, detail)


def scrub(text: str, token: str | None) -> str:
    """``text`` with any copy of ``token`` masked (see ``MIN_SECRET_LENGTH``)."""
    if token and len(token) >= MIN_SECRET_LENGTH:
        text = text.replace(token, "[token]")
    return text


def _rate_limit_of(item: dict[str, JSON]) -> tuple[bool, float | None]:
    """Whether one GraphQL error says "rate limited", and any wait it names."""
    extensions = item.get("extensions")
    if not isinstance(extensions, dict):
        extensions = {}
    signals = (item.get("message"), extensions.get("code"), extensions.get("category"))
    limited = any(_RATE_LIMIT_WORDS.search(str(signal)) for signal in signals if signal)
    after = extensions.get("retry_after", extensions.get("retryAfter"))
    return limited, parse_retry_after(None if after is None else str(after))


def _describe_error(item: JSON) -> str:
    """One GraphQL error as text: message, path and the ``extensions`` detail."""
    if not isinstance(item, dict):
        return _clip(canonical_json(item))
    text = str(item.get("message", "(no message)"))
    path = item.get("path")
    if isinstance(path, list) and path:
        text += " at " + ".".join(str(part) for part in path)
    extensions = item.get("extensions")
    if extensions:
        # Atleta puts the useful part (validation detail) here, not in message.
        text += " " + canonical_json(extensions)
    return _clip(text)


def _clip(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
