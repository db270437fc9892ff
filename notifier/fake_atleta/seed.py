"""Build a deterministic fake dataset from a seed.

Everything random comes from one ``random.Random(seed)``, so the same
arguments always give the same ids, names and numbers. Personal fields are
drawn from one 64-bit number per registration: a 100,000-registration
project builds in about a second.
"""

from __future__ import annotations

import base64
import random
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from notifier.fake_atleta.records import (
    Event,
    Image,
    Order,
    Participant,
    Product,
    ProductVariant,
    Project,
    Promotion,
    Purchase,
    Registration,
    Resale,
    Ticket,
    TicketCategory,
    TimeSlot,
    Upgrade,
)

ALPHANUMERIC = string.ascii_letters + string.digits
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
RESALE_FEE_SHARE = 0.05

FIRST_NAMES = (
    "Anna Bram Chloe Daan Emma Finn Greet Hugo Ines Jonas Kato Lars Mila Noah "
    "Olivia Pieter Quinten Roos Sem Tess Ulla Victor Wout Xander Yara Zoe Lotte "
    "Milan Elise Arne Fleur Jasper Nina Robin Sara Thijs Lieke Ruben Fenna Luuk"
).split()
_LAST = (
    "Peeters Janssens Maes Jacobs Mertens Willems Claes Goossens Wouters De_Smet "
    "Dubois Lambert Dupont Martin Bakker Visser Smit Meijer Mulder Bos Vos Peters "
    "Hendriks Dekker Brouwer Koster Vermeulen Van_Dijk Jansen De_Vries"
)
LAST_NAMES = tuple(name.replace("_", " ") for name in _LAST.split())
CITIES = "Gent Brugge Leuven Utrecht Lille Namur Breda Eindhoven Maastricht".split()
STREETS = "Kerkstraat Molenweg Stationsplein Dorpsstraat Veldlaan Beekstraat".split()
COUNTRIES = "BE NL FR DE LU GB ES IT".split()
GENDERS = ("female", "male", "female", "male", "other")
ORGANISATIONS = (
    "Test Events vzw",
    "Flanders Trail Club",
    "Polder Runners",
    "Ardennes Ultra",
    "Coastal Cycling",
    "City Triathlon Team",
    "Kempen Walks",
    "Scheldt Swim",
)
EVENT_NAMES = (
    "Spring Trail",
    "City Run",
    "Night Marathon",
    "Gravel Ride",
    "Sprint Triathlon",
    "Lake Swim",
    "Forest Walk",
    "Winter Ultra",
    "Harbour Relay",
)
SPORTS = (
    "trail_running",
    "running",
    "running",
    "cycling",
    "triathlon",
    "swimming",
    "walking",
    "trail_running",
    "running",
)
TICKET_KINDS = (  # title, units, price in cents, distance in metres
    ("5 km", 1, 1800, 5_000),
    ("10 km", 1, 2500, 10_000),
    ("Half marathon", 1, 4200, 21_097),
    ("Marathon", 1, 6500, 42_195),
    ("Duo relay", 2, 7000, 42_195),
    ("Company team", 4, 16000, 10_000),
)
REQUIRED = (
    "date_of_birth",
    "gender",
    "nationality",
    "address",
    "phone",
    "emergency_phone",
)
BASE_DATE = datetime(2026, 1, 5, 8, 0, 0)
_FOLD = str.maketrans("+/", "Xq")


@dataclass(kw_only=True)
class SeedSpec:
    """What to build: project codes and how many registrations each gets."""

    seed: int
    codes: list[str]
    registrations: dict[str, int]
    events_per_project: int = 3


def project_codes(rng: random.Random, count: int, given: list[str] | None) -> list[str]:
    """Return ``count`` distinct 4-character codes, ``TEST`` first."""
    codes = list(given or ["TEST"])
    while len(codes) < count:
        code = "".join(rng.choices(ALPHANUMERIC, k=4))
        if code not in codes:
            codes.append(code)
    return codes[:count] if given is None else codes


def registrations_per_project(
    codes: list[str], registrations: int | Mapping[str | int, int]
) -> dict[str, int]:
    """Resolve a count or a mapping (by code or by index) to a count per project."""
    if isinstance(registrations, int):
        return dict.fromkeys(codes, registrations)
    counts = dict.fromkeys(codes, 0)
    for key, value in registrations.items():
        code = codes[key] if isinstance(key, int) else key
        if code not in counts:
            raise ValueError(f"unknown project {key!r} in registrations")
        counts[code] = value
    return counts


def stamp_of(moment: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS``, the Laravel timestamp format (no zone)."""
    # isoformat is several times faster than strftime for 100,000 rows.
    return moment.replace(microsecond=0, tzinfo=None).isoformat(" ")


class Builder:
    """Make records with unique ids from one random stream."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.ids: set[str] = set()

    def new_id(self, code: str) -> str:
        """A fresh 12-character id starting with the project code."""
        while True:
            # Eight base64 characters from 48 random bits, folded into the
            # alphanumeric range the real ids use.
            raw = base64.b64encode(self.rng.getrandbits(48).to_bytes(6, "big"))
            candidate = code + raw.decode("ascii").translate(_FOLD)
            if candidate not in self.ids:
                self.ids.add(candidate)
                return candidate

    def token(self, length: int = 32) -> str:
        """An opaque token such as a resale offer's public token."""
        return "".join(self.rng.choices(ALPHANUMERIC, k=length))

    def participant(self, code: str) -> Participant:
        """A buying account."""
        bits = self.rng.getrandbits(32)
        first = FIRST_NAMES[bits % len(FIRST_NAMES)]
        last = LAST_NAMES[(bits >> 8) % len(LAST_NAMES)]
        number = (bits >> 16) % 1000
        email = f"{first}.{last.replace(' ', '')}{number}@example.org".lower()
        return Participant(
            id=self.new_id(code), first_name=first, last_name=last, email=email
        )

    def products(self, code: str) -> list[Product]:
        """The add-ons a project sells."""
        shirt = Product(
            id=self.new_id(code),
            title="Finisher shirt",
            is_ticket_fee=False,
            type="merchandise",
            price=2000,
        )
        shirt.variants = [
            ProductVariant(id=self.new_id(code), title=size)
            for size in ("S", "M", "L", "XL")
        ]
        return [
            shirt,
            Product(
                id=self.new_id(code),
                title="Cancellation insurance",
                is_ticket_fee=False,
                type="insurance",
                price=450,
            ),
            Product(
                id=self.new_id(code),
                title="Medal engraving",
                is_ticket_fee=False,
                type="service",
                price=500,
            ),
            Product(
                id=self.new_id(code),
                title="Ticket fee",
                is_ticket_fee=True,
                type="fee",
                price=150,
            ),
        ]

    def event(self, code: str, index: int, expected: int) -> Event:
        """An event with tickets, categories and time slots."""
        rng = self.rng
        name = EVENT_NAMES[rng.randrange(len(EVENT_NAMES))]
        day = BASE_DATE + timedelta(days=60 + 45 * index + rng.randrange(30))
        kinds = rng.sample(TICKET_KINDS, k=2 + rng.randrange(3))
        per_ticket = max(1, expected // len(kinds))
        tickets = [self._ticket(code, kind, per_ticket) for kind in kinds]
        visible = [ticket for ticket in tickets if not ticket.business]
        hidden = [ticket for ticket in tickets if ticket.business]
        categories = [
            TicketCategory(id=self.new_id(code), title="Individual", tickets=visible)
        ]
        if hidden:
            categories.append(
                TicketCategory(
                    id=self.new_id(code),
                    title="Partners",
                    tickets=hidden,
                    invitation_code="PARTNER26",
                )
            )
        slots = [
            TimeSlot(
                id=self.new_id(code),
                start_date=day.strftime("%Y-%m-%d"),
                start_time=f"{9 + wave:02d}:{10 * wave:02d}:00" if wave < 2 else None,
                title=f"Wave {wave + 1}",
                multi_date=False,
            )
            for wave in range(1 + rng.randrange(3))
        ]
        waitlist = rng.random() < 0.5
        end = day + timedelta(days=rng.randrange(2))
        sport = SPORTS[EVENT_NAMES.index(name)]
        return Event(
            id=self.new_id(code),
            project=code,
            title=f"{name} {day.year}",
            start_date=day.strftime("%Y-%m-%d"),
            end_date=end.strftime("%Y-%m-%d"),
            enable_waitlist=waitlist,
            waitlist_size=rng.randrange(200) if waitlist else 0,
            tickets=tickets,
            categories=categories,
            time_slots=slots,
            sport_type=sport,
            country=rng.choice(COUNTRIES),
            distance=max(kind[3] for kind in kinds),
            popularity=rng.randrange(10_000),
        )

    def _ticket(
        self, code: str, kind: tuple[str, int, int, int], expected: int
    ) -> Ticket:
        title, units, price, distance = kind
        image_id = self.new_id(code)
        return Ticket(
            id=self.new_id(code),
            title=title,
            units=units,
            description=f"<p>{title}: {distance / 1000:g} km, chip timing, medal.</p>",
            business=units >= 4,
            image=Image(
                id=image_id, url=f"https://cdn.atleta.cc/{code}/{image_id}.jpg"
            ),
            capacity=max(50, 2 * expected),
            price=price,
            resellable=self.rng.random() < 0.8,
        )

    def registration(
        self,
        project: Project,
        event: Event,
        participant: Participant,
        number: int,
        created: str,
    ) -> Registration:
        """A registration with every personal field filled in."""
        bits = self.rng.getrandbits(64)
        ticket = event.tickets[bits % len(event.tickets)]
        bits //= 8
        first = FIRST_NAMES[bits % len(FIRST_NAMES)]
        bits //= 64
        last = LAST_NAMES[bits % len(LAST_NAMES)]
        bits //= 32
        slot = event.time_slots[bits % len(event.time_slots)]
        bits //= 4
        stamp = created
        registration = Registration(
            id=self.new_id(project.id),
            project=project.id,
            ticket=ticket,
            event=event,
            time_slot=slot,
            promotion=None,
            participant=participant,
            registration_number=number,
            first_name=first,
            last_name=last,
            email=f"{first}.{last.replace(' ', '')}.{number}@example.org".lower(),
            gender=GENDERS[bits % len(GENDERS)],
            date_of_birth=f"{1950 + bits % 55}-{1 + bits % 12:02d}-{1 + bits % 28:02d}",
            nationality=COUNTRIES[(bits >> 8) % len(COUNTRIES)],
            address=f"{1 + (bits >> 12) % 199} {STREETS[(bits >> 20) % len(STREETS)]}, "
            f"{CITIES[(bits >> 24) % len(CITIES)]}",
            phone=f"+32 4{(bits >> 4) % 100_000_000:08d}",
            emergency_phone=f"+32 4{(bits >> 16) % 100_000_000:08d}",
            ticket_number=str(1000 + number) if (bits >> 30) % 10 else None,
            created_at=stamp,
            updated_at=stamp,
            start_time=f"{9 + number % 3:02d}:{number * 7 % 60:02d}:00"
            if number % 4 == 0
            else None,
            corral_name=f"Corral {'ABC'[(bits >> 34) % 3]}"
            if (bits >> 36) % 2
            else None,
            required_attributes=[REQUIRED[(bits >> 40) % 6]]
            if (bits >> 43) % 8 == 0
            else [],
        )
        return registration

    def resale(self, registration: Registration, amount: int | None = None) -> Resale:
        """An open resale offer for ``registration``."""
        asking = registration.ticket.price if amount is None else amount
        fee = round(asking * RESALE_FEE_SHARE)
        token = self.token()
        return Resale(
            id=self.new_id(registration.project),
            available=True,
            resellable=registration.ticket.resellable,
            amount=asking,
            total_amount=asking + fee,
            fee=fee,
            public_url=f"https://atleta.cc/e/{registration.event.id}/resale/{token}",
            public_token=token,
            # Now and then a buyer holds the offer (ten-minute holds).
            time_left=ord(token[1]) * 5 % 600 if ord(token[0]) % 8 == 0 else None,
            total_time=600,
            upgrades=list(registration.upgrades),
            registration=registration,
        )


def build_project(
    builder: Builder, code: str, name: str, count: int, events: int
) -> Project:
    """A project with ``count`` registrations spread over its events."""
    rng = builder.rng
    project = Project(id=code, organisation_name=name)
    products = builder.products(code)
    promotions = [
        Promotion(id=builder.new_id(code), title=title)
        for title in ("EARLYBIRD", "CLUB10")
    ]
    project.event_list = [
        builder.event(code, index, count // max(1, events)) for index in range(events)
    ]
    span = timedelta(days=300).total_seconds() / max(1, count)
    made = 0
    while made < count:
        size = min(count - made, (1, 1, 1, 1, 2, 2, 3)[rng.randrange(7)])
        participant = builder.participant(code)
        event = project.event_list[rng.randrange(len(project.event_list))]
        created = BASE_DATE + timedelta(seconds=int(made * span) + rng.randrange(60))
        stamp = stamp_of(created)
        order = Order(
            id=builder.new_id(code),
            project=code,
            participant=participant,
            status="paid" if rng.random() < 0.95 else "pending",
            total_amount=0,
            created_at=stamp,
            updated_at=stamp,
        )
        for _ in range(size):
            made += 1
            registration = builder.registration(
                project, event, participant, 100 + made, stamp
            )
            registration.order = order
            if rng.random() < 0.1:
                registration.promotion = promotions[rng.randrange(2)]
            if rng.random() < 0.3:
                add_upgrade(builder, project, order, registration, products)
            order.registrations.append(registration)
            project.all_registrations.append(registration)
        order.total_amount = order_amount(order)
        project.order_list.append(order)
    return project


def add_upgrade(
    builder: Builder,
    project: Project,
    order: Order,
    registration: Registration,
    products: list[Product],
) -> None:
    """Attach one add-on to a registration, with its purchase line."""
    product = products[builder.rng.randrange(3)]
    variant = builder.rng.choice(product.variants) if product.variants else None
    registration.upgrades.append(
        Upgrade(id=builder.new_id(project.id), product=product, product_variant=variant)
    )
    purchase = Purchase(
        id=builder.new_id(project.id),
        order=order,
        registration=registration,
        product=product,
        product_variant=variant,
        created_at=registration.created_at,
    )
    order.purchases.append(purchase)
    project.purchase_list.append(purchase)


def order_amount(order: Order) -> int:
    """What an order costs in cents: its tickets plus its product lines."""
    tickets = sum(registration.ticket.price for registration in order.registrations)
    return tickets + sum(purchase.product.price for purchase in order.purchases)
