"""Messages: formats, size limits, escaping, money, links, digests, templates."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.errors import ConfigError, DeliveryError, PollError
from notifier.model import JSON, Channel, Event, FieldChange, Project
from notifier.render import (
    DEFAULT_LIMIT,
    LIMITS,
    Message,
    check_templates,
    fit,
    format_for,
    limit_for,
    money,
    render,
    render_digest,
    scheme_of,
    webhook_body,
)
from notifier.render.document import bar, size

PROJECT = Project(id="CRUN", name="City Runs")
NOW = datetime(2026, 12, 3, 16, 45, tzinfo=UTC)
SECRET_URL = "tgram://123456:SECRET-BOT-TOKEN@chat/"
TICKETS = ("10 km", "5 km", "Half marathon", "Kids 1 km", "Relay *duo*")


def channel(**overrides: Any) -> Channel:
    """A chat channel whose URL carries a credential that must never show."""
    values: dict[str, Any] = {"name": "ops", "kind": "apprise", "urls": (SECRET_URL,)}
    values.update(overrides)
    return Channel(**values)


def registration(
    first: str, last: str, ticket: str, race: str = "City Run 2027", **extra: JSON
) -> dict[str, JSON]:
    """A registration record as the registrations preset selects it."""
    return {
        "id": f"CRUNr{first}",
        "first_name": first,
        "last_name": last,
        "ticket": {"id": "CRUNt1", "title": ticket},
        "event": {"id": "CRUNe1", "title": race},
        **extra,
    }


def event(
    kind: str,
    record: JSON,
    previous: JSON = None,
    *changes: FieldChange,
    entity: str = "registration",
    key: str = "k",
) -> Event:
    """An event of the registrations watch of project CRUN."""
    return Event(
        id=f"{entity}-{kind}-{key}",
        type=f"{entity}.{kind}",
        occurred_at=NOW,
        project=PROJECT,
        watch="registrations" if entity != "event" else "event",
        key=key,
        record=record,
        previous=previous,
        changes=changes,
    )


def alert(kind: str, **record: JSON) -> Event:
    """One of the notifier's own alerts."""
    return Event(
        id=f"alert-{kind}",
        type=kind,
        occurred_at=NOW,
        project=PROJECT,
        watch="registrations",
        key=None,
        record=record,
        previous=None,
    )


def three_new() -> list[Event]:
    """The small batch of the README: three registrations, two tickets."""
    return [
        event("created", registration("Ann", "Smith", "10 km"), key="1"),
        event("created", registration("Bob", "Lee", "10 km"), key="2"),
        event("created", registration("Cara", "Diaz", "5 km"), key="3"),
    ]


def offer(url: str = "https://atleta.cc/e/CRUNe1/resale/tok1") -> dict[str, JSON]:
    """A registration on offer, as the resale preset selects it."""
    return {
        "id": "CRUNr9",
        "ticket": {"id": "CRUNt1", "title": "Half marathon"},
        "resale": {
            "available": True,
            "amount": 4200,
            "total_amount": 4410,
            "fee": 210,
            "public_url": url,
            "public_token": "tok1-secret-part",
        },
    }


def mixed() -> list[Event]:
    """New, offered, cancelled and updated registrations of one race."""
    moved = FieldChange(path="ticket.title", before="5 km", after="10 km")
    corral = FieldChange(path="corral_name", before="A", after="B")
    return [
        *three_new(),
        event("created", {**offer(), "event": {"title": "City Run 2027"}}, key="9"),
        event("deleted", None, registration("Eve", "Ng", "5 km"), key="5"),
        event(
            "updated",
            registration("Dan", "Ho", "10 km"),
            registration("Dan", "Ho", "5 km"),
            moved,
            corral,
            key="4",
        ),
    ]


def five_hundred() -> list[Event]:
    """A 500-event poll over two races with names full of markup characters."""
    found = []
    for i in range(500):
        record = registration(
            f"Runner{i}",
            f"O_Brien*<{i}>&",
            TICKETS[i % 5],
            race=("City Run 2027", "Trail <Night>")[i % 2],
            registration_number=100 + i,
        )
        if i % 10 < 6:
            found.append(event("created", record, key=str(i)))
        elif i % 10 < 8:
            change = FieldChange(path="corral_name", before="A", after="B")
            found.append(event("updated", record, record, change, key=str(i)))
        else:
            found.append(event("deleted", None, record, key=str(i)))
    return found


class _Balance(HTMLParser):
    """Collects text and checks that every opened element is closed in order."""

    VOID = frozenset({"br", "img", "hr", "meta"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(body: str) -> _Balance:
    """Parse an HTML body; the result's ``errors`` and ``stack`` must be empty."""
    parser = _Balance()
    parser.feed(body)
    parser.close()
    return parser


def fits(message: Message, scheme: str) -> bool:
    """True when a message is within the size limits of a service."""
    limit = limit_for(scheme)
    title_room = limit.title or limit.body
    shared = size(message.title) + 2 if limit.shared and message.title else 0
    return (
        size(message.title) <= title_room and size(message.body) + shared <= limit.body
    )


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("scheme", "override", "expected"),
    [
        pytest.param("slack", "auto", "markdown", id="slack"),
        pytest.param("mmost", "auto", "markdown", id="mattermost"),
        pytest.param("tgram", "auto", "markdown", id="telegram"),
        pytest.param("discord", "auto", "markdown", id="discord"),
        pytest.param("mailto", "auto", "html", id="email"),
        pytest.param("mailtos", None, "html", id="email-tls"),
        pytest.param("ntfy", "auto", "text", id="ntfy"),
        pytest.param("json", "auto", "text", id="apprise-json"),
        pytest.param("somethingnew", "auto", "text", id="unknown"),
        pytest.param("webhook", "auto", "json", id="webhook"),
        pytest.param("webhook", "html", "json", id="webhook-ignores-override"),
        pytest.param("slack", "text", "text", id="override-text"),
        pytest.param("ntfy", "markdown", "markdown", id="override-markdown"),
        pytest.param("MAILTO", "auto", "html", id="case-insensitive"),
    ],
)
def test_format_for(scheme: str, override: str | None, expected: str) -> None:
    """Chat gets Markdown, email HTML, webhooks JSON, the rest text; overrides win."""
    assert format_for(scheme, override) == expected


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        pytest.param("tgram://bot@chat", "tgram", id="telegram"),
        pytest.param("MailTos://u:p@host", "mailtos", id="mixed-case"),
        pytest.param("slack", "slack", id="bare"),
    ],
)
def test_scheme_of(url: str, scheme: str) -> None:
    """The scheme is read from an Apprise URL without keeping the rest."""
    assert scheme_of(url) == scheme


def test_unknown_service_gets_a_safe_default() -> None:
    """A service missing from the table gets small limits rather than none."""
    assert limit_for("somethingnew") == DEFAULT_LIMIT
    assert DEFAULT_LIMIT.body <= 2000


@pytest.mark.parametrize(
    ("scheme", "fmt"),
    [
        pytest.param("slack", "markdown", id="slack"),
        pytest.param("tgram", "markdown", id="telegram"),
        pytest.param("mailto", "html", id="email"),
        pytest.param("ntfy", "text", id="ntfy"),
    ],
)
def test_message_format_and_parts(scheme: str, fmt: str) -> None:
    """Each service gets its format; email also gets a plain-text part."""
    message = render(three_new(), channel(), url_scheme=scheme, now=NOW)

    assert message.format == fmt
    assert (message.text is not None) == (fmt == "html")
    assert "Ann Smith" in message.body


def test_service_without_titles_gets_the_title_as_first_line() -> None:
    """Telegram and Mattermost have no title: it leads the body, bold and escaped."""
    message = render(three_new(), channel(), url_scheme="tgram", now=NOW)

    assert message.title == ""
    assert message.body.startswith("**3 new registrations for City Run 2027**\n")


# ---------------------------------------------------------------- webhooks


def test_webhook_body_is_the_event_json() -> None:
    """The webhook body is the event JSON of the contract, UTF-8 bytes."""
    sent = event("created", registration("Zoë", "Ærø", "10 km"), key="1")

    body = webhook_body(sent)

    assert isinstance(body, bytes)
    assert json.loads(body) == sent.to_json()
    assert "Zoë".encode() in body


def test_webhook_body_stays_valid_json_with_non_finite_numbers() -> None:
    """A NaN from a lenient JSON parser becomes null instead of invalid JSON."""
    sent = event("created", {"id": "x", "score": float("nan"), "n": [float("inf")]})

    decoded = json.loads(webhook_body(sent), parse_constant=pytest.fail)

    assert decoded["record"] == {"id": "x", "score": None, "n": [None]}


# ---------------------------------------------------------------- reading well


def test_small_batch_reads_like_a_person_wrote_it() -> None:
    """Three new registrations: a sentence, a breakdown by ticket, one line each."""
    message = render(three_new(), channel(), url_scheme="ntfy", now=NOW)

    assert message.title == "3 new registrations for City Run 2027"
    assert message.body == (
        "By ticket: 10 km: 2, 5 km: 1\n"
        "• Ann Smith · 10 km\n"
        "• Bob Lee · 10 km\n"
        "• Cara Diaz · 5 km\n"
        "\n"
        "City Runs (CRUN) · registrations · 3 Dec 2026, 16:45 UTC"
    )


def test_mixed_batch_is_grouped_by_kind_of_change() -> None:
    """New, resale, cancelled and updated records each get a section, in order."""
    message = render(mixed(), channel(), url_scheme="slack", now=NOW)

    assert message.title == (
        "City Run 2027: 3 new registrations, 1 new resale offer, "
        "1 registration cancelled, 1 registration updated"
    )
    headings = re.findall(r"^\*\*(.+)\*\*$", message.body, flags=re.MULTILINE)
    assert headings == [
        "3 new registrations",
        "1 new resale offer",
        "1 registration cancelled",
        "1 registration updated",
    ]
    assert "- **Eve Ng** · 5 km" in message.body
    assert "    - ticket: 5 km → 10 km\n    - corral: A → B" in message.body


def test_single_event_update_names_the_race() -> None:
    """A change to an event object reads "City Run 2027 changed" with its fields."""
    before = {"id": "CRUNe1", "title": "City Run 2027", "waitlist_size": 10}
    after = {**before, "waitlist_size": 50}
    change = FieldChange(path="waitlist_size", before=10, after=50)

    message = render(
        [event("updated", after, before, change, entity="event")],
        channel(),
        url_scheme="ntfy",
        now=NOW,
    )

    assert message.title == "City Run 2027 changed"
    assert "waiting list: 10 → 50" in message.body


def test_labels_never_depend_on_unconfirmed_fields() -> None:
    """Records without names, tickets or races still get a label (their key)."""
    message = render(
        [event("created", {"id": "CRUNr1"}, key="CRUNr1")],
        channel(),
        url_scheme="ntfy",
        now=NOW,
    )

    assert message.title == "1 new registration"
    assert "• #CRUNr1" in message.body


def test_event_titles_fill_in_races_selected_by_id() -> None:
    """A record selecting ``event { id }`` gets its race from ``event_titles``."""
    record = {"id": "r1", "event": {"id": "CRUNe1"}, "ticket": {"title": "5 km"}}

    message = render(
        [event("created", record)],
        channel(),
        url_scheme="ntfy",
        event_titles={"CRUNe1": "City Run 2027"},
        now=NOW,
    )

    assert message.title == "1 new registration for City Run 2027"


def test_times_use_the_channel_time_zone() -> None:
    """The footer shows the time where the organiser is."""
    message = render(
        three_new(), channel(timezone="Europe/Amsterdam"), url_scheme="ntfy", now=NOW
    )

    assert message.body.endswith("3 Dec 2026, 17:45 CET")


def test_a_project_without_a_name_is_named_once() -> None:
    """A project whose name defaults to its id reads "CRUN", not "CRUN (CRUN)"."""
    bare = Project(id="CRUN", name="CRUN")
    events = [replace(e, project=bare) for e in three_new()]

    message = render(events, channel(), url_scheme="ntfy", now=NOW)
    digest = render_digest(
        events, channel(), since=NOW - timedelta(hours=1), until=NOW, url_scheme="ntfy"
    )

    assert "CRUN (CRUN)" not in message.body + digest.body
    assert "CRUN · registrations" in message.body
    assert "CRUN · registrations" in digest.body


# ---------------------------------------------------------------- money and links


@pytest.mark.parametrize(
    ("cents", "shown"),
    [
        pytest.param(4200, "EUR 42.00", id="whole"),
        pytest.param(5, "EUR 0.05", id="cents"),
        pytest.param(-150, "-EUR 1.50", id="refund"),
        pytest.param(123456789, "EUR 1,234,567.89", id="thousands"),
        pytest.param(None, "", id="missing"),
        pytest.param("12.50", "12.50", id="not-cents"),
    ],
)
def test_money(cents: object, shown: str) -> None:
    """Integer cents show as currency; anything else is shown as it is."""
    assert money(cents) == shown


def test_money_fields_in_records_show_as_currency() -> None:
    """``total_amount``, ``amount``, ``fee`` and ``price`` fields are cents."""
    order = {"id": "o1", "total_amount": 123400, "status": "paid", "tip_amount": 250}

    message = render(
        [event("created", order, entity="order")], channel(), url_scheme="ntfy"
    )

    assert "total: EUR 1,234.00" in message.body
    assert "tip amount: EUR 2.50" in message.body
    assert "123400" not in message.body


@pytest.mark.parametrize(
    ("scheme", "link"),
    [
        pytest.param(
            "tgram", "[open the offer](https://atleta.cc/e/CRUNe1/resale/tok1)", id="md"
        ),
        pytest.param(
            "mailto", 'href="https://atleta.cc/e/CRUNe1/resale/tok1"', id="html"
        ),
        pytest.param(
            "ntfy", "open the offer: https://atleta.cc/e/CRUNe1/resale/tok1", id="text"
        ),
    ],
)
def test_resale_alert_carries_the_offer_link(scheme: str, link: str) -> None:
    """A resale offer links to its public page, with price and what the buyer pays."""
    message = render([event("created", offer())], channel(), url_scheme=scheme, now=NOW)

    assert "1 new resale offer" in (message.title or message.body)
    assert link in message.body
    assert "price: EUR 42.00" in message.body
    assert "buyer pays: EUR 44.10" in message.body
    assert "tok1-secret-part" not in message.body


def test_resale_offers_on_an_event_link_only_the_new_ones() -> None:
    """An event watch whose offers grew links the new offers, not the old ones."""
    old = {"resale": {"public_url": "https://atleta.cc/r/old"}}
    new = {"resale": {"public_url": "https://atleta.cc/r/new"}}
    before = {"title": "City Run 2027", "registrations_for_sale": [old]}
    after = {"title": "City Run 2027", "registrations_for_sale": [old, new]}
    change = FieldChange(path="registrations_for_sale", before=[old], after=[old, new])

    message = render(
        [event("updated", after, before, change, entity="event")],
        channel(),
        url_scheme="slack",
    )

    assert message.title == "New resale offers for City Run 2027"
    assert "(https://atleta.cc/r/new)" in message.body
    assert "https://atleta.cc/r/old" not in message.body


def test_only_web_links_are_clickable() -> None:
    """A ``javascript:`` value in ``public_url`` is never turned into a link."""
    record = offer(url="javascript:alert(1)")

    message = render([event("created", record)], channel(), url_scheme="mailto")

    assert "javascript:" not in message.body


def test_link_addresses_cannot_break_markdown() -> None:
    """Parentheses and spaces in an offer URL are percent-encoded in the link."""
    record = offer(url="https://atleta.cc/r/a (b)")

    message = render([event("created", record)], channel(), url_scheme="mmost")

    assert "(https://atleta.cc/r/a%20%28b%29)" in message.body


# ---------------------------------------------------------------- escaping


NASTY = registration("Ann *bold*", "O_Brien <b>&amp; [x](y) @everyone", "10 km")


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        pytest.param(
            "mmost",
            r"**Ann \*bold\* O\_Brien \<b\>\&amp; \[x\](y) @" + "\u200beveryone**",
            id="commonmark",
        ),
        pytest.param(
            "tgram",
            r"- Ann \*bold\* O\_Brien \<b\>\&amp; \[x\](y) @" + "\u200beveryone ·",
            id="telegram-no-bold-around-escapes",
        ),
        pytest.param(
            "slack",
            "**Ann \u2217bold\u2217 O\u02cdBrien \\<b\\>&amp; \\[x\\](y) "
            "@\u200beveryone**",
            id="slack",
        ),
        pytest.param("ntfy", "Ann *bold* O_Brien <b>&amp; [x](y) @everyone", id="text"),
    ],
)
def test_user_data_is_escaped_for_each_dialect(scheme: str, expected: str) -> None:
    """Names with Markdown or HTML characters show as written and ping no one."""
    message = render([event("created", NASTY)], channel(), url_scheme=scheme, now=NOW)

    assert expected in message.body


def test_user_data_is_escaped_in_html() -> None:
    """In email, names are text: no element comes from a record."""
    message = render([event("created", NASTY)], channel(), url_scheme="mailto")

    parsed = parse_html(message.body)
    assert "b" not in parsed.tags
    assert "Ann *bold* O_Brien <b>&amp; [x](y) @everyone" in "".join(parsed.text)
    assert not parsed.errors
    assert not parsed.stack


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=8))
def test_any_names_keep_html_and_markdown_well_formed(names: list[str]) -> None:
    """Whatever the names, HTML stays balanced and bold markers stay paired."""
    events = [
        event("created", registration(name, "", "10 km"), key=str(i))
        for i, name in enumerate(names)
    ]

    email = render(events, channel(), url_scheme="mailto")
    chat = render(events, channel(), url_scheme="mmost")

    parsed = parse_html(email.body)
    assert not parsed.errors
    assert not parsed.stack
    for line in chat.body.splitlines():
        unescaped = re.sub(r"\\.", "", line)
        assert unescaped.count("**") % 2 == 0
        assert not set("*_`<[") & set(unescaped.replace("**", ""))


# ---------------------------------------------------------------- size limits


ALL_SCHEMES = [*sorted(LIMITS), "somethingnew"]


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_500_events_make_one_readable_message_within_the_limit(scheme: str) -> None:
    """A 500-event poll fits every service and summarises the rest."""
    events = five_hundred()

    message = render(events, channel(), url_scheme=scheme, now=NOW)

    assert fits(message, scheme)
    assert re.search(r"…and \d+ more registrations", message.body)
    assert "300 new registrations" in (message.title or message.body)
    if message.format == "html":
        parsed = parse_html(message.body)
        assert not parsed.errors
        assert not parsed.stack
        assert message.text is not None
        assert size(message.text) <= limit_for(scheme).body


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_500_event_digest_fits(scheme: str) -> None:
    """A digest of 500 events fits every service too."""
    message = render_digest(
        five_hundred(),
        channel(),
        since=NOW - timedelta(hours=1),
        until=NOW,
        url_scheme=scheme,
    )

    assert fits(message, scheme)
    assert "300" in message.body


@pytest.mark.parametrize("scheme", ["mmost", "discord", "mailto", "ntfy"])
def test_summaries_never_cut_a_line(scheme: str) -> None:
    """A fitted body is made of whole lines of the full rendering."""
    events = five_hundred()[:60]
    full = render(events, channel(), url_scheme="json", now=NOW)
    small = render(events, channel(), url_scheme=scheme, now=NOW)

    if small.format == "html":
        assert small.text is not None
        small_lines, full_lines = small.text.splitlines(), set(full.body.splitlines())
    else:
        full_md = render(
            events, channel(format=small.format), url_scheme="json", now=NOW
        )
        small_lines, full_lines = (
            small.body.splitlines(),
            set(full_md.body.splitlines()),
        )
    for line in small_lines:
        if line and not line.startswith(("…and", "**City")):
            assert line in full_lines


def test_long_titles_are_cut_at_a_word() -> None:
    """A title longer than the service allows ends in "…" at a word boundary."""
    race = "The Very Long Annual International City Marathon " * 8
    events = [event("created", registration("Ann", "Smith", "10 km", race=race))]

    message = render(events, channel(), url_scheme="ntfy")

    assert size(message.title) <= LIMITS["ntfy"].title
    assert message.title.endswith("…")
    assert " Marath…" not in message.title


def test_an_oversized_alert_is_trimmed_by_whole_lines() -> None:
    """Even a message with no detail lines to drop is cut between lines."""
    alerts = [
        alert("watch.failing", error_kind="server", message="x" * 250, failures=3)
        for _ in range(12)
    ]
    alerts = [
        Event(**{**a.__dict__, "id": f"a{i}", "watch": f"w{i}"})
        for i, a in enumerate(alerts)
    ]

    message = render(alerts, channel(), url_scheme="rocket")

    assert fits(message, "rocket")
    assert message.body.endswith("…")


def test_own_start_and_slot_start_read_differently() -> None:
    """A registration's individual start and its time slot's start are told
    apart, not both shown as "start time"."""
    record = registration(
        "Ann",
        "Smith",
        "10 km",
        start_time="10:40:00",
        time_slot={"id": "s1", "title": "Wave 1", "start_time": "10:10:00"},
    )

    body = render([event("created", record)], channel(), url_scheme="ntfy").body

    assert "individual start: 10:40:00" in body
    assert "start time: 10:10:00" in body
    assert body.count("start time") == 1


# ---------------------------------------------------------------- alerts


@pytest.mark.parametrize(
    "error",
    [PollError, *PollError.__subclasses__()],
    ids=lambda error: error.kind,
)
def test_every_failing_alert_says_what_to_do(error: type[PollError]) -> None:
    """The "What to do" line of a failing watch names an action, not only the
    problem again."""
    failing = alert("watch.failing", error_kind=error.kind, hint=error.hint)

    body = render([failing], channel(), url_scheme="ntfy").body
    (advice,) = [line for line in body.splitlines() if line.startswith("What to do")]

    problem, _, action = advice.removeprefix("What to do: ").partition(": ")
    assert problem
    assert len(action.split()) >= 3, advice


@pytest.mark.parametrize(
    ("alert_event", "title", "sentences"),
    [
        pytest.param(
            alert(
                "watch.failing",
                error_kind="auth",
                message="HTTP 401 (Authorization: Bearer sk_live_123)",
                hint="the token was refused: reconnect the app or set a new token",
                failures=3,
            ),
            "Watch CRUN/registrations is failing",
            [
                "The last 3 polls of registrations (City Runs) failed: "
                "the Atleta API refused the token.",
                "What to do: the token was refused: "
                "reconnect the app or set a new token.",
                "Last error: HTTP 401 (Authorization: Bearer [hidden])",
            ],
            id="watch-failing",
        ),
        pytest.param(
            alert("watch.recovered", failures=5),
            "Watch CRUN/registrations works again",
            ["Polls of registrations (City Runs) work again after 5 failed polls."],
            id="watch-recovered",
        ),
        pytest.param(
            alert(
                "channel.failing",
                channel="team-email",
                error_kind="timeout",
                message="smtp://user:hunter2@mail.example timed out",
                failures=4,
            ),
            "Channel team-email is failing",
            [
                "Messages to channel team-email could not be delivered after 4 "
                "attempts: the service did not answer in time.",
                "Last error: smtp://[hidden]@mail.example timed out",
            ],
            id="channel-failing",
        ),
    ],
)
def test_failure_alerts_are_plain_sentences(
    alert_event: Event, title: str, sentences: list[str]
) -> None:
    """Alerts name the error kind in plain words, say what to do, hide secrets."""
    message = render([alert_event], channel(), url_scheme="ntfy", now=NOW)

    assert message.title == title
    for sentence in sentences:
        assert sentence in message.body.splitlines()
    assert "sk_live_123" not in message.body
    assert "hunter2" not in message.body


def test_alert_with_missing_fields_still_reads() -> None:
    """An alert record without details still makes a sentence."""
    message = render([alert("watch.failing")], channel(), url_scheme="ntfy")

    assert (
        "Polls of registrations (City Runs) failed: an unknown error." in message.body
    )


# ---------------------------------------------------------------- secrets


def test_no_secrets_in_messages() -> None:
    """Channel URLs and token-like record fields never reach a message."""
    record = {**registration("Ann", "Smith", "10 km"), "api_token": "tkn-123"}
    events = [event("created", record), event("created", offer(), key="2")]

    for scheme in ("slack", "mailto", "ntfy", "tgram"):
        message = render(events, channel(), url_scheme=scheme)
        everything = message.title + message.body + (message.text or "")
        assert "SECRET-BOT-TOKEN" not in everything
        assert "tkn-123" not in everything
        assert "tok1-secret-part" not in everything


def test_only_selected_fields_are_shown() -> None:
    """A message shows what the record holds and invents no personal data."""
    record = {"id": "r1", "ticket": {"title": "5 km"}, "registration_number": 101}

    message = render([event("created", record)], channel(), url_scheme="ntfy")

    assert "• no. 101 · 5 km\n" in message.body
    assert "email" not in message.body


# ---------------------------------------------------------------- digests


@pytest.mark.parametrize(
    ("count", "top", "drawn"),
    [
        pytest.param(12, 12, "█" * 16, id="full"),
        pytest.param(6, 12, "█" * 8 + "░" * 8, id="half"),
        pytest.param(1, 1000, "█" + "░" * 15, id="tiny-still-shows"),
        pytest.param(0, 12, "░" * 16, id="empty"),
    ],
)
def test_bar(count: int, top: int, drawn: str) -> None:
    """Bars scale to the largest count and never hide a non-zero count."""
    assert bar(count, top) == drawn


def digest_events() -> list[Event]:
    """New registrations in two races, one cancellation and one resale offer."""
    found = []
    for i, (race, ticket) in enumerate(
        [("City Run 2027", "10 km")] * 12
        + [("City Run 2027", "5 km")] * 4
        + [("Trail Night", "21 km")] * 6
    ):
        found.append(
            event("created", registration(f"R{i}", "X", ticket, race), key=str(i))
        )
    found.append(
        event("deleted", None, registration("Eve", "Ng", "5 km"), key="c1"),
    )
    found.append(event("created", offer(), key="o1"))
    return found


def test_digest_shows_totals_as_text_bars_in_chat() -> None:
    """Chat digests draw totals per race and ticket as text bars in a code block."""
    message = render_digest(
        digest_events(),
        channel(),
        since=NOW - timedelta(days=1),
        until=NOW,
        url_scheme="mmost",
    )

    body = message.body
    assert body.startswith(
        "**City Runs digest: 22 new registrations, 1 new resale offer"
    )
    assert "From 2 Dec 2026, 16:45 UTC to 3 Dec 2026, 16:45 UTC" in body
    assert "**New registrations by race and ticket: 22**" in body
    bars = body.split("```")[1].splitlines()
    assert bars[1] == "City Run 2027 ████████████████ 16  1 cancelled"
    assert bars[2] == "  10 km       ████████████░░░░ 12"
    assert "**1 registration cancelled for City Run 2027**" in body
    assert "[open the offer](https://atleta.cc/e/CRUNe1/resale/tok1)" in body
    assert "R3 X" not in body


def test_digest_shows_html_bars_in_email() -> None:
    """Email digests draw bars as table cells with widths, which mail clients keep."""
    message = render_digest(
        digest_events(),
        channel(),
        since=NOW - timedelta(days=1),
        until=NOW,
        url_scheme="mailto",
    )

    parsed = parse_html(message.body)
    assert not parsed.errors
    assert not parsed.stack
    assert 'width="200" height="12" bgcolor="#2f6fd6"' in message.body
    assert message.text is not None
    assert "████████████████ 16" in message.text


def test_digest_keeps_its_bars_before_its_details() -> None:
    """When a digest must shrink, detail lines give way before bar rows."""
    message = render_digest(
        five_hundred(),
        channel(),
        since=NOW - timedelta(hours=1),
        until=NOW,
        url_scheme="discord",
    )

    bars = message.body.split("```")[1].splitlines()
    assert len([row for row in bars if "█" in row or "░" in row]) == 10
    assert re.search(r"…and \d+ more registrations", message.body)


def test_empty_digest_says_so() -> None:
    """A window without events still reads as a report."""
    message = render_digest(
        [], channel(), since=NOW - timedelta(hours=1), until=NOW, url_scheme="ntfy"
    )

    assert message.title == "Atleta digest: no changes"
    assert "Nothing changed in this period." in message.body


def test_digest_sums_order_totals() -> None:
    """New orders are counted and their amounts summed in the bars."""
    orders = [
        event(
            "created", {"id": f"o{i}", "total_amount": 2500}, entity="order", key=str(i)
        )
        for i in range(3)
    ]

    message = render_digest(
        orders, channel(), since=NOW - timedelta(hours=1), until=NOW, url_scheme="ntfy"
    )

    assert "all orders ████████████████ 3  EUR 75.00" in message.body


# ---------------------------------------------------------------- templates


def test_templates_replace_the_built_in_title_and_body() -> None:
    """A channel's templates get events, counts, project and helpers."""
    templated = channel(
        title_template="{{ counts.created }} sign-ups for {{ project.name }}",
        body_template=(
            "{% for e in events %}{{ e.label }} ({{ e.ticket }}) "
            "{{ money(e.record.resale.amount) }}\n{% endfor %}"
            "{{ e.nothing.here }}at {{ now.strftime('%H:%M') }}"
        ),
    )

    message = render(three_new(), templated, url_scheme="ntfy", now=NOW)

    assert message.title == "3 sign-ups for City Runs"
    assert (
        message.body
        == "Ann Smith (10 km) \nBob Lee (10 km) \nCara Diaz (5 km) \nat 16:45"
    )


def test_templates_can_wrap_the_built_in_body() -> None:
    """``body`` holds the built-in body, so a template can add a line to it."""
    templated = channel(body_template="Heads up!\n{{ body }}")

    message = render(three_new(), templated, url_scheme="ntfy", now=NOW)

    assert message.body.startswith("Heads up!\nBy ticket: 10 km: 2, 5 km: 1\n")


def test_html_templates_escape_user_data() -> None:
    """In an email template, record values are escaped automatically."""
    templated = channel(body_template="<p>{{ events[0].label }}</p>")

    message = render([event("created", NASTY)], templated, url_scheme="mailto")

    assert "<b>" not in message.body
    assert "&lt;b&gt;" in message.body


def test_markdown_templates_have_an_escape_helper() -> None:
    """``esc()`` escapes a value for the message format."""
    templated = channel(body_template="**{{ esc(events[0].label) }}**")

    message = render([event("created", NASTY)], templated, url_scheme="mmost")

    assert message.body.startswith(r"**Ann \*bold\* O\_Brien")


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{{ ''.__class__.__mro__[1].__subclasses__() }}", id="mro"),
        pytest.param("{{ ''.__class__ }}", id="class"),
        pytest.param("{{ money.__globals__ }}", id="globals"),
        pytest.param("{{ 'x' * 1000000000 }}", id="huge-string"),
        pytest.param("{{ 9 ** 99999999 }}", id="huge-power"),
    ],
)
def test_sandbox_escape_attempts_are_refused(source: str) -> None:
    """A template cannot reach Python internals or exhaust memory."""
    templated = channel(name="hacked", body_template=source)

    with pytest.raises(
        DeliveryError, match="channel 'hacked': its body_template failed"
    ) as caught:
        render(three_new(), templated, url_scheme="ntfy")

    assert caught.value.permanent
    assert "SecurityError" in str(caught.value)


def test_template_errors_name_the_channel() -> None:
    """A failing template is a permanent delivery error naming the channel."""
    templated = channel(name="team", title_template="{{ 1 / 0 }}")

    with pytest.raises(
        DeliveryError, match="channel 'team': its title_template failed"
    ):
        render(three_new(), templated, url_scheme="ntfy")


def test_template_syntax_errors_are_config_errors() -> None:
    """``check_templates`` reports a broken template at start-up, with its line."""
    templated = channel(name="team", body_template="ok\n{% for e in events %}")

    with pytest.raises(ConfigError, match=r"channels\.team\.body_template: line 2"):
        check_templates(templated)
    check_templates(channel(body_template="{{ events | length }}"))


def test_template_output_is_kept_within_the_limit() -> None:
    """A template that writes too much is cut between lines, with "…"."""
    templated = channel(
        body_template="{% for i in range(5000) %}line {{ i }}\n{% endfor %}"
    )

    message = render(three_new(), templated, url_scheme="discord")

    assert fits(message, "discord")
    assert message.body.endswith("\n…")
    assert all(re.fullmatch(r"line \d+|…", line) for line in message.body.splitlines())


def test_digest_templates_get_the_window() -> None:
    """Digest templates see ``digest.since`` and ``digest.until``."""
    templated = channel(title_template="Since {{ digest.since.strftime('%d %b') }}")

    message = render_digest(
        three_new(),
        templated,
        since=NOW - timedelta(days=1),
        until=NOW,
        url_scheme="ntfy",
    )

    assert message.title == "Since 02 Dec"


def test_templates_see_races_from_event_titles() -> None:
    """The ``race`` of an event view uses ``event_titles`` for id-only events."""
    record = {"id": "r1", "event": {"id": "CRUNe1"}}
    templated = channel(body_template="{{ events[0].race }}")

    message = render(
        [event("created", record)],
        templated,
        url_scheme="ntfy",
        event_titles={"CRUNe1": "City Run 2027"},
    )

    assert message.body == "City Run 2027"


def test_fit_cuts_other_messages_between_lines() -> None:
    """``fit`` keeps a hand-made message within a service's limits, line by line."""
    long = Message(
        title="T" * 300,
        body="\n".join(f"line {i}" for i in range(1000)),
        format="text",
    )

    fitted = fit(long, "discord")

    assert fits(fitted, "discord")
    assert fitted.title.endswith("…")
    assert fitted.body.endswith("\n…")
    assert all(re.fullmatch(r"line \d+|…", line) for line in fitted.body.splitlines())


@settings(max_examples=40, deadline=None)
@given(names=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5))
def test_telegram_bold_never_holds_escapes(names: list[str]) -> None:
    """Telegram's Markdown allows no escapes inside bold: such names go plain."""
    events = [
        event("created", registration(name, "X", "10 km"), key=str(i))
        for i, name in enumerate(names)
    ]

    body = render(events, channel(), url_scheme="tgram").body

    for bold in re.findall(r"(?<!\\)\*\*(.+?)(?<!\\)\*\*", body):
        assert "\\" not in bold


def resale_offer_event(kind: str, key: str = "o1") -> Event:
    """An event of the resale preset (entity ``resale``, public records)."""
    base = offer()
    record = {
        "id": key,
        "ticket": base["ticket"],
        "time_slot": {"id": "CRUNs1", "title": "Wave B", "start_date": "2027-04-11"},
        "resale": base["resale"],
    }
    if kind == "deleted":
        return event("deleted", None, record, entity="resale", key=key)
    return event("created", record, entity="resale", key=key)


def test_resale_preset_reads_as_offers() -> None:
    """The resale preset's new and gone offers read as offers, with links."""
    events = [resale_offer_event("created", "o1"), resale_offer_event("deleted", "o2")]

    message = render(events, channel(), url_scheme="ntfy", now=NOW)

    assert message.title == (
        "City Runs: 1 new resale offer, 1 resale offer gone (sold or withdrawn)"
    )
    assert (
        "• Half marathon · time slot: Wave B · start date: 2027-04-11 · "
        "price: EUR 42.00 · buyer pays: EUR 44.10 · fee: EUR 2.10 · "
        "open the offer: https://atleta.cc/e/CRUNe1/resale/tok1"
    ) in message.body.splitlines()
