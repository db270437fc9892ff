"""The objects the fake Atleta API serves, one class per schema type.

Field names match the bundled schema, so graphql-core's default resolver
reads them as attributes. A field that takes arguments is a method with the
resolver signature ``(info, **arguments)``. Attributes the schema does not
name (``project``, ``resellable`` ...) are bookkeeping for the dataset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from graphql import GraphQLError

# Resolvers take graphql-core's resolve info, or a stand-in with only a
# ``context`` when the fast path in ``fastpath`` calls them.
Info = Any
MAX_PER_PAGE = 250
DEFAULT_PER_PAGE = 25


class Page:
    """One page of a list with Laravel's paginator fields (``from`` included)."""

    __slots__ = ("current_page", "data", "from", "has_more_pages", "last_page",
                 "per_page", "to", "total")  # fmt: skip

    def __init__(self, **fields: Any) -> None:
        for name, value in fields.items():
            setattr(self, name, value)


def paginate(items: Sequence[Any], page: int | None, per_page: int | None) -> Page:
    """Cut one page out of ``items`` the way Laravel's length-aware paginator does.

    ``per_page`` defaults to 25. ``last_page`` is at least 1, ``from``/``to``
    are 1-based and null on an empty page, and a page past the end is empty
    rather than an error.

    :raises GraphQLError: for a page below 1 or a per_page outside 1..250,
        with the messages in ``extensions.validation`` (rebing's habit; the
        real API's exact answer is unknown).
    """
    page = 1 if page is None else page
    per_page = DEFAULT_PER_PAGE if per_page is None else per_page
    problems: dict[str, list[str]] = {}
    if page < 1:
        problems["page"] = ["The page must be at least 1."]
    if not 1 <= per_page <= MAX_PER_PAGE:
        problems["per_page"] = [f"The per page must be between 1 and {MAX_PER_PAGE}."]
    if problems:
        raise GraphQLError(
            "validation",
            extensions={"category": "validation", "validation": problems},
        )

    total = len(items)
    start = (page - 1) * per_page
    data = list(items[start : start + per_page])
    last_page = max(1, math.ceil(total / per_page))
    return Page(
        data=data,
        total=total,
        per_page=per_page,
        current_page=page,
        to=start + len(data) if data else None,
        last_page=last_page,
        has_more_pages=page < last_page,
        **{"from": start + 1 if data else None},
    )


class Record:
    """Base of the record classes: a short repr (records link to each other)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({getattr(self, 'id', '?')!r})"


@dataclass(eq=False, slots=True, repr=False)
class Image(Record):
    """An uploaded picture on the CDN."""

    id: str
    url: str


@dataclass(eq=False, slots=True, repr=False)
class Product(Record):
    """A product sold next to tickets (shirt, insurance, ticket fee)."""

    id: str
    title: str
    is_ticket_fee: bool
    type: str
    price: int
    variants: list[ProductVariant] = field(default_factory=list)


@dataclass(eq=False, slots=True, repr=False)
class ProductVariant(Record):
    """A size or colour of a product."""

    id: str
    title: str


@dataclass(eq=False, slots=True, repr=False)
class Upgrade(Record):
    """An add-on attached to a registration."""

    id: str
    product: Product
    product_variant: ProductVariant | None


@dataclass(eq=False, slots=True, repr=False)
class Participant(Record):
    """The buying account."""

    id: str
    first_name: str
    last_name: str
    email: str


@dataclass(eq=False, slots=True, repr=False)
class Promotion(Record):
    """A discount applied to a registration."""

    id: str
    title: str


@dataclass(eq=False, slots=True, repr=False)
class TimeSlot(Record):
    """A start wave of an event."""

    id: str
    start_date: str
    start_time: str | None
    title: str | None
    multi_date: bool


@dataclass(eq=False, slots=True, repr=False)
class Ticket(Record):
    """A ticket type of one event, with its live counters."""

    id: str
    title: str
    units: int
    description: str
    business: bool
    image: Image | None
    capacity: int
    price: int
    resellable: bool
    registrations_count: int = 0
    cached_registrations_for_sale_count: int = 0


@dataclass(eq=False, slots=True, repr=False)
class TicketCategory(Record):
    """A group of tickets; hidden ones need an invitation code."""

    id: str
    title: str
    tickets: list[Ticket]
    invitation_code: str | None = None

    @property
    def resellable_tickets(self) -> list[Ticket]:
        """Tickets of this group that allow resale."""
        return [ticket for ticket in self.tickets if ticket.resellable]


@dataclass(eq=False, slots=True, repr=False)
class Resale(Record):
    """A resale offer of one registration."""

    id: str
    available: bool
    resellable: bool
    amount: int
    total_amount: int
    fee: int
    public_url: str
    public_token: str
    time_left: int | None
    total_time: int
    upgrades: list[Upgrade]
    registration: Registration


@dataclass(eq=False, slots=True, repr=False)
class Event(Record):
    """An event of a project, its tickets and resale counters."""

    id: str
    project: str
    title: str
    start_date: str
    end_date: str
    enable_waitlist: bool
    waitlist_size: int
    tickets: list[Ticket]
    categories: list[TicketCategory]
    time_slots: list[TimeSlot]
    sport_type: str
    country: str
    distance: int
    popularity: int
    registrations_count: int = 0
    sold_registrations_count: int = 0
    for_sale: list[Registration] = field(default_factory=list)

    @property
    def tickets_for_resale(self) -> list[Ticket]:
        """Tickets that can be offered for resale."""
        return [ticket for ticket in self.tickets if ticket.resellable]

    @property
    def cached_tickets_for_resale(self) -> list[Ticket]:
        """Same as ``tickets_for_resale`` (the web app's cached variant)."""
        return self.tickets_for_resale

    def registrations_for_sale_count(
        self, _info: Info, tickets: list[str] | None = None
    ) -> int:
        """Open resale offers, optionally only of some tickets."""
        return len(self._offers(tickets, None))

    def registrations_for_sale(
        self,
        _info: Info,
        tickets: list[str] | None = None,
        limit: int | None = None,
    ) -> list[Registration]:
        """Registrations with an open offer; ``limit`` -1 or null means all."""
        return self._offers(tickets, limit)

    def ticket_categories(
        self, _info: Info, invitation_code: str | None = None
    ) -> list[TicketCategory]:
        """Visible ticket groups, plus the hidden ones the code unlocks."""
        return [
            category
            for category in self.categories
            if category.invitation_code is None
            or category.invitation_code == invitation_code
        ]

    def _offers(
        self, tickets: list[str] | None, limit: int | None
    ) -> list[Registration]:
        wanted = set(tickets) if tickets is not None else None
        offers = [
            registration
            for registration in self.for_sale
            if wanted is None or registration.ticket.id in wanted
        ]
        if limit is not None and limit >= 0:
            offers = offers[:limit]
        return offers


@dataclass(eq=False, slots=True, repr=False)
class Registration(Record):
    """One participant entry for one ticket unit."""

    id: str
    project: str
    ticket: Ticket
    event: Event
    time_slot: TimeSlot | None
    promotion: Promotion | None
    participant: Participant
    registration_number: int
    first_name: str
    last_name: str
    email: str
    gender: str
    date_of_birth: str
    nationality: str
    address: str
    phone: str
    emergency_phone: str
    ticket_number: str | None
    created_at: str
    updated_at: str
    start_time: str | None = None
    corral_name: str | None = None
    required_attributes: list[str] = field(default_factory=list)
    upgrades: list[Upgrade] = field(default_factory=list)
    resale: Resale | None = None
    order: Order | None = None
    cancelled_at: str | None = None


@dataclass(eq=False, slots=True, repr=False)
class Order(Record):
    """A checkout of registrations and product lines."""

    id: str
    project: str
    participant: Participant
    status: str
    total_amount: int
    created_at: str
    updated_at: str
    registrations: list[Registration] = field(default_factory=list)
    purchases: list[Purchase] = field(default_factory=list)


@dataclass(eq=False, slots=True, repr=False)
class Purchase(Record):
    """One product line of an order."""

    id: str
    order: Order
    registration: Registration | None
    product: Product
    product_variant: ProductVariant | None
    created_at: str


@dataclass(eq=False, slots=True, repr=False)
class Project(Record):
    """An organiser's project and its paged lists.

    ``registrations`` lists active registrations by default (``active``
    null or true) and every registration, cancelled ones included, with
    ``active: false``; the real API's meaning of the argument is unknown.
    """

    id: str
    organisation_name: str
    event_list: list[Event] = field(default_factory=list)
    all_registrations: list[Registration] = field(default_factory=list)
    active_registrations: list[Registration] = field(default_factory=list)
    order_list: list[Order] = field(default_factory=list)
    purchase_list: list[Purchase] = field(default_factory=list)

    def event(self, _info: Info, id: str | None = None) -> Event | None:
        """One event of this project, or null."""
        for event in self.event_list:
            if event.id == id:
                return event
        return None

    def registrations(
        self,
        _info: Info,
        page: int | None = None,
        per_page: int | None = None,
        active: bool | None = None,
    ) -> Page:
        """One page of registrations (see the class docstring for ``active``)."""
        items = self.all_registrations if active is False else self.active_registrations
        return paginate(items, page, per_page)

    def orders(
        self,
        _info: Info,
        page: int | None = None,
        per_page: int | None = None,
    ) -> Page:
        """One page of orders."""
        return paginate(self.order_list, page, per_page)

    def purchases(
        self,
        _info: Info,
        page: int | None = None,
        per_page: int | None = None,
    ) -> Page:
        """One page of purchases."""
        return paginate(self.purchase_list, page, per_page)

    def events(
        self,
        _info: Info,
        page: int | None = None,
        per_page: int | None = None,
    ) -> Page:
        """One page of this project's events."""
        return paginate(self.event_list, page, per_page)
