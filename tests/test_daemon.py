"""The daemon: scheduling, signals, reload, health and metrics, the unit file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from notifier.cli.common import url_secrets
from notifier.daemon import build_trigger, cron_weekdays, schedule_period, sd_notify
from notifier.fake_atleta import FakeAtleta
from notifier.metrics import Metrics, assess, grace_for
from notifier.model import Project, Schedule, Watch, WatchState

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tok-daemon-test-4f1e2d"
SECRET = "whsec_ZGFlbW9uLXRlc3Qtc2VjcmV0LWtleQ=="


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Units


def test_sd_notify_sends_to_the_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sd_notify writes the message as one datagram to $NOTIFY_SOCKET."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)

        sent = sd_notify("READY=1\nSTATUS=polling")

        assert sent
        assert server.recv(100) == b"READY=1\nSTATUS=polling"


def test_sd_notify_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside systemd sd_notify does nothing."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    assert not sd_notify("READY=1")


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("*", "*"),
        ("mon-fri", "mon-fri"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("5-7", "sun,fri,sat"),
        ("0,6", "sun,sat"),
        ("*/2", "sun,tue,thu,sat"),
    ],
)
def testcron_weekdays_follow_crontab(field: str, expected: str) -> None:
    """Crontab weekday numbers (0 = Sunday) keep their meaning in APScheduler 3."""
    assert cron_weekdays(field) == expected


def test_cron_watch_period_and_time_zone() -> None:
    """A cron watch fires at its clock times in its time zone; its period
    (for the health grace) is the gap between two fires."""
    watch = Watch(
        project=Project(id="TEST", name="Test"),
        name="registrations",
        entity="registration",
        query="query { x }",
        records="x",
        schedule=Schedule(cron="*/10 6-22 * * 1-5", timezone="Europe/Amsterdam"),
    )
    monday_5am_utc = datetime(2026, 3, 2, 5, 1, tzinfo=UTC)

    fire = build_trigger(watch).get_next_fire_time(None, monday_5am_utc)

    assert fire is not None
    assert (fire.hour, fire.minute, fire.tzname()) == (6, 10, "CET")
    assert schedule_period(watch, monday_5am_utc) == 600


def _state(watch: str, **fields: Any) -> WatchState:
    return WatchState(watch=watch, project=watch[:4], name=watch[5:], **fields)


def test_health_flags_overdue_and_failing_watches() -> None:
    """A watch past its grace is overdue (measured from start at the latest);
    failures past the threshold list it as failing."""
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    states = {
        "TEST/ok": _state("TEST/ok", last_success_at=now - timedelta(seconds=10)),
        "TEST/late": _state(
            "TEST/late",
            last_success_at=now - timedelta(seconds=200),
            consecutive_failures=4,
            last_error_kind="server",
        ),
    }

    report = assess(
        running=True,
        graces={"TEST/ok": 60.0, "TEST/late": 60.0, "TEST/new": 60.0},
        states=states,
        started_at=now - timedelta(seconds=120),
        failure_thresholds={"TEST/late": 3},
        now=now,
    )

    body = report.to_json()
    assert not report.healthy
    assert [w["watch"] for w in body["overdue"]] == ["TEST/late", "TEST/new"]
    assert [w["watch"] for w in body["failing"]] == ["TEST/late"]
    assert body["failing"][0]["last_error_kind"] == "server"
    assert body["overdue"][0]["seconds_since_good_poll"] == 120.0


def test_health_needs_a_running_scheduler() -> None:
    """A paused or stopped scheduler is unhealthy even with every watch fresh."""
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)

    report = assess(
        running=False,
        graces={},
        states={},
        started_at=now,
        failure_thresholds={},
        now=now,
    )

    assert not report.healthy
    assert report.to_json()["reasons"] == ["the scheduler is not running"]


def test_grace_is_three_intervals_or_a_minimum() -> None:
    """The grace is three intervals, never below the minimum."""
    assert grace_for(300, 60) == 900
    assert grace_for(5, 60) == 60


def test_metrics_render_in_prometheus_format() -> None:
    """Each Metrics has its own registry, and its output parses."""
    first, second = Metrics(), Metrics()
    first.observe_poll("TEST/registrations", "ok", 0.2, ["registration.created"])
    first.observe_delivery("ops", "delivered", 2)

    families = {
        f.name: f for f in text_string_to_metric_families(first.render().decode())
    }

    assert families["atleta_notifier_polls"].samples[0].value == 1
    assert families["atleta_notifier_deliveries"].samples[0].value == 2
    assert "TEST/registrations" not in second.render().decode()


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (ExecStart pointed at this venv)."""
    unit = (ROOT / "systemd" / "atleta-notifier.service").read_text()
    script = Path(sys.executable).parent / "atleta-notifier"
    unit = unit.replace("/opt/atleta-notifier/bin/atleta-notifier", str(script))
    path = tmp_path / "atleta-notifier.service"
    path.write_text(unit)

    done = subprocess.run(
        ["systemd-analyze", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "atleta-notifier.service" not in done.stderr


# The daemon as a subprocess, against the fake API and a webhook receiver


class Receiver:
    """A loopback webhook receiver that records every JSON body it accepts."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                received.headers.append(dict(self.headers))
                received.bodies.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def types(self) -> list[str]:
        return [body["type"] for body in self.bodies]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    hook.thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeAtleta]:
    with FakeAtleta(seed=5, projects=1, registrations=30, token=TOKEN) as fake:
        yield fake


def daemon_config(
    api: FakeAtleta, receiver: Receiver, tmp_path: Path, port: int
) -> str:
    return f"""
[api]
url = "{api.url}"
token = "${{ATLETA_TEST_TOKEN}}"
max_retries = 0
timeout = "10s"
rate_limit = 50
burst = 50

[storage]
path = "{(tmp_path / "notifier.sqlite").as_posix()}"

[defaults]
interval = "1s"
jitter = "0s"

[metrics]
enabled = true
port = {port}

[channels.hook]
kind = "webhook"
url = "{receiver.url}"
secret = "{SECRET}"

[[projects]]
id = "{api.project_ids[0]}"
name = "Test race"
channels = ["hook"]

  [[projects.watches]]
  preset = "registrations"
"""


class Daemon:
    """``atleta-notifier run`` as a child process, its output in files."""

    def __init__(self, config: Path, tmp_path: Path) -> None:
        self.stderr_path = tmp_path / "stderr.log"
        self.stderr_file = self.stderr_path.open("w")
        script = Path(sys.executable).parent / "atleta-notifier"
        env = {**os.environ, "ATLETA_TEST_TOKEN": TOKEN}
        env.pop("INVOCATION_ID", None)
        env.pop("JOURNAL_STREAM", None)
        self.process = subprocess.Popen(
            [str(script), "--config", str(config), "run", "--health-grace", "2"],
            stdout=self.stderr_file,
            stderr=subprocess.STDOUT,
            env=env,
        )

    @property
    def log(self) -> str:
        return self.stderr_path.read_text()

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout=timeout)
        self.stderr_file.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.stderr_file.close()


@pytest.fixture
def running(
    api: FakeAtleta, receiver: Receiver, tmp_path: Path
) -> Iterator[tuple[Daemon, Path, int]]:
    port = free_port()
    config = tmp_path / "atleta-notifier.toml"
    config.write_text(daemon_config(api, receiver, tmp_path, port))
    child = Daemon(config, tmp_path)
    yield child, config, port
    child.kill()


def get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except httpx.TransportError:
        return None


def baseline_done(port: int) -> bool:
    response = get(port, "/metrics")
    return response is not None and 'outcome="baseline"' in response.text


def check_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        for watch, records in db.execute("SELECT id, records FROM watches"):
            held = db.execute(
                "SELECT COUNT(*) FROM snapshot_records WHERE watch = ?", (watch,)
            ).fetchone()[0]
            assert held == records, watch
        orphans = db.execute(
            "SELECT COUNT(*) FROM deliveries WHERE event_id NOT IN "
            "(SELECT id FROM events)"
        ).fetchone()[0]
        assert orphans == 0


@pytest.mark.slow
def test_daemon_delivers_reloads_and_stops_cleanly(
    running: tuple[Daemon, Path, int],
    api: FakeAtleta,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """Changes reach the webhook; a bad reload keeps the old config and a good
    one adds its watch; SIGTERM mid-poll lets the poll finish and exits 0; the
    database is consistent; no secret reaches the log."""
    child, config, port = running
    project = api.project_ids[0]
    wait_for(lambda: baseline_done(port), what="the baseline poll")

    added = api.data.add_registration(project)
    wait_for(lambda: "registration.created" in receiver.types(), what="delivery")

    config.write_text("[api\nthis is not TOML")
    child.signal(signal.SIGHUP)
    wait_for(lambda: "config reload failed" in child.log, what="the reload error")
    reload_line = next(
        line for line in child.log.splitlines() if "config reload failed" in line
    )
    assert "TOML syntax error" in reload_line  # the reason is on the same line
    api.data.cancel_registration(added)
    wait_for(lambda: "registration.deleted" in receiver.types(), what="2nd delivery")

    good = daemon_config(api, receiver, tmp_path, port)
    config.write_text(good + '\n  [[projects.watches]]\n  preset = "orders"\n')
    child.signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded watches=2" in child.log, what="the reload")
    wait_for(
        lambda: (
            f'watch="{project}/orders"'
            in (get(port, "/metrics") or httpx.Response(0)).text
        ),
        what="the new watch to poll",
    )

    api.faults.inject("slow", seconds=1.5)
    wait_for(lambda: not api.faults.pending(), what="a poll to hit the slow answer")
    child.signal(signal.SIGTERM)
    code = child.wait()

    log = child.log
    assert code == 0, log
    assert "waiting up to" in log
    assert " 1 running polls" not in log  # "1 running poll", "2 running polls"
    assert "daemon stopped" in log
    assert receiver.bodies[0]["key"] == added
    assert receiver.headers[0]["webhook-signature"].startswith("v1,")
    check_database(tmp_path / "notifier.sqlite")
    assert TOKEN not in log
    assert SECRET not in log
    assert SECRET.removeprefix("whsec_") not in log


@pytest.mark.slow
def test_health_turns_503_while_the_api_is_down(
    running: tuple[Daemon, Path, int], api: FakeAtleta
) -> None:
    """/healthz reports overdue watches while the API fails, and recovers;
    `status` reads the database while the daemon runs; /metrics parses."""
    child, config, port = running
    wait_for(lambda: baseline_done(port), what="the baseline poll")
    healthy = get(port, "/healthz")
    assert healthy is not None
    assert healthy.status_code == 200

    api.faults.inject("http_503", count=10_000)
    down = wait_for(
        lambda: (r := get(port, "/healthz")) is not None and r.status_code == 503 and r,
        what="/healthz to turn 503",
    )
    body = down.json()
    assert body["overdue"][0]["watch"] == f"{api.project_ids[0]}/registrations"
    assert body["overdue"][0]["last_error_kind"] == "server"

    api.faults.clear()
    wait_for(
        lambda: (r := get(port, "/healthz")) is not None and r.status_code == 200,
        what="/healthz to recover",
    )
    status = subprocess.run(
        [
            str(Path(sys.executable).parent / "atleta-notifier"),
            "--config",
            str(config),
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "ATLETA_TEST_TOKEN": TOKEN},
    )
    assert status.returncode == 0, status.stderr
    assert f"{api.project_ids[0]}/registrations" in status.stdout
    assert " s ago" in status.stdout
    metrics = get(port, "/metrics")
    assert metrics is not None
    families = {f.name for f in text_string_to_metric_families(metrics.text)}
    assert {
        "atleta_notifier_polls",
        "atleta_notifier_poll_duration_seconds",
        "atleta_notifier_watch_records",
        "atleta_notifier_watch_seconds_since_good_poll",
        "atleta_notifier_outbox_pending",
    } <= families
    child.signal(signal.SIGTERM)
    assert child.wait() == 0


@pytest.mark.slow
def test_second_sigint_exits_at_once(
    running: tuple[Daemon, Path, int], api: FakeAtleta, tmp_path: Path
) -> None:
    """A second Ctrl-C during a slow stop exits at once, the database intact."""
    child, _, port = running
    wait_for(lambda: baseline_done(port), what="the baseline poll")
    api.faults.inject("slow", seconds=20)
    wait_for(lambda: not api.faults.pending(), what="a poll to hit the slow answer")

    child.signal(signal.SIGINT)
    wait_for(lambda: "waiting up to" in child.log, what="the drain")
    child.signal(signal.SIGINT)
    code = child.wait(timeout=10)

    assert code == 130
    assert "second SIGINT" in child.log
    check_database(tmp_path / "notifier.sqlite")


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/42", ["AAHdqTcvCH1v"]),
        ("mailtos://ops:Sup3rPass@mail.example.org?to=a@example.org", ["Sup3rPass"]),
        ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#ops", ["T1JJ3T3L2"]),
    ],
    ids=["telegram", "email", "slack"],
)
def test_url_credentials_are_found_hosts_are_not(url: str, secrets: list[str]) -> None:
    """Credentials inside Apprise URLs are masked; host names stay readable."""
    found = url_secrets(url)

    assert all(any(s in part for part in found) for s in secrets)
    assert not any("example.org" in part for part in found)
