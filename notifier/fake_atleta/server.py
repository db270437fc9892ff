"""The fake API's HTTP side: the GraphQL route, auth, faults and the thread.

``POST /api/graphql`` answers like the real endpoint; ``/_control/...``
(see ``control.py``) changes data and injects faults. The app runs under
uvicorn (h11) on its own thread and event loop, so sync tests, async
tests and subprocesses can all talk to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from notifier.fake_atleta.dataset import Dataset
from notifier.fake_atleta.faults import Fault, Faults
from notifier.fake_atleta.graphql_app import Analysis, Executor, analyse, project_of

logger = logging.getLogger(__name__)

GRAPHQL_PATH = "/api/graphql"
RAW_SEND = "fake_atleta.raw_send"
JSON_TYPE = "application/json"
# A proxy in front of the API answers 502/503 with HTML, not JSON.
BAD_GATEWAY = b"<html><head><title>502 Bad Gateway</title></head></html>"
UNAVAILABLE = b"<html><head><title>503 Service Unavailable</title></head></html>"


@dataclass(kw_only=True)
class Tokens:
    """Known bearer tokens, the projects each may see (None: all), revocations."""

    scopes: dict[str, frozenset[str] | None] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)

    def check(self, header: str | None) -> tuple[int, str] | frozenset[str] | None:
        """The token's project scope, or (status, message) refusing it."""
        if not header or not header.startswith("Bearer "):
            return (401, "Unauthenticated.")
        token = header.removeprefix("Bearer ").strip()
        if token in self.revoked:
            return (403, "This action is unauthorized.")
        if token not in self.scopes:
            return (401, "Unauthenticated.")
        return self.scopes[token]


def error_body(message: str, category: str, **extensions: Any) -> dict[str, Any]:
    """A GraphQL-style error document, the detail in ``extensions``."""
    return {
        "errors": [
            {"message": message, "extensions": {"category": category, **extensions}}
        ]
    }


class FakeApp:
    """The ASGI application: routes plus the state they share."""

    def __init__(self, dataset: Dataset, faults: Faults, tokens: Tokens) -> None:
        self.dataset = dataset
        self.faults = faults
        self.tokens = tokens
        self.requests: Counter[str] = Counter()
        self.executor = Executor(dataset)
        self.stopping = asyncio.Event()
        self._starlette: Starlette | None = None

    def build(self, control_routes: list[Route]) -> None:
        """Assemble the Starlette app with the GraphQL and control routes."""
        routes = [Route(GRAPHQL_PATH, self.graphql, methods=["POST"]), *control_routes]
        self._starlette = Starlette(routes=routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Keep uvicorn's own send so a "drop" fault can reach the socket.
        if scope["type"] == "http":
            scope[RAW_SEND] = send
        assert self._starlette is not None
        await self._starlette(scope, receive, send)

    async def graphql(self, request: Request) -> Response:
        """Answer one GraphQL request, honouring auth and pending faults."""
        parsed = await _read_body(request)
        if isinstance(parsed, Response):
            self.requests["bad_request"] += 1
            return parsed
        query, variables, operation_name = parsed
        analysis = analyse(query, operation_name)
        self.requests[analysis.kind] += 1

        scope: frozenset[str] | None = None
        if analysis.needs_token:
            checked = self.tokens.check(request.headers.get("authorization"))
            if isinstance(checked, tuple):
                self.requests["auth_failed"] += 1
                status, message = checked
                category = "authentication" if status == 401 else "authorization"
                headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
                return JSONResponse(
                    error_body(message, category), status_code=status, headers=headers
                )
            scope = checked
        if analysis.document is None:
            return JSONResponse({"errors": list(analysis.errors)})

        fault = self.faults.take(analysis.kind)
        if fault is not None:
            logger.debug("fault %s on %s", fault.kind, analysis.kind)
            early = await self._early_fault(fault, request)
            if early is not None:
                return early
        body = self.executor.run(analysis, query, variables, operation_name, scope)
        if fault is not None:
            body = self._late_fault(fault, body, analysis, variables)
        return Response(body, media_type=JSON_TYPE)

    async def _early_fault(self, fault: Fault, request: Request) -> Response | None:
        kind = fault.kind
        if kind == "slow":
            await self._pause(float(fault.params["seconds"]))
            return None
        if kind == "http_500":
            return JSONResponse({"message": "Server Error"}, status_code=500)
        if kind == "http_502":
            return Response(BAD_GATEWAY, status_code=502, media_type="text/html")
        if kind == "http_503":
            return Response(UNAVAILABLE, status_code=503, media_type="text/html")
        if kind == "rate_limit":
            headers = {
                "Retry-After": str(fault.params["retry_after"]),
                "X-RateLimit-Limit": "120",
                "X-RateLimit-Remaining": "0",
            }
            return JSONResponse(
                {"message": "Too Many Attempts."}, status_code=429, headers=headers
            )
        if kind == "drop":
            _drop_connection(request.scope)
            return Response(b"", status_code=500)
        if kind == "graphql_errors":
            body = error_body(str(fault.params["message"]), "internal")
            return JSONResponse({**body, "data": None})
        return None

    def _late_fault(
        self,
        fault: Fault,
        body: bytes,
        analysis: Analysis,
        variables: Mapping[str, Any],
    ) -> bytes:
        kind = fault.kind
        if kind == "malformed":
            return body[: max(1, len(body) // 2)]
        if kind == "partial_errors":
            return _partial(json.loads(body), str(fault.params["message"]))
        if kind == "total_mismatch":
            document = json.loads(body)
            _shift_totals(document.get("data"), int(fault.params["delta"]))
            return json.dumps(document, separators=(",", ":")).encode()
        if kind == "shift":
            self._shift(analysis, variables, str(fault.params["mode"]))
        return body

    def _shift(
        self, analysis: Analysis, variables: Mapping[str, Any], mode: str
    ) -> None:
        # The answer is already rendered; the next page sees the moved list.
        project = project_of(analysis, variables)
        if project not in self.dataset.projects:
            return
        if mode == "remove":
            active = self.dataset.projects[project].active_registrations
            if active:
                self.dataset.cancel_registration(active[0].id)
            return
        self.dataset.add_registration(project, front=True)

    async def _pause(self, seconds: float) -> None:
        # Waiting on the stop event lets a shutdown cut a slow answer short.
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        except TimeoutError:
            return


async def _read_body(
    request: Request,
) -> tuple[str, dict[str, Any], str | None] | Response:
    try:
        payload = json.loads(await request.body())
    except ValueError:
        return JSONResponse(
            error_body("The request body is not valid JSON.", "request"),
            status_code=400,
        )
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return JSONResponse(
            error_body("The request needs a 'query' string.", "request"),
            status_code=400,
        )
    variables = payload.get("variables") or {}
    if not isinstance(variables, dict):
        return JSONResponse(
            error_body("'variables' must be an object.", "request"), status_code=400
        )
    operation = payload.get("operationName")
    return (
        payload["query"],
        variables,
        operation if isinstance(operation, str) else None,
    )


def _drop_connection(scope: Scope) -> None:
    # uvicorn's h11 cycle owns the transport; closing it answers nothing at
    # all, which is what a crashed upstream or a cut network looks like.
    cycle = getattr(scope.get(RAW_SEND), "__self__", None)
    transport = getattr(cycle, "transport", None)
    if cycle is None or transport is None:
        raise ConnectionAbortedError("drop fault outside uvicorn")
    cycle.disconnected = True
    transport.close()


def _partial(document: dict[str, Any], message: str) -> bytes:
    """Null the first item of the first record list and report an error there."""
    path = _first_list_item(document.get("data"), [])
    if path is None:
        document = {"data": None}
        path = []
    else:
        holder: Any = document["data"]
        for step in path[:-1]:
            holder = holder[step]
        holder[path[-1]] = None
    error = {"message": message, "path": path, "extensions": {"category": "internal"}}
    document["errors"] = [error]
    return json.dumps(document, separators=(",", ":")).encode()


def _first_list_item(value: Any, path: list[str | int]) -> list[str | int] | None:
    if isinstance(value, list):
        return [*path, 0] if value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_list_item(item, [*path, key])
            if found is not None:
                return found
    return None


def _shift_totals(value: Any, delta: int) -> None:
    if isinstance(value, dict):
        if isinstance(value.get("total"), int) and "data" in value:
            value["total"] += delta
        for item in value.values():
            _shift_totals(item, delta)
    elif isinstance(value, list):
        for item in value:
            _shift_totals(item, delta)


class _Server(uvicorn.Server):
    """uvicorn that wakes up at once when asked to exit.

    The stock main loop polls every 0.1 s; a fixture that starts and stops
    a server per test would spend that on every test.
    """

    wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        """Refresh the Date header each second until told to exit."""
        self.wake = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter += 10  # on_tick refreshes its headers when counter % 10 == 0
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=1.0)
            except TimeoutError:
                continue


class ServerThread:
    """uvicorn serving one app on 127.0.0.1 from a background thread."""

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, timeout: float = 10.0) -> int:
        """Bind, start serving and return the port.

        :raises RuntimeError: when the server does not come up in time.
        """
        # IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted
        # sockets whose proto says TCP, and without it every answer waits
        # ~40 ms for the client's delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            http="h11",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = _Server(config)
        self._thread = threading.Thread(
            target=self._run, args=(sock,), daemon=True, name=f"fake-atleta-{self.port}"
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake Atleta API did not start")
            time.sleep(0.01)
        return self.port

    def _run(self, sock: socket.socket) -> None:
        assert self._server is not None
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._server.serve(sockets=[sock]))
        finally:
            sock.close()
            self.loop.close()

    def call_soon(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        """Run ``callback`` on the server's loop (for loop-bound state)."""
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(callback)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        server = self._server
        if server is not None:
            server.should_exit = True
            if server.wake is not None:
                self.call_soon(server.wake.set)
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
