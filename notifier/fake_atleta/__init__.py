"""A fake Atleta GraphQL API over real HTTP, for tests, benchmarks and demos.

::

    with FakeAtleta(seed=1, projects=3, registrations=500, token="t") as api:
        api.url                # http://127.0.0.1:PORT/api/graphql
        api.data.add_registration("TEST")
        api.faults.inject("rate_limit", count=2, retry_after=1)
        api.requests["project.registrations"]

Modules: ``records`` (the schema's objects), ``seed`` (the deterministic
dataset), ``dataset`` (mutations and their log), ``faults``,
``graphql_app`` (execution and the page cache), ``server`` (HTTP, auth,
faults, the thread) and ``control`` (the HTTP control routes and churn).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

from notifier.fake_atleta.control import Churn, control_routes, parse_rate
from notifier.fake_atleta.dataset import Dataset, Mutation
from notifier.fake_atleta.faults import Fault, Faults, parse_fault
from notifier.fake_atleta.server import GRAPHQL_PATH, FakeApp, ServerThread, Tokens

__all__ = [
    "Dataset",
    "FakeAtleta",
    "Fault",
    "Faults",
    "Mutation",
    "parse_fault",
    "parse_rate",
]


class FakeAtleta:
    """The fake API: a seeded dataset served by uvicorn on a background thread.

    ``registrations`` is a count for every project or a mapping from
    project code (or index, 0 being ``TEST``) to a count. Without
    ``token`` a random one is generated; it sees every project.
    """

    def __init__(
        self,
        seed: int = 1,
        projects: int = 3,
        registrations: int | Mapping[str | int, int] = 500,
        token: str | None = None,
        *,
        events: int = 3,
        codes: list[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.seed = seed
        self.token = token or secrets.token_urlsafe(24)
        self.data = Dataset(
            seed=seed,
            projects=projects,
            registrations=registrations,
            events=events,
            codes=codes,
            clock=clock,
        )
        self.faults = Faults()
        self.tokens = Tokens(scopes={self.token: None})
        self._app = FakeApp(self.data, self.faults, self.tokens)
        self._app.build(control_routes(self))
        self._server = ServerThread(self._app, host=host, port=port)
        self._churn = Churn(self.data, seed)
        self._host = host
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` once started.

        :raises RuntimeError: before ``start``.
        """
        if self.port is None:
            raise RuntimeError("the fake Atleta API is not started")
        return f"http://{self._host}:{self.port}"

    @property
    def url(self) -> str:
        """The GraphQL endpoint, ``http://127.0.0.1:PORT/api/graphql``."""
        return self.base_url + GRAPHQL_PATH

    @property
    def control_url(self) -> str:
        """The base of the HTTP control routes (``.../_control``)."""
        return self.base_url + "/_control"

    @property
    def project_ids(self) -> list[str]:
        """Project codes, ``TEST`` first."""
        return self.data.project_ids

    @property
    def requests(self) -> Counter[str]:
        """GraphQL requests by kind: ``project.registrations``, ``auth_failed`` ..."""
        return self._app.requests

    @property
    def cache_stats(self) -> tuple[int, int]:
        """(hits, misses) of the rendered-answer cache."""
        return self._app.executor.hits, self._app.executor.misses

    @property
    def churn_rate(self) -> float:
        """Mutations per second of the running churn, 0 when stopped."""
        return self._churn.rate

    def start(self) -> None:
        """Serve on a free port (or the one given) until ``stop``.

        :raises RuntimeError: when the server does not come up.
        """
        if self.port is None:
            # An asyncio.Event belongs to the loop that first waits on it,
            # and every start runs a new loop.
            self._app.stopping = asyncio.Event()
            self.port = self._server.start()

    def stop(self) -> None:
        """Stop churn and the server; safe to call twice."""
        self._churn.stop()
        self._server.call_soon(self._app.stopping.set)
        self._server.stop()
        self.port = None

    def __enter__(self) -> FakeAtleta:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start_churn(self, rate: float | str) -> None:
        """Mutate the data at ``rate`` per second (or ``"1/s"``); 0 stops.

        :raises ValueError: for a bad rate.
        """
        self._churn.start(parse_rate(rate))

    def stop_churn(self) -> None:
        """Stop the churn thread."""
        self._churn.stop()

    def add_token(self, token: str, projects: Iterable[str] | None = None) -> None:
        """Accept another token, for some projects only or for all (None)."""
        self.tokens.scopes[token] = (
            frozenset(projects) if projects is not None else None
        )
        self.tokens.revoked.discard(token)

    def revoke_token(self, token: str) -> None:
        """Refuse ``token`` from now on with a 403, as a revoked app is."""
        self.tokens.revoked.add(token)

    def state(self) -> dict[str, Any]:
        """A JSON-ready summary: projects, version, counters, faults, churn."""
        return {
            "url": self.url if self.port is not None else None,
            "projects": {
                code: {
                    "registrations": len(p.active_registrations),
                    "events": [event.id for event in p.event_list],
                }
                for code, p in self.data.projects.items()
            },
            "version": self.data.version,
            "requests": dict(self.requests),
            "faults": [fault.to_json() for fault in self.faults.pending()],
            "churn": self.churn_rate,
        }
