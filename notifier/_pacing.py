"""When a request may go: shared token buckets, ``Retry-After`` pauses, retries.

Every request with the same token shares one :class:`Bucket` in the process
(requests without a token share another): a token bucket, and the pause a
``Retry-After`` asked for. :class:`RetryPolicy` says which failures are
retried, how long to wait between attempts (capped, jittered exponential
backoff, or the ``Retry-After`` when the server named one), and when to
stop at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.stop import stop_after_attempt, stop_any, stop_base
from tenacity.wait import wait_exponential_jitter

from notifier._failures import Failure

Sleep = Callable[[float], Awaitable[None]]

# One token bucket per token (by hash, so no token is kept here) per event
# loop: an aiolimiter bucket must not be shared between loops, and a daemon
# runs exactly one, so "per loop" is "per process" where it matters.
_BUCKETS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Bucket]] = (
    weakref.WeakKeyDictionary()
)
_SERIALS = itertools.count()


@dataclass(kw_only=True)
class Bucket:
    """The pace of one token: a token bucket, and a pause a ``Retry-After`` asked for.

    The pause holds every request with the token, not only the one that
    was told to wait: the server's limit is per token, so the others would
    only be refused too.
    """

    limiter: AsyncLimiter
    sized_by: int
    paused_until: float = 0.0

    def hold(self, until: float) -> None:
        """Pause every request with the token until ``until`` (monotonic seconds)."""
        self.paused_until = max(self.paused_until, until)

    async def acquire(self, now: float, sleep: Sleep) -> None:
        """Wait out any pause from ``now`` on, then take a token from the bucket."""
        pause = self.paused_until - now
        if pause > 0:
            await sleep(pause)
        await self.limiter.acquire()


def next_serial() -> int:
    """A number for a new client, higher than that of every older client."""
    return next(_SERIALS)


def shared_bucket(
    token: str | None, *, serial: int, burst: int, period: float
) -> Bucket:
    """The bucket of ``token`` in this event loop, sized by the newest client.

    ``serial`` is the asking client's :func:`next_serial`; a client newer
    than the one that last sized the bucket sizes it to ``burst`` requests
    per ``period`` seconds.
    """
    key = "public"
    if token is not None:
        key = "token:" + hashlib.sha256(token.encode()).hexdigest()
    buckets = _BUCKETS.setdefault(asyncio.get_running_loop(), {})
    bucket = buckets.get(key)
    if bucket is None:
        bucket = buckets[key] = Bucket(limiter=AsyncLimiter(burst, period), sized_by=-1)
    if bucket.sized_by < serial:
        # The newest client sizes the bucket, so that a reloaded config's
        # rate applies; waiters of the old limiter still get their turn.
        limiter = bucket.limiter
        if (limiter.max_rate, limiter.time_period) != (burst, period):
            bucket.limiter = AsyncLimiter(burst, period)
        bucket.sized_by = serial
    return bucket


class RetryPolicy:
    """Which failures are retried, how long between attempts, and when to stop.

    ``attempts`` counts the first attempt too. A ``Retry-After`` longer than
    ``retry_after_cap`` stops the retries at once.
    """

    def __init__(
        self,
        *,
        attempts: int,
        sleep: Sleep,
        backoff_base: float,
        backoff_cap: float,
        retry_after_cap: float,
    ) -> None:
        self.attempts = attempts
        self.retry_after_cap = retry_after_cap
        self._sleep = sleep
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_base, max=backoff_cap, jitter=backoff_base
        )

    def pause(self, retry_after: float) -> float:
        """Seconds to pause for a ``Retry-After`` of ``retry_after``, capped."""
        return min(retry_after, self.retry_after_cap)

    def retrying(self, before_sleep: Callable[[RetryCallState], None]) -> AsyncRetrying:
        """A retry loop for one request, calling ``before_sleep`` before each wait."""
        return AsyncRetrying(
            sleep=self._sleep,
            stop=stop_any(
                stop_after_attempt(self.attempts),
                _RetryAfterTooLong(self.retry_after_cap),
            ),
            wait=self._wait,
            retry=retry_if_exception(
                lambda exc: isinstance(exc, Failure) and exc.retryable
            ),
            before_sleep=before_sleep,
            reraise=True,
        )

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: ``Retry-After`` if given, else backoff."""
        failure = failure_of(state)
        if failure is not None and failure.retry_after is not None:
            return self.pause(failure.retry_after)
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
        failure = failure_of(retry_state)
        retry_after = None if failure is None else failure.retry_after
        return retry_after is not None and retry_after > self.cap


def failure_of(state: RetryCallState) -> Failure | None:
    """The failure of the attempt that just ended, if it failed with one."""
    if state.outcome is None or not state.outcome.failed:
        return None
    exc = state.outcome.exception()
    return exc if isinstance(exc, Failure) else None
