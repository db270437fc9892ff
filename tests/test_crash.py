"""Crash safety: ``run`` killed with SIGKILL at awkward moments, then restarted.

The daemon runs as a real child process against the fake API over HTTP and a
loopback webhook receiver; the database it leaves behind is read with plain
``sqlite3``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_daemon import SECRET, TOKEN, Daemon, check_database, wait_for

from notifier.fake_atleta import FakeAtleta

# How long a hanging receiver holds a request before giving up on its own.
HANG_LIMIT = 20.0


class HangingReceiver:
    """A webhook receiver that can hold requests unanswered until released.

    Every request is recorded as it arrives; only those answered 200 count
    as acknowledged.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.acked: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver.lock:
                    receiver.seen.append((self.headers["webhook-id"], body))
                if not receiver.release.wait(HANG_LIMIT):
                    return
                try:
                    self.send_response(200)
                    self.end_headers()
                except OSError:
                    return  # the sender is gone: not acknowledged
                with receiver.lock:
                    receiver.acked.append(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def acked_changes(self) -> set[tuple[str, str]]:
        """(type, key) of every acknowledged event."""
        with self.lock:
            return {(body["type"], body["key"]) for body in self.acked}

    def acked_ids(self) -> set[str]:
        """Ids of every acknowledged event."""
        with self.lock:
            return {body["id"] for body in self.acked}


@pytest.fixture
def hook() -> Iterator[HangingReceiver]:
    receiver = HangingReceiver()
    receiver.thread.start()
    yield receiver
    receiver.release.set()
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeAtleta]:
    with FakeAtleta(seed=7, projects=1, registrations=30, token=TOKEN) as fake:
        yield fake


def crash_config(api: FakeAtleta, hook: HangingReceiver, db: Path) -> str:
    return f"""
[api]
url = "{api.url}"
token = "${{ATLETA_TEST_TOKEN}}"
max_retries = 0
timeout = "30s"
rate_limit = 50
burst = 50
per_page = 10

[storage]
path = "{db.as_posix()}"

[defaults]
interval = "1s"
jitter = "0s"

[channels.hook]
kind = "webhook"
url = "{hook.url}"
secret = "{SECRET}"
timeout = "30s"

[[projects]]
id = "{api.project_ids[0]}"
name = "Crash race"
channels = ["hook"]

  [[projects.watches]]
  preset = "registrations"
"""


def api_state(api: FakeAtleta) -> dict[str, str]:
    """The fake's active registrations as key -> first name."""
    with api.data.lock:
        project = api.data.projects[api.project_ids[0]]
        return {r.id: str(r.first_name) for r in project.active_registrations}


def snapshot_state(db: Path) -> dict[str, str]:
    """The stored snapshot as key -> first name, without held records.

    A walk that finds new records holds its absences for a second look
    (see ``notifier.engine``); :func:`held` lists those.
    """
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT key, record FROM snapshot_records WHERE misses = 0"
        ).fetchall()
    return {key: str(json.loads(record)["first_name"]) for key, record in rows}


def held(db: Path) -> set[str]:
    """Keys the snapshot keeps although the last walk missed them."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT key FROM snapshot_records WHERE misses > 0")
        return {key for (key,) in rows}


def last_good_poll(db: Path) -> str | None:
    """When the watch last polled successfully (None before the first poll)."""
    if not db.exists():
        return None
    try:
        with closing(sqlite3.connect(db, timeout=5)) as conn:
            row = conn.execute("SELECT MAX(last_success_at) FROM watches").fetchone()
    except sqlite3.OperationalError:
        return None  # the tables do not exist yet
    return None if row[0] is None else str(row[0])


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[Path], Daemon]]:
    """Start ``run`` on a config, each run logging to its own file."""
    started: list[Daemon] = []

    def launch(config: Path) -> Daemon:
        logs = tmp_path / f"run{len(started) + 1}"
        logs.mkdir()
        started.append(Daemon(config, logs))
        return started[-1]

    yield launch
    for daemon in started:
        daemon.kill()


@pytest.mark.slow
def test_sigkill_mid_poll_and_mid_delivery_loses_nothing(
    api: FakeAtleta,
    hook: HangingReceiver,
    start: Callable[[Path], Daemon],
    tmp_path: Path,
) -> None:
    """Killed during a page walk, the snapshot is the old or the new state,
    never a mix; killed while webhooks are in flight, the restarted daemon
    sends them again under the same ``webhook-id``; every change arrives."""
    db = tmp_path / "notifier.sqlite"
    config = tmp_path / "atleta-notifier.toml"
    config.write_text(crash_config(api, hook, db))
    project = api.project_ids[0]
    first = start(config)
    wait_for(lambda: last_good_poll(db), what="the baseline poll")

    # A kill in the middle of a page walk: page 1 answers, page 2 hangs.
    # The changes are one step that moves the total, so a walk that spans
    # them notices and walks again.
    old = api_state(api)
    changed, cancelled = sorted(old)[:2]
    with api.data.lock:
        added = api.data.add_registration(project)
        extra = api.data.add_registration(project)
        api.data.change_registration(changed, first_name="Renamed")
        api.data.cancel_registration(cancelled)
    new = api_state(api)
    api.faults.inject("slow", seconds=0.0)
    api.faults.inject("slow", seconds=30.0)
    wait_for(lambda: not api.faults.pending(), what="a walk to reach page 2")
    first.kill()

    check_database(db)
    assert snapshot_state(db) in (old, new)
    assert held(db) <= {cancelled}

    # A kill while deliveries are in flight to a receiver that does not answer.
    api.faults.clear()
    hook.release.clear()
    answered = len(hook.seen)
    polled = last_good_poll(db)
    second = start(config)
    wait_for(lambda: last_good_poll(db) != polled, what="a poll after the restart")
    late = api.data.add_registration(project)
    wait_for(lambda: len(hook.seen) > answered, what="a delivery in flight")
    second.kill()
    in_flight = {webhook_id for webhook_id, _ in hook.seen[answered:]}
    hook.release.set()

    check_database(db)
    assert snapshot_state(db) in (new, api_state(api))
    assert held(db) <= {cancelled}

    third = start(config)
    expected = {
        ("registration.created", added),
        ("registration.created", extra),
        ("registration.updated", changed),
        ("registration.deleted", cancelled),
        ("registration.created", late),
    }
    wait_for(lambda: expected <= hook.acked_changes(), what="every change")
    third.kill()

    check_database(db)
    assert snapshot_state(db) == api_state(api)
    assert not held(db)
    ids: dict[tuple[str, str], set[str]] = {}
    for webhook_id, body in hook.seen:
        assert webhook_id == body["id"]
        ids.setdefault((body["type"], body["key"]), set()).add(webhook_id)
    assert all(len(found) == 1 for found in ids.values()), ids
    assert in_flight <= hook.acked_ids()
    for run in (first, second, third):
        assert TOKEN not in run.log
