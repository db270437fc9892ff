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
import email.utils
import hashlib
import itertools
import json
import logging
import math
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

import httpx
from aiolimiter import AsyncLimiter
from graphql import GraphQLError, OperationDefinitionNode, parse
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.stop import stop_after_attempt, stop_any, stop_base
from tenacity.wait import wait_exponential_jitter

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
from notifier.model import JSON, Watch, canonical_json

__all__ = [
    "AtletaClient",
    "FetchResult",
    "Progress",
    "declared_variables",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

USER_AGENT = "atleta-notifier"
MAX_PAGES = 100_000
"""The most pages one walk reads; a larger ``last_page`` is an error."""
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_RATE_LIMIT_WORDS = re.compile(r"rate.?limit|too many requests|throttl", re.IGNORECASE)
_VARIABLE_DEFINITION = re.compile(r"\$(\w+)\s*:")

Sleep = Callable[[float], Awaitable[None]]
Progress = Callable[[int, int], None]

# One token bucket per token (by hash, so no token is kept here) per event
# loop: an aiolimiter bucket must not be shared between loops, and a daemon
# runs exactly one, so "per loop" is "per process" where it matters.
_BUCKETS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Bucket]] = (
    weakref.WeakKeyDictionary()
)
_SERIALS = itertools.count()


@dataclass(kw_only=True)
class _Bucket:
    """The pace of one token: a token bucket, and a pause a ``Retry-After`` asked for.

    The pause holds every request with the token, not only the one that
    was told to wait: the server's limit is per token, so the others would
    only be refused too.
    """

    limiter: AsyncLimiter
    sized_by: int
    paused_until: float = 0.0


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


def parse_retry_after(
    value: str | None, *, now: datetime | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date).

    Returns None when the value is absent or unreadable, and never less
    than zero.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class _Failure(Exception):
    """One failed attempt, before it becomes the public error after the retries."""

    def __init__(
        self,
        error: type[PollError],
        detail: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass
class _Tally:
    """Pages and requests counted over one fetch."""

    pages: int = 0
    requests: int = 0


@dataclass(frozen=True, kw_only=True)
class _Page:
    """One page of a walk: its records and what its pagination wrapper said."""

    number: int
    records: list[JSON]
    total: int | None
    last_page: int | None


@dataclass(kw_only=True)
class _Walk:
    """The records of one walk, keyed, and why the walk is unsound (if it is)."""

    records: dict[str, JSON] = field(default_factory=dict)
    total: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        """True when nothing suggests that a record was skipped."""
        return not self.problems


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
        self._serial = next(_SERIALS)
        self.max_retries = max_retries
        self._sleep = sleep
        self._clock = clock
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_base, max=backoff_cap, jitter=backoff_base
        )
        self._retry_after_cap = retry_after_cap
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
        merged = _Walk(records=first.records | second.records, total=second.total)
        return _result(merged, complete=False, tally=tally)

    async def _fetch_single(self, watch: Watch, tally: _Tally) -> FetchResult:
        """Read the one object of a single-object watch."""
        variables = self._variables(watch, None)
        where = _where(watch, None)
        data = await self._request(watch.query, variables, watch.token, where, tally)
        return FetchResult(
            records=[_single(data, watch)],
            complete=True,
            total=None,
            pages=1,
            requests=tally.requests,
        )

    async def _walk(
        self, watch: Watch, tally: _Tally, progress: Progress | None
    ) -> _Walk:
        """Read every page of ``watch`` once and check that the pages add up."""
        paginated = watch.paginate and "page" in declared_variables(watch.query)
        first = await self._page(watch, 1 if paginated else None, tally)
        pages = {1: first}
        if not paginated:
            if (first.last_page or 1) > 1:
                raise IncompleteWalkError(
                    f"watch {watch.id!r} reads one page of {first.last_page}: "
                    "its query must declare $page (and $per_page) to be walked"
                )
            return _check(pages, watch)

        if first.last_page is None:
            await self._walk_to_short_page(watch, pages, tally, progress)
            return _check(pages, watch)

        if progress is not None:
            progress(1, max(1, first.last_page))
        highest = first.last_page
        while True:
            if highest > MAX_PAGES:
                raise IncompleteWalkError(
                    f"watch {watch.id!r} reports {highest} pages, more than the "
                    f"{MAX_PAGES} a walk reads: raise its per_page"
                )
            wanted = [n for n in range(2, highest + 1) if n not in pages]
            if not wanted:
                return _check(pages, watch)
            await self._pages(watch, wanted, pages, tally, progress)
            # A list that grows during the walk reports a later last_page.
            highest = max(page.last_page or 1 for page in pages.values())

    async def _pages(
        self,
        watch: Watch,
        numbers: Iterable[int],
        pages: dict[int, _Page],
        tally: _Tally,
        progress: Progress | None,
    ) -> None:
        """Fetch ``numbers`` into ``pages``, as many at once as the cap allows."""
        queue = iter(numbers)

        async def worker() -> None:
            for number in queue:
                pages[number] = await self._page(watch, number, tally)
                if progress is not None:
                    last = max(page.last_page or 1 for page in pages.values())
                    progress(len(pages), last)

        workers = [asyncio.create_task(worker()) for _ in range(self._concurrency)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise

    async def _walk_to_short_page(
        self,
        watch: Watch,
        pages: dict[int, _Page],
        tally: _Tally,
        progress: Progress | None,
    ) -> None:
        """Without ``last_page``, read pages one by one until a short or stale one."""
        seen = {_key(record, watch, 1) for record in pages[1].records}
        number = 1
        while len(pages[number].records) >= watch.per_page and number < MAX_PAGES:
            number += 1
            page = await self._page(watch, number, tally)
            pages[number] = page
            if progress is not None:
                progress(number, number)
            keys = {_key(record, watch, number) for record in page.records}
            if keys <= seen:
                # An API that ignores $page repeats a page forever.
                break
            seen |= keys
        if number >= MAX_PAGES:
            raise IncompleteWalkError(
                f"watch {watch.id!r} has over {MAX_PAGES} pages: raise its per_page"
            )

    async def _page(self, watch: Watch, number: int | None, tally: _Tally) -> _Page:
        """Fetch one page (or the only answer of an unpaginated watch) and read it."""
        data = await self._request(
            watch.query,
            self._variables(watch, number),
            watch.token,
            _where(watch, number),
            tally,
        )
        tally.pages += 1
        return _read_page(data, watch, number or 1)

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
            except _Failure as failure:
                # Masked before the retry's log line can show it.
                failure.detail = _scrub(failure.detail, token)
                if failure.retry_after is not None:
                    pause = min(failure.retry_after, self._retry_after_cap)
                    bucket = self._bucket(token)
                    bucket.paused_until = max(bucket.paused_until, self._now() + pause)
                raise

        failure: _Failure | None = None
        try:
            return await self._retrying(where)(attempt)
        except _Failure as exc:
            failure = exc
        # Raised outside the except block so that no exception chains back
        # to an httpx error, whose request holds the Authorization header.
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        message = f"{failure.detail} on {where}{tries}"
        raise failure.error(message, retry_after=failure.retry_after)

    def _retrying(self, where: str) -> AsyncRetrying:
        """The retry policy of one request: which failures, how long between."""
        return AsyncRetrying(
            sleep=self._sleep,
            stop=stop_any(
                stop_after_attempt(self.max_retries + 1),
                _RetryAfterTooLong(self._retry_after_cap),
            ),
            wait=self._wait,
            retry=retry_if_exception(
                lambda exc: isinstance(exc, _Failure) and exc.retryable
            ),
            before_sleep=lambda state: _log_retry(state, where, self.max_retries + 1),
            reraise=True,
        )

    async def _attempt(
        self, body: bytes, token: str | None, where: str
    ) -> dict[str, JSON]:
        """Send one HTTP request and classify its answer."""
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        # The token's pace is awaited before taking a slot, so that one
        # token's backlog never holds the slots that another token could use.
        bucket = self._bucket(token)
        pause = bucket.paused_until - self._now()
        if pause > 0:
            await self._sleep(pause)
        await bucket.limiter.acquire()
        async with self._semaphore:
            started = time.perf_counter()
            failure: _Failure | None = None
            try:
                response = await self._http.post(
                    self.url, content=body, headers=headers
                )
            except httpx.TimeoutException as exc:
                detail = f"timed out ({type(exc).__name__})"
                failure = _Failure(NetworkError, detail, retryable=True)
            except httpx.TransportError as exc:
                detail = f"connection failed ({type(exc).__name__}: {exc})"
                failure = _Failure(NetworkError, _scrub(detail, token), retryable=True)
        if failure is not None:
            raise failure
        logger.debug(
            "request %s status=%d bytes=%d ms=%.0f",
            where,
            response.status_code,
            len(response.content),
            (time.perf_counter() - started) * 1000,
        )
        return _classify(response, anonymous=token is None)

    def _bucket(self, token: str | None) -> _Bucket:
        """The pace shared by every request with ``token`` in this event loop."""
        key = "public"
        if token is not None:
            key = "token:" + hashlib.sha256(token.encode()).hexdigest()
        buckets = _BUCKETS.setdefault(asyncio.get_running_loop(), {})
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Bucket(limiter=self._new_limiter(), sized_by=-1)
        if bucket.sized_by < self._serial:
            # The newest client sizes the bucket, so that a reloaded config's
            # rate applies; waiters of the old limiter still get their turn.
            limiter = bucket.limiter
            if (limiter.max_rate, limiter.time_period) != (self.burst, self._period):
                bucket.limiter = self._new_limiter()
            bucket.sized_by = self._serial
        return bucket

    def _new_limiter(self) -> AsyncLimiter:
        """A token bucket of this client's size."""
        return AsyncLimiter(self.burst, self._period)

    def _now(self) -> float:
        """Monotonic seconds on the client's clock."""
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: ``Retry-After`` if given, else backoff."""
        failure = _failure_of(state)
        if failure is not None and failure.retry_after is not None:
            return min(failure.retry_after, self._retry_after_cap)
        return float(self._backoff(state))


class _RetryAfterTooLong(stop_base):
    """Stop at once when the server asks for a longer pause than the cap.

    Sleeping that long would hold the poll and retrying sooner would be
    impolite; the error carries ``retry_after`` so the caller can plan.
    """

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> bool:
        """True when the last failure asked for a pause over the cap."""
        failure = _failure_of(retry_state)
        retry_after = None if failure is None else failure.retry_after
        return retry_after is not None and retry_after > self.cap


def _classify(response: httpx.Response, *, anonymous: bool) -> dict[str, JSON]:
    """Return the ``data`` of a good answer, or raise a :class:`_Failure` naming why."""
    status = response.status_code
    reason = f"HTTP {status} {response.reason_phrase}".rstrip()
    if status in (401, 403) and anonymous:
        raise _Failure(
            AuthError,
            f"{reason}: the API refused a request without a token "
            "(the query may need one, or the public API is limiting this address)",
        )
    if status in (401, 403):
        raise _Failure(AuthError, f"{reason}: the API refused the token")
    if status >= 500 or status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        error: type[PollError] = RateLimitedError if status == 429 else ServerError
        raise _Failure(
            error, reason, retryable=status in RETRY_STATUSES, retry_after=retry_after
        )

    try:
        payload = response.json()
    except (ValueError, UnicodeDecodeError):
        kind = response.headers.get("Content-Type", "no content type")
        raise _Failure(
            MalformedResponseError, f"{reason} answer is not JSON ({kind})"
        ) from None
    if isinstance(payload, dict) and payload.get("errors"):
        raise _graphql_failure(payload["errors"])
    if not 200 <= status < 300:
        raise _Failure(MalformedResponseError, f"{reason} is not a GraphQL answer")
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        raise _Failure(MalformedResponseError, f"{reason} answer has no data object")
    return data


def _graphql_failure(errors: JSON) -> _Failure:
    """A failure for GraphQL ``errors``, retryable if it reads as a rate limit."""
    items = errors if isinstance(errors, list) else [errors]
    parts = [_describe_error(item) for item in items[:3]]
    if len(items) > 3:
        parts.append(f"and {len(items) - 3} more")
    detail = "GraphQL errors: " + "; ".join(parts)
    limits = [_rate_limit_of(item) for item in items if isinstance(item, dict)]
    if any(limited for limited, _ in limits):
        retry_after = next((after for _, after in limits if after is not None), None)
        return _Failure(
            RateLimitedError, detail, retryable=True, retry_after=retry_after
        )
    return _Failure(GraphQLResponseError, detail)


def _rate_limit_of(item: dict[str, JSON]) -> tuple[bool, float | None]:
    """Whether one GraphQL error says "rate limited", and any wait it names."""
    extensions = item.get("extensions")
    if not isinstance(extensions, dict):
        extensions = {}
    signals = (item.get("message"), extensions.get("code"), extensions.get("category"))
    limited = any(_RATE_LIMIT_WORDS.search(str(signal)) for signal in signals if signal)
    after = extensions.get("retry_after", extensions.get("retryAfter"))
    return limited, parse_retry_after(None if after is None else str(after))


def _describe_error(item: JSON) -> str:
    """One GraphQL error as text: message, path and the ``extensions`` detail."""
    if not isinstance(item, dict):
        return _clip(canonical_json(item))
    text = str(item.get("message", "(no message)"))
    path = item.get("path")
    if isinstance(path, list) and path:
        text += " at " + ".".join(str(part) for part in path)
    extensions = item.get("extensions")
    if extensions:
        # Atleta puts the useful part (validation detail) here, not in message.
        text += " " + canonical_json(extensions)
    return _clip(text)


def _read_page(data: dict[str, JSON], watch: Watch, number: int) -> _Page:
    """Find the record list of ``watch`` in one page's data and its wrapper's counts.

    A null list counts as empty only where the wrapper says the page is
    empty (``total`` 0, or a page past ``last_page``), as a Laravel
    paginator may answer; anywhere else it is malformed.
    """
    wrapper, name = _parent(data, watch, number)
    if name not in wrapper:
        raise _malformed(watch, number, f"data.{watch.records} is missing")
    total = _count(wrapper.get("total"))
    last_page = _count(wrapper.get("last_page"))
    current = _count(wrapper.get("current_page"))
    if current is not None and watch.paginate and current != number:
        raise _malformed(
            watch, number, f"asked for page {number} and got page {current}"
        )

    records = wrapper[name]
    if records is None and (
        total == 0 or (last_page is not None and number > last_page)
    ):
        records = []
    if not isinstance(records, list):
        found = "null" if records is None else type(records).__name__
        raise _malformed(watch, number, f"data.{watch.records} is {found}, not a list")
    return _Page(number=number, records=records, total=total, last_page=last_page)


def _single(data: dict[str, JSON], watch: Watch) -> JSON:
    """The object a single-object watch reads."""
    wrapper, name = _parent(data, watch, None)
    record = wrapper.get(name)
    if not isinstance(record, dict):
        found = "missing" if name not in wrapper else "null"
        if record is not None:
            found = type(record).__name__
        raise _malformed(
            watch,
            None,
            f"data.{watch.records} is {found}, not an object "
            "(an unknown id, or no access to it)",
        )
    return record


def _parent(
    data: dict[str, JSON], watch: Watch, number: int | None
) -> tuple[dict[str, JSON], str]:
    """The object holding the last segment of ``watch.records``, and that segment."""
    *steps, name = watch.records.split(".")
    node: JSON = data
    walked = "data"
    for step in steps:
        node = node.get(step) if isinstance(node, dict) else None
        walked += "." + step
        if not isinstance(node, dict):
            raise _malformed(
                watch,
                number,
                f"{walked} is {'null or missing' if node is None else 'not an object'}",
            )
    return node, name


def _check(pages: Mapping[int, _Page], watch: Watch) -> _Walk:
    """Merge the pages of one walk by key and list what makes the walk unsound."""
    walk = _Walk()
    duplicates = 0
    for number in sorted(pages):
        for record in pages[number].records:
            key = _key(record, watch, number)
            if key in walk.records:
                duplicates += 1
                del walk.records[key]
            walk.records[key] = record
    totals = [page.total for _, page in sorted(pages.items()) if page.total is not None]
    last_pages = {
        page.last_page for page in pages.values() if page.last_page is not None
    }
    walk.total = totals[-1] if totals else None

    if duplicates:
        walk.problems.append(f"{duplicates} records on two pages")
    if len(set(totals)) > 1:
        walk.problems.append(f"total moved from {totals[0]} to {totals[-1]}")
    if len(last_pages) > 1:
        walk.problems.append(
            f"last_page moved between {min(last_pages)} and {max(last_pages)}"
        )
    if walk.total is not None and walk.total != len(walk.records):
        walk.problems.append(f"{len(walk.records)} records but total {walk.total}")
    return walk


def _key(record: JSON, watch: Watch, number: int) -> str:
    """The key of ``record`` as text (``watch.key`` may be a dotted path)."""
    value: JSON = record
    for step in watch.key.split("."):
        value = value.get(step) if isinstance(value, dict) else None
    if value is None or isinstance(value, bool | dict | list):
        raise _malformed(watch, number, f"a record has no usable key {watch.key!r}")
    return str(value)


def _result(walk: _Walk, *, complete: bool, tally: _Tally) -> FetchResult:
    """The fetch result of a walk."""
    return FetchResult(
        records=list(walk.records.values()),
        complete=complete,
        total=walk.total,
        pages=tally.pages,
        requests=tally.requests,
    )


def _malformed(watch: Watch, number: int | None, detail: str) -> MalformedResponseError:
    """A malformed-answer error naming the watch and page."""
    return MalformedResponseError(f"{detail} on {_where(watch, number)}")


def _where(watch: Watch, number: int | None) -> str:
    """Which request this is, for log lines and error messages."""
    if number is None:
        return f"watch {watch.id!r}"
    return f"page {number} of watch {watch.id!r}"


def _count(value: JSON) -> int | None:
    """A pagination count, or None when absent or not an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _failure_of(state: RetryCallState) -> _Failure | None:
    """The failure of the attempt that just ended, if it failed with one."""
    if state.outcome is None or not state.outcome.failed:
        return None
    exc = state.outcome.exception()
    return exc if isinstance(exc, _Failure) else None


def _log_retry(state: RetryCallState, where: str, attempts: int) -> None:
    """Log one WARNING line per retry, with the attempt number."""
    failure = _failure_of(state)
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning(
        "retry %s attempt=%d/%d error=%s wait=%.2fs",
        where,
        state.attempt_number + 1,
        attempts,
        failure.detail if failure is not None else "unknown",
        wait,
    )


def _scrub(text: str, token: str | None) -> str:
    """``text`` with any copy of ``token`` masked."""
    if token:
        text = text.replace(token, "[token]")
    return text


def _clip(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
