"""Reading records for people: labels, money, field names, offer links.

Records hold only the fields a watch selects, and many Atleta fields are
unconfirmed, so every helper here treats any field as possibly missing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from notifier.model import JSON

CURRENCY = "EUR"
MONEY_FIELDS = frozenset({"amount", "total_amount", "fee", "price"})
"""Integer fields in minor units (cents); other ``*_amount``/``*_price``/``*_fee``
fields count too."""

# Shown elsewhere (label, link) or of no use to a reader: ids, tokens, HTML
# descriptions, images, timestamps that change on every edit.
_HIDDEN_LEAVES = frozenset(
    {
        "id",
        "__typename",
        "description",
        "image",
        "url",
        "updated_at",
        "created_at",
        "currency",
    }
)
_SECRET_WORDS = ("token", "secret", "password", "passwd", "api_key", "apikey")
_NAME_PATHS = ("first_name", "last_name")
_VALUE_WIDTH = 80
# Names people use for the Atleta fields that read badly when spelled out.
_FRIENDLY = {
    "resale.amount": "price",
    "resale.total_amount": "buyer pays",
    "resale.fee": "fee",
    "resale.available": "available",
    "registrations_for_sale_count": "resale offers",
    "sold_registrations_count": "sold on resale",
    "waitlist_size": "waiting list",
    "enable_waitlist": "waiting list on",
    "corral_name": "corral",
    "time_slot.start_date": "start date",
    "time_slot.start_time": "start time",
    # A registration's own (individual) start, next to its time slot's.
    "start_time": "individual start",
    "total_amount": "total",
}

_SCRUB = (
    (re.compile(r"(?i)\bbearer\s+[\w.~+/=-]+"), "Bearer [hidden]"),
    (re.compile(r"\bwhsec_[\w+/=]+"), "whsec_[hidden]"),
    (
        re.compile(r"(?i)\b(token|secret|password|apikey|api_key)=[^\s&]+"),
        r"\1=[hidden]",
    ),
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/\s@]+@"), r"\1[hidden]@"),
)


def money(cents: object, currency: str = CURRENCY) -> str:
    """Integer minor units as an amount for people: ``4200`` -> ``EUR 42.00``."""
    if not isinstance(cents, int) or isinstance(cents, bool):
        return "" if cents is None else str(cents)
    sign = "-" if cents < 0 else ""
    units, rest = divmod(abs(cents), 100)
    return f"{sign}{currency} {units:,}.{rest:02d}"


def is_money(path: str) -> bool:
    """True for a field holding money in cents (``resale.total_amount``)."""
    leaf = path.rsplit(".", 1)[-1]
    return leaf in MONEY_FIELDS or leaf.endswith(("_amount", "_price", "_fee"))


def is_secret(path: str) -> bool:
    """True for a field whose name says it holds a credential."""
    lowered = path.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def is_hidden(path: str) -> bool:
    """True for a field left out of detail lines (ids, secrets, markup, images)."""
    parts = path.split(".")
    return is_secret(path) or any(part in _HIDDEN_LEAVES for part in parts)


def scrub(text: str) -> str:
    """Hide anything in an error message that looks like a credential."""
    for pattern, replacement in _SCRUB:
        text = pattern.sub(replacement, text)
    return text


def clip(text: str, width: int = _VALUE_WIDTH) -> str:
    """One line of at most ``width`` characters, ending in "…" when cut."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    return text[: width - 1].rstrip() + "…"


def currency_of(record: JSON) -> str:
    """The record's own ``currency`` code when it selects one, else EUR.

    Atleta has shown no currency field so far; every amount seen was euros.
    """
    code = get(record, "currency")
    if isinstance(code, str) and len(code) == 3 and code.isalpha():
        return code.upper()
    return CURRENCY


def show(value: JSON, path: str = "", currency: str = CURRENCY) -> str:
    """A field value as a short phrase: money, yes/no, lists, nested objects."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and is_money(path):
        return money(value, currency)
    if isinstance(value, list):
        return _show_list(value)
    if isinstance(value, Mapping):
        return _show_object(value)
    return clip(str(value))


def _show_list(items: list[JSON]) -> str:
    if not items:
        return "none"
    if all(isinstance(item, str | int | float) for item in items):
        shown = ", ".join(str(item) for item in items[:3])
        more = f" (+{len(items) - 3})" if len(items) > 3 else ""
        return clip(shown + more)
    titled = [title_of(item) for item in items]
    if all(titled):
        more = f" (+{len(items) - 3})" if len(items) > 3 else ""
        return clip(", ".join(str(t) for t in titled[:3]) + more)
    return f"{len(items)} item" + ("" if len(items) == 1 else "s")


def _show_object(value: Mapping[str, JSON]) -> str:
    titled = title_of(value)
    if titled:
        return clip(titled)
    parts = [
        f"{humanise(key)}: {show(item, key)}"
        for key, item in value.items()
        if not is_hidden(key) and not isinstance(item, Mapping | list)
    ]
    return clip(", ".join(parts)) if parts else "set"


def title_of(value: JSON) -> str | None:
    """The ``title`` (or ``name``) of a nested object, when it has one."""
    if isinstance(value, Mapping):
        for field in ("title", "name"):
            text = value.get(field)
            if isinstance(text, str) and text.strip():
                return text.strip()
    return None


def humanise(path: str) -> str:
    """A dotted field path in words: ``time_slot.title`` -> ``time slot``."""
    known = _FRIENDLY.get(path)
    if known:
        return known
    parts = [part for part in path.split(".") if not part.isdigit()]
    if len(parts) > 1 and parts[-1] in ("title", "name"):
        parts = parts[:-1]
    return " ".join(parts).replace("_", " ")


def get(record: JSON, path: str) -> JSON:
    """The value at a dotted path of a record, or None when any step is missing."""
    value = record
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def person_name(record: JSON) -> str | None:
    """First and last name of the record, or of its participant, when selected."""
    for base in (record, get(record, "participant")):
        names = [get(base, path) for path in _NAME_PATHS]
        words = [str(name).strip() for name in names if name not in (None, "")]
        if words:
            return " ".join(words)
    return None


def ticket_title(record: JSON) -> str | None:
    """The record's ticket name (a distance or wave), when selected."""
    return title_of(get(record, "ticket"))


def event_title(record: JSON, entity: str, titles: Mapping[str, str]) -> str | None:
    """The title of the race the record belongs to, when it can be told.

    An ``event`` record is its own race; other records name it through
    ``event { title }`` or through ``event { id }`` and ``titles``.
    """
    if entity == "event":
        return title_of(record)
    event = get(record, "event")
    found = title_of(event)
    if found:
        return found
    event_id = get(event, "id")
    return titles.get(str(event_id)) if event_id is not None else None


def record_label(record: JSON, key: str | None) -> str:
    """What a person calls this record: a name, a title, a number, or its key."""
    for found in (
        person_name(record),
        title_of(record),
        _number(record),
        ticket_title(record),
    ):
        if found:
            return clip(found, 60)
    return f"#{key}" if key else "record"


NUMBER_LABELS = (("registration_number", "no. "), ("ticket_number", "bib "))
"""Fields that name a record when it has no name or title, with their prefix."""


def _number(record: JSON) -> str | None:
    for path, prefix in NUMBER_LABELS:
        value = get(record, path)
        if value not in (None, ""):
            return f"{prefix}{value}"
    return None


def leaves(record: JSON, prefix: str = "") -> Iterator[tuple[str, JSON]]:
    """Every scalar (and list) of a record with its dotted path, in record order."""
    if not isinstance(record, Mapping):
        return
    for name, value in record.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping):
            yield from leaves(value, path + ".")
        else:
            yield path, value


def public_urls(record: JSON) -> list[str]:
    """Every resale offer link (``public_url``) found anywhere in a record."""
    found: list[str] = []
    _collect_urls(record, found)
    return found


def _collect_urls(value: JSON, found: list[str]) -> None:
    if isinstance(value, Mapping):
        for name, item in value.items():
            if name == "public_url" and is_web_url(item) and item not in found:
                found.append(item)
            else:
                _collect_urls(item, found)
    elif isinstance(value, list):
        for item in value:
            _collect_urls(item, found)


def is_web_url(value: Any) -> bool:
    """True for an http(s) link (anything else is never made clickable)."""
    return isinstance(value, str) and value.startswith(("https://", "http://"))


def compact(value: JSON) -> str:
    """A short JSON rendering for values that have no better phrase."""
    return clip(json.dumps(value, ensure_ascii=False, sort_keys=True))
