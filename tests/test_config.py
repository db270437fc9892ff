"""Loading the config file: TOML, environment, secrets, and readable errors."""

from __future__ import annotations

import re
import socket
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from notifier.cli import main_group
from notifier.cli.common import run_cli
from notifier.config import Config, load_config, parse_duration
from notifier.errors import ConfigError
from notifier.fake_atleta import FakeAtleta
from notifier.schema import PRESETS

REPO = Path(__file__).resolve().parent.parent
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

BASE = """\
[api]
url = "http://127.0.0.1:8765/api/graphql"
token = "tok-base"

[channels.team]
urls = ["json://127.0.0.1:9/hook"]

[[projects]]
id = "TEST"
name = "City Run"
channels = ["team"]

  [[projects.watches]]
  preset = "registrations"
"""

Write = Callable[..., Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """Write a config file into tmp_path and return its path."""

    def writer(text: str, name: str = "notifier.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), "utf-8")
        return path

    return writer


def problems_of(path: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """The problems load_config reports for ``path``."""
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ or {})
    return caught.value.problems


def line_of(path: Path, needle: str) -> int:
    """The line of ``path`` holding ``needle`` (``"text#2"``: its second one)."""
    text, _, nth = needle.partition("#")
    lines = path.read_text().splitlines()
    found = [number for number, line in enumerate(lines, start=1) if text in line]
    assert found, f"{text!r} not in {path}"
    return found[int(nth or 1) - 1]


def test_example_config_loads() -> None:
    """config.example.toml, which documents every key, loads as it is."""
    config = load_config(REPO / "config.example.toml", environ={"ATLETA_TOKEN": "t"})

    assert [project.id for project in config.projects] == ["TEST"]
    assert {watch.name for watch in config.watches} == {
        "registrations",
        "city-run-2027",
        "resale-10k",
        "paid-orders",
    }
    assert config.channels["integration"].kind == "webhook"
    assert config.channels["digest"].digest_cron == "0 8 * * *"
    assert config.channels["digest"].quiet_hours == ("22:00", "07:00")
    assert config.defaults.timezone == "Europe/Amsterdam"
    assert not config.warnings


def test_example_documents_every_key() -> None:
    """Every key of every table appears in config.example.toml."""
    from notifier.config.fields import TABLES

    text = (REPO / "config.example.toml").read_text()
    for model in TABLES.values():
        for name, info in model.model_fields.items():
            key = info.alias or name
            assert re.search(rf"\b{key}\b", text), f"{model.__name__}.{key}"


def test_minimal_config_resolves_watch(write: Write) -> None:
    """A preset watch takes its name, records, channels and token from around it."""
    config = load_config(write(BASE), environ={})

    (watch,) = config.watches
    assert watch.id == "TEST/registrations"
    assert watch.records == PRESETS["registrations"].records
    assert watch.entity == "registration"
    assert watch.channels == ("team",)
    assert watch.token == "tok-base"
    assert watch.schedule.interval == 300.0
    assert watch.schedule.jitter == 10.0
    assert watch.paginate
    assert not watch.public
    assert config.schema_source == "bundled"


# Each case: a config text with one mistake, the dotted key the message must
# name, the text on the line it must point at, and words the message holds.
MISTAKES = [
    pytest.param(
        BASE + "  intervall = '1m'\n",
        "projects[0].watches[0].intervall",
        "intervall",
        ["unknown key", "did you mean 'interval'"],
        id="typo-nested-key",
    ),
    pytest.param(
        BASE.replace('token = "tok-base"', 'token = "tok-base"\ntimout = 5'),
        "api.timout",
        "timout",
        ["did you mean 'timeout'"],
        id="typo-api-key",
    ),
    pytest.param(
        BASE + "  interval = '5 minutes'\n",
        "projects[0].watches[0].interval",
        "interval =",
        ["expected a duration", "'5 minutes'"],
        id="bad-duration",
    ),
    pytest.param(
        BASE + "  interval = '500ms'\n",
        "projects[0].watches[0].interval",
        "interval =",
        ["at least 1 second"],
        id="interval-below-one-second",
    ),
    pytest.param(
        BASE + "  cron = '61 * * * *'\n",
        "projects[0].watches[0].cron",
        "cron =",
        ["cron line", "61"],
        id="bad-cron",
    ),
    pytest.param(
        BASE + "  cron = '*/5 * * * *'\n  interval = '1m'\n",
        "projects[0].watches[0].cron",
        "cron =",
        ["interval or cron, not both"],
        id="interval-and-cron",
    ),
    pytest.param(
        BASE.replace('preset = "registrations"', 'preset = "registration"'),
        "projects[0].watches[0].preset",
        "preset =",
        ["unknown preset 'registration'", "did you mean 'registrations'"],
        id="unknown-preset",
    ),
    pytest.param(
        BASE.replace('channels = ["team"]', 'channels = ["teem"]'),
        "projects[0].channels[0]",
        "channels =",
        ["unknown channel 'teem'", "did you mean 'team'"],
        id="unknown-channel",
    ),
    pytest.param(
        BASE + "  channels = ['ops']\n",
        "projects[0].watches[0].channels[0]",
        "channels = ['ops']",
        ["unknown channel 'ops'"],
        id="unknown-watch-channel",
    ),
    pytest.param(
        BASE + "  [[projects.watches.rules]]\n  channels = ['nope']\n",
        "projects[0].watches[0].rules[0].channels[0]",
        "channels = ['nope']",
        ["unknown channel 'nope'"],
        id="unknown-rule-channel",
    ),
    pytest.param(
        BASE
        + "  [[projects.watches]]\n  name = 'mine'\n"
        + "  records = 'project.orders.data'\n"
        + "  query = 'query { project(id: \"TEST\") { orders { data { id } }'\n",
        "projects[0].watches[1].query",
        "query =",
        ["Syntax Error"],
        id="query-syntax-error",
    ),
    pytest.param(
        BASE
        + "  [[projects.watches]]\n  name = 'mine'\n"
        + "  records = 'project.orders.data'\n"
        + "  query = 'query($project: ID!) { project(id: $project) "
        + "{ orders { total last_page data { id } } } }'\n",
        "projects[0].watches[1].query",
        "query =",
        ["must declare $page: Int and $per_page: Int"],
        id="paginated-query-without-page-variables",
    ),
    pytest.param(
        BASE + "  [[projects.watches]]\n  name = 'mine'\n  query = '{ x }'\n",
        "projects[0].watches[1].records",
        "[[projects.watches]]#2",
        ["needs records ="],
        id="own-query-without-records",
    ),
    pytest.param(
        BASE.replace('token = "tok-base"', 'token = "${ATLETA_TOKEN}"'),
        "api.token",
        "token =",
        ["environment variable ATLETA_TOKEN is not set"],
        id="missing-token-env-var",
    ),
    pytest.param(
        BASE.replace('token = "tok-base"', ""),
        "projects[0].watches[0]",
        "[[projects.watches]]",
        ["needs an API token"],
        id="no-token-for-private-watch",
    ),
    pytest.param(
        BASE.replace('id = "TEST"', 'id = "TEST1"'),
        "projects[0].id",
        'id = "TEST1"',
        ["4-character project code", "'TEST1'"],
        id="bad-project-id",
    ),
    pytest.param(
        BASE + "  [[projects.watches]]\n  preset = 'registrations'\n",
        "projects[0].watches[1]",
        "[[projects.watches]]#2",
        ["'registrations' already exists", "name ="],
        id="duplicate-watch",
    ),
    pytest.param(
        BASE + "\n[[projects]]\nid = 'TEST'\n",
        "projects[1].id",
        "id = 'TEST'",
        ["defined twice"],
        id="duplicate-project",
    ),
    pytest.param(
        "[defaults]\ntimezone = 'Europe/Amsterdan'\n" + BASE,
        "defaults.timezone",
        "timezone =",
        ["unknown time zone", "IANA"],
        id="bad-timezone",
    ),
    pytest.param(
        BASE + "[channels.hook]\nkind = 'webhook'\nurl = 'https://example.org/h'\n"
        "secret = 'not-a-whsec'\n",
        "channels.hook.secret",
        "secret =",
        ["whsec_<base64>"],
        id="webhook-secret-without-whsec",
    ),
    pytest.param(
        BASE + "[channels.hook]\nkind = 'webhook'\nurl = 'https://example.org/h'\n",
        "channels.hook.secret",
        "[channels.hook]",
        ["needs secret"],
        id="webhook-without-secret",
    ),
    pytest.param(
        BASE + "[channels.chat]\nurls = ['slak://a/b/c']\n",
        "channels.chat.urls[0]",
        "urls = ['slak",
        ["no 'slak://' service", "did you mean 'slack://'"],
        id="unknown-apprise-scheme",
    ),
    pytest.param(
        BASE + "[channels.chat]\nurls = ['console://']\nquiet_hours = '22-7'\n",
        "channels.chat.quiet_hours",
        "quiet_hours",
        ["22:00-07:00"],
        id="bad-quiet-hours",
    ),
    pytest.param(
        BASE + "[channels.chat]\nurls = ['console://']\ndigest = 'hourly'\n",
        "channels.chat.digest",
        "digest",
        ["'1h'", "cron"],
        id="bad-digest",
    ),
    pytest.param(
        BASE + "[channels.chat]\nurls = ['console://']\nformat = 'rtf'\n",
        "channels.chat.format",
        "format",
        ["'markdown'"],
        id="bad-format",
    ),
    pytest.param(
        BASE + "  [[projects.watches.rules]]\n  when = 'waitlist_size >> 5'\n",
        "projects[0].watches[0].rules[0].when",
        "when =",
        ["path op number"],
        id="bad-rule-threshold",
    ),
    pytest.param(
        BASE + "  [[projects.watches.rules]]\n  kinds = ['added']\n",
        "projects[0].watches[0].rules[0].kinds[0]",
        "kinds =",
        ["'created'"],
        id="bad-rule-kind",
    ),
    pytest.param(
        BASE + "  [[projects.watches]]\n  preset = 'event'\n",
        "projects[0].watches[1].preset",
        "preset = 'event'",
        ["needs $event", "variables"],
        id="event-preset-without-event-id",
    ),
    pytest.param(
        BASE + "  [[projects.watches]]\n  preset = 'resale'\n"
        "  variables = { event = 'x', evnt = 'y' }\n",
        "projects[0].watches[1].preset",
        "preset = 'resale'",
        ["variables.evnt", "declares no $evnt"],
        id="unknown-variable",
    ),
    pytest.param(
        BASE.replace("[api]", '[api]\nschema = "pulled.graphql"')
        + "  [[projects.watches]]\n  preset = 'resale'\n"
        "  variables = { event = ['x'] }\n",
        "projects[0].watches[1].preset",
        "preset = 'resale'",
        ["Variable '$event' has invalid value", "pulled schema"],
        id="variable-of-wrong-type",
    ),
    pytest.param(
        "[storage]\nretention_days = -1\n" + BASE,
        "storage.retention_days",
        "retention_days",
        ["greater than 0"],
        id="negative-retention",
    ),
    pytest.param(
        "[metrics]\nport = 70000\n" + BASE,
        "metrics.port",
        "port",
        ["less than or equal to 65535"],
        id="bad-port",
    ),
    pytest.param(
        "[apii]\nurl = 'x'\n" + BASE,
        "apii",
        "[apii]",
        ["unknown key 'apii'", "did you mean 'api'"],
        id="unknown-table",
    ),
]


@pytest.mark.parametrize(("text", "key", "line_text", "words"), MISTAKES)
def test_mistake_is_reported_with_file_key_and_line(
    write: Write, text: str, key: str, line_text: str, words: list[str]
) -> None:
    """Each mistake gives one line naming the file, the line, the key and the fix."""
    path = write(text)
    pulled = path.with_name("pulled.graphql")
    pulled.write_text((REPO / "notifier" / "atleta.graphql").read_text())

    problems = problems_of(path)

    matching = [problem for problem in problems if f": {key}: " in problem]
    assert matching, problems
    problem = matching[0]
    assert problem.startswith(f"{path}:{line_of(path, line_text)}: "), problem
    for word in words:
        assert word in problem


def test_every_problem_is_reported_at_once(write: Write) -> None:
    """A file with many mistakes lists all of them in one ConfigError."""
    text = (
        "[defaults]\ninterval = 'soon'\ntimezone = 'Nowhere/City'\n"
        + BASE.replace('channels = ["team"]', 'channels = ["teem"]')
        + "  intervall = '1m'\n"
        + "  [[projects.watches]]\n  preset = 'nope'\n"
    )

    problems = problems_of(write(text))

    assert len(problems) == 5, problems
    assert "5 config problems" in str(ConfigError(problems))


def test_toml_syntax_error_names_line_and_column(write: Write) -> None:
    """A TOML syntax error names the file, line and column."""
    path = write(BASE + "  interval = 5m\n")

    (problem,) = problems_of(path)

    assert problem.startswith(f"{path}:{line_of(path, 'interval = 5m')}:")
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: TOML syntax error", problem)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist says so and points at `init`."""
    (problem,) = problems_of(tmp_path / "absent.toml")

    assert "no such config file" in problem
    assert "init" in problem


def test_environment_overrides_scalar_keys(write: Write) -> None:
    """ATLETA_NOTIFIER_<TABLE>__<KEY> overrides a key of the file."""
    environ = {
        "ATLETA_NOTIFIER_API__TIMEOUT": "5",
        "ATLETA_NOTIFIER_DEFAULTS__INTERVAL": "2m",
        "ATLETA_NOTIFIER_METRICS__ENABLED": "true",
        "ATLETA_NOTIFIER_CONFIG": "ignored.toml",
    }

    config = load_config(write(BASE), environ=environ)

    assert config.api.timeout == 5.0
    assert config.api.url == "http://127.0.0.1:8765/api/graphql"
    assert config.defaults.interval == 120.0
    assert config.watches[0].schedule.interval == 120.0
    assert config.metrics.enabled is True


def test_environment_override_replaces_an_unset_reference(write: Write) -> None:
    """A key set from the environment needs no ${VAR} of its own in the file."""
    path = write(BASE.replace('token = "tok-base"', 'token = "${ATLETA_TOKEN}"'))

    config = load_config(path, environ={"ATLETA_NOTIFIER_API__TOKEN": "tok-env"})

    assert config.api.token == "tok-env"


def test_bad_environment_override_names_the_variable(write: Write) -> None:
    """A bad or unknown override names the environment variable it came from."""
    environ = {
        "ATLETA_NOTIFIER_API__TIMEOUT": "soon",
        "ATLETA_NOTIFIER_API__TIMOUT": "5",
    }

    problems = problems_of(write(BASE), environ)

    assert any(
        "api.timeout (from ATLETA_NOTIFIER_API__TIMEOUT)" in p and "'soon'" in p
        for p in problems
    ), problems
    assert any("api.timout (from ATLETA_NOTIFIER_API__TIMOUT)" in p for p in problems)


def test_environment_cannot_replace_a_whole_list(write: Write) -> None:
    """A variable for a table or list that is not JSON is one clear problem."""
    (problem,) = problems_of(write(BASE), {"ATLETA_NOTIFIER_PROJECTS": "TEST"})

    assert "ATLETA_NOTIFIER_PROJECTS" in problem
    assert "<TABLE>__<KEY>" in problem


def test_variable_references_are_expanded(write: Write) -> None:
    """${VAR}, ${VAR:-default} and $$ work in any string of the file."""
    text = (
        BASE.replace('token = "tok-base"', 'token = "${TOKEN}"').replace(
            'name = "City Run"', 'name = "${RACE:-City Run} $$5"'
        )
        + '  interval = "${POLL:-90s}"\n'
    )

    config = load_config(write(text), environ={"TOKEN": "tok-env", "POLL": "45s"})

    assert config.api.token == "tok-env"
    assert config.projects[0].name == "City Run $5"
    assert config.watches[0].schedule.interval == 45.0


def test_optional_empty_token_allows_public_watches(write: Write) -> None:
    """Without any token, a config of public watches loads."""
    text = """\
    [api]
    token = "${ATLETA_TOKEN:-}"

    [[projects]]
    id = "TEST"

      [[projects.watches]]
      preset = "resale"
      variables = { event = "TESTaaaaaaaa" }
      interval = "30s"
    """

    config = load_config(write(text), environ={})

    (watch,) = config.watches
    assert watch.public
    assert watch.token is None
    assert watch.variables == {"event": "TESTaaaaaaaa"}
    assert len(watch.fingerprint()) == 16
    assert watch.schedule.jitter == 3.0
    assert config.warnings  # the watch has no channels


def test_token_file_is_read_next_to_the_config(write: Write, tmp_path: Path) -> None:
    """token_file reads a secret from a file relative to the config."""
    (tmp_path / "token").write_text("tok-from-file\n")
    path = write(BASE.replace('token = "tok-base"', 'token_file = "token"'))

    config = load_config(path, environ={})

    assert config.api.token == "tok-from-file"
    assert config.watches[0].token == "tok-from-file"


def test_token_file_comes_from_credentials_directory(
    write: Write, tmp_path: Path
) -> None:
    """Under systemd, a relative token_file and atleta-token come from credentials."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "city").write_text("tok-city")
    (credentials / "atleta-token").write_text("tok-systemd")
    text = (
        BASE.replace('token = "tok-base"', "").replace(
            'name = "City Run"', 'name = "City Run"\ntoken_file = "city"'
        )
        + '\n[[projects]]\nid = "ABCD"\n  [[projects.watches]]\n  preset = "orders"\n'
    )
    environ = {"CREDENTIALS_DIRECTORY": str(credentials)}

    config = load_config(write(text), environ=environ)

    tokens = {watch.id: watch.token for watch in config.watches}
    assert tokens == {"TEST/registrations": "tok-city", "ABCD/orders": "tok-systemd"}


def test_unreadable_token_file_is_reported(write: Write) -> None:
    """A token_file that does not exist is a problem naming the path."""
    path = write(BASE.replace('token = "tok-base"', 'token_file = "missing"'))

    problems = problems_of(path)

    assert any("api.token_file" in p and "missing" in p for p in problems)


def test_project_token_beats_api_token(write: Write) -> None:
    """A project's own token is used for its watches instead of [api] token."""
    text = BASE.replace('name = "City Run"', 'name = "City Run"\ntoken = "tok-own"')

    config = load_config(write(text), environ={})

    assert config.watches[0].token == "tok-own"
    assert config.api.token == "tok-base"


SECRETS = ["tok-SECRET-api", "tok-SECRET-project", "SECRET-bot-token", "SECRETpath"]


def test_secrets_never_appear_in_errors_or_repr(write: Write) -> None:
    """Tokens, Apprise URLs and webhook URLs and secrets stay out of messages."""
    text = f"""\
    [api]
    token = "tok-SECRET-api"

    [channels.chat]
    urls = ["slak://SECRET-bot-token/x", "not a url SECRET-bot-token"]

    [channels.hook]
    kind = "webhook"
    url = "ftp://example.org/SECRETpath"
    secret = ["whsec_SECRET-bot-token", 42]

    [channels.ok]
    kind = "webhook"
    url = "https://example.org/SECRETpath"
    secret = "{SECRET}"

    [[projects]]
    id = "TEST"
    token = "tok-SECRET-project"
    channels = ["ok"]
      [[projects.watches]]
      preset = "registrations"
      intervall = "1m"
    """
    path = write(text)

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert "slak" in message
    assert "channels.hook.url" in message
    for secret in [*SECRETS, SECRET]:
        assert secret not in message

    config = load_config(
        write(
            text.replace('\n      intervall = "1m"', "")
            .replace('"slak://SECRET-bot-token/x", "not a url SECRET-bot-token"', "")
            .replace("urls = []", 'urls = ["json://h/SECRET-bot-token"]')
            .replace("ftp://", "https://")
            .replace('["whsec_SECRET-bot-token", 42]', f'"{SECRET}"'),
            "ok.toml",
        ),
        environ={},
    )
    shown = repr(config) + str(config)
    for secret in [*SECRETS, SECRET]:
        assert secret not in shown


def test_wrongly_typed_token_value_is_not_echoed(write: Write) -> None:
    """Even a token of the wrong type is not repeated in the message."""
    path = write(BASE.replace('token = "tok-base"', "token = 123456789"))

    problems = problems_of(path)

    assert any("api.token" in p for p in problems)
    assert not any("123456789" in p for p in problems)


def test_webhook_secrets_rotation_and_secret_file(write: Write, tmp_path: Path) -> None:
    """A webhook takes a list of secrets, or one per line of secret_file."""
    other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    (tmp_path / "secrets").write_text(f"{SECRET}\n{other}\n")
    text = (
        BASE
        + f"""
[channels.a]
kind = "webhook"
url = "https://example.org/a"
secret = ["{SECRET}", "{other}"]

[channels.b]
kind = "webhook"
url = "https://example.org/b"
secret_file = "secrets"
"""
    )

    config = load_config(write(text), environ={})

    assert config.channels["a"].secrets == (SECRET, other)
    assert config.channels["b"].secrets == (SECRET, other)
    assert config.channels["a"].urls == ("https://example.org/a",)
    assert config.channels["a"].targets[0].channel == "a"


def test_channel_options_are_resolved(write: Write) -> None:
    """Digest windows, quiet hours, time zone and filters reach the Channel."""
    text = "[defaults]\ntimezone = 'Europe/Amsterdam'\n" + BASE.replace(
        'urls = ["json://127.0.0.1:9/hook"]',
        'urls = ["json://127.0.0.1:9/hook", "console://"]\n'
        'digest = "1h"\nquiet_hours = "22:00-07:00"\nflood_cap = 3\n'
        'format = "markdown"\nevents = ["registration.*"]\n'
        'body_template = "{{ events | length }} changes"',
    )

    channel = load_config(write(text), environ={}).channels["team"]

    assert channel.digest_interval == 3600.0
    assert channel.digest_cron is None
    assert channel.quiet_hours == ("22:00", "07:00")
    assert channel.timezone == "Europe/Amsterdam"
    assert channel.flood_cap == 3
    assert channel.format == "markdown"
    assert channel.events == ("registration.*",)
    assert len(channel.targets) == 2


def test_template_syntax_error_is_reported(write: Write) -> None:
    """A broken Jinja2 template is caught at load time."""
    text = BASE.replace(
        'urls = ["json://127.0.0.1:9/hook"]',
        'urls = ["console://"]\ntitle_template = "{{ events | length "',
    )

    problems = problems_of(write(text))

    assert any("channels.team.title_template" in p and "syntax" in p for p in problems)


def test_watch_options_are_resolved(write: Write) -> None:
    """A watch's own schedule, channels, rules, ignore and flags are kept."""
    text = (
        BASE
        + """\
  name = "regs"
  cron = "*/10 6-22 * * *"
  jitter = "3s"
  channels = []
  ignore = ["first_name"]
  baseline_events = true
  enabled = false
  per_page = 50
  failure_threshold = 5
  [[projects.watches.rules]]
  kinds = ["updated"]
  fields = ["ticket.id"]
  when = "registration_number > 100"
  channels = ["team"]
"""
    )

    (watch,) = load_config(write(text), environ={}).watches

    assert watch.name == "regs"
    assert watch.preset == "registrations"
    assert watch.schedule.cron == "*/10 6-22 * * *"
    assert watch.schedule.interval is None
    assert watch.schedule.jitter == 3.0
    assert watch.channels == ()
    assert watch.ignore == ("updated_at", "first_name")
    assert watch.notify_baseline
    assert not watch.enabled
    assert watch.per_page == 50
    assert watch.failure_threshold == 5
    (rule,) = watch.rules
    assert rule.kinds == ("updated",)
    assert rule.fields == ("ticket.id",)
    assert rule.when == "registration_number > 100"
    assert rule.channels == ("team",)


def test_query_file_reads_the_preset_header(write: Write, tmp_path: Path) -> None:
    """A copied preset file works through query_file, header and all."""
    copy = PRESETS["orders"].query.replace("        status\n", "")
    (tmp_path / "my-orders.graphql").write_text(copy)
    text = BASE + "\n  [[projects.watches]]\n  query_file = 'my-orders.graphql'\n"

    config = load_config(write(text), environ={})

    watch = config.watches[1]
    assert watch.name == "my-orders"
    assert watch.records == "project.orders.data"
    assert watch.entity == "order"
    assert watch.paginate
    assert "        status\n" not in watch.query


def test_bundled_schema_failure_is_a_warning(write: Write) -> None:
    """A query that fails the bundled schema loads, with a warning."""
    text = (
        BASE
        + """
  [[projects.watches]]
  name = "mine"
  records = "project.registrations.data"
  query = '''
query Q($project: ID!, $page: Int, $per_page: Int) {
  project(id: $project) {
    registrations(page: $page, per_page: $per_page) {
      total last_page data { id bib_colour }
    }
  }
}'''
"""
    )

    path = write(text)

    config = load_config(path, environ={})

    (warning,) = config.warnings
    assert "projects[0].watches[1].query" in warning
    assert "bib_colour" in warning
    assert "bundled schema" in warning
    assert f"file line {line_of(path, 'bib_colour')})" in warning


def test_pulled_schema_failure_is_an_error(write: Write, tmp_path: Path) -> None:
    """Against a pulled schema, a failing query is an error naming the watch."""
    sdl = (REPO / "notifier" / "atleta.graphql").read_text()
    (tmp_path / "atleta-schema.graphql").write_text(
        re.sub(r"\n  ticket_number: .*", "", sdl)
    )
    path = write(BASE)

    problems = problems_of(path)

    (problem,) = problems
    assert "projects[0].watches[0].preset" in problem
    assert "ticket_number" in problem
    assert "pulled schema" in problem
    config = load_config(path, environ={}, validate_queries=False)
    assert config.watches[0].name == "registrations"


def test_pulled_schema_is_used_when_present(write: Write, tmp_path: Path) -> None:
    """A pulled schema next to the config is what queries are checked against."""
    sdl = (REPO / "notifier" / "atleta.graphql").read_text()
    (tmp_path / "atleta-schema.graphql").write_text(sdl)

    config = load_config(write(BASE), environ={})

    assert config.schema_source == "pulled"
    assert config.api.schema == tmp_path / "atleta-schema.graphql"


def test_broken_pulled_schema_is_reported(write: Write, tmp_path: Path) -> None:
    """A pulled schema file that is not SDL is a problem of [api] schema."""
    (tmp_path / "mine.graphql").write_text("type {")
    path = write(BASE.replace("[api]", '[api]\nschema = "mine.graphql"'))

    problems = problems_of(path)

    assert any("api.schema" in p and "schema pull" in p for p in problems)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("45", 45.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Durations accept a unit per part, or plain seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "1x", "1h junk"])
def test_parse_duration_rejects(text: str) -> None:
    """Anything else is a ValueError that shows the expected form."""
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_config_is_frozen(write: Write) -> None:
    """The loaded config cannot be changed by accident."""
    config: Config = load_config(write(BASE), environ={})

    with pytest.raises(AttributeError):
        config.api = config.api  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.channels["x"] = config.channels["team"]  # type: ignore[index]


def test_check_command_prints_a_summary(
    write: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check` on a good file prints the counts and exits 0."""
    path = write(BASE)

    code = run_cli(main_group, ["--config", str(path), "check"])

    out = capsys.readouterr().out
    assert code == 0
    assert "1 project, 1 watch, 1 channel: OK" in out
    assert "bundled schema" in out


def test_check_command_exits_2_on_problems(
    write: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check` on a bad file prints every problem and exits 2."""
    path = write(BASE + "  intervall = '1m'\n  cron = 'never'\n")

    code = run_cli(main_group, ["--config", str(path), "check"])

    err = capsys.readouterr().err
    assert code == 2
    assert "2 config problems" in err
    assert "projects[0].watches[0].intervall" in err
    assert "projects[0].watches[0].cron" in err
    assert "Traceback" not in err


def test_check_online_reports_each_token(
    write: Write, fake_api: FakeAtleta, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check --online` tries each project's token once and pulls nothing."""
    other = fake_api.project_ids[1]
    text = f"""\
    [api]
    url = "{fake_api.url}"
    token = "{fake_api.token}"

    [[projects]]
    id = "TEST"
      [[projects.watches]]
      preset = "registrations"
      [[projects.watches]]
      preset = "orders"
      [[projects.watches]]
      preset = "resale"
      variables = {{ event = "TESTaaaaaaaa" }}

    [[projects]]
    id = "{other}"
    token = "tok-SECRET-wrong"
      [[projects.watches]]
      preset = "orders"
    """

    code = run_cli(main_group, ["--config", str(write(text)), "check", "--online"])

    captured = capsys.readouterr()
    assert code == 1
    assert "project TEST (Test Events vzw) ([api] token): accepted" in captured.out
    assert f"project {other} (project {other} token): refused" in captured.err
    assert "1 token(s) refused" in captured.err
    assert "tok-SECRET-wrong" not in captured.out + captured.err
    assert fake_api.token not in captured.out + captured.err
    assert fake_api.requests["introspection"] == 0
    assert fake_api.requests["project"] == 2


def test_check_online_does_not_call_an_unreachable_api_a_refusal(
    write: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check --online` with the API down says the token was not tried."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = f"""\
    [api]
    url = "http://127.0.0.1:{port}/api/graphql"
    token = "tok-SECRET-offline"
    max_retries = 0

    [[projects]]
    id = "TEST"
      [[projects.watches]]
      preset = "orders"
    """

    code = run_cli(main_group, ["--config", str(write(text)), "check", "--online"])

    err = capsys.readouterr().err
    assert code == 1
    assert "project TEST ([api] token): not tried:" in err
    assert "(network)" in err
    assert "refused" not in err
    assert "1 token(s) not tried" in err
    assert "tok-SECRET-offline" not in err


def test_wrongly_typed_values_do_not_hide_other_problems(write: Write) -> None:
    """A value of the wrong type is reported, and the rest is still checked."""
    text = (
        BASE
        + """\
  [[projects.watches]]
  preset = 5
  [[projects.watches]]
  preset = "orders"
  channels = ["nowhere"]

[[projects]]
id = 42
"""
    )

    problems = problems_of(write(text))

    assert len(problems) == 3, problems
    assert "projects[0].watches[1].preset: expected a string" in problems[0]
    assert "unknown channel 'nowhere'" in problems[1]
    assert "projects[1].id: expected a string in quotes, got 42" in problems[2]
