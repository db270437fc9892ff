"""Real loopback receivers and sample events for the delivery tests."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller

from notifier.model import Event, FieldChange, Project


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Captured:
    """One request as the receiver saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records requests and answers a script.

    ``script`` holds (status, headers) answers used in order; once it runs
    out every request gets ``default``. While ``hold`` is set to a cleared
    event, requests wait for it before answering (a hanging receiver).
    """

    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    default: int = 200
    hold: threading.Event | None = None
    requests: list[Captured] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                receiver._record(self, body)
                if receiver.hold is not None:
                    receiver.hold.wait(30)
                status, headers = receiver._answer()
                payload = b'{"ok": true}' if 200 <= status < 300 else b"{}"
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_PUT = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def _record(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._changed:
            self.requests.append(Captured(handler.command, handler.path, headers, body))
            self._changed.notify_all()

    def _answer(self) -> tuple[int, dict[str, str]]:
        with self._changed:
            return self.script.pop(0) if self.script else (self.default, {})

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until ``count`` requests have arrived; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.requests) >= count, timeout)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.hold is not None:
            self.hold.set()
        self._server.shutdown()
        self._server.server_close()


class SmtpSink:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self._arrived = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._arrived:
            self.messages.append(message_from_bytes(envelope.original_content))
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self._arrived.notify_all()
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until ``count`` messages have arrived; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.messages) >= count, timeout)


@contextmanager
def smtp_server() -> Iterator[tuple[SmtpSink, int]]:
    """A running SMTP server on 127.0.0.1 and its port."""
    sink = SmtpSink()
    # Controller(port=0) cannot work: its readiness probe connects to the
    # port it was given, so an explicit free port is needed.
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


PROJECT = Project(id="AB12", name="City Run")
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def registration_event(
    number: int,
    *,
    kind: str = "created",
    at: datetime = T0,
    project: Project = PROJECT,
    ticket: str = "10 km",
) -> Event:
    """A registration event as a poll of the registrations preset makes it."""
    record = {
        "id": str(1000 + number),
        "registration_number": f"R-{1000 + number}",
        "first_name": f"Runner{number}",
        "last_name": "Tamm",
        "ticket": {"id": "t1", "title": ticket},
        "event": {"id": "e1", "title": "City Run 2027"},
    }
    previous = None
    changes: tuple[FieldChange, ...] = ()
    if kind == "updated":
        previous = {**record, "last_name": "Kask"}
        changes = (FieldChange(path="last_name", before="Kask", after="Tamm"),)
    return Event(
        id=f"evt_{project.id}_{number}_{kind}",
        type=f"registration.{kind}",
        occurred_at=at,
        project=project,
        watch="registrations",
        key=record["id"],
        record=record,
        previous=previous,
        changes=changes,
    )


def alert_event(kind: str, *, at: datetime = T0, project: Project = PROJECT) -> Event:
    """A ``watch.failing`` or ``watch.recovered`` alert as the engine writes it."""
    return Event(
        id=f"alert_{project.id}_{kind}_{int(at.timestamp())}",
        type=f"watch.{kind}",
        occurred_at=at,
        project=project,
        watch="registrations",
        key=None,
        record={
            "failures": 3,
            "error_kind": "auth",
            "hint": "the token was refused: reconnect the app or set a new token",
            "message": "HTTP 401",
        },
        previous=None,
    )


@dataclass
class HostedApi:
    """What the Slack and Telegram plugins asked ``requests`` to send.

    ``status`` is what the fake hosted APIs answer (200: accepted).
    """

    calls: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200

    def payload(self, index: int = 0) -> Any:
        """The JSON body of one captured request."""
        return json.loads(self.calls[index]["data"])

    def payload_to(self, host: str) -> Any:
        """The JSON body of the first request to ``host``."""
        call = next(call for call in self.calls if host in call["url"])
        return json.loads(call["data"])


HOSTED = ("https://hooks.slack.com/", "https://api.telegram.org/")


class _Answer:
    """Just enough of a ``requests.Response`` for the Apprise plugins."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status_code = status
        self.content = body
        self.text = body.decode()
        self.headers: dict[str, str] = {}
        self.reason = "OK" if status == 200 else "Unauthorized"

    def json(self) -> Any:
        return json.loads(self.content)


def capture_hosted_apis(monkeypatch: pytest.MonkeyPatch) -> HostedApi:
    """Replace ``requests.Session.request`` to capture Slack and Telegram calls.

    Both plugins call ``requests.request``/``requests.post``, which end in
    ``Session.request``; nothing leaves the machine.
    """
    captured = HostedApi()
    lock = threading.Lock()
    real = requests.Session.request

    def request(self: requests.Session, method: str, url: str, **kwargs: Any) -> Any:
        if not url.startswith(HOSTED):
            # Loopback receivers (Mattermost, json://) stay real.
            return real(self, method, url, **kwargs)
        with lock:
            captured.calls.append({"method": method.upper(), "url": url, **kwargs})
        if captured.status != 200:
            body = b'{"ok": false, "description": "Unauthorized"}'
            return _Answer(captured.status, body)
        if "api.telegram.org" in url:
            return _Answer(200, b'{"ok": true, "result": {"message_id": 7}}')
        return _Answer(200, b"ok")

    monkeypatch.setattr(requests.Session, "request", request)
    return captured
