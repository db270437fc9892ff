"""The fake Atleta API: pagination, auth, dataset, control surface, faults, CLI."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from notifier.cli import main_group
from notifier.fake_atleta import FakeAtleta, parse_fault, parse_rate
from notifier.fake_atleta.dataset import Dataset
from notifier.fake_atleta.faults import KINDS
from notifier.fake_atleta.graphql_app import Executor, analyse, bundled_schema

FAKE_TOKEN = "test-token"  # the token of the ``fake_api`` fixture
PRESET_DIR = Path(__file__).parent.parent / "notifier" / "presets"

REGISTRATIONS = """
query Registrations($project: ID!, $page: Int, $per_page: Int, $active: Boolean) {
  project(id: $project) {
    registrations(page: $page, per_page: $per_page, active: $active) {
      total per_page current_page from to last_page has_more_pages
      data { id registration_number first_name cancelled_at ticket { id price } }
    }
  }
}
"""
EVENT = """
query Event($event: ID!) {
  event(id: $event) {
    id title enable_waitlist waitlist_size sold_registrations_count
    registrations_for_sale_count
    registrations_for_sale(limit: -1) {
      id resale { id amount fee total_amount public_url }
    }
    ticket_categories { id title resellable_tickets { id } }
    tickets_for_resale { id cached_registrations_for_sale_count }
  }
}
"""
ORDERS = """
query Orders($project: ID!, $page: Int, $per_page: Int) {
  project(id: $project) {
    orders(page: $page, per_page: $per_page) {
      total last_page data { id status total_amount registrations { id } }
    }
  }
}
"""


CLIENT: list[httpx.Client] = []


@pytest.fixture(autouse=True, scope="module")
def http_client() -> Iterator[None]:
    """One HTTP client for the module (building one per request is slow)."""
    with httpx.Client(timeout=10) as client:
        CLIENT.append(client)
        yield
        CLIENT.clear()


def post(
    api: FakeAtleta,
    query: str,
    variables: dict[str, Any] | None = None,
    token: str | None = FAKE_TOKEN,
) -> httpx.Response:
    """Send one GraphQL request to the fake API."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"query": query, "variables": variables or {}}
    return CLIENT[0].post(api.url, json=body, headers=headers)


def page_of(
    api: FakeAtleta, page: int, per_page: int = 25, **extra: Any
) -> dict[str, Any]:
    """One page of TEST registrations as a dict."""
    variables = {"project": "TEST", "page": page, "per_page": per_page, **extra}
    answer = post(api, REGISTRATIONS, variables)
    assert answer.status_code == 200, answer.text
    registrations: dict[str, Any] = answer.json()["data"]["project"]["registrations"]
    return registrations


def walk(api: FakeAtleta, per_page: int, **extra: Any) -> list[dict[str, Any]]:
    """Every page of TEST registrations, in order."""
    pages = [page_of(api, 1, per_page, **extra)]
    while pages[-1]["has_more_pages"]:
        pages.append(page_of(api, len(pages) + 1, per_page, **extra))
    return pages


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def control(
    api: FakeAtleta, action: str, auth: str = FAKE_TOKEN, **body: Any
) -> httpx.Response:
    """Call one HTTP control action."""
    return CLIENT[0].post(
        f"{api.control_url}/{action}",
        json=body,
        headers={"Authorization": f"Bearer {auth}"},
    )


# -- pagination ------------------------------------------------------------


@pytest.mark.parametrize("per_page", [1, 7, 25, 40, 250])
def test_pages_cover_the_list_once_with_consistent_counters(
    fake_api: FakeAtleta, per_page: int
) -> None:
    """Walking every page yields each record once and the counters agree."""
    pages = walk(fake_api, per_page)

    ids = [record["id"] for page in pages for record in page["data"]]
    total = pages[0]["total"]
    assert total == 40
    assert len(ids) == len(set(ids)) == total
    assert len(pages) == pages[0]["last_page"] == math.ceil(total / per_page)
    for number, page in enumerate(pages, start=1):
        assert page["current_page"] == number
        assert page["per_page"] == per_page
        assert page["from"] == (number - 1) * per_page + 1
        assert page["to"] == page["from"] + len(page["data"]) - 1
        assert page["has_more_pages"] == (number < len(pages))


def test_empty_list_and_page_past_the_end() -> None:
    """An empty list still has last_page 1; a page past the end is empty."""
    with FakeAtleta(
        projects=2, registrations={"TEST": 0, 1: 3}, token=FAKE_TOKEN
    ) as api:
        empty = page_of(api, 1)
        beyond = page_of(api, 5)

    assert empty["total"] == 0
    assert empty["last_page"] == 1
    assert empty["from"] is None
    assert empty["to"] is None
    assert empty["has_more_pages"] is False
    assert beyond["data"] == []
    assert beyond["current_page"] == 5


@pytest.mark.parametrize(("page", "per_page"), [(1, 251), (1, 0), (0, 25)])
def test_out_of_range_paging_is_a_validation_error(
    fake_api: FakeAtleta, page: int, per_page: int
) -> None:
    """per_page above 250 or below 1, or page below 1, is refused in extensions."""
    answer = post(
        fake_api, REGISTRATIONS, {"project": "TEST", "page": page, "per_page": per_page}
    )

    body = answer.json()
    assert answer.status_code == 200
    assert body["data"]["project"]["registrations"] is None
    assert body["errors"][0]["extensions"]["category"] == "validation"
    assert body["errors"][0]["path"] == ["project", "registrations"]


def test_default_page_size_is_25(fake_api: FakeAtleta) -> None:
    """Without page arguments the first 25 records come back."""
    answer = post(
        fake_api, '{ project(id: "TEST") { registrations { per_page data { id } } } }'
    )

    registrations = answer.json()["data"]["project"]["registrations"]
    assert registrations["per_page"] == 25
    assert len(registrations["data"]) == 25


# -- auth ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "revoke", "status"),
    [(None, False, 401), ("wrong", False, 401), (FAKE_TOKEN, True, 403)],
    ids=["missing", "wrong", "revoked"],
)
def test_refused_tokens_get_a_json_error(
    fake_api: FakeAtleta, token: str | None, revoke: bool, status: int
) -> None:
    """A missing or unknown token is a 401, a revoked one a 403, both JSON."""
    if revoke:
        fake_api.revoke_token(FAKE_TOKEN)

    answer = post(fake_api, REGISTRATIONS, {"project": "TEST"}, token=token)

    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["errors"][0]["message"]
    assert fake_api.requests["auth_failed"] == 1


def test_public_queries_need_no_token(fake_api: FakeAtleta) -> None:
    """``event(id)`` and ``publicEvents`` answer without a token."""
    event_id = fake_api.data.projects["TEST"].event_list[0].id

    event = post(fake_api, EVENT, {"event": event_id}, token=None)
    calendar = post(
        fake_api,
        "{ publicEvents(per_page: 250) { total data { id title } } }",
        token=None,
    )

    assert event.json()["data"]["event"]["id"] == event_id
    listed = calendar.json()["data"]["publicEvents"]
    assert listed["total"] == len(fake_api.data.public_events()) == 6
    assert fake_api.requests["event"] == 1
    assert fake_api.requests["publicEvents"] == 1


def test_scoped_token_sees_only_its_projects(fake_api: FakeAtleta) -> None:
    """A token connected to one project gets an authorization error on another."""
    other = fake_api.project_ids[1]
    fake_api.add_token("scoped", projects=["TEST"])

    mine = post(fake_api, REGISTRATIONS, {"project": "TEST"}, token="scoped")
    theirs = post(fake_api, REGISTRATIONS, {"project": other}, token="scoped")

    assert mine.json()["data"]["project"]["registrations"]["total"] == 40
    assert theirs.json()["data"] is None
    assert theirs.json()["errors"][0]["extensions"]["category"] == "authorization"


def test_token_never_reaches_the_logs(
    fake_api: FakeAtleta, caplog: pytest.LogCaptureFixture
) -> None:
    """Requests, refusals and faults log nothing that carries the token."""
    caplog.set_level(logging.DEBUG)
    fake_api.faults.inject("http_500")

    post(fake_api, REGISTRATIONS, {"project": "TEST"})
    post(fake_api, REGISTRATIONS, {"project": "TEST"}, token="wrong")

    assert FAKE_TOKEN not in caplog.text


# -- dataset ---------------------------------------------------------------


def test_dataset_shapes_follow_the_api_notes(fake_api: FakeAtleta) -> None:
    """Ids are 12 characters with the project code, money cents, dates strings."""
    project = fake_api.data.projects["TEST"]
    registration = project.active_registrations[0]
    event = project.event_list[0]

    assert fake_api.project_ids[0] == "TEST"
    assert all(len(code) == 4 for code in fake_api.project_ids)
    for record_id in (
        registration.id,
        event.id,
        registration.ticket.id,
        registration.participant.id,
        project.order_list[0].id,
    ):
        assert len(record_id) == 12
        assert record_id.startswith("TEST")
    assert isinstance(registration.ticket.price, int)
    assert time.strptime(registration.created_at, "%Y-%m-%d %H:%M:%S")
    assert time.strptime(event.start_date, "%Y-%m-%d")


def test_same_seed_same_data_other_seed_other_data() -> None:
    """The dataset is a pure function of its seed and sizes."""
    first = Dataset(seed=7, projects=3, registrations=30)
    again = Dataset(seed=7, projects=3, registrations=30)
    other = Dataset(seed=8, projects=3, registrations=30)

    def fingerprint(data: Dataset) -> list[tuple[str, ...]]:
        return [
            (r.id, r.first_name, r.email, r.ticket.id, r.created_at)
            for p in data.projects.values()
            for r in p.all_registrations
        ]

    assert first.project_ids == again.project_ids
    assert fingerprint(first) == fingerprint(again)
    assert fingerprint(first) != fingerprint(other)


def test_registrations_per_project_mapping() -> None:
    """A mapping by code or index sizes each project; unknown codes are refused."""
    data = Dataset(projects=3, registrations={"TEST": 5, 2: 12})

    sizes = [len(p.active_registrations) for p in data.projects.values()]
    assert sizes == [5, 0, 12]
    with pytest.raises(ValueError, match="unknown project"):
        Dataset(projects=1, registrations={"NOPE": 1})


def all_fields_query(type_name: str, depth: int) -> str:
    """A selection of every field of a type down to ``depth`` object levels."""
    schema = bundled_schema()
    fields = []
    for name, field in schema.get_type(type_name).fields.items():  # type: ignore[union-attr]
        inner = field.type
        while hasattr(inner, "of_type"):
            inner = inner.of_type
        if hasattr(inner, "fields"):
            if depth > 0:
                fields.append(f"{name} {{ {all_fields_query(inner.name, depth - 1)} }}")
        else:
            fields.append(name)
    return " ".join(fields)


QUERIES = [
    pytest.param(
        f'{{ project(id: "TEST") {{ {all_fields_query("Project", 3)} }} }}',
        {},
        id="every-project-field",
    ),
    pytest.param(
        REGISTRATIONS,
        {"project": "TEST", "page": 2, "per_page": 7, "active": False},
        id="registrations",
    ),
    pytest.param(ORDERS, {"project": "TEST", "per_page": 250}, id="orders"),
    pytest.param(
        """query($p: ID!, $skip: Boolean!) { project(id: $p) { ...P } }
        fragment P on Project { organisation_name __typename
          renamed: registrations(per_page: 3) { total data { ... on Registration { id }
            first_name @skip(if: $skip) email @include(if: $skip) id ticket { id } } }
          registrations(per_page: 3) { data { ticket { title } } } }""",
        {"p": "TEST", "skip": True},
        id="fragments-aliases-directives",
    ),
    pytest.param(
        '{ publicEvents(search: "a", sort: "popularity", per_page: 3) '
        "{ total last_page data { id title } } }",
        {},
        id="public-events",
    ),
    pytest.param('{ project(id: "NOPE") { id } }', {}, id="unknown-project"),
    pytest.param(
        '{ __type(name: "Registration") { fields { name } } }', {}, id="introspection"
    ),
]


@pytest.mark.parametrize(("query", "variables"), QUERIES)
def test_fast_path_answers_exactly_like_graphql_core(
    query: str, variables: dict[str, Any]
) -> None:
    """Every field resolves, and the fast path never changes an answer."""
    executor = Executor(Dataset(seed=2, projects=2, registrations=30))
    analysis = analyse(query, None)
    assert analysis.errors == ()

    fast = executor.execute(analysis, variables, None, None)
    reference = executor.execute(analysis, variables, None, None, fast=False)

    assert json.dumps(fast) == json.dumps(reference)
    assert "errors" not in reference or "unknown" in query or "NOPE" in query


def test_event_counters_reflect_the_dataset(fake_api: FakeAtleta) -> None:
    """Resale counts, offers and the per-ticket cache agree with each other."""
    event = fake_api.data.projects["TEST"].event_list[0]
    before = post(fake_api, EVENT, {"event": event.id}).json()["data"]["event"]

    offer = fake_api.data.open_resale(event.id)
    after = post(fake_api, EVENT, {"event": event.id}).json()["data"]["event"]

    assert (
        after["registrations_for_sale_count"]
        == before["registrations_for_sale_count"] + 1
    )
    assert len(after["registrations_for_sale"]) == after["registrations_for_sale_count"]
    cached = sum(
        ticket["cached_registrations_for_sale_count"]
        for ticket in after["tickets_for_resale"]
    )
    assert cached == after["registrations_for_sale_count"]
    opened = next(
        r["resale"]
        for r in after["registrations_for_sale"]
        if r["resale"]["id"] == offer
    )
    assert opened["public_url"].startswith(f"https://atleta.cc/e/{event.id}/resale/")
    assert opened["total_amount"] == opened["amount"] + opened["fee"]


# -- control surface -------------------------------------------------------


def test_python_controls_change_what_the_api_serves(fake_api: FakeAtleta) -> None:
    """Added, changed and cancelled registrations show in the next answer."""
    data = fake_api.data
    first = data.projects["TEST"].active_registrations[0].id

    added = data.add_registration("TEST", first_name="Noor")
    data.change_registration(first, first_name="Zora")
    data.cancel_registration(added)
    active = {r["id"]: r for page in walk(fake_api, 250) for r in page["data"]}
    everything = {
        r["id"]: r for page in walk(fake_api, 250, active=False) for r in page["data"]
    }

    assert added not in active
    assert everything[added]["cancelled_at"] is not None
    assert everything[added]["first_name"] == "Noor"
    assert active[first]["first_name"] == "Zora"
    assert len(active) == 40
    assert [m.kind for m in data.log_since(0)] == [
        "registration.created",
        "order.created",
        "registration.updated",
        "registration.cancelled",
    ]
    assert [m.seq for m in data.log_since(3)] == [4]


def test_orders_events_and_resales_can_be_changed(fake_api: FakeAtleta) -> None:
    """Orders, event details and resale offers follow the Python controls."""
    data = fake_api.data
    event = data.projects["TEST"].event_list[0]
    order = data.add_order("TEST", registrations=2, status="pending")
    data.change_order(order, status="paid")
    data.edit_event(event.id, title="Renamed Run", waitlist_size=77)
    offer = data.open_resale(event.id)
    data.close_resale(offer, sold=True)

    orders = post(fake_api, ORDERS, {"project": "TEST", "per_page": 250}).json()
    shown = post(fake_api, EVENT, {"event": event.id}).json()["data"]["event"]

    listed = {o["id"]: o for o in orders["data"]["project"]["orders"]["data"]}
    assert [m.kind for m in data.log_since(0)][:4] == [
        "registration.created",
        "registration.created",
        "order.created",
        "order.updated",
    ]
    assert listed[order]["status"] == "paid"
    assert len(listed[order]["registrations"]) == 2
    assert shown["title"] == "Renamed Run"
    assert shown["waitlist_size"] == 77
    assert offer not in {r["resale"]["id"] for r in shown["registrations_for_sale"]}
    with pytest.raises(ValueError, match="cannot set"):
        data.edit_event(event.id, colour="red")
    with pytest.raises(KeyError):
        data.cancel_registration("TESTnonexist")


def test_http_controls_and_their_errors(fake_api: FakeAtleta) -> None:
    """The control route mutates, reports and refuses like the Python API."""
    event_id = fake_api.data.projects["TEST"].event_list[0].id

    added = control(fake_api, "add_registration", project="TEST", last_name="Quist")
    changed = control(
        fake_api, "change_registration", id=added.json()["id"], gender="other"
    )
    order = control(fake_api, "add_order", project="TEST")
    control(fake_api, "change_order", id=order.json()["id"], status="refunded")
    offer = control(fake_api, "open_resale", event_id=event_id)
    control(fake_api, "close_resale", id=offer.json()["id"])
    control(fake_api, "edit_event", event_id=event_id, enable_waitlist=True)
    control(fake_api, "cancel_registration", id=added.json()["id"])
    log = control(fake_api, "log", since=2).json()

    assert changed.json() == {"ok": True}
    assert log["version"] == 10
    assert [m["seq"] for m in log["mutations"]] == list(range(3, 11))
    assert control(fake_api, "state").json()["version"] == 10
    assert control(fake_api, "nope").status_code == 404
    assert control(fake_api, "cancel_registration", id="missing").status_code == 400
    assert control(fake_api, "state", auth="wrong").status_code == 401


def test_fake_api_help_lists_every_fault_and_control_route(
    fake_api: FakeAtleta,
) -> None:
    """`fake-api --help` names every fault kind and every control action."""
    actions = control(fake_api, "nope").json()["actions"]
    shown = CliRunner().invoke(main_group, ["fake-api", "--help"]).output

    for kind in sorted(KINDS):
        assert kind in shown
    for action in actions:
        assert f"/_control/{action}" in shown


def test_http_control_faults_churn_counters_and_revocation(
    fake_api: FakeAtleta,
) -> None:
    """Faults, churn, request counts and token revocation over HTTP."""
    control(fake_api, "fault", spec="http_503:2,target=project.registrations")
    control(
        fake_api, "fault", kind="rate_limit", count=1, retry_after=9, target="event"
    )

    assert [f["kind"] for f in control(fake_api, "state").json()["faults"]] == [
        "http_503",
        "rate_limit",
    ]
    assert post(fake_api, REGISTRATIONS, {"project": "TEST"}).status_code == 503
    assert control(fake_api, "requests").json()["project.registrations"] == 1
    control(fake_api, "clear_faults")
    assert post(fake_api, REGISTRATIONS, {"project": "TEST"}).status_code == 200

    assert control(fake_api, "churn", rate="20/s").json() == {"rate": 20.0}
    wait_for(lambda: fake_api.data.version > 0)
    assert control(fake_api, "churn", rate=0).json() == {"rate": 0.0}

    control(fake_api, "revoke_token", token=FAKE_TOKEN)
    assert post(fake_api, REGISTRATIONS, {"project": "TEST"}).status_code == 403


def test_churn_is_visible_between_two_requests(fake_api: FakeAtleta) -> None:
    """With churn on, the list a client sees changes without any other action."""

    def snapshot() -> list[tuple[str, str | None]]:
        pages = walk(fake_api, 250, active=False)
        return [(r["id"], r["cancelled_at"]) for page in pages for r in page["data"]]

    before = snapshot()
    fake_api.start_churn("50/s")

    wait_for(lambda: snapshot() != before)
    fake_api.stop_churn()

    assert fake_api.churn_rate == 0
    assert fake_api.data.log_since(0)


def test_rates_and_fault_specs_parse() -> None:
    """CLI and control spellings of rates and faults."""
    assert parse_rate("1/s") == 1.0
    assert parse_rate("30/min") == 0.5
    assert parse_rate("2") == 2.0
    assert parse_fault("rate_limit:3,retry_after=2") == (
        "rate_limit",
        3,
        {"retry_after": 2},
    )
    assert parse_fault("slow:*,seconds=0.5") == ("slow", None, {"seconds": 0.5})
    assert parse_fault("shift,mode=remove,target=project.registrations") == (
        "shift",
        1,
        {"mode": "remove", "target": "project.registrations"},
    )
    assert {parse_fault(f"{kind}:2")[0] for kind in KINDS} == KINDS
    for bad in ("nope", "slow:x", "slow,seconds"):
        with pytest.raises(ValueError, match="fault"):
            parse_fault(bad)
    with pytest.raises(ValueError, match="rate"):
        parse_rate("fast")


# -- faults ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "content_type"),
    [
        ("http_500", 500, "application/json"),
        ("http_502", 502, "text/html"),
        ("http_503", 503, "text/html"),
    ],
)
def test_http_error_faults(
    fake_api: FakeAtleta, kind: str, status: int, content_type: str
) -> None:
    """5xx faults answer with their status, then the API recovers."""
    fake_api.faults.inject(kind)

    failed = post(fake_api, REGISTRATIONS, {"project": "TEST"})
    recovered = post(fake_api, REGISTRATIONS, {"project": "TEST"})

    assert failed.status_code == status
    assert failed.headers["content-type"].startswith(content_type)
    assert recovered.status_code == 200
    assert fake_api.faults.applied[kind] == 1


def test_rate_limit_fault_carries_retry_after(fake_api: FakeAtleta) -> None:
    """A 429 says when to come back, for the next ``count`` requests."""
    fake_api.faults.inject("rate_limit", count=2, retry_after=7)

    answers = [post(fake_api, REGISTRATIONS, {"project": "TEST"}) for _ in range(3)]

    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["retry-after"] == "7"
    assert answers[0].headers["x-ratelimit-remaining"] == "0"


def test_slow_fault_delays_the_answer(fake_api: FakeAtleta) -> None:
    """A slow answer arrives late but whole; a short client timeout fails."""
    fake_api.faults.inject("slow", count=2, seconds=0.4)

    started = time.monotonic()
    answer = post(fake_api, REGISTRATIONS, {"project": "TEST"})
    elapsed = time.monotonic() - started
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            fake_api.url,
            json={"query": REGISTRATIONS, "variables": {"project": "TEST"}},
            headers={"Authorization": f"Bearer {FAKE_TOKEN}"},
            timeout=0.05,
        )

    assert answer.status_code == 200
    assert elapsed >= 0.4


def test_drop_fault_closes_without_an_answer(fake_api: FakeAtleta) -> None:
    """A dropped connection gives the client no status line at all."""
    fake_api.faults.inject("drop")

    with pytest.raises(httpx.RemoteProtocolError):
        post(fake_api, REGISTRATIONS, {"project": "TEST"})

    assert post(fake_api, REGISTRATIONS, {"project": "TEST"}).status_code == 200


def test_malformed_fault_is_not_json(fake_api: FakeAtleta) -> None:
    """A malformed answer is a 200 whose body does not parse."""
    fake_api.faults.inject("malformed")

    answer = post(fake_api, REGISTRATIONS, {"project": "TEST"})

    assert answer.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        answer.json()


def test_graphql_error_faults_with_and_without_data(fake_api: FakeAtleta) -> None:
    """``graphql_errors`` carries no data; ``partial_errors`` nulls one record."""
    fake_api.faults.inject("graphql_errors", message="boom")
    fake_api.faults.inject("partial_errors")

    whole = post(fake_api, REGISTRATIONS, {"project": "TEST"}).json()
    partial = post(fake_api, REGISTRATIONS, {"project": "TEST"}).json()

    assert whole["data"] is None
    assert whole["errors"][0]["message"] == "boom"
    records = partial["data"]["project"]["registrations"]["data"]
    assert records[0] is None
    assert all(records[1:])
    assert partial["errors"][0]["path"] == ["project", "registrations", "data", 0]


@pytest.mark.parametrize(
    ("mode", "expected"), [("insert", "repeat"), ("remove", "skip")]
)
def test_shift_fault_moves_records_between_pages(
    fake_api: FakeAtleta, mode: str, expected: str
) -> None:
    """A record inserted or removed at the front mid-walk repeats or skips one."""
    original = [r["id"] for page in walk(fake_api, 10) for r in page["data"]]
    fake_api.faults.inject("shift", target="project.registrations", mode=mode)

    seen = [r["id"] for page in walk(fake_api, 10) for r in page["data"]]

    if expected == "repeat":
        assert len(seen) > len(set(seen))
    else:
        assert set(original) - set(seen) - {original[0]}
    assert fake_api.data.log_since(0)


def test_total_mismatch_fault_disagrees_with_the_pages(fake_api: FakeAtleta) -> None:
    """``total`` says more records than the pages hold."""
    fake_api.faults.inject("total_mismatch", count=None, delta=3)

    pages = walk(fake_api, 25)

    assert pages[0]["total"] == 43
    assert sum(len(page["data"]) for page in pages) == 40


def test_faults_target_a_request_kind_and_count_requests(fake_api: FakeAtleta) -> None:
    """A targeted fault spares other kinds; counters name each kind."""
    event_id = fake_api.data.projects["TEST"].event_list[0].id
    fake_api.faults.inject("http_500", count=None, target="project.orders")

    event = post(fake_api, EVENT, {"event": event_id}, token=None)
    registrations = post(fake_api, REGISTRATIONS, {"project": "TEST"})
    orders = post(fake_api, ORDERS, {"project": "TEST"})

    assert (event.status_code, registrations.status_code, orders.status_code) == (
        200,
        200,
        500,
    )
    assert fake_api.requests == {
        "event": 1,
        "project.registrations": 1,
        "project.orders": 1,
    }
    assert len(fake_api.faults.pending()) == 1
    fake_api.faults.clear()
    assert post(fake_api, ORDERS, {"project": "TEST"}).status_code == 200


def test_unchanged_pages_come_from_the_cache(fake_api: FakeAtleta) -> None:
    """A repeated page is served from the cache until the next mutation."""
    page_of(fake_api, 1)
    page_of(fake_api, 1)
    fake_api.data.add_registration("TEST")
    third = page_of(fake_api, 2)

    hits, misses = fake_api.cache_stats
    assert (hits, misses) == (1, 2)
    assert third["total"] == 41


# -- the command -----------------------------------------------------------


@pytest.fixture
def fake_api_process() -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """``atleta-notifier fake-api`` in a subprocess, with what it printed."""
    command = [
        sys.executable,
        "-c",
        "from notifier.cli import main; main()",
        "fake-api",
        "--port",
        "0",
        "--projects",
        "2",
        "--registrations",
        "30",
        "--churn",
        "20/s",
        "--fault",
        "http_503:1",
        "--seed",
        "4",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    printed: dict[str, str] = {}
    try:
        assert process.stdout is not None
        for line in process.stdout:
            key, _, value = line.strip().partition(": ")
            printed[key] = value
            if line.startswith("Ctrl-C"):
                break
        yield process, printed
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_fake_api_command_serves_with_churn_and_faults(
    fake_api_process: tuple[subprocess.Popen[str], dict[str, str]],
) -> None:
    """The command prints URL and token, applies --fault, and churns."""
    _process, printed = fake_api_process
    url, token = printed["Fake Atleta API"], printed["Token"]
    headers = {"Authorization": f"Bearer {token}"}
    body = {"query": REGISTRATIONS, "variables": {"project": "TEST", "active": False}}

    first = httpx.post(url, json=body, headers=headers, timeout=10)
    second = httpx.post(url, json=body, headers=headers, timeout=10)

    def total() -> int:
        answer = httpx.post(url, json=body, headers=headers, timeout=10).json()
        value: int = answer["data"]["project"]["registrations"]["total"]
        return value

    assert first.status_code == 503
    assert second.status_code == 200
    assert len(token) > 20
    assert "curl" in printed.get("Try", "curl")
    start = second.json()["data"]["project"]["registrations"]["total"]
    wait_for(lambda: total() != start, timeout=10)


def test_restart_serves_the_same_data_on_the_same_port() -> None:
    """Stopping and starting again keeps the data and the port."""
    api = FakeAtleta(projects=1, registrations=5, token=FAKE_TOKEN)
    api.start()
    port = api.port
    api.data.add_registration("TEST")
    api.stop()
    api.stop()

    with api:
        assert api.port == port
        assert page_of(api, 1)["total"] == 6


PRESET_VARIABLES = {"project": "TEST", "page": 2, "per_page": 10}


@pytest.mark.parametrize(
    "preset", sorted(path.stem for path in PRESET_DIR.glob("*.graphql"))
)
def test_bundled_presets_run_on_the_fast_path(preset: str) -> None:
    """Each shipped preset answers without errors, as graphql-core would."""
    data = Dataset(seed=3, projects=1, registrations=40)
    executor = Executor(data)
    query = (PRESET_DIR / f"{preset}.graphql").read_text()
    variables = {**PRESET_VARIABLES, "event": data.projects["TEST"].event_list[0].id}
    analysis = analyse(query, None)
    assert analysis.document is not None
    assert analysis.operation is not None
    declared = {v.variable.name.value for v in analysis.operation.variable_definitions}
    variables = {name: value for name, value in variables.items() if name in declared}

    fast = executor.execute(analysis, variables, None, None)
    reference = executor.execute(analysis, variables, None, None, fast=False)

    assert executor.fast_runs == 1
    assert "errors" not in reference
    assert json.dumps(fast) == json.dumps(reference)
