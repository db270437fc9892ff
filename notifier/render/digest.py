"""A digest: the events of a window as a small report an organiser looks at.

First the totals since the last digest, per race and ticket, as bars; then
the notable changes (resale offers, cancellations, updates, alerts). New
records are counted, not listed: the bars say more than 300 names would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from notifier.model import Event
from notifier.render.batch import (
    ALERT_TYPES,
    SEP,
    Section,
    alert_lines,
    alert_title,
    format_moment,
    phrase,
    plural,
    project_label,
    section_block,
    sections,
    subject,
)
from notifier.render.document import Bar, Block, Document, text
from notifier.render.values import event_title, get, money, ticket_title

_NOTABLE = ("alert", "resale", "cancelled", "updated")
_TOTALS = ("total_amount", "amount")


@dataclass
class _Tally:
    """Counts for one race or ticket row."""

    new: int = 0
    cancelled: int = 0
    cents: int = 0
    tickets: dict[str, _Tally] = field(default_factory=dict)

    def note(self) -> str:
        """What a bar adds after its count: money taken, cancellations."""
        parts = []
        if self.cents:
            parts.append(money(self.cents))
        if self.cancelled:
            parts.append(f"{self.cancelled} cancelled")
        return SEP.join(parts)


def _cents(event: Event) -> int:
    for path in _TOTALS:
        value = get(event.record, path)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def _tally(
    events: Sequence[Event], kinds: Mapping[str, str], titles: Mapping[str, str]
) -> dict[str, _Tally]:
    races: dict[str, _Tally] = {}
    for event in events:
        kind = kinds[event.id]
        if kind not in ("created", "cancelled"):
            continue
        record = subject(event)
        race_name = event_title(record, event.entity, titles) or ""
        ticket = ticket_title(record) or ""
        race = races.setdefault(race_name, _Tally())
        for row in (race, race.tickets.setdefault(ticket, _Tally())):
            if kind == "created":
                row.new += 1
                row.cents += _cents(event)
            else:
                row.cancelled += 1
    return races


def _bars(races: Mapping[str, _Tally], entity: str) -> tuple[Bar, ...]:
    rows: list[Bar] = []
    ordered = sorted(races.items(), key=lambda item: (-item[1].new, item[0]))
    named_races = [name for name, _ in ordered if name]
    for name, race in ordered:
        tickets = sorted(race.tickets.items(), key=lambda item: (-item[1].new, item[0]))
        named = [(t, tally) for t, tally in tickets if t]
        indent = 0
        if named_races:
            label = name or f"other {plural(entity)}"
            rows.append(Bar(label=label, count=race.new, note=race.note()))
            indent = 1
        elif not named:
            rows.append(
                Bar(label=f"all {plural(entity)}", count=race.new, note=race.note())
            )
        rows.extend(
            Bar(label=t, count=tally.new, depth=indent, note=tally.note())
            for t, tally in named
        )
    return tuple(rows)


def totals_blocks(
    events: Sequence[Event], kinds: Mapping[str, str], titles: Mapping[str, str]
) -> list[Block]:
    """One bar chart per entity of new (and cancelled) records by race and ticket."""
    blocks = []
    entities = sorted(
        {e.entity for e in events if kinds[e.id] in ("created", "cancelled")}
    )
    for entity in entities:
        chosen = [e for e in events if e.entity == entity]
        races = _tally(chosen, kinds, titles)
        new = sum(race.new for race in races.values())
        has_races = any(races)
        by = "by race and ticket" if has_races else "by ticket"
        blocks.append(
            Block(
                heading=f"New {plural(entity)} {by}: {new}",
                bars=_bars(races, entity),
                noun="rows",
            )
        )
    return blocks


def digest_title(
    found: Sequence[Section], events: Sequence[Event], titles: Mapping[str, str]
) -> str:
    """ "City Runs digest: 42 new registrations, 3 registrations cancelled"."""
    projects = {e.project.name for e in events}
    prefix = projects.pop() if len(projects) == 1 else "Atleta"
    if not found:
        return f"{prefix} digest: no changes"
    return f"{prefix} digest: " + ", ".join(
        phrase(s, titles, race=False) for s in found
    )


def build_digest(
    events: Sequence[Event],
    *,
    titles: Mapping[str, str],
    since: datetime,
    until: datetime,
    timezone: str,
) -> Document:
    """The document of one digest message."""
    found = sections(events)
    kinds = {e.id: s.kind for s in found for e in s.events}
    period = (
        f"From {format_moment(since, timezone)} to {format_moment(until, timezone)}"
    )
    blocks = [Block(intro=((text(period),),))]
    blocks.extend(totals_blocks(events, kinds, titles))
    for section in found:
        if section.kind not in _NOTABLE:
            continue
        if section.kind == "alert":
            blocks.extend(
                Block(heading=alert_title(e), intro=alert_lines(e))
                for e in section.events
            )
        else:
            blocks.append(section_block(section, titles, heading=True))
    if not events:
        blocks.append(Block(intro=((text("Nothing changed in this period."),),)))
    projects = sorted({project_label(e.project) for e in events})
    watches = sorted({e.watch for e in events if e.type not in ALERT_TYPES})
    footer = SEP.join([", ".join(projects[:3]), ", ".join(watches[:3])]).strip(SEP)
    return Document(
        title=digest_title(found, events, titles),
        blocks=tuple(blocks),
        footer=footer,
    )
