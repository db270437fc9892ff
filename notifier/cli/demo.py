"""``atleta-notifier demo``: the daemon against the bundled fake API, in a minute.

The demo starts the fake Atleta API on 127.0.0.1, writes a temporary config
and SQLite file, and runs the real daemon with a ``console://`` channel and
a few seconds between polls. After the baseline it makes sure that a new
registration, a cancellation and a resale offer happen (on top of random
churn), so a newcomer sees each kind of alert without a token or network.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from notifier.cli.common import setup_logging
from notifier.daemon import Daemon
from notifier.engine import PollOutcome
from notifier.model import Watch

if TYPE_CHECKING:
    from notifier.fake_atleta import FakeAtleta
    from notifier.fake_atleta.dataset import Dataset

DEMO_TOKEN = "demo-token-not-a-secret"
INTERVAL = 2.0
"""Seconds between two polls of a demo watch."""
CHURN_EVERY = 7.0
"""Seconds between two random changes the fake API makes on its own."""

NEXT_STEPS = """\
That was the demo: the same daemon, against a fake Atleta API.
To watch your own project:
  atleta-notifier init                  # writes atleta-notifier.toml
  $EDITOR atleta-notifier.toml          # project id, a channel (Slack, email...)
  export ATLETA_TOKEN=...               # your Atleta app's token
  atleta-notifier check && atleta-notifier run
"""


def demo_config(url: str, project: str, name: str, event: str, storage: Path) -> str:
    """The demo's config: two watches polled every few seconds, one console channel."""
    # A JSON string literal is a valid TOML basic string: quotes stay quoted.
    q = json.dumps
    return f"""\
[api]
url = {q(url)}
token = {q(DEMO_TOKEN)}
rate_limit = 20
burst = 20
max_retries = 1
timeout = "10s"

[storage]
path = {q(storage.as_posix())}

[defaults]
interval = "{INTERVAL:.0f}s"
jitter = "0s"

[channels.console]
urls = ["console://"]
format = "text"
flood_cap = 0

[[projects]]
id = {q(project)}
name = {q(name)}
channels = ["console"]

  [[projects.watches]]
  preset = "registrations"

  [[projects.watches]]
  preset = "resale"
  variables = {{ event = {q(event)} }}
"""


@click.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=None,
    help="Stop after this many seconds (default: run until Ctrl-C).",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Fake data seed.")
@click.pass_context
def demo(ctx: click.Context, duration: float | None, seed: int) -> None:
    """Watch the notifier at work against a fake Atleta API (no token needed)."""
    parent = ctx.parent
    if parent is not None and (
        parent.get_parameter_source("log_level") == ParameterSource.DEFAULT
    ):
        # The alerts are the show; log lines only when something is wrong.
        setup_logging("WARNING", ctx.obj.get("log_format", "text"))
    with tempfile.TemporaryDirectory(prefix="atleta-notifier-demo-") as tmp:
        code = _run_demo(Path(tmp), duration=duration, seed=seed)
    click.echo("")
    click.echo(NEXT_STEPS, nl=False)
    ctx.exit(code)


def _run_demo(tmp: Path, *, duration: float | None, seed: int) -> int:
    # The fake API is only needed here; the daemon's commands load without it.
    from notifier.fake_atleta import FakeAtleta

    with FakeAtleta(seed=seed, projects=1, registrations=40, token=DEMO_TOKEN) as api:
        project = api.project_ids[0]
        data = api.data
        with data.lock:
            name = data.projects[project].organisation_name
            event = _resellable_event(data, project)
        config = tmp / "atleta-notifier.toml"
        config.write_text(
            demo_config(api.url, project, name, event, tmp / "demo.sqlite"),
            encoding="utf-8",
        )
        click.echo(f"Fake Atleta API on {api.url}, project {project} ({name}).")
        click.echo(
            f"The daemon polls its registrations and the resale offers of event "
            f"{event} every {INTERVAL:.0f} s."
        )
        if duration is None:
            click.echo("Press Ctrl-C to stop.")
        return asyncio.run(_demo_main(config, api, project, event, duration))


def _resellable_event(data: Dataset, project: str) -> str:
    events = data.projects[project].event_list
    for event in events:
        if any(ticket.resellable for ticket in event.tickets):
            return event.id
    return events[0].id


async def _demo_main(
    config: Path,
    api: FakeAtleta,
    project: str,
    event: str,
    duration: float | None,
) -> int:
    data = api.data
    baselines: set[str] = set()
    polled = asyncio.Event()

    def on_poll(watch: Watch, outcome: PollOutcome) -> None:
        if outcome.baseline and watch.id not in baselines:
            baselines.add(watch.id)
            click.echo(
                f"Baseline: {watch.id} holds {outcome.records} records. "
                "A first poll stores a snapshot and sends nothing."
            )
        polled.set()

    daemon = Daemon(config, on_poll=on_poll, stop_timeout=5.0)
    runner = asyncio.create_task(daemon.run())
    helpers = [
        asyncio.create_task(_script(data, project, event, baselines, polled)),
        asyncio.create_task(_churn(api, daemon)),
    ]
    if duration is not None:
        helpers.append(asyncio.create_task(_stop_after(daemon, duration)))
    try:
        return await runner
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)


async def _stop_after(daemon: Daemon, seconds: float) -> None:
    await asyncio.sleep(seconds)
    daemon.request_stop()


async def _script(
    data: Dataset,
    project: str,
    event: str,
    baselines: set[str],
    polled: asyncio.Event,
) -> None:
    """Make sure each kind of alert shows up once, a poll apart."""
    while len(baselines) < 2:
        polled.clear()
        await polled.wait()
    steps: list[tuple[str, Callable[[], object]]] = [
        ("a runner registers", lambda: data.add_registration(project)),
        (
            "a runner cancels",
            lambda: data.cancel_registration(_active_id(data, project)),
        ),
        ("a ticket is offered for resale", lambda: data.open_resale(event)),
    ]
    click.echo("Now the fake API changes; each change is an alert a poll later.")
    for text, step in steps:
        await asyncio.sleep(INTERVAL * 0.6)
        _apply(text, step)
        await asyncio.sleep(INTERVAL * 1.4)


def _apply(text: str, step: Callable[[], object]) -> None:
    try:
        step()
    except (KeyError, ValueError) as error:
        click.echo(f"[fake API] could not make a change ({error})")
        return
    click.echo(f"[fake API] {text}")


def _active_id(data: Dataset, project: str) -> str:
    with data.lock:
        active = data.projects[project].active_registrations
        return active[len(active) // 2].id


async def _churn(api: FakeAtleta, daemon: Daemon) -> None:
    """Random changes on top of the scripted ones, as real traffic would make."""
    await daemon.ready.wait()
    await asyncio.sleep(CHURN_EVERY * 2)
    api.start_churn(1 / CHURN_EVERY)
