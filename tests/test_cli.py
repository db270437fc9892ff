"""The daemon-side commands (init, status) and the CLI's logging setup."""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import IO

import apprise
import pytest
from click.testing import CliRunner

from notifier import console
from notifier._failures import scrub as scrub_token
from notifier.cli import main_group
from notifier.cli.common import redactor, run_cli, setup_logging
from notifier.cli.daemon_cmds import STARTER_CONFIG, ago, format_status
from notifier.config import load_config
from notifier.model import WatchState, utcnow
from notifier.notify import scrub


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def invoke(*args: str) -> tuple[int, str, str]:
    """Run the CLI as `atleta-notifier ARGS` does: exit code, stdout, stderr."""
    with CliRunner().isolation() as (out, err, _):
        code = run_cli(main_group, list(args))
    return code, out.getvalue().decode(), err.getvalue().decode()


def test_init_writes_a_config_that_loads(tmp_path: Path) -> None:
    """`init PATH` writes a starter config that load_config accepts as is."""
    target = tmp_path / "conf" / "atleta-notifier.toml"

    code, out, _ = invoke("init", str(target))

    assert code == 0
    assert "Wrote a starter config" in out
    config = load_config(target, environ={"ATLETA_TOKEN": "tok-123456"})
    assert [w.preset for w in config.watches] == ["registrations"]
    assert set(config.channels) == {"console"}


@pytest.mark.parametrize(
    "service",
    ["mailtos://", "slack://", "tgram://", "mmosts://", "ntfys://", 'kind = "webhook"'],
)
def test_init_offers_every_common_service(service: str) -> None:
    """The starter config carries a commented channel for each common service."""
    commented = [line for line in STARTER_CONFIG.splitlines() if line.startswith("#")]

    assert any(service in line for line in commented)


@pytest.mark.parametrize("command", ["check", "status", "history", "deliveries"])
def test_a_single_config_problem_is_one_line(tmp_path: Path, command: str) -> None:
    """A config with one problem gives one `Error:` line on stderr and exit 2."""
    config = tmp_path / "missing.toml"

    code, out, err = invoke("--config", str(config), command)

    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        f"Error: invalid configuration: {config}: no such config file "
        "(write one with `atleta-notifier init`)"
    ]


@pytest.mark.parametrize(
    "command", [("check",), ("status",), ("poll", "TEST"), ("schema", "pull")]
)
def test_config_may_follow_the_command(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """`COMMAND --config PATH` reads PATH, as `--config PATH COMMAND` does."""
    config = tmp_path / "elsewhere.toml"

    code, _, err = invoke(*command, "--config", str(config))

    assert code == 2
    assert err.splitlines() == [
        f"Error: invalid configuration: {config}: no such config file "
        "(write one with `atleta-notifier init`)"
    ]


def test_init_never_overwrites(tmp_path: Path) -> None:
    """`init` on an existing file exits 2 with a clear message and leaves it alone."""
    target = tmp_path / "atleta-notifier.toml"
    target.write_text("# mine\n")

    code, _, err = invoke("init", str(target))

    assert code == 2
    assert len(err.splitlines()) == 1
    assert "already exists" in err
    assert target.read_text() == "# mine\n"


@pytest.mark.parametrize(
    "args",
    [
        ("check", "--bogus"),
        ("history", "--since", "5", "minutes"),
        ("no-such-command",),
    ],
)
def test_a_usage_error_is_one_line(args: tuple[str, ...]) -> None:
    """Bad usage is one `Error:` line pointing at --help, and exit code 2."""
    code, out, err = invoke(*args)

    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("Error: ")
    assert "--help`)" in line


def test_a_bare_group_shows_its_help() -> None:
    """`schema` without a subcommand prints its help, not a one-line error."""
    code, out, err = invoke("schema")

    assert code == 2
    assert "pull" in out + err
    assert "Commands:" in out + err


def test_status_screen_lists_watches_and_channels(tmp_path: Path) -> None:
    """The status screen shows last good poll, failures, records and outbox."""
    target = tmp_path / "atleta-notifier.toml"
    target.write_text(STARTER_CONFIG)
    config = load_config(target, environ={"ATLETA_TOKEN": "tok-123456"})
    now = utcnow()
    states = [
        WatchState(
            watch="ABCD/registrations",
            project="ABCD",
            name="registrations",
            records=412,
            last_success_at=now - timedelta(minutes=3),
            consecutive_failures=2,
            last_error_kind="network",
        )
    ]

    screen = format_status(
        config, states, {"console": (4, 1, 90.0)}, {"console"}, now=now
    )

    assert "ABCD/registrations" in screen
    assert "3 min ago" in screen
    assert "2 (network)" in screen
    assert "412" in screen
    console_row = next(
        line for line in screen.splitlines() if line.startswith("console")
    )
    assert console_row.split()[2:] == ["4", "2", "min", "1", "disabled"]


def test_status_reads_a_fresh_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status` works on a config whose database has never been polled."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATLETA_TOKEN", "tok-123456")
    invoke("init")

    code, out, _ = invoke("status")

    assert code == 0
    assert "never" in out
    assert "console" in out


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "never"), (5, "5 s ago"), (125, "2 min ago"), (7200, "2 h ago")],
    ids=["never", "seconds", "minutes", "hours"],
)
def test_ago(seconds: float | None, text: str) -> None:
    """Relative times read at a glance."""
    now = utcnow()
    moment = None if seconds is None else now - timedelta(seconds=seconds)

    assert ago(moment, now) == text


def test_logs_carry_timestamps_outside_systemd(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Outside systemd a log line starts with a timestamp."""
    setup_logging("INFO", "text", environ={})

    logging.getLogger("notifier.test").info("poll project=%s", "TEST")

    line = capsys.readouterr().err.strip()
    assert line[:4].isdigit()
    assert line.endswith("INFO notifier.test: poll project=TEST")


def test_logs_under_systemd_have_priority_and_no_timestamp(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Under systemd journald stamps the time; lines carry a syslog priority."""
    setup_logging("INFO", "text", environ={"INVOCATION_ID": "abc"})

    logging.getLogger("notifier.test").warning("retry %d", 2)

    assert capsys.readouterr().err == "<4>WARNING notifier.test: retry 2\n"


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """`--log-format json` prints one parseable object per line."""
    setup_logging("DEBUG", "json", environ={})

    logging.getLogger("notifier.test").debug("records=%d", 3)

    entry = json.loads(capsys.readouterr().err)
    assert entry["level"] == "debug"
    assert entry["logger"] == "notifier.test"
    assert entry["message"] == "records=3"


def test_secrets_are_masked_in_logs(capsys: pytest.CaptureFixture[str]) -> None:
    """A registered secret never reaches a log line, even in an exception."""
    setup_logging("INFO", "text", environ={})
    redactor.add(["whsec_c2VjcmV0LXNlY3JldA"])

    try:
        raise RuntimeError("bad key whsec_c2VjcmV0LXNlY3JldA")
    except RuntimeError:
        logging.getLogger("notifier.test").exception(
            "sent %s", "whsec_c2VjcmV0LXNlY3JldA"
        )

    err = capsys.readouterr().err
    assert "whsec_c2VjcmV0LXNlY3JldA" not in err
    assert "[redacted]" in err


def test_short_secrets_leave_words_alone(capsys: pytest.CaptureFixture[str]) -> None:
    """Values shorter than the minimum are not masked inside ordinary words;
    longer ones still are, wherever they appear."""
    setup_logging("INFO", "text", environ={})
    redactor.add(["ok", "run", "s3cr3t-key"])

    logging.getLogger("notifier.test").info("poll ok, run took 3 ms: s3cr3t-key")

    err = capsys.readouterr().err
    assert "poll ok, run took 3 ms: [redacted]" in err
    assert scrub("token ok, ab in table", ["ok", "ab", "tab"]) == (
        "token ok, ab in table"
    )
    assert scrub("key s3cr3t-key", ["s3cr3t-key"]) == "key ***"
    assert scrub_token("HTTP 500 from upstream", "up") == "HTTP 500 from upstream"
    assert scrub_token("bad token tok-123456", "tok-123456") == "bad token [token]"


def test_longer_secrets_are_masked_whole(capsys: pytest.CaptureFixture[str]) -> None:
    """A secret that contains another registered one is masked as a whole."""
    setup_logging("INFO", "text", environ={})
    redactor.add(["abc123", "xyzabc123xyz"])

    logging.getLogger("notifier.test").info("url xyzabc123xyz")

    assert "url [redacted]\n" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["httpx", "apprise", "uvicorn.access"])
def test_chatty_libraries_stay_at_warning(name: str) -> None:
    """Libraries that log URLs stay at WARNING even with --log-level debug."""
    setup_logging("DEBUG", "text", environ={})

    assert not logging.getLogger(name).isEnabledFor(logging.INFO)


def test_console_scheme_prints_messages(capsys: pytest.CaptureFixture[str]) -> None:
    """console:// writes the title on a rule and the body below it to stdout."""
    sender = apprise.Apprise()
    sender.add(f"{console.SCHEME}://")

    result = sender.notify(body="Jane Doe, 10 km", title="New registration")

    out = capsys.readouterr().out
    assert result
    assert out.startswith("-- * New registration ---")
    assert "Jane Doe, 10 km" in out


def _start_demo(*args: str) -> subprocess.Popen[str]:
    script = Path(sys.executable).parent / "atleta-notifier"
    return subprocess.Popen(
        [str(script), "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _lines(stream: IO[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.slow
def test_demo_shows_baseline_then_each_kind_of_alert() -> None:
    """The demo prints a baseline, then alerts for a new registration, a
    cancellation and a resale offer; Ctrl-C ends it cleanly with next steps."""
    demo = _start_demo("--duration", "60")
    assert demo.stdout is not None
    lines = _lines(demo.stdout)
    seen: list[str] = []
    wanted = ("new registration", "cancelled", "resale offer")
    deadline = time.monotonic() + 45
    try:
        while not all(any(w in s for s in seen if s.startswith("-- ")) for w in wanted):
            assert time.monotonic() < deadline, "".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=0.5))
        demo.send_signal(signal.SIGINT)
        code = demo.wait(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
    demo.stdout.close()
    while not lines.empty():
        seen.append(lines.get())
    output = "".join(seen)

    assert code == 0, output
    assert output.index("Baseline:") < output.index("new registration")
    assert "Traceback" not in output
    assert "atleta-notifier init" in output


def test_demo_duration_ends_it() -> None:
    """`demo --duration` stops on its own, exit 0, with the next steps."""
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "atleta-notifier"),
            "demo",
            "--duration",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "atleta-notifier init" in done.stdout


def test_run_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    """`run` on a config it cannot use says why in one line and exits 2."""
    target = tmp_path / "atleta-notifier.toml"
    target.write_text("[api\n")

    code, _, err = invoke("--config", str(target), "run")

    assert code == 2
    assert err.startswith("Error: ")
    assert "Traceback" not in err


def test_run_exits_1_when_the_metrics_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A metrics port in use stops `run` at start with exit 1, cleaned up."""
    monkeypatch.setenv("ATLETA_TOKEN", "tok-123456")
    target = tmp_path / "atleta-notifier.toml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        target.write_text(
            STARTER_CONFIG + f"\n[metrics]\nenabled = true\nport = {port}\n"
        )

        code, _, err = invoke("--config", str(target), "run")

    assert code == 1
    assert f"cannot listen for metrics on 127.0.0.1:{port}" in err
