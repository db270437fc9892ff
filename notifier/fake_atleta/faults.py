"""Faults the fake API injects on demand, and the request counter.

A fault has a kind, a count of requests it still applies to (``None`` for
every request until cleared) and an optional request-kind target such as
``project.registrations``. The server asks ``take(kind)`` once per GraphQL
request and applies the first fault that matches.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS = frozenset(
    {
        "http_500", "http_502", "http_503", "rate_limit", "slow", "drop",
        "malformed", "graphql_errors", "partial_errors", "shift", "total_mismatch",
    }
)  # fmt: skip
DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "rate_limit": {"retry_after": 1},
    "slow": {"seconds": 2.0},
    "shift": {"mode": "insert"},
    "total_mismatch": {"delta": 1},
    "graphql_errors": {"message": "Internal server error"},
    "partial_errors": {"message": "Internal server error"},
}


@dataclass(kw_only=True)
class Fault:
    """One injected fault and how many more requests it applies to."""

    kind: str
    remaining: int | None
    target: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def matches(self, request_kind: str) -> bool:
        """True when this fault applies to a request of ``request_kind``."""
        if self.target is None:
            return True
        return request_kind == self.target or request_kind.startswith(self.target + ".")

    def to_json(self) -> dict[str, Any]:
        """The fault as a JSON-ready dict."""
        return {
            "kind": self.kind,
            "remaining": self.remaining,
            "target": self.target,
            "params": dict(self.params),
        }


class Faults:
    """The queue of pending faults; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Fault] = []
        self.applied: Counter[str] = Counter()

    def inject(
        self,
        kind: str,
        *,
        count: int | None = 1,
        target: str | None = None,
        **params: Any,
    ) -> Fault:
        """Queue a fault for the next ``count`` matching requests (None: all).

        Parameters per kind: ``rate_limit`` takes ``retry_after`` seconds,
        ``slow`` takes ``seconds``, ``shift`` takes ``mode`` ("insert" puts a
        new registration, and its order, first so one record repeats on the
        next page; "remove" cancels the first active registration so one is
        skipped; it acts after the answer, on the project the query named),
        ``total_mismatch`` takes ``delta``, the two GraphQL error kinds take
        ``message``. ``drop`` closes the socket without any answer.

        :raises ValueError: for an unknown kind or a count below 1.
        """
        if kind not in KINDS:
            raise ValueError(
                f"unknown fault {kind!r}; known: {', '.join(sorted(KINDS))}"
            )
        if count is not None and count < 1:
            raise ValueError(f"fault count must be at least 1, not {count!r}")
        fault = Fault(
            kind=kind,
            remaining=count,
            target=target,
            params={**DEFAULTS.get(kind, {}), **params},
        )
        with self._lock:
            self._pending.append(fault)
        return fault

    def take(self, request_kind: str) -> Fault | None:
        """The first pending fault for this request kind, counted as used."""
        with self._lock:
            for fault in self._pending:
                if not fault.matches(request_kind):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._pending.remove(fault)
                self.applied[fault.kind] += 1
                return fault
        return None

    def pending(self) -> list[Fault]:
        """Faults still waiting to be applied."""
        with self._lock:
            return list(self._pending)

    def clear(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._pending.clear()


def parse_fault(spec: str) -> tuple[str, int | None, dict[str, Any]]:
    """Parse ``KIND[:COUNT][,key=value...]`` as the CLI and control route take it.

    ``COUNT`` ``*`` means every request until cleared; ``target=KIND``
    aims the fault at one request kind. Values that look like numbers
    become numbers.

    :raises ValueError: for a malformed spec, an unknown kind or a bad count.
    """
    head, *pairs = spec.split(",")
    kind, _, count_text = head.partition(":")
    count: int | None = 1
    if count_text == "*":
        count = None
    elif count_text:
        if not count_text.isdigit():
            raise ValueError(f"fault count must be a number or '*', not {count_text!r}")
        count = int(count_text)
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"fault parameter must be key=value, not {pair!r}")
        params[key.strip()] = _number(value.strip())
    if kind not in KINDS:
        raise ValueError(f"unknown fault {kind!r}; known: {', '.join(sorted(KINDS))}")
    return kind, count, params


def _number(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text
