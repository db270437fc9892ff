"""The ``fake-api`` command: the fake Atleta API on its own, for demos."""

from __future__ import annotations

import threading

import click

from notifier.fake_atleta import FakeAtleta, parse_fault, parse_rate

CURL = (
    "curl -s {url} -H 'Authorization: Bearer {token}' "
    "-H 'Content-Type: application/json' "
    '-d \'{{"query": "{{ project(id: \\"{project}\\") {{ registrations(page: 1, '
    "per_page: 5) {{ total last_page data {{ id first_name created_at }} }} }} }}\"}}'"
)


def _registrations(values: tuple[str, ...]) -> int | dict[str | int, int]:
    """``500`` for every project, or ``TEST=100000`` / ``1=20`` per project."""
    if len(values) == 1 and values[0].isdigit():
        return int(values[0])
    counts: dict[str | int, int] = {}
    for value in values:
        key, sep, count = value.partition("=")
        if not sep or not count.isdigit():
            raise click.BadParameter(
                f"expected N or CODE=N, not {value!r}", param_hint="--registrations"
            )
        counts[int(key) if key.isdigit() else key] = int(count)
    return counts


EPILOG = """\b
Faults (--fault, or POST /_control/fault {"spec": "..."}):
  http_500, http_502, http_503   that HTTP status
  rate_limit[,retry_after=S]     HTTP 429 with Retry-After (default 1)
  slow[,seconds=S]               answer late (default 2 s)
  drop                           close the connection without an answer
  malformed                      a body cut short (not JSON)
  graphql_errors[,message=M]     an `errors` answer without data
  partial_errors[,message=M]     data next to `errors`
  shift[,mode=insert|remove]     move records between pages after a page
  total_mismatch[,delta=N]       a `total` that is off by N (default 1)
COUNT is how many requests a fault hits (default 1, * for all until
cleared); target=KIND aims it at one request kind (project.registrations).

\b
Control routes (same bearer token; POST a JSON object, answers are JSON):
  /_control/state (GET too)     projects, events, request counts, faults
  /_control/add_registration    {"project": "TEST", "event": ID, ...}
  /_control/change_registration {"id": ID, "first_name": ..., ...}
  /_control/cancel_registration {"id": ID}
  /_control/add_order           {"project": "TEST", "registrations": N}
  /_control/change_order        {"id": ID, "status": ..., ...}
  /_control/open_resale         {"event_id": ID, "amount": CENTS}
  /_control/close_resale        {"id": ID, "sold": true}
  /_control/edit_event          {"event_id": ID, "waitlist_size": N, ...}
  /_control/fault               {"spec": "rate_limit:3,retry_after=2"}
  /_control/clear_faults, /_control/churn {"rate": "1/s"},
  /_control/log {"since": VERSION}, /_control/requests,
  /_control/revoke_token {"token": T}
"""


@click.command("fake-api", hidden=True, epilog=EPILOG)
@click.option(
    "--port",
    type=int,
    default=8765,
    show_default=True,
    help="Port on 127.0.0.1 (0 picks a free one).",
)
@click.option(
    "--projects",
    type=click.IntRange(1, 5000),
    default=3,
    show_default=True,
    help="Number of projects; the first is TEST.",
)
@click.option(
    "--registrations",
    "registrations",
    multiple=True,
    default=("500",),
    show_default=True,
    help="Active registrations per project: N for all, or CODE=N / INDEX=N "
    "(repeatable).",
)
@click.option(
    "--events",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Events per project.",
)
@click.option(
    "--churn", default=None, help="Random changes at this rate, e.g. 1/s, 30/min."
)
@click.option(
    "--token",
    default=None,
    envvar="FAKE_ATLETA_TOKEN",
    help="Bearer token to accept (default: a generated one, printed).",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    help="KIND[:COUNT|*][,key=value...], e.g. rate_limit:3,retry_after=2 (repeatable).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Dataset seed.")
def fake_api(
    port: int,
    projects: int,
    registrations: tuple[str, ...],
    events: int,
    churn: str | None,
    token: str | None,
    faults: tuple[str, ...],
    seed: int,
) -> None:
    """Serve the fake Atleta GraphQL API on 127.0.0.1 until Ctrl-C."""
    try:
        rate = parse_rate(churn) if churn else 0.0
        parsed = [parse_fault(spec) for spec in faults]
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    try:
        api = FakeAtleta(
            seed=seed,
            projects=projects,
            registrations=_registrations(registrations),
            token=token,
            events=events,
            port=port,
        )
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--registrations") from error
    for kind, count, params in parsed:
        api.faults.inject(kind, count=count, **params)
    try:
        api.start()
    except OSError as error:
        raise click.ClickException(
            f"cannot listen on 127.0.0.1:{port}: {error.strerror}"
        ) from error
    try:
        if rate:
            api.start_churn(rate)
        _announce(api, rate, faults)
        threading.Event().wait()
    except KeyboardInterrupt:
        click.echo("Stopping.", err=True)
    finally:
        api.stop()


def _announce(api: FakeAtleta, rate: float, faults: tuple[str, ...]) -> None:
    click.echo(f"Fake Atleta API: {api.url}")
    click.echo(f"Token: {api.token}")
    for code, info in api.state()["projects"].items():
        click.echo(
            f"Project {code}: {info['registrations']} registrations, "
            f"events {', '.join(info['events'])}"
        )
    if rate:
        click.echo(f"Churn: {rate:g} changes per second")
    for spec in faults:
        click.echo(f"Fault: {spec}")
    click.echo("Try:")
    click.echo(
        "  " + CURL.format(url=api.url, token=api.token, project=api.project_ids[0])
    )
    click.echo(
        f"  curl -s -X POST {api.control_url}/state -H 'Authorization: Bearer "
        f"{api.token}'"
    )
    click.echo("Ctrl-C stops it.")


commands: list[click.Command] = [fake_api]
