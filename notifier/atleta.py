"""The Atleta GraphQL client: auth, page walks, rate limit, retries, error kinds.

:meth:`AtletaClient.fetch` reads every record of a watch. A paginated watch
is read by a *walk*: every page, from 1 to ``last_page``, through the
``$page`` and ``$per_page`` variables (the query text is never edited).
Each walk is checked, because an offset-paginated list that changes while
it is read can repeat a record (an insertion before it pushes it onto the
next page) or skip one (a deletion pulls it onto a page already read):

- every page up to the highest ``last_page`` any page reported was read;
- no key appears on two pages;
- ``total`` is the same on every page;
- the number of unique records equals ``total``.

A walk failing any check is *unsound* and is walked once more. When the
second walk is sound, its records are the answer with ``complete=True``.
When it is unsound too, the answer holds every record either walk saw (the
later copy of a key wins) with ``complete=False``: the records seen are
real, but a record that is absent may have been skipped, so the caller must
not read absence as deletion. A ``total`` that disagrees with the pages in
either direction makes a walk unsound, since then the pages and the count
do not describe the same list and nothing proves the pages are whole.
A query that selects no ``total`` skips the count checks, and one without
``last_page`` is read page by page until a short page, so sound walks want
both selected.

The record list is found at ``watch.records``, a dotted path under
``data`` (for a single-object watch, the object itself). A missing path is
malformed, and so is a null where a list is expected, except on a page the
wrapper says is empty (``total`` 0, or past ``last_page``), where a Laravel
paginator may answer null for an empty list.

Failures are raised as :class:`~notifier.errors.PollError` subclasses after
the retries: 429, 500, 502, 503, 504, timeouts and connection errors are
retried with capped, jittered exponential backoff that honours
``Retry-After``; 401 and 403 raise :class:`~notifier.errors.AuthError` at
once; GraphQL ``errors`` raise :class:`~notifier.errors.GraphQLResponseError`
(retried only when they say the caller is rate limited); an answer that is
not JSON or lacks the record list raises
:class:`~notifier.errors.MalformedResponseError`. A ``Retry-After`` pauses
every request with the same token, since the server's limit is per token;
one longer than ``retry_after_cap`` is not slept at all: the error carries
it as ``retry_after`` for the caller to schedule by. Tokens never appear in log
lines or exception text, and no raised error chains back to an httpx
error (whose request holds the Authorization header).

All requests with the same token share one token bucket in the process
(public requests share another), and each client caps how many of its
requests are in flight at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import httpx
from graphql import GraphQLError, OperationDefinitionNode, parse
from tenacity import RetryCallState

from notifier._failures import Failure, graphql_failure, parse_retry_after, scrub
from notifier._pacing import (
    Bucket,
    RetryPolicy,
    Sleep,
    failure_of,
    next_serial,
    shared_bucket,
)
from notifier._walk import (
    Page,
    Progress,
    Walk,
    Walker,
    read_page,
    read_single,
    request_label,
)
from notifier.errors import (
    AuthError,
    MalformedResponseError,
    NetworkError,
    PollError,
    RateLimitedError,
    ServerError,
)
from notifier.model import JSON, Watch

__all__ = [
    "AtletaClient",
    "FetchResult",
    "Progress",
    "declared_variables",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

USER_AGENT = "atleta-notifier"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_VARIABLE_DEFINITION = re.compile(r"\$(\w+)\s*:")


@dataclass(frozen=True, kw_only=True)
class FetchResult:
    """Every record one poll of a watch saw, and how far the walk can be trusted.

    ``complete`` is False when the walk could have skipped records, so an
    absent record proves nothing. ``pages`` counts page answers and
    ``requests`` HTTP requests (retries included) over every walk of the
    poll; ``total`` is the ``total`` on the last page of the last walk.
    """

    records: list[JSON]
    complete: bool
    total: int | None
    pages: int
    requests: int


@dataclass
class _Tally:
    """Pages and requests counted over one fetch."""

    pages: int = 0
    requests: int = 0


@lru_cache(maxsize=256)
def declared_variables(query: str) -> frozenset[str]:
    """The names of the variables the operations of ``query`` declare."""
    try:
        document = parse(query)
    except GraphQLError:
        # The server reports the syntax error; guess the declarations meanwhile.
        return frozenset(_VARIABLE_DEFINITION.findall(query))
    return frozenset(
        definition.variable.name.value
        for node in document.definitions
        if isinstance(node, OperationDefinitionNode)
        for definition in node.variable_definitions or ()
    )


class AtletaClient:
    """An async client of the Atleta GraphQL API, shared by every watch.

    ``rate_limit`` (requests per second) and ``burst`` size the token bucket
    shared by every client of the process that uses the same token (the
    newest client to use a token sets its size); ``concurrency`` caps the
    requests of this client in flight; ``max_retries`` counts retries after
    the first attempt. ``transport``, ``sleep`` and ``clock`` (monotonic
    seconds, by default the event loop's) are for tests; an injected sleep
    needs a clock that it moves.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30,
        rate_limit: float = 1.0,
        burst: int = 5,
        concurrency: int = 4,
        max_retries: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        retry_after_cap: float = 60.0,
    ) -> None:
        if rate_limit <= 0 or burst < 1 or concurrency < 1 or max_retries < 0:
            raise ValueError(
                "rate_limit, burst and concurrency must be positive, "
                "max_retries zero or more"
            )
        self.url = url
        self.rate_limit = rate_limit
        self.burst = burst
        self._period = burst / rate_limit
        self._serial = next_serial()
        self.max_retries = max_retries
        self._sleep = sleep
        self._clock = clock
        self._retries = RetryPolicy(
            attempts=max_retries + 1,
            sleep=sleep,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_after_cap=retry_after_cap,
        )
        self._semaphore = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            ),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            transport=transport,
        )

    async def __aenter__(self) -> AtletaClient:
        """Use the client as an async context manager that closes it on exit."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the client."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def execute(
        self, query: str, variables: Mapping[str, JSON], *, token: str | None
    ) -> dict[str, JSON]:
        """Send one query and return its ``data`` object.

        :raises PollError: a subclass saying why, after the retries.
        """
        return await self._request(query, variables, token, "request", _Tally())

    async def fetch(
        self, watch: Watch, *, progress: Progress | None = None
    ) -> FetchResult:
        """Read every record of ``watch``, walking every page of a paginated list.

        An unsound walk is walked once more; see the module docstring for
        the checks and for what ``complete=False`` means.

        :raises PollError: a subclass saying why, after the retries.
        """
        if watch.token is None and not watch.public:
            raise AuthError(
                f"watch {watch.id!r} needs an API token and has none: "
                "set [api] token or the project's token"
            )
        tally = _Tally()
        if watch.single:
            return await self._fetch_single(watch, tally)

        first = await self._walk(watch, tally, progress)
        if first.sound:
            return _result(first, complete=True, tally=tally)
        logger.info(
            "walk unsound watch=%s problems=%r; walking again", watch.id, first.problems
        )
        second = await self._walk(watch, tally, progress)
        if second.sound:
            return _result(second, complete=True, tally=tally)
        logger.warning(
            "walk unsound twice watch=%s problems=%r; absences prove nothing this poll",
            watch.id,
            second.problems,
        )
        merged = Walk(records=first.records | second.records, total=second.total)
        return _result(merged, complete=False, tally=tally)

    async def _fetch_single(self, watch: Watch, tally: _Tally) -> FetchResult:
        """Read the one object of a single-object watch."""
        variables = self._variables(watch, None)
        where = request_label(watch, None)
        data = await self._request(watch.query, variables, watch.token, where, tally)
        return FetchResult(
            records=[read_single(data, watch)],
            complete=True,
            total=None,
            pages=1,
            requests=tally.requests,
        )

    async def _walk(
        self, watch: Watch, tally: _Tally, progress: Progress | None
    ) -> Walk:
        """Read every page of ``watch`` once and check that the pages add up."""
        walker = Walker(
            watch=watch,
            read=lambda number: self._page(watch, number, tally),
            concurrency=self._concurrency,
            progress=progress,
        )
        paginated = watch.paginate and "page" in declared_variables(watch.query)
        return await walker.walk(paginated=paginated)

    async def _page(self, watch: Watch, number: int | None, tally: _Tally) -> Page:
        """Fetch one page (or the only answer of an unpaginated watch) and read it."""
        data = await self._request(
            watch.query,
            self._variables(watch, number),
            watch.token,
            request_label(watch, number),
            tally,
        )
        tally.pages += 1
        return read_page(data, watch, number or 1)

    def _variables(self, watch: Watch, page: int | None) -> dict[str, JSON]:
        """The variables of one request of ``watch``."""
        declared = declared_variables(watch.query)
        variables = dict(watch.variables)
        if "project" in declared:
            variables["project"] = watch.project.id
        if page is not None:
            variables["page"] = page
            if "per_page" in declared:
                variables["per_page"] = watch.per_page
        return variables

    async def _request(
        self,
        query: str,
        variables: Mapping[str, JSON],
        token: str | None,
        where: str,
        tally: _Tally,
    ) -> dict[str, JSON]:
        """Send one query with retries and return its ``data`` object."""
        body = json.dumps({"query": query, "variables": dict(variables)}).encode()
        attempts = 0

        async def attempt() -> dict[str, JSON]:
            nonlocal attempts
            attempts += 1
            tally.requests += 1
            try:
                return await self._attempt(body, token, where)
            except Failure as failure:
                # Masked before the retry's log line can show it.
                failure.detail = scrub(failure.detail, token)
                if failure.retry_after is not None:
                    pause = self._retries.pause(failure.retry_after)
                    self._bucket(token).hold(self._now() + pause)
                raise

        failure: Failure | None = None
        try:
            retrying = self._retries.retrying(
                lambda state: _log_retry(state, where, self._retries.attempts)
            )
            return await retrying(attempt)
        except Failure as exc:
            failure = exc
        # Raised outside the except block so that no exception chains back
        # to an httpx error, whose request holds the Authorization header.
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        message = f"{failure.detail} on {where}{tries}"
        raise failure.error(message, retry_after=failure.retry_after)

    async def _attempt(
        self, body: bytes, token: str | None, where: str
    ) -> dict[str, JSON]:
        """Send one HTTP request and classify its answer."""
        # The token's pace is awaited before taking a slot, so that one
        # token's backlog never holds the slots that another token could use.
        await self._bucket(token).acquire(self._now(), self._sleep)
        async with self._semaphore:
            started = time.perf_counter()
            response = await self._post(body, token)
        logger.debug(
            "request %s status=%d bytes=%d ms=%.0f",
            where,
            response.status_code,
            len(response.content),
            (time.perf_counter() - started) * 1000,
        )
        return _classify(response, anonymous=token is None)

    async def _post(self, body: bytes, token: str | None) -> httpx.Response:
        """POST one query; a timeout or a failed connection is a :class:`Failure`."""
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            return await self._http.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            detail = f"timed out ({type(exc).__name__})"
            failure = Failure(NetworkError, detail, retryable=True)
        except httpx.TransportError as exc:
            detail = f"connection failed ({type(exc).__name__}: {exc})"
            failure = Failure(NetworkError, scrub(detail, token), retryable=True)
        # Raised outside the except blocks, so that it holds no httpx error.
        raise failure

    def _bucket(self, token: str | None) -> Bucket:
        """The pace shared by every request with ``token`` in this event loop."""
        return shared_bucket(
            token, serial=self._serial, burst=self.burst, period=self._period
        )

    def _now(self) -> float:
        """Monotonic seconds on the client's clock."""
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()


def _classify(response: httpx.Response, *, anonymous: bool) -> dict[str, JSON]:
    """Return the ``data`` of a good answer, or raise a :class:`Failure` naming why."""
    status = response.status_code
    reason = f"HTTP {status} {response.reason_phrase}".rstrip()
    if status in (401, 403) and anonymous:
        raise Failure(
            AuthError,
            f"{reason}: the API refused a request without a token "
            "(the query may need one, or the public API is limiting this address)",
        )
    if status in (401, 403):
        raise Failure(AuthError, f"{reason}: the API refused the token")
    if status >= 500 or status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        error: type[PollError] = RateLimitedError if status == 429 else ServerError
        raise Failure(
            error, reason, retryable=status in RETRY_STATUSES, retry_after=retry_after
        )

    try:
        payload = response.json()
    except (ValueError, UnicodeDecodeError):
        kind = response.headers.get("Content-Type", "no content type")
        raise Failure(
            MalformedResponseError, f"{reason} answer is not JSON ({kind})"
        ) from None
    if isinstance(payload, dict) and payload.get("errors"):
        raise graphql_failure(payload["errors"])
    if not 200 <= status < 300:
        raise Failure(MalformedResponseError, f"{reason} is not a GraphQL answer")
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        raise Failure(MalformedResponseError, f"{reason} answer has no data object")
    return data


def _result(walk: Walk, *, complete: bool, tally: _Tally) -> FetchResult:
    """The fetch result of a walk."""
    return FetchResult(
        records=list(walk.records.values()),
        complete=complete,
        total=walk.total,
        pages=tally.pages,
        requests=tally.requests,
    )


def _log_retry(state: RetryCallState, where: str, attempts: int) -> None:
    """Log one WARNING line per retry, with the attempt number."""
    failure = failure_of(state)
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning(
        "retry %s attempt=%d/%d error=%s wait=%.2fs",
        where,
        state.attempt_number + 1,
        attempts,
        failure.detail if failure is not None else "unknown",
        wait,
    )
