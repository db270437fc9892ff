"""Tests of the Atleta client: walks, retries, error kinds, rate limit, secrecy."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from notifier._walk import Page, check_pages
from notifier.atleta import (
    AtletaClient,
    FetchResult,
    declared_variables,
    parse_retry_after,
)
from notifier.errors import (
    AuthError,
    GraphQLResponseError,
    IncompleteWalkError,
    MalformedResponseError,
    NetworkError,
    PollError,
    RateLimitedError,
    ServerError,
)
from notifier.fake_atleta import FakeAtleta
from notifier.model import Project, Watch
from notifier.schema import PRESETS

TOKEN = "sekrit-token-4f9a1c"
URL = "http://atleta.test/api/graphql"
QUERY = """
query Registrations($project: ID!, $page: Int, $per_page: Int) {
  project(id: $project) {
    registrations(page: $page, per_page: $per_page) {
      total last_page current_page
      data { id status }
    }
  }
}
"""
EVENT_QUERY = """
query Event($event: ID!) { event(id: $event) { id waitlist_size } }
"""

Handler = Callable[[httpx.Request], httpx.Response]


def make_watch(**fields: Any) -> Watch:
    """A registrations watch of project TEST with ten records a page."""
    values: dict[str, Any] = {
        "project": Project(id="TEST", name="Test"),
        "name": "registrations",
        "entity": "registration",
        "query": QUERY,
        "records": "project.registrations.data",
        "per_page": 10,
        "token": TOKEN,
    }
    values.update(fields)
    return Watch(**values)


def page_body(
    records: list[dict[str, Any]],
    page: int,
    per_page: int,
    *,
    total: int | None = None,
    last_page: int | None = None,
) -> dict[str, Any]:
    """A Laravel-style page of ``records`` as the API would answer it."""
    count = len(records) if total is None else total
    return {
        "data": {
            "project": {
                "registrations": {
                    "total": count,
                    "last_page": last_page or max(1, math.ceil(count / per_page)),
                    "current_page": page,
                    "data": records[(page - 1) * per_page : page * per_page],
                }
            }
        }
    }


class FakeApi:
    """A MockTransport handler serving a mutable, paginated registration list.

    ``script`` answers the next requests before the list does (None falls
    through to the list); ``before_page`` may change the list before a page
    is served, to simulate churn during a walk.
    """

    def __init__(self, count: int = 0) -> None:
        self.records = [{"id": f"TEST{n:08d}", "status": "ok"} for n in range(count)]
        self.script: list[httpx.Response | Exception | None] = []
        self.before_page: Callable[[int], None] | None = None
        self.total_offset = 0
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        """Answer one request."""
        body = json.loads(request.content)
        self.bodies.append(body)
        self.headers.append(request.headers)
        if self.script:
            item = self.script.pop(0)
            if isinstance(item, Exception):
                raise item
            if item is not None:
                return item
        variables = body["variables"]
        page, per_page = variables.get("page", 1), variables.get("per_page", 10)
        if self.before_page is not None:
            self.before_page(page)
        total = len(self.records) + self.total_offset
        return httpx.Response(
            200, json=page_body(self.records, page, per_page, total=total)
        )

    @property
    def pages(self) -> list[int]:
        """The page numbers requested, in order."""
        return [body["variables"].get("page", 0) for body in self.bodies]


class Sleeps:
    """An injected sleep that records every wait, moves a fake clock, returns."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.now = 1000.0

    async def __call__(self, seconds: float) -> None:
        """Record ``seconds``, move the clock past them, and yield to the loop."""
        self.waits.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def clock(self) -> float:
        """The fake monotonic time."""
        return self.now


@pytest.fixture
def sleeps() -> Sleeps:
    """The recording sleep."""
    return Sleeps()


@pytest.fixture
async def make_client(
    sleeps: Sleeps,
) -> Any:
    """A factory of clients on a MockTransport, closed after the test."""
    clients: list[AtletaClient] = []

    def factory(handler: Any, **options: Any) -> AtletaClient:
        options.setdefault("rate_limit", 10_000.0)
        options.setdefault("burst", 1000)
        options.setdefault("concurrency", 1)
        options.setdefault("sleep", sleeps)
        options.setdefault("clock", sleeps.clock)
        client = AtletaClient(URL, transport=httpx.MockTransport(handler), **options)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


def error(status: int, **headers: str) -> httpx.Response:
    """An HTTP error answer with ``headers``."""
    return httpx.Response(status, headers=headers, text="nope")


# --- walks -----------------------------------------------------------------


async def test_walk_reads_every_page_through_variables(make_client: Any) -> None:
    """A walk asks for every page by variables, never editing the query text."""
    api = FakeApi(95)
    client = make_client(api, concurrency=3)

    result = await client.fetch(make_watch())

    assert result == FetchResult(
        records=api.records, complete=True, total=95, pages=10, requests=10
    )
    assert sorted(api.pages) == list(range(1, 11))
    assert {body["query"] for body in api.bodies} == {QUERY}
    assert {body["variables"]["project"] for body in api.bodies} == {"TEST"}
    assert {body["variables"]["per_page"] for body in api.bodies} == {10}
    assert {h["authorization"] for h in api.headers} == {f"Bearer {TOKEN}"}


async def test_empty_list_is_complete(make_client: Any) -> None:
    """A project with no records gives an empty, complete result."""
    client = make_client(FakeApi(0))

    result = await client.fetch(make_watch())

    assert (result.records, result.complete, result.total) == ([], True, 0)


async def test_null_data_on_an_empty_list_is_empty(make_client: Any) -> None:
    """A null ``data`` where the wrapper says there is nothing reads as empty."""
    body = page_body([], 1, 10)
    body["data"]["project"]["registrations"]["data"] = None
    client = make_client(lambda request: httpx.Response(200, json=body))

    result = await client.fetch(make_watch())

    assert (result.records, result.complete) == ([], True)


async def test_progress_reports_pages_done_and_last_page(make_client: Any) -> None:
    """``progress`` hears (pages done, last page) after every page."""
    calls: list[tuple[int, int]] = []
    client = make_client(FakeApi(30))

    await client.fetch(
        make_watch(), progress=lambda done, last: calls.append((done, last))
    )

    assert calls == [(1, 3), (2, 3), (3, 3)]


async def test_variables_come_from_the_watch_and_the_project(make_client: Any) -> None:
    """``project`` is sent only when declared; the watch's variables always."""
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"data": {"event": {"id": "TESTev000001"}}})

    client = make_client(handler)
    watch = make_watch(
        name="event",
        query=EVENT_QUERY,
        records="event",
        single=True,
        paginate=False,
        public=True,
        token=None,
        variables={"event": "TESTev000001"},
    )

    result = await client.fetch(watch)

    assert result.records == [{"id": "TESTev000001"}]
    assert bodies[0]["variables"] == {"event": "TESTev000001"}
    assert result.complete


async def test_project_variable_is_the_watchs_project(make_client: Any) -> None:
    """``project`` comes from the watch's project even if variables name another."""
    api = FakeApi(3)
    client = make_client(api)

    await client.fetch(make_watch(variables={"project": "ELSE", "extra": 1}))

    assert api.bodies[0]["variables"] == {
        "project": "TEST",
        "extra": 1,
        "page": 1,
        "per_page": 10,
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param(QUERY, {"project", "page", "per_page"}, id="parsed"),
        pytest.param(EVENT_QUERY, {"event"}, id="event"),
        pytest.param("query Q($a: Int, $b: ID!) { x(", {"a", "b"}, id="unparsable"),
        pytest.param("{ project(id: $project) { id } }", set(), id="undeclared"),
    ],
)
def test_declared_variables(query: str, expected: set[str]) -> None:
    """Declared variables come from the parsed query, or a scan when it won't parse."""
    assert declared_variables(query) == expected


async def test_cancelled_fetch_leaves_no_task_behind(make_client: Any) -> None:
    """Cancelling a walk cancels the page requests it had in flight."""
    started = asyncio.Event()
    api = FakeApi(100)

    async def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["variables"]["page"] > 1:
            started.set()
            await asyncio.Event().wait()
        return api(request)

    client = make_client(handler, concurrency=4)
    before = asyncio.all_tasks()
    fetching = asyncio.create_task(client.fetch(make_watch()))
    await asyncio.wait_for(started.wait(), 5)

    fetching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetching

    assert asyncio.all_tasks() == before


async def test_single_watch_with_null_object_is_malformed(make_client: Any) -> None:
    """A single-object watch whose object is null fails rather than reads empty."""
    client = make_client(
        lambda request: httpx.Response(200, json={"data": {"event": None}})
    )
    watch = make_watch(query=EVENT_QUERY, records="event", single=True, paginate=False)

    with pytest.raises(MalformedResponseError, match=r"data\.event is null"):
        await client.fetch(watch)


async def test_record_moving_onto_a_later_page_triggers_one_rewalk(
    make_client: Any,
) -> None:
    """A record seen twice (an insertion mid-walk) makes the walk run again."""
    api = FakeApi(25)
    inserted = False

    def insert_once(page: int) -> None:
        nonlocal inserted
        if page == 2 and not inserted:
            inserted = True
            api.records.insert(0, {"id": "TEST00000000a", "status": "new"})

    api.before_page = insert_once
    client = make_client(api)

    result = await client.fetch(make_watch())

    assert result.complete
    assert api.pages == [1, 2, 3, 1, 2, 3]
    assert [r["id"] for r in result.records] == [r["id"] for r in api.records]
    assert (result.pages, result.requests, result.total) == (6, 6, 26)


async def test_churn_in_both_walks_is_incomplete_and_deduped(make_client: Any) -> None:
    """Churn in the walk and the re-walk gives complete=False, each key once."""
    api = FakeApi(25)
    counter = 0

    def insert_before_page_two(page: int) -> None:
        nonlocal counter
        if page == 2:
            counter += 1
            api.records.insert(0, {"id": f"TESTnew{counter:05d}", "status": "new"})

    api.before_page = insert_before_page_two
    client = make_client(api)

    result = await client.fetch(make_watch())

    keys = [r["id"] for r in result.records]
    assert not result.complete
    assert len(keys) == len(set(keys))
    # The record inserted behind the second walk's first page was never seen.
    assert set(keys) == {r["id"] for r in api.records} - {"TESTnew00002"}
    assert result.total == 27
    assert result.pages == 6


async def test_total_moving_once_rewalks_and_completes(make_client: Any) -> None:
    """``total`` moving during the first walk only costs one more walk."""
    api = FakeApi(30)
    api.script = [httpx.Response(200, json=page_body(api.records, 1, 10, total=31))]
    client = make_client(api)

    result = await client.fetch(make_watch())

    assert result.complete
    assert result.total == 30
    # The first page's total of 31 made page 4 worth asking for.
    assert result.pages == 7


async def test_total_moving_in_both_walks_is_incomplete(make_client: Any) -> None:
    """``total`` moving in both walks gives every record seen, complete=False."""
    api = FakeApi(30)

    def deletion_after_first_page(page: int) -> None:
        if page == 2:
            # A deletion on page 1 pulls a record back onto a page already read.
            del api.records[0]

    api.before_page = deletion_after_first_page
    client = make_client(api)

    result = await client.fetch(make_watch())

    assert not result.complete
    assert result.total == 28
    # Records deleted between the walks are still there: seen is real.
    assert "TEST00000000" in {r["id"] for r in result.records}


def test_a_total_that_moves_and_comes_back_names_its_range() -> None:
    """A total that moved and returned reads as a range, not "from 5 to 5"."""
    pages = {
        number: Page(
            number=number,
            records=[{"id": f"TEST{number:08d}"}],
            total=total,
            last_page=3,
        )
        for number, total in ((1, 3), (2, 4), (3, 3))
    }

    walk = check_pages(pages, make_watch())

    assert walk.problems == ["total moved between 3 and 4"]


@pytest.mark.parametrize(
    ("offset", "label"), [(5, "total above the pages"), (-5, "total below the pages")]
)
async def test_total_disagreeing_with_the_pages_is_incomplete(
    make_client: Any, offset: int, label: str
) -> None:
    """A ``total`` that never matches the records is no proof of absence."""
    api = FakeApi(30)
    api.total_offset = offset
    client = make_client(api)

    result = await client.fetch(make_watch())

    assert not result.complete, label
    assert len(result.records) == 30
    assert result.total == 30 + offset


async def test_total_mismatch_once_rewalks_and_completes(make_client: Any) -> None:
    """One wrong ``total`` costs a re-walk, not completeness."""
    api = FakeApi(30)
    api.script = [
        None,
        None,
        httpx.Response(200, json=page_body(api.records, 3, 10, total=33, last_page=3)),
    ]
    client = make_client(api)

    result = await client.fetch(make_watch())

    assert result.complete
    assert result.requests == 6


async def test_growing_last_page_is_walked_to_the_end(make_client: Any) -> None:
    """Pages past the first ``last_page`` are read when the list grows."""
    api = FakeApi(20)

    def grow(page: int) -> None:
        if page == 2 and len(api.records) == 20:
            api.records.extend(
                {"id": f"TESTz{n:07d}", "status": "ok"} for n in range(5)
            )

    api.before_page = grow
    client = make_client(api)

    result = await client.fetch(make_watch())

    assert api.pages[:3] == [1, 2, 3]
    assert result.complete
    assert len(result.records) == 25


async def test_walk_without_last_page_stops_at_a_short_page(make_client: Any) -> None:
    """Without ``last_page`` the walk reads pages until one is short."""
    api = FakeApi(25)

    def handler(request: httpx.Request) -> httpx.Response:
        response = api(request)
        body = response.json()
        del body["data"]["project"]["registrations"]["last_page"]
        return httpx.Response(200, json=body)

    client = make_client(handler)

    result = await client.fetch(make_watch())

    assert api.pages == [1, 2, 3]
    assert result.complete
    assert len(result.records) == 25


async def test_query_without_page_variable_cannot_walk(make_client: Any) -> None:
    """A paginated list read by a query without ``$page`` is an incomplete walk."""
    api = FakeApi(25)
    query = QUERY.replace(", $page: Int, $per_page: Int", "").replace(
        "(page: $page, per_page: $per_page)", ""
    )
    client = make_client(api)

    with pytest.raises(IncompleteWalkError, match=r"declare \$page"):
        await client.fetch(make_watch(query=query))


async def test_page_number_not_honoured_is_malformed(make_client: Any) -> None:
    """An API answering page 1 when asked for page 2 fails loudly."""
    api = FakeApi(25)
    api.script = [None, httpx.Response(200, json=page_body(api.records, 1, 10))]
    client = make_client(api)

    with pytest.raises(MalformedResponseError, match="asked for page 2 and got page 1"):
        await client.fetch(make_watch())


async def test_absurd_last_page_is_refused(make_client: Any) -> None:
    """A ``last_page`` past the walk limit fails instead of walking forever."""
    body = page_body([{"id": "TEST1"}], 1, 10, total=10**10, last_page=10**9)
    client = make_client(lambda request: httpx.Response(200, json=body))

    with pytest.raises(IncompleteWalkError, match="1000000000 pages"):
        await client.fetch(make_watch())


# --- answers that are not the data -------------------------------------------


@pytest.mark.parametrize(
    ("body", "match"),
    [
        pytest.param(
            {"data": {"project": None}}, r"data\.project is null", id="null-project"
        ),
        pytest.param(
            {"data": {}}, r"data\.project is null or missing", id="missing-path"
        ),
        pytest.param(
            {"data": {"project": {"registrations": {"total": 3, "last_page": 1}}}},
            r"data\.project\.registrations\.data is missing",
            id="missing-list",
        ),
        pytest.param(
            {
                "data": {
                    "project": {
                        "registrations": {"total": 3, "last_page": 1, "data": None}
                    }
                }
            },
            "is null, not a list",
            id="null-list",
        ),
        pytest.param(
            {
                "data": {
                    "project": {
                        "registrations": {
                            "total": 1,
                            "last_page": 1,
                            "data": [{"x": 1}],
                        }
                    }
                }
            },
            "no usable key 'id'",
            id="record-without-key",
        ),
        pytest.param({"data": None}, "no data object", id="null-data"),
        pytest.param([1, 2], "no data object", id="not-an-object"),
    ],
)
async def test_wrong_shape_is_malformed(
    make_client: Any, body: Any, match: str
) -> None:
    """An answer without the watch's record list is malformed, naming the page."""
    client = make_client(lambda request: httpx.Response(200, json=body))

    with pytest.raises(MalformedResponseError, match=match) as caught:
        await client.fetch(make_watch())

    assert "watch 'TEST/registrations'" in str(caught.value)


async def test_not_json_is_malformed_and_not_retried(
    make_client: Any, sleeps: Sleeps
) -> None:
    """An answer that is not JSON fails at once as malformed."""
    api = FakeApi(5)
    api.script = [
        httpx.Response(
            200, text="<html>login</html>", headers={"Content-Type": "text/html"}
        )
    ]
    client = make_client(api)

    with pytest.raises(
        MalformedResponseError, match=r"not JSON \(text/html\) on page 1"
    ):
        await client.fetch(make_watch())

    assert (len(api.bodies), sleeps.waits) == (1, [])


async def test_graphql_errors_name_messages_and_extensions(
    make_client: Any, sleeps: Sleeps
) -> None:
    """GraphQL ``errors`` fail at once, quoting messages and extension detail."""
    errors = [
        {
            "message": "validation",
            "extensions": {"validation": {"per_page": ["max 250"]}},
        },
        {"message": "Cannot query field 'nope'", "path": ["project", "registrations"]},
        {"message": "third"},
        {"message": "fourth"},
    ]
    api = FakeApi(5)
    api.script = [httpx.Response(200, json={"data": None, "errors": errors})]
    client = make_client(api)

    with pytest.raises(GraphQLResponseError) as caught:
        await client.fetch(make_watch())

    text = str(caught.value)
    assert '{"validation":{"per_page":["max 250"]}}' in text
    assert "Cannot query field 'nope' at project.registrations" in text
    assert "and 1 more" in text
    assert "fourth" not in text
    assert (len(api.bodies), sleeps.waits) == (1, [])


async def test_partial_data_with_errors_is_an_error(make_client: Any) -> None:
    """Data next to ``errors`` is not trusted: unknown is not empty."""
    body = page_body([{"id": "TEST1"}], 1, 10)
    body["errors"] = [{"message": "field failed"}]
    client = make_client(lambda request: httpx.Response(200, json=body))

    with pytest.raises(GraphQLResponseError, match="field failed"):
        await client.fetch(make_watch())


async def test_rate_limit_in_graphql_errors_is_retried(
    make_client: Any, sleeps: Sleeps
) -> None:
    """GraphQL errors saying "rate limit" are retried like a 429."""
    api = FakeApi(5)
    limited = {
        "errors": [{"message": "Too Many Requests", "extensions": {"retry_after": 3}}]
    }
    api.script = [httpx.Response(200, json=limited)]
    client = make_client(api)

    result = await client.fetch(make_watch())

    assert result.complete
    assert sleeps.waits == [3.0]


# --- retries -----------------------------------------------------------------


async def test_retry_after_seconds_is_honoured(
    make_client: Any, sleeps: Sleeps
) -> None:
    """A 429 with ``Retry-After: 7`` waits exactly 7 seconds, then succeeds."""
    api = FakeApi(5)
    api.script = [error(429, **{"Retry-After": "7"})]
    client = make_client(api)

    result = await client.fetch(make_watch())

    assert sleeps.waits == [7.0]
    assert (result.requests, result.complete) == (2, True)


async def test_retry_after_http_date_is_honoured(
    make_client: Any, sleeps: Sleeps
) -> None:
    """A ``Retry-After`` HTTP date becomes the seconds until then."""
    when = datetime.now(UTC) + timedelta(seconds=20)
    api = FakeApi(5)
    api.script = [error(503, **{"Retry-After": format_datetime(when, usegmt=True)})]
    client = make_client(api)

    await client.fetch(make_watch())

    assert len(sleeps.waits) == 1
    assert 17 <= sleeps.waits[0] <= 20


async def test_retry_after_over_the_cap_gives_up_at_once(
    make_client: Any, sleeps: Sleeps
) -> None:
    """A pause longer than the cap is not slept: the error carries it instead."""
    api = FakeApi(5)
    api.script = [error(429, **{"Retry-After": "3600"})]
    client = make_client(api, retry_after_cap=60)

    with pytest.raises(RateLimitedError) as caught:
        await client.fetch(make_watch())

    assert caught.value.retry_after == 3600
    assert sleeps.waits == []


async def test_backoff_grows_with_jitter_and_a_cap(
    make_client: Any, sleeps: Sleeps
) -> None:
    """Without ``Retry-After`` waits grow exponentially, jittered, up to the cap."""
    api = FakeApi(5)
    api.script = [error(503)] * 6
    client = make_client(api, max_retries=6, backoff_base=1.0, backoff_cap=5.0)

    await client.fetch(make_watch())

    lows, highs = [1, 2, 4, 5, 5, 5], [2, 3, 5, 5, 5, 5]
    assert len(sleeps.waits) == 6
    for wait, low, high in zip(sleeps.waits, lows, highs, strict=True):
        assert low <= wait <= high


async def test_connection_errors_and_timeouts_are_retried(
    make_client: Any, sleeps: Sleeps
) -> None:
    """Refused connections and timeouts are retried, then the walk goes on."""
    api = FakeApi(15)
    api.script = [httpx.ConnectError("refused"), None, httpx.ReadTimeout("slow")]
    client = make_client(api)

    result = await client.fetch(make_watch())

    assert result.complete
    assert (result.requests, len(sleeps.waits)) == (4, 2)


@pytest.mark.parametrize(
    ("failure", "kind", "text"),
    [
        pytest.param(
            error(500), ServerError, "HTTP 500 Internal Server Error", id="500"
        ),
        pytest.param(error(502), ServerError, "HTTP 502 Bad Gateway", id="502"),
        pytest.param(error(503), ServerError, "HTTP 503 Service Unavailable", id="503"),
        pytest.param(error(504), ServerError, "HTTP 504 Gateway Timeout", id="504"),
        pytest.param(
            error(429), RateLimitedError, "HTTP 429 Too Many Requests", id="429"
        ),
        pytest.param(
            httpx.ConnectError("refused"), NetworkError, "ConnectError", id="connect"
        ),
        pytest.param(
            httpx.ReadTimeout("slow"), NetworkError, "timed out", id="timeout"
        ),
        pytest.param(
            httpx.RemoteProtocolError("dropped"),
            NetworkError,
            "RemoteProtocolError",
            id="drop",
        ),
    ],
)
async def test_retries_exhausted_raise_the_kind(
    make_client: Any,
    sleeps: Sleeps,
    failure: httpx.Response | Exception,
    kind: type[PollError],
    text: str,
) -> None:
    """After every retry the error names the failure, the page and the watch."""
    api = FakeApi(15)
    api.script = [None] + [failure] * 3
    client = make_client(api, max_retries=2)

    with pytest.raises(kind) as caught:
        await client.fetch(make_watch())

    message = str(caught.value)
    assert text in message
    assert "page 2 of watch 'TEST/registrations' after 3 attempts" in message
    assert len(sleeps.waits) == 2
    assert len(api.bodies) == 4


async def test_retry_after_is_kept_on_the_final_error(make_client: Any) -> None:
    """The last ``Retry-After`` seen rides on the error for the scheduler."""
    api = FakeApi(5)
    api.script = [error(429, **{"Retry-After": "2"})] * 2
    client = make_client(api, max_retries=1)

    with pytest.raises(RateLimitedError) as caught:
        await client.fetch(make_watch())

    assert caught.value.retry_after == 2.0


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures_are_not_retried(
    make_client: Any, sleeps: Sleeps, status: int
) -> None:
    """401 and 403 raise AuthError after one request."""
    api = FakeApi(5)
    api.script = [error(status)]
    client = make_client(api)

    with pytest.raises(AuthError, match=f"HTTP {status}"):
        await client.fetch(make_watch())

    assert (len(api.bodies), sleeps.waits) == (1, [])


@pytest.mark.parametrize(
    ("status", "kind"),
    [(501, ServerError), (400, MalformedResponseError), (404, MalformedResponseError)],
)
async def test_other_statuses_are_not_retried(
    make_client: Any, sleeps: Sleeps, status: int, kind: type[PollError]
) -> None:
    """Statuses that retrying cannot fix fail at once."""
    api = FakeApi(5)
    api.script = [error(status)]
    client = make_client(api)

    with pytest.raises(kind, match=f"HTTP {status}"):
        await client.fetch(make_watch())

    assert sleeps.waits == []


async def test_graphql_errors_on_http_400_are_graphql_errors(make_client: Any) -> None:
    """A 400 carrying GraphQL ``errors`` reports those errors."""
    body = {"errors": [{"message": "Variable '$project' of required type 'ID!'"}]}
    client = make_client(lambda request: httpx.Response(400, json=body))

    with pytest.raises(GraphQLResponseError, match="required type"):
        await client.fetch(make_watch())


async def test_anonymous_refusal_does_not_blame_a_token(make_client: Any) -> None:
    """A 403 to a public request says no token was sent."""
    client = make_client(lambda request: error(403))

    with pytest.raises(AuthError, match="without a token"):
        await client.execute("{ ok }", {}, token=None)


async def test_watch_without_token_fails_before_any_request(make_client: Any) -> None:
    """A token watch with no token is an auth error, and nothing is sent."""
    api = FakeApi(5)
    client = make_client(api)

    with pytest.raises(AuthError, match="needs an API token"):
        await client.fetch(make_watch(token=None))

    assert api.bodies == []


async def test_execute_returns_data_and_omits_auth_when_public(
    make_client: Any,
) -> None:
    """``execute`` sends one query and returns ``data``; no token, no header."""
    api = FakeApi(3)
    client = make_client(api)

    data = await client.execute(QUERY, {"project": "TEST", "page": 1}, token=None)

    assert data["project"]["registrations"]["total"] == 3
    assert "authorization" not in api.headers[0]


# --- logging and secrecy --------------------------------------------------------


async def test_log_lines_per_request_and_per_retry(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """One DEBUG line per request, one WARNING per retry with its attempt number."""
    api = FakeApi(5)
    api.script = [error(502), error(502)]
    client = make_client(api)
    caplog.set_level(logging.DEBUG, logger="notifier.atleta")

    await client.fetch(make_watch())

    ours = [r for r in caplog.records if r.name == "notifier.atleta"]
    debug = [r for r in ours if r.levelno == logging.DEBUG]
    warnings = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert len(debug) == 3
    assert "status=502" in debug[0].getMessage()
    assert len(warnings) == 2
    assert "attempt=2/5" in warnings[0]
    assert "attempt=3/5" in warnings[1]


FAILURES = [
    pytest.param([error(401)], id="401"),
    pytest.param([error(403)], id="403"),
    pytest.param([error(500)] * 3, id="500"),
    pytest.param([error(429, **{"Retry-After": "1"})] * 3, id="429"),
    pytest.param([httpx.ConnectError(f"refused for Bearer {TOKEN}")] * 3, id="connect"),
    pytest.param([httpx.ReadTimeout("slow")] * 3, id="timeout"),
    pytest.param([httpx.Response(200, text="not json")], id="malformed"),
    pytest.param(
        [httpx.Response(200, json={"errors": [{"message": f"bad token {TOKEN}"}]})],
        id="graphql",
    ),
    pytest.param(
        [httpx.Response(200, json={"errors": [{"message": f"rate limit for {TOKEN}"}]})]
        * 3,
        id="graphql-rate-limit",
    ),
    pytest.param([httpx.Response(200, json={"data": {}})], id="wrong-shape"),
]


@pytest.mark.parametrize("script", FAILURES)
async def test_token_never_in_errors_or_logs(
    make_client: Any,
    caplog: pytest.LogCaptureFixture,
    script: list[httpx.Response | Exception],
) -> None:
    """Whatever fails, the token is in no error text, no chain and no log line."""
    api = FakeApi(5)
    api.script = list(script)
    client = make_client(api, max_retries=2)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(PollError) as caught:
        await client.fetch(make_watch())

    exc = caught.value
    assert TOKEN not in str(exc)
    assert TOKEN not in repr(exc)
    assert exc.__cause__ is None
    assert exc.__context__ is None
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in repr(record.args)
    assert caplog.records


# --- rate limit and concurrency ----------------------------------------------------


async def test_rate_limit_is_shared_by_clients_with_the_same_token(
    make_client: Any,
) -> None:
    """Two clients with one token drain one bucket; another token has its own."""
    order: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        order.append(request.headers.get("authorization", "public"))
        return httpx.Response(200, json={"data": {"ok": True}})

    # Two requests a second: a third request waits half a second, far longer
    # than the two requests of another token and of the public bucket take.
    first = make_client(handler, rate_limit=2.0, burst=2)
    second = make_client(handler, rate_limit=2.0, burst=2)
    other = make_client(handler, rate_limit=2.0, burst=2)
    await first.execute("{ ok }", {}, token=TOKEN)
    await first.execute("{ ok }", {}, token=TOKEN)

    waiting = asyncio.create_task(second.execute("{ ok }", {}, token=TOKEN))
    free = asyncio.create_task(other.execute("{ ok }", {}, token="other-token"))
    public = asyncio.create_task(other.execute("{ ok }", {}, token=None))
    await asyncio.gather(waiting, free, public)

    assert order[:2] == [f"Bearer {TOKEN}"] * 2
    assert order[2:4] == ["Bearer other-token", "public"]
    assert order[4] == f"Bearer {TOKEN}"


async def test_newest_client_sizes_the_shared_bucket(make_client: Any) -> None:
    """A client built after a config reload sets the token's rate; older ones don't."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": {"ok": True}})

    old = make_client(handler, rate_limit=1.0, burst=1)
    await old.execute("{ ok }", {}, token=TOKEN)
    new = make_client(handler, rate_limit=100.0, burst=50)

    await new.execute("{ ok }", {}, token=TOKEN)
    await old.execute("{ ok }", {}, token=TOKEN)

    limiter = old._bucket(TOKEN).limiter
    assert limiter is new._bucket(TOKEN).limiter
    assert limiter.max_rate == 50


async def test_retry_after_pauses_every_request_with_the_token(
    make_client: Any, sleeps: Sleeps
) -> None:
    """A ``Retry-After`` holds other clients with the token, not other tokens."""
    answers = [error(429, **{"Retry-After": "5"})]
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("authorization", "public"))
        if answers:
            return answers.pop()
        return httpx.Response(200, json={"data": {"ok": True}})

    told = make_client(handler, max_retries=0)
    with pytest.raises(RateLimitedError):
        await told.execute("{ ok }", {}, token=TOKEN)
    other_token = make_client(handler)
    same_token = make_client(handler)

    await other_token.execute("{ ok }", {}, token="other-token")
    assert sleeps.waits == []
    await same_token.execute("{ ok }", {}, token=TOKEN)

    assert sleeps.waits == [5.0]
    assert len(sent) == 3


async def test_one_tokens_backlog_does_not_hold_another_token(
    make_client: Any,
) -> None:
    """A request waiting for its token's bucket leaves the client's slot free."""
    order: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        order.append(request.headers["authorization"])
        return httpx.Response(200, json={"data": {"ok": True}})

    client = make_client(handler, rate_limit=2.0, burst=1, concurrency=1)
    await client.execute("{ ok }", {}, token=TOKEN)

    waiting = asyncio.create_task(client.execute("{ ok }", {}, token=TOKEN))
    other = asyncio.create_task(client.execute("{ ok }", {}, token="other-token"))
    await asyncio.gather(waiting, other)

    assert order == [f"Bearer {TOKEN}", "Bearer other-token", f"Bearer {TOKEN}"]


async def test_concurrency_is_capped_per_client(make_client: Any) -> None:
    """No more than ``concurrency`` requests of one client are in flight."""
    in_flight = 0
    peak = 0
    release = asyncio.Event()
    full = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 3:
            full.set()
        await release.wait()
        in_flight -= 1
        return httpx.Response(200, json={"data": {"ok": True}})

    client = make_client(handler, concurrency=3)
    tasks = [
        asyncio.create_task(client.execute("{ ok }", {}, token=TOKEN)) for _ in range(8)
    ]
    await asyncio.wait_for(full.wait(), 5)
    for _ in range(20):
        await asyncio.sleep(0)
    assert in_flight == 3

    release.set()
    await asyncio.gather(*tasks)
    assert peak == 3


# --- Retry-After parsing ------------------------------------------------------------


NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("7", 7.0, id="seconds"),
        pytest.param(" 1.5 ", 1.5, id="fraction"),
        pytest.param("-3", 0.0, id="negative"),
        pytest.param("Thu, 03 Dec 2026 12:00:30 GMT", 30.0, id="http-date"),
        pytest.param("Thu, 03 Dec 2026 11:00:00 GMT", 0.0, id="past-date"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("nan", None, id="nan"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """``Retry-After`` reads as delta-seconds or an HTTP date, never negative."""
    assert parse_retry_after(value, now=NOW) == expected


# --- against the fake Atleta API over HTTP -------------------------------------


@pytest.fixture
def api() -> Iterator[FakeAtleta]:
    """The fake API with one project of 300 registrations, served on loopback."""
    with FakeAtleta(seed=3, projects=1, registrations=300, token=TOKEN) as fake:
        yield fake


def fake_watch(api: FakeAtleta, **fields: Any) -> Watch:
    """The registrations preset on the fake's TEST project, 25 a page."""
    preset = PRESETS["registrations"]
    values: dict[str, Any] = {
        "query": preset.query,
        "records": preset.records,
        "per_page": 25,
        "token": api.token,
    }
    values.update(fields)
    return make_watch(**values)


@pytest.fixture
async def http_client(sleeps: Sleeps, api: FakeAtleta) -> AsyncIterator[AtletaClient]:
    """A client of the fake API with a fast limiter and the recording sleep."""
    client = AtletaClient(
        api.url,
        rate_limit=10_000.0,
        burst=1000,
        concurrency=4,
        max_retries=2,
        sleep=sleeps,
        clock=sleeps.clock,
        timeout=10,
    )
    yield client
    await client.aclose()


async def test_fake_api_walk_reads_every_registration(
    api: FakeAtleta, http_client: AtletaClient
) -> None:
    """A walk of 300 registrations reads 12 pages, each record once."""
    result = await http_client.fetch(fake_watch(api))

    keys = {record["id"] for record in result.records}
    assert (result.complete, result.total, result.pages, result.requests) == (
        True,
        300,
        12,
        12,
    )
    assert len(keys) == len(result.records) == 300
    assert api.requests["project.registrations"] == 12


@pytest.mark.parametrize(
    ("kind", "params", "requests"),
    [
        pytest.param("http_500", {}, 13, id="500-then-ok"),
        pytest.param("http_502", {}, 13, id="502-then-ok"),
        pytest.param("http_503", {}, 13, id="503-then-ok"),
        pytest.param("drop", {}, 13, id="dropped-connection"),
        pytest.param("slow", {"seconds": 0.05}, 12, id="slow"),
        pytest.param("shift", {}, 26, id="shift-insert-rewalks"),
        pytest.param("shift", {"mode": "remove"}, 24, id="shift-remove-rewalks"),
        pytest.param("total_mismatch", {}, 24, id="total-mismatch-rewalks"),
    ],
)
async def test_fake_api_transient_faults_still_give_a_complete_walk(
    api: FakeAtleta,
    http_client: AtletaClient,
    kind: str,
    params: dict[str, Any],
    requests: int,
) -> None:
    """A fault that happens once costs a retry or a re-walk, never completeness."""
    api.faults.inject(kind, **params)

    result = await http_client.fetch(fake_watch(api))

    assert result.complete
    assert result.requests == requests
    assert len({record["id"] for record in result.records}) == result.total


async def test_fake_api_rate_limit_honours_retry_after(
    api: FakeAtleta, http_client: AtletaClient, sleeps: Sleeps
) -> None:
    """A 429 with ``Retry-After: 2`` from the server is waited out, then read."""
    api.faults.inject("rate_limit", retry_after=2)

    result = await http_client.fetch(fake_watch(api))

    assert sleeps.waits == [2.0]
    assert result.complete


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        pytest.param("shift", {}, id="insert"),
        pytest.param("shift", {"mode": "remove"}, id="remove"),
        pytest.param("total_mismatch", {"delta": 3}, id="total-mismatch"),
    ],
)
async def test_fake_api_churn_in_every_walk_is_incomplete(
    api: FakeAtleta, http_client: AtletaClient, kind: str, params: dict[str, Any]
) -> None:
    """A list that moves during the walk and the re-walk proves no absence."""
    api.faults.inject(kind, count=None, target="project.registrations", **params)

    result = await http_client.fetch(fake_watch(api))

    keys = [record["id"] for record in result.records]
    assert not result.complete
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    ("kind", "error_kind", "text"),
    [
        pytest.param("http_500", ServerError, "HTTP 500", id="500"),
        pytest.param("rate_limit", RateLimitedError, "HTTP 429", id="429"),
        pytest.param("drop", NetworkError, "RemoteProtocolError", id="drop"),
        pytest.param("malformed", MalformedResponseError, "not JSON", id="malformed"),
        pytest.param(
            "graphql_errors", GraphQLResponseError, "Internal server error", id="errors"
        ),
        pytest.param(
            "partial_errors",
            GraphQLResponseError,
            "at project.registrations",
            id="partial",
        ),
    ],
)
async def test_fake_api_lasting_faults_raise_their_kind(
    api: FakeAtleta,
    http_client: AtletaClient,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    error_kind: type[PollError],
    text: str,
) -> None:
    """A fault on every request raises its kind, and the token shows nowhere."""
    api.faults.inject(kind, count=None)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(error_kind) as caught:
        await http_client.fetch(fake_watch(api))

    exc = caught.value
    assert text in str(exc)
    assert "page 1 of watch 'TEST/registrations'" in str(exc)
    assert TOKEN not in str(exc)
    assert TOKEN not in repr(exc)
    assert all(TOKEN not in record.getMessage() for record in caplog.records)


async def test_fake_api_rate_limit_error_carries_retry_after(
    api: FakeAtleta, http_client: AtletaClient
) -> None:
    """After every retry a 429 error tells the scheduler how long to wait."""
    api.faults.inject("rate_limit", count=None, retry_after=4)

    with pytest.raises(RateLimitedError, match="after 3 attempts") as caught:
        await http_client.fetch(fake_watch(api))

    assert caught.value.retry_after == 4.0


@pytest.mark.parametrize("revoke", [False, True], ids=["unknown-token", "revoked"])
async def test_fake_api_refused_token_is_an_auth_error(
    api: FakeAtleta, http_client: AtletaClient, sleeps: Sleeps, revoke: bool
) -> None:
    """A token the API refuses (401) or revoked (403) fails at once."""
    watch = fake_watch(api)
    if revoke:
        api.revoke_token(TOKEN)
    else:
        watch = fake_watch(api, token="not-a-known-token")

    with pytest.raises(AuthError, match=r"HTTP 40[13]") as caught:
        await http_client.fetch(watch)

    assert TOKEN not in str(caught.value)
    assert api.requests["auth_failed"] == 1
    assert sleeps.waits == []


async def test_fake_api_public_event_watch_needs_no_token(
    api: FakeAtleta, http_client: AtletaClient
) -> None:
    """The public ``event`` preset reads one object without a token."""
    preset = PRESETS["event"]
    event_id = api.state()["projects"]["TEST"]["events"][0]
    watch = make_watch(
        name="event",
        entity=preset.entity,
        query=preset.query,
        records=preset.records,
        single=True,
        paginate=False,
        public=True,
        token=None,
        variables={"event": event_id},
    )

    result = await http_client.fetch(watch)

    assert [record["id"] for record in result.records] == [event_id]
    assert (result.complete, result.pages) == (True, 1)
