"""The fake API's mutable dataset: seeded records, mutations and their log.

Every method takes one lock, so tests on the main thread, the server
thread and the churn thread can all change and read the data. Each
mutation bumps ``version`` (the number of mutations so far) and appends a
``Mutation`` to the log that ``log_since`` reads back.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from notifier.fake_atleta.records import Event, Order, Project, Registration, Resale
from notifier.fake_atleta.seed import (
    ORGANISATIONS,
    Builder,
    build_project,
    order_amount,
    project_codes,
    registrations_per_project,
    stamp_of,
)

CANCELLED_SHARE = 0.03
RESALE_SHARE = 0.02
REGISTRATION_FIELDS = frozenset(
    {
        "first_name", "last_name", "email", "gender", "date_of_birth", "nationality",
        "address", "phone", "emergency_phone", "ticket_number", "start_time",
        "corral_name", "required_attributes", "registration_number",
    }
)  # fmt: skip
ORDER_FIELDS = frozenset({"status", "total_amount"})
EVENT_FIELDS = frozenset(
    {"title", "start_date", "end_date", "enable_waitlist", "waitlist_size"}
)


@dataclass(frozen=True, kw_only=True)
class Mutation:
    """One change made to the dataset, as the log keeps it."""

    seq: int
    kind: str
    project: str
    id: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    at: str

    def to_json(self) -> dict[str, Any]:
        """The mutation as a JSON-ready dict."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "project": self.project,
            "id": self.id,
            "fields": dict(self.fields),
            "at": self.at,
        }


class Dataset:
    """Seeded projects with thread-safe mutations and a mutation log.

    ``projects`` maps codes to projects; ``events``, ``registrations``,
    ``orders`` and ``resales`` (open offers) index records by id across
    projects. Timestamps are ``YYYY-MM-DD HH:MM:SS`` in UTC from ``clock``.
    """

    def __init__(
        self,
        *,
        seed: int = 1,
        projects: int = 3,
        registrations: int | Mapping[str | int, int] = 500,
        events: int = 3,
        codes: list[str] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.version = 0
        self._clock = clock or (lambda: datetime.now(UTC))
        self._log: list[Mutation] = []
        self.events: dict[str, Event] = {}
        self.registrations: dict[str, Registration] = {}
        self.orders: dict[str, Order] = {}
        self.resales: dict[str, Resale] = {}
        rng = random.Random(seed)
        self._builder = Builder(rng)
        code_list = project_codes(rng, projects, codes)
        counts = registrations_per_project(code_list, registrations)
        self.projects: dict[str, Project] = {}
        for index, code in enumerate(code_list):
            name = ORGANISATIONS[index % len(ORGANISATIONS)]
            # Cancelled registrations come on top, so ``registrations=N``
            # gives N in the default (active) list.
            extra = round(counts[code] * CANCELLED_SHARE)
            project = build_project(
                self._builder, code, name, counts[code] + extra, events
            )
            self._settle(project, rng, extra)
            self.projects[code] = project
        self._index()

    @property
    def project_ids(self) -> list[str]:
        """Project codes in seed order, ``TEST`` first."""
        return list(self.projects)

    def _settle(self, project: Project, rng: random.Random, cancelled: int) -> None:
        # A seeded project starts lived-in: a few cancellations and offers.
        gone = set(rng.sample(range(len(project.all_registrations)), cancelled))
        for index, registration in enumerate(project.all_registrations):
            if index in gone:
                registration.cancelled_at = registration.updated_at
                continue
            project.active_registrations.append(registration)
            registration.ticket.registrations_count += 1
            registration.event.registrations_count += 1
            if rng.random() < RESALE_SHARE and registration.ticket.resellable:
                self._offer(registration, None)
        for event in project.event_list:
            event.sold_registrations_count = rng.randrange(40)

    def _index(self) -> None:
        for project in self.projects.values():
            self.events.update((event.id, event) for event in project.event_list)
            self.registrations.update((r.id, r) for r in project.all_registrations)
            self.orders.update((order.id, order) for order in project.order_list)

    # -- reading ------------------------------------------------------------

    def log_since(self, seq: int = 0) -> list[Mutation]:
        """Mutations with a sequence number above ``seq``, oldest first."""
        with self.lock:
            return self._log[max(0, seq) :]

    def public_events(self) -> list[Event]:
        """Every event of every project, as the public calendar sees them."""
        with self.lock:
            return [event for p in self.projects.values() for event in p.event_list]

    def project(self, code: str) -> Project:
        """The project with this code.

        :raises KeyError: for an unknown code.
        """
        return self.projects[code]

    # -- mutations ----------------------------------------------------------

    def _now(self) -> str:
        return stamp_of(self._clock())

    def _record(
        self, kind: str, project: str, record_id: str, fields: Mapping[str, Any]
    ) -> None:
        self.version += 1
        self._log.append(
            Mutation(
                seq=self.version,
                kind=kind,
                project=project,
                id=record_id,
                fields=dict(fields),
                at=self._now(),
            )
        )

    def add_registration(
        self, project: str, *, front: bool = False, **fields: Any
    ) -> str:
        """Add an active registration (with its own order) and return its id.

        ``event`` and ``ticket`` take ids; other keyword arguments set
        registration fields. ``front`` puts it first in the list instead of
        last, which shifts every later page by one.

        :raises KeyError: for an unknown project, event or ticket.
        :raises ValueError: for a field the registration does not have.
        """
        with self.lock:
            target = self.projects[project]
            _check(
                fields.keys() - {"event", "ticket"}, REGISTRATION_FIELDS, "Registration"
            )
            order = self._new_order(target, front=front)
            registration = self._insert(target, order, dict(fields), front=front)
            order.total_amount = order_amount(order)
            self._record("order.created", project, order.id, {"registrations": 1})
            return registration.id

    def _new_order(self, project: Project, *, front: bool) -> Order:
        stamp = self._now()
        order = Order(
            id=self._builder.new_id(project.id),
            project=project.id,
            participant=self._builder.participant(project.id),
            status="paid",
            total_amount=0,
            created_at=stamp,
            updated_at=stamp,
        )
        project.order_list.insert(0 if front else len(project.order_list), order)
        self.orders[order.id] = order
        return order

    def _insert(
        self, project: Project, order: Order, fields: dict[str, Any], *, front: bool
    ) -> Registration:
        event = self._event_of(project, fields.pop("event", None))
        ticket_id = fields.pop("ticket", None)
        number = 101 + len(project.all_registrations)
        registration = self._builder.registration(
            project, event, order.participant, number, order.created_at
        )
        if ticket_id is not None:
            registration.ticket = self._ticket(event, ticket_id)
        self._assign(registration, fields, REGISTRATION_FIELDS)
        registration.order = order
        order.registrations.append(registration)
        project.all_registrations.insert(
            0 if front else len(project.all_registrations), registration
        )
        project.active_registrations.insert(
            0 if front else len(project.active_registrations), registration
        )
        registration.ticket.registrations_count += 1
        event.registrations_count += 1
        self.registrations[registration.id] = registration
        self._record(
            "registration.created",
            project.id,
            registration.id,
            {"event": event.id, "ticket": registration.ticket.id, **fields},
        )
        return registration

    def change_registration(self, registration_id: str, **fields: Any) -> None:
        """Change fields of a registration; ``ticket`` and ``time_slot`` take ids.

        :raises KeyError: for an unknown registration, ticket or time slot.
        :raises ValueError: for a field the registration does not have.
        """
        with self.lock:
            registration = self.registrations[registration_id]
            ticket_id = fields.pop("ticket", None)
            slot_id = fields.pop("time_slot", None)
            changed = dict(fields)
            self._assign(registration, fields, REGISTRATION_FIELDS)
            if ticket_id is not None:
                self._move_ticket(
                    registration, self._ticket(registration.event, ticket_id)
                )
                changed["ticket"] = ticket_id
            if slot_id is not None:
                slots = {slot.id: slot for slot in registration.event.time_slots}
                registration.time_slot = slots[slot_id]
                changed["time_slot"] = slot_id
            registration.updated_at = self._now()
            self._record(
                "registration.updated", registration.project, registration.id, changed
            )

    def _move_ticket(self, registration: Registration, ticket: Any) -> None:
        if registration.cancelled_at is None:
            registration.ticket.registrations_count -= 1
            ticket.registrations_count += 1
        registration.ticket = ticket

    def cancel_registration(self, registration_id: str) -> None:
        """Cancel a registration: it leaves the default (active) list.

        :raises KeyError: for an unknown registration.
        :raises ValueError: when it is already cancelled.
        """
        with self.lock:
            registration = self.registrations[registration_id]
            if registration.cancelled_at is not None:
                raise ValueError(
                    f"registration {registration_id!r} is already cancelled"
                )
            if registration.resale is not None:
                self._withdraw(registration.resale)
            project = self.projects[registration.project]
            project.active_registrations.remove(registration)
            registration.ticket.registrations_count -= 1
            registration.event.registrations_count -= 1
            registration.cancelled_at = registration.updated_at = self._now()
            self._record(
                "registration.cancelled",
                registration.project,
                registration.id,
                {"cancelled_at": registration.cancelled_at},
            )

    def add_order(self, project: str, *, registrations: int = 1, **fields: Any) -> str:
        """Add an order of ``registrations`` new registrations and return its id.

        :raises KeyError: for an unknown project.
        :raises ValueError: for a field an order does not have, or a
            count below 1.
        """
        if registrations < 1:
            raise ValueError(
                f"an order needs at least 1 registration, not {registrations}"
            )
        with self.lock:
            target = self.projects[project]
            _check(fields.keys(), ORDER_FIELDS, "Order")
            order = self._new_order(target, front=False)
            for _ in range(registrations):
                self._insert(target, order, {}, front=False)
            order.total_amount = order_amount(order)
            self._assign(order, fields, ORDER_FIELDS)
            self._record(
                "order.created",
                project,
                order.id,
                {"registrations": registrations, **fields},
            )
            return order.id

    def change_order(self, order_id: str, **fields: Any) -> None:
        """Change an order's ``status`` or ``total_amount``.

        :raises KeyError: for an unknown order.
        :raises ValueError: for a field an order does not have.
        """
        with self.lock:
            order = self.orders[order_id]
            self._assign(order, dict(fields), ORDER_FIELDS)
            order.updated_at = self._now()
            self._record("order.updated", order.project, order.id, fields)

    def open_resale(
        self,
        event_id: str,
        registration_id: str | None = None,
        *,
        amount: int | None = None,
    ) -> str:
        """Offer a registration for resale and return the offer id.

        Without ``registration_id`` the first active registration of the
        event on a resellable ticket without an offer is used.

        :raises KeyError: for an unknown event or registration.
        :raises ValueError: when no registration can be offered.
        """
        with self.lock:
            event = self.events[event_id]
            registration = (
                self.registrations[registration_id]
                if registration_id
                else self._offerable(event)
            )
            if registration.resale is not None or registration.cancelled_at is not None:
                raise ValueError(f"registration {registration.id!r} cannot be offered")
            resale = self._offer(registration, amount)
            self._record(
                "resale.opened",
                event.project,
                resale.id,
                {
                    "event": event.id,
                    "registration": registration.id,
                    "amount": resale.amount,
                },
            )
            return resale.id

    def _offerable(self, event: Event) -> Registration:
        project = self.projects[event.project]
        for registration in project.active_registrations:
            if (
                registration.event is event
                and registration.resale is None
                and registration.ticket.resellable
            ):
                return registration
        raise ValueError(f"event {event.id!r} has no registration to offer")

    def _offer(self, registration: Registration, amount: int | None) -> Resale:
        resale = self._builder.resale(registration, amount)
        registration.resale = resale
        registration.event.for_sale.append(registration)
        registration.ticket.cached_registrations_for_sale_count += 1
        self.resales[resale.id] = resale
        return resale

    def _withdraw(self, resale: Resale) -> None:
        registration = resale.registration
        registration.resale = None
        registration.event.for_sale.remove(registration)
        registration.ticket.cached_registrations_for_sale_count -= 1
        self.resales.pop(resale.id, None)

    def close_resale(self, resale_id: str, *, sold: bool = False) -> None:
        """Close an offer; ``sold`` counts it in the event's sold counter.

        :raises KeyError: for an unknown or already closed offer.
        """
        with self.lock:
            resale = self.resales[resale_id]
            event = resale.registration.event
            self._withdraw(resale)
            if sold:
                event.sold_registrations_count += 1
            self._record(
                "resale.closed",
                event.project,
                resale_id,
                {"event": event.id, "sold": sold},
            )

    def edit_event(self, event_id: str, **fields: Any) -> None:
        """Change event details: title, dates, waitlist switch and size.

        :raises KeyError: for an unknown event.
        :raises ValueError: for a field that cannot be edited.
        """
        with self.lock:
            event = self.events[event_id]
            self._assign(event, dict(fields), EVENT_FIELDS)
            self._record("event.updated", event.project, event.id, fields)

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _assign(
        record: Any, fields: Mapping[str, Any], allowed: frozenset[str]
    ) -> None:
        _check(fields.keys(), allowed, type(record).__name__)
        for name, value in fields.items():
            setattr(record, name, value)

    def _event_of(self, project: Project, event_id: str | None) -> Event:
        if event_id is None:
            return project.event_list[self.version % len(project.event_list)]
        event = self.events[event_id]
        if event.project != project.id:
            raise KeyError(event_id)
        return event

    @staticmethod
    def _ticket(event: Event, ticket_id: str) -> Any:
        for ticket in event.tickets:
            if ticket.id == ticket_id:
                return ticket
        raise KeyError(ticket_id)

    def churn_step(self, rng: random.Random) -> Mutation:
        """Make one random, plausible change and return its log entry."""
        with self.lock:
            code = rng.choice(self.project_ids)
            project = self.projects[code]
            roll = rng.random()
            active = project.active_registrations
            if roll < 0.45 or len(active) < 2:
                self.add_registration(code)
                return self._log[-2]
            victim = active[rng.randrange(len(active))]
            if roll < 0.65:
                self.change_registration(
                    victim.id, ticket_number=str(rng.randrange(1, 9999))
                )
            elif roll < 0.8:
                self.cancel_registration(victim.id)
            elif roll < 0.9 and victim.resale is None and victim.ticket.resellable:
                self.open_resale(victim.event.id, victim.id)
            elif roll < 0.95 and self.resales:
                self.close_resale(
                    rng.choice(sorted(self.resales)), sold=rng.random() < 0.5
                )
            else:
                event = rng.choice(project.event_list)
                self.edit_event(event.id, waitlist_size=event.waitlist_size + 1)
            return self._log[-1]


def _check(names: Iterable[str], allowed: frozenset[str], type_name: str) -> None:
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise ValueError(f"cannot set {', '.join(unknown)} on {type_name}")
