"""A batch of events as a message document: one section per kind of change.

Sections come in a fixed order (the notifier's own alerts, new records,
resale offers, cancellations, updates) and each reads like a sentence:
"3 new registrations for City Run 2027", then "By ticket: 10 km: 2, 5 km: 1",
then one line per record with the fields the watch selected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from notifier.model import JSON, Event, Project
from notifier.render.document import Block, Document, Item, Line, Span, text
from notifier.render.limits import LIMITS
from notifier.render.values import (
    NUMBER_LABELS,
    clip,
    currency_of,
    event_title,
    get,
    humanise,
    is_hidden,
    leaves,
    public_urls,
    record_label,
    scrub,
    show,
    ticket_title,
    title_of,
)

ALERT_TYPES = frozenset({"watch.failing", "watch.recovered", "channel.failing"})
SECTION_ORDER = ("alert", "created", "resale", "cancelled", "updated")
MAX_ITEMS = max(limit.items for limit in LIMITS.values())
_FIELDS_PER_LINE = 6
_LINE_WIDTH = 240
_CHANGES_PER_ITEM = 6
_BREAKDOWN = 6
_CANCELLING = frozenset({"registration", "order", "purchase"})
# The resale preset's records are offers: "resale" alone reads oddly.
_NOUNS = {"resale": "resale offer"}
_LABEL_PATHS = frozenset(
    {
        "first_name",
        "last_name",
        "participant.first_name",
        "participant.last_name",
        "title",
        "name",
        "ticket.title",
        "ticket.name",
        "event.title",
        "event.name",
    }
)
_ERROR_WORDS = {
    "auth": "the Atleta API refused the token",
    "rate_limited": "the Atleta API kept rate limiting the notifier",
    "server": "the Atleta API kept failing on its side",
    "network": "the Atleta API could not be reached",
    "graphql": "the Atleta API rejected the query",
    "malformed": "the Atleta API answered with something other than the expected data",
    "incomplete": "the record list kept changing while it was read",
    "timeout": "the service did not answer in time",
    "gone": "the receiver says this endpoint is gone",
    "rejected": "the service rejected the message",
}
SEP = " · "


@dataclass(frozen=True)
class Section:
    """Events of one entity and one kind of change (``created``, ``resale``...)."""

    kind: str
    entity: str
    events: tuple[Event, ...]


def plural(entity: str, count: int = 2) -> str:
    """``registration`` -> ``registrations`` (and ``1 registration``)."""
    word = _NOUNS.get(entity, entity.replace("_", " "))
    if count == 1:
        return word
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def subject(event: Event) -> JSON:
    """The record a person thinks of: the new one, or the old one when deleted."""
    return event.record if event.record is not None else event.previous


def error_words(kind: str) -> str:
    """An error kind in plain words ("the Atleta API refused the token")."""
    return _ERROR_WORDS.get(kind, kind.replace("_", " ") or "an unknown error")


def new_offers(event: Event) -> list[str]:
    """Resale links in the event's record that were not in the previous one."""
    urls = public_urls(event.record)
    if event.kind == "created":
        return urls if get(event.record, "resale.available") is not False else []
    before = set(public_urls(event.previous))
    return [url for url in urls if url not in before]


def classify(event: Event) -> str:
    """The section an event belongs to (see :data:`SECTION_ORDER`)."""
    if event.type in ALERT_TYPES:
        return "alert"
    if event.kind == "deleted" or _is_cancellation(event):
        return "cancelled"
    if new_offers(event) or _more_for_sale(event):
        return "resale"
    return "created" if event.kind == "created" else "updated"


def _is_cancellation(event: Event) -> bool:
    for change in event.changes:
        leaf = change.path.rsplit(".", 1)[-1]
        if leaf == "cancelled_at" and not change.before and change.after:
            return True
        if leaf == "status" and "cancel" in str(change.after).lower():
            return True
    return False


def _more_for_sale(event: Event) -> bool:
    for change in event.changes:
        if change.path.rsplit(".", 1)[-1] == "registrations_for_sale_count":
            before, after = change.before or 0, change.after or 0
            if isinstance(after, int) and isinstance(before, int) and after > before:
                return True
    return False


def sections(events: Iterable[Event]) -> list[Section]:
    """Events grouped by kind of change and entity, in :data:`SECTION_ORDER`."""
    groups: dict[tuple[str, str], list[Event]] = {}
    for event in events:
        groups.setdefault((classify(event), event.entity), []).append(event)
    order = sorted(groups, key=lambda group: SECTION_ORDER.index(group[0]))
    return [Section(kind=k, entity=e, events=tuple(groups[(k, e)])) for k, e in order]


# ---------------------------------------------------------------- phrases


def common_event(section: Section, titles: Mapping[str, str]) -> str | None:
    """The race every record of the section belongs to, if they share one."""
    found = {event_title(subject(e), e.entity, titles) for e in section.events}
    if len(found) == 1:
        return found.pop()
    return None


def phrase(section: Section, titles: Mapping[str, str], *, race: bool = True) -> str:
    """The section as a sentence: "3 new registrations for City Run 2027".

    ``race=False`` leaves the race out, for a title or batch that names it
    once for every section.
    """
    count = len(section.events)
    common = (
        common_event(section, titles) if race and section.entity != "event" else None
    )
    where = f" for {common}" if common else ""
    things = f"{count} {plural(section.entity, count)}"
    if section.kind == "alert":
        return f"{count} notifier alert{'' if count == 1 else 's'}"
    if section.kind == "created":
        return f"{count} new {plural(section.entity, count)}{where}"
    if section.kind == "resale":
        if section.entity == "event":
            names = [record_label(subject(e), e.key) for e in section.events]
            return f"New resale offers for {', '.join(names)}"
        return f"{count} new resale offer{'' if count == 1 else 's'}{where}"
    if section.kind == "cancelled":
        verb = "cancelled" if section.entity in _CANCELLING else "removed"
        if section.entity == "resale":
            verb = "gone (sold or withdrawn)"
        return f"{things} {verb}{where}"
    if section.entity == "event" and count == 1:
        first = section.events[0]
        return f"{record_label(subject(first), first.key)} changed"
    return f"{things} updated{where}"


def batch_race(found: Sequence[Section], titles: Mapping[str, str]) -> str | None:
    """The one race every non-alert record of a batch belongs to, if any."""
    races = {
        event_title(subject(e), e.entity, titles)
        for section in found
        if section.kind != "alert"
        for e in section.events
    }
    return races.pop() if len(races) == 1 else None


def breakdown(section: Section) -> Line | None:
    """ "By ticket: 10 km: 2, 5 km: 1" for sections of more than one record."""
    tickets = Counter(
        title for e in section.events if (title := ticket_title(subject(e))) is not None
    )
    if len(section.events) < 2 or not tickets:
        return None
    shown = [f"{name}: {count}" for name, count in tickets.most_common(_BREAKDOWN)]
    rest = len(tickets) - _BREAKDOWN
    more = f", +{rest} more" if rest > 0 else ""
    return (text("By ticket: "), text(", ".join(shown) + more))


# ---------------------------------------------------------------- items


def record_fields(record: JSON, *, skip: frozenset[str] = frozenset()) -> list[str]:
    """The selected fields of a record as short "name: value" phrases.

    The ticket and race come first, bare; ids, secrets and the fields used
    for the label are left out.
    """
    found: list[str] = []
    for path, value in (
        ("ticket.title", ticket_title(record)),
        ("event.title", title_of(get(record, "event"))),
    ):
        if value and path not in skip:
            found.append(clip(value, 60))
    currency = currency_of(record)
    for path, value in leaves(record):
        if path in _LABEL_PATHS or path in skip or path.endswith("public_url"):
            continue
        if is_hidden(path):
            continue
        if value is None or value == "" or value == [] or _implied(path, value):
            continue
        found.append(f"{humanise(path)}: {show(value, path, currency)}")
    return _within(found, _FIELDS_PER_LINE, _LINE_WIDTH)


def _implied(path: str, value: JSON) -> bool:
    # An offer being open goes without saying in an offer's line.
    return path == "resale.available" and value is True


def _within(parts: list[str], count: int, width: int) -> list[str]:
    kept: list[str] = []
    used = 0
    for part in parts[:count]:
        if kept and used + len(part) + len(SEP) > width:
            break
        kept.append(part)
        used += len(part) + len(SEP)
    if len(kept) < len(parts):
        kept.append("…")
    return kept


def _skip_for(record: JSON, label: str, race: str | None) -> frozenset[str]:
    skip = set()
    if ticket_title(record) == label:
        skip.add("ticket.title")
    for path, prefix in NUMBER_LABELS:
        if label == f"{prefix}{get(record, path)}":
            skip.add(path)
    if race is not None:
        skip.add("event.title")
    return frozenset(skip)


def record_item(event: Event, race: str | None, *, links: bool) -> Item:
    """One line for a created, cancelled or offered record."""
    record = subject(event)
    label = record_label(record, event.key)
    spans: list[Span] = [text(label, bold=True)]
    for part in record_fields(record, skip=_skip_for(record, label, race)):
        spans.append(text(SEP + part))
    offers = (new_offers(event) or public_urls(record)) if links else []
    for number, url in enumerate(offers[:3], start=1):
        name = "open the offer" if len(offers) == 1 else f"offer {number}"
        spans += [text(SEP), text(name, url=url)]
    # An event record's counters say how the offers moved; a registration's
    # own resale change is already told by its line.
    wanted = event.kind == "updated" and event.entity == "event"
    details = change_lines(event) if wanted else ()
    return Item(line=tuple(spans), details=details)


def update_item(event: Event) -> Item:
    """A line naming the record, then one "field: before → after" line each."""
    record = subject(event)
    label = record_label(record, event.key)
    spans: list[Span] = [text(label, bold=True)]
    ticket = ticket_title(record)
    if ticket and ticket != label:
        spans.append(text(f" ({clip(ticket, 40)})"))
    return Item(line=tuple(spans), details=change_lines(event))


def change_lines(event: Event) -> tuple[Line, ...]:
    """The visible field changes of an update, at most a handful."""
    visible = [c for c in event.changes if not is_hidden(c.path)]
    currency = currency_of(subject(event))
    lines: list[Line] = []
    for change in visible[:_CHANGES_PER_ITEM]:
        before = show(change.before, change.path, currency)
        after = show(change.after, change.path, currency)
        lines.append((text(f"{humanise(change.path)}: "), text(f"{before} → {after}")))
    if len(visible) > _CHANGES_PER_ITEM:
        lines.append((text(f"+{len(visible) - _CHANGES_PER_ITEM} more fields"),))
    return tuple(lines)


def section_block(
    section: Section, titles: Mapping[str, str], *, heading: bool, race: bool = True
) -> Block:
    """A section as a block: its sentence, its breakdown, one item per record.

    ``race=False`` when the title already names the race of every record.
    """
    common = common_event(section, titles) if section.entity != "event" else None
    # No service shows more than MAX_ITEMS lines a section; the rest are
    # only counted.
    first = section.events[:MAX_ITEMS]
    if section.kind == "updated":
        items = tuple(update_item(e) for e in first)
    else:
        links = section.kind in ("resale", "created")
        items = tuple(record_item(e, common, links=links) for e in first)
    line = breakdown(section)
    noun = "resale offers" if section.kind == "resale" else plural(section.entity)
    return Block(
        heading=phrase(section, titles, race=race) if heading else "",
        intro=(line,) if line else (),
        items=items,
        noun=noun,
        total=len(section.events),
    )


# ---------------------------------------------------------------- alerts


def alert_title(event: Event) -> str:
    """The headline of one of the notifier's own alerts."""
    if event.type == "channel.failing":
        return f"Channel {channel_name(event)} is failing"
    watch = f"{event.project.id}/{event.watch}"
    if event.type == "watch.recovered":
        return f"Watch {watch} works again"
    return f"Watch {watch} is failing"


def channel_name(event: Event) -> str:
    """The channel a ``channel.failing`` alert is about."""
    named = get(event.record, "channel")
    return str(named or event.key or event.watch)


def alert_lines(event: Event) -> tuple[Line, ...]:
    """An alert as plain sentences: what failed, why in plain words, what to do."""
    record = event.record if isinstance(event.record, Mapping) else {}
    failures = record.get("failures")
    kind = str(record.get("error_kind") or "")
    hint = str(record.get("hint") or "").rstrip(".")
    message = clip(scrub(str(record.get("message") or "")), 300)
    watch = f"{event.watch} ({event.project.name})"
    if event.type == "watch.recovered":
        after = f" after {failures} failed polls" if failures else ""
        return (
            (text(f"Polls of {watch} work again{after}."),),
            (text("Changes made in the meantime come through as usual."),),
        )
    if event.type == "channel.failing":
        tries = f" after {failures} attempts" if failures else ""
        head = (
            f"Messages to channel {channel_name(event)} could not be delivered{tries}"
        )
    else:
        tries = f"The last {failures} polls" if failures else "Polls"
        head = f"{tries} of {watch} failed"
    lines: list[Line] = [(text(f"{head}: {error_words(kind)}."),)]
    if hint:
        lines.append((text(f"What to do: {hint}."),))
    if message:
        lines.append((text(f"Last error: {message}"),))
    return tuple(lines)


# ---------------------------------------------------------------- documents


def format_moment(moment: datetime, timezone: str) -> str:
    """A time for people in the channel's time zone: "3 Dec 2026, 16:45 CET"."""
    try:
        local = moment.astimezone(ZoneInfo(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        local = moment
    return f"{local.day} {local:%b %Y, %H:%M} {local.tzname() or timezone}"


def project_label(project: Project) -> str:
    """A project as messages name it: its name and id, or the id alone."""
    return (
        project.id if project.name == project.id else f"{project.name} ({project.id})"
    )


def footer(events: Sequence[Event], moment: datetime, timezone: str) -> str:
    """Where the events come from and when: "City Runs (CRUN) · registrations · ..."."""
    projects = {e.project for e in events}
    watches = sorted({e.watch for e in events if e.type not in ALERT_TYPES})
    parts = []
    if len(projects) == 1:
        project = next(iter(projects))
        parts.append(project_label(project))
    elif projects:
        parts.append(f"{len(projects)} projects")
    if watches:
        parts.append(", ".join(watches[:3]) + (" …" if len(watches) > 3 else ""))
    parts.append(format_moment(moment, timezone))
    return SEP.join(parts)


def build_batch(
    events: Sequence[Event],
    *,
    titles: Mapping[str, str],
    moment: datetime,
    timezone: str,
) -> Document:
    """The document of one batch message."""
    found = sections(events)
    single = len(found) == 1
    per_section = batch_race(found, titles) is None
    blocks: list[Block] = []
    for section in found:
        if section.kind == "alert":
            many = not single or len(section.events) > 1
            blocks.extend(
                Block(heading=alert_title(e) if many else "", intro=alert_lines(e))
                for e in section.events
            )
        else:
            block = section_block(section, titles, heading=not single, race=per_section)
            blocks.append(block)
    return Document(
        title=batch_title(found, events, titles),
        blocks=tuple(blocks),
        footer=footer(events, moment, timezone),
    )


def batch_title(
    found: Sequence[Section], events: Sequence[Event], titles: Mapping[str, str]
) -> str:
    """One sentence for the whole batch, naming the race (or project) once."""
    if not found:
        return "No changes"
    if len(found) == 1:
        section = found[0]
        if section.kind != "alert":
            return phrase(section, titles)
        if len(section.events) == 1:
            return alert_title(section.events[0])
    return f"{batch_prefix(found, events, titles)}: " + ", ".join(
        phrase(s, titles, race=False) for s in found
    )


def batch_prefix(
    found: Sequence[Section], events: Sequence[Event], titles: Mapping[str, str]
) -> str:
    """What a title joining several sections is about: the race, else the project."""
    race = batch_race(found, titles)
    if race:
        return race
    projects = {e.project.name for e in events}
    return projects.pop() if len(projects) == 1 else "Atleta"
