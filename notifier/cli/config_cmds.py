"""``check`` and ``schema pull``: the config file and the GraphQL schema."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import click

from notifier.config import Config, load_config
from notifier.errors import ConfigError, PollError
from notifier.schema import pull_schema

TOKEN_ENV = "ATLETA_TOKEN"
PROBE_QUERY = """
query Probe($project: ID!) {
  project(id: $project) {
    id
    organisation_name
  }
}
"""


@dataclass(frozen=True, kw_only=True)
class _Probe:
    """One token to try: the project it serves and where it was configured."""

    project: str
    source: str
    token: str


@click.command()
@click.option(
    "--online",
    is_flag=True,
    help="Also send one small query per project token to the API and report "
    "whether the token is accepted (pulls nothing).",
)
@click.pass_context
def check(ctx: click.Context, online: bool) -> None:
    """Check the config file and every watch's query against the schema."""
    config = load_config(ctx.obj["config_path"])
    for warning in config.warnings:
        click.echo(f"warning: {warning}", err=True)
    if config.schema_source == "pulled":
        click.echo(f"queries checked against the pulled schema {config.api.schema}")
    else:
        click.echo(
            "queries checked against the bundled schema "
            "(run `atleta-notifier schema pull` to check against the live API)"
        )
    refused, untried = asyncio.run(_check_online(config)) if online else (0, 0)
    summary = ", ".join(
        _count(len(items), noun)
        for items, noun in (
            (config.projects, "project"),
            (config.watches, "watch"),
            (config.channels, "channel"),
        )
    )
    failures = [
        f"{refused} token(s) refused" if refused else "",
        f"{untried} token(s) not tried" if untried else "",
    ]
    if refused or untried:
        raise click.ClickException(f"{summary}: {', '.join(filter(None, failures))}")
    click.echo(f"{summary}: OK")


def _probes(config: Config) -> list[_Probe]:
    """One probe per project whose enabled watches need a token."""
    probes: dict[str, _Probe] = {}
    for watch in config.watches:
        if watch.public or watch.token is None or not watch.enabled:
            continue
        if watch.project.id in probes:
            continue
        source = (
            "[api] token"
            if watch.token == config.api.token
            else f"project {watch.project.id} token"
        )
        probes[watch.project.id] = _Probe(
            project=watch.project.id, source=source, token=watch.token
        )
    return list(probes.values())


async def _check_online(config: Config) -> tuple[int, int]:
    """Try every project token once; return how many were refused and not tried.

    Only an auth failure says anything about a token: a network, server or
    rate-limit failure leaves it untried, and says so.
    """
    from notifier.atleta import AtletaClient

    api = config.api
    client = AtletaClient(
        api.url,
        timeout=api.timeout,
        rate_limit=api.rate_limit,
        burst=api.burst,
        concurrency=api.concurrency,
        max_retries=min(api.max_retries, 1),
    )
    refused = untried = 0
    try:
        probes = _probes(config)
        if not probes:
            click.echo("no watch needs a token: nothing to try online")
        for probe in probes:
            try:
                data = await client.execute(
                    PROBE_QUERY, {"project": probe.project}, token=probe.token
                )
            except PollError as error:
                verdict = "refused" if error.kind == "auth" else "not tried"
                if error.kind == "auth":
                    refused += 1
                else:
                    untried += 1
                click.echo(
                    f"project {probe.project} ({probe.source}): {verdict}: "
                    f"{error.hint} ({error.kind})",
                    err=True,
                )
                continue
            name = (data.get("project") or {}).get("organisation_name")
            label = f" ({name})" if name else ""
            click.echo(f"project {probe.project}{label} ({probe.source}): accepted")
    finally:
        await client.aclose()
    return refused, untried


@click.group()
def schema() -> None:
    """The GraphQL schema that watch queries are checked against."""


@schema.command("pull")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to save the schema (default: [api] schema, which defaults to "
    "atleta-schema.graphql next to the config file).",
)
@click.option(
    "--url",
    default=None,
    help="The GraphQL endpoint (default: [api] url). With --url and no config "
    f"file, the token comes from ${TOKEN_ENV}.",
)
@click.pass_context
def pull(ctx: click.Context, output: Path | None, url: str | None) -> None:
    """Fetch the live schema by introspection and save it as SDL."""
    config_path: Path = ctx.obj["config_path"]
    if url is not None and not config_path.exists():
        token = os.environ.get(TOKEN_ENV) or None
        target = output or Path("atleta-schema.graphql")
        timeout = 30.0
    else:
        config = load_config(config_path, validate_queries=False)
        url = url or config.api.url
        token = config.api.token or next(
            (watch.token for watch in config.watches if watch.token), None
        )
        target = output or config.api.schema
        timeout = config.api.timeout

    sdl = asyncio.run(pull_schema(url, token, request_timeout=timeout))
    _write(target, sdl)
    types = sum(1 for line in sdl.splitlines() if line.startswith("type "))
    click.echo(f"saved the schema of {url} to {target} ({types} object types)")

    if config_path.exists() and output is None:
        try:
            load_config(config_path)
        except ConfigError as error:
            click.echo(
                "the new schema rejects some watch queries; fix them before `run`:",
                err=True,
            )
            raise error from None
        click.echo("every watch query passes the new schema")


def _write(target: Path, text: str) -> None:
    """Replace ``target`` in one step, so a reader never sees half a schema."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text, "utf-8")
    partial.replace(target)


commands: list[click.Command] = [check, schema]


def _count(number: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("ch") else "s")
    return f"{number} {noun if number == 1 else plural}"
