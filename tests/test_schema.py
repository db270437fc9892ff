"""Presets, query validation against a schema, and pulling the live schema."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from graphql import build_schema

from notifier.cli import main_group
from notifier.cli.common import run_cli
from notifier.config import load_config
from notifier.errors import SchemaError
from notifier.fake_atleta import FakeAtleta
from notifier.schema import (
    PRESETS,
    bundled_schema,
    check_shape,
    declared_variables,
    load_schema,
    parse_query_file,
    pull_schema,
    validate_query,
)

EXPECTED_PRESETS = {
    # name: (entity, records, single, paginate, public)
    "registrations": ("registration", "project.registrations.data", False, True, False),
    "orders": ("order", "project.orders.data", False, True, False),
    "purchases": ("purchase", "project.purchases.data", False, True, False),
    "events": ("event", "project.events.data", False, True, False),
    "event": ("event", "event", True, False, True),
    "resale": ("resale", "event.registrations_for_sale", False, False, True),
}

PAGED = """
query Q($project: ID!, $page: Int, $per_page: Int) {
  project(id: $project) {
    registrations(page: $page, per_page: $per_page) {
      total
      last_page
      data { id first_name }
    }
  }
}
"""


def test_the_six_presets_exist_with_their_metadata() -> None:
    """Each preset's header gives its entity, record path and flags."""
    found = {
        name: (p.entity, p.records, p.single, p.paginate, p.public)
        for name, p in PRESETS.items()
    }

    assert found == EXPECTED_PRESETS


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_preset_validates_against_the_bundled_schema(name: str) -> None:
    """Every preset query is valid against the bundled schema and its own needs."""
    preset = PRESETS[name]
    variables = {"event": "TESTaaaaaaaa"} if preset.public else {}

    assert validate_query(bundled_schema(), preset.query) == []
    assert (
        check_shape(
            preset.query,
            records=preset.records,
            key=preset.key,
            single=preset.single,
            paginate=preset.paginate,
            variables=variables,
        )
        == []
    )


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_preset_variables_follow_the_convention(name: str) -> None:
    """Project presets take $project, $page, $per_page; public ones $event."""
    declared = declared_variables(PRESETS[name].query)

    if PRESETS[name].public:
        assert declared == {"event": True}
    else:
        assert declared == {"project": True, "page": False, "per_page": False}


def test_resale_preset_carries_the_offer_link_and_ignores_the_countdown() -> None:
    """A resale record has its price and public link; the hold countdown is ignored."""
    preset = PRESETS["resale"]

    assert "public_url" in preset.query
    assert "total_amount" in preset.query
    assert preset.key == "id"
    assert preset.ignore == ("resale.time_left",)


def test_unknown_field_is_reported_with_its_position() -> None:
    """A misspelt field names itself, the type and the line and column."""
    (problem,) = validate_query(bundled_schema(), PAGED.replace("first_name", "frist"))

    assert "Cannot query field 'frist' on type 'Registration'" in problem
    assert "query line 7, column 17" in problem


def test_syntax_error_is_reported_with_its_position() -> None:
    """A syntax error is one message with its line and column."""
    (problem,) = validate_query(bundled_schema(), "query { project(id: ")

    assert problem.startswith("Syntax Error")
    assert "query line 1" in problem


def test_several_operations_are_refused() -> None:
    """A watch runs one operation, so a document must hold exactly one."""
    (problem,) = validate_query(
        bundled_schema(), PAGED + "\nquery Other { __typename }"
    )

    assert "exactly one operation" in problem


@pytest.mark.parametrize(
    ("query", "options", "expected"),
    [
        pytest.param(
            PAGED.replace(", $page: Int, $per_page: Int", "").replace(
                "(page: $page, per_page: $per_page)", ""
            ),
            {},
            "must declare $page: Int and $per_page: Int",
            id="no-page-variables",
        ),
        pytest.param(
            PAGED.replace("      total\n", ""),
            {},
            "must select 'total' in project.registrations",
            id="no-total",
        ),
        pytest.param(
            PAGED.replace("      last_page\n", ""),
            {},
            "must select 'last_page'",
            id="no-last-page",
        ),
        pytest.param(
            PAGED.replace("data { id first_name }", "data { first_name }"),
            {},
            "key 'id' is not selected inside 'project.registrations.data'",
            id="no-key",
        ),
        pytest.param(
            PAGED,
            {"records": "project.orders.data"},
            "project selects no 'orders'",
            id="records-path-not-selected",
        ),
        pytest.param(
            PAGED,
            {"records": "project.registrations.total"},
            "ends on a scalar",
            id="records-path-on-scalar",
        ),
        pytest.param(
            PAGED,
            {"variables": {"project": "TEST"}},
            "variables.project is set by the poller",
            id="client-variable-set",
        ),
        pytest.param(
            PAGED,
            {"variables": {"eventt": "x"}},
            "variables.eventt: the query declares no $eventt",
            id="undeclared-variable",
        ),
        pytest.param(
            "query E($event: ID!) { event(id: $event) { id } }",
            {"records": "event", "single": True, "paginate": False},
            "the query needs $event",
            id="required-variable-missing",
        ),
    ],
)
def test_shape_problems(query: str, options: dict[str, object], expected: str) -> None:
    """What the poller needs from a query is checked with a clear message."""
    arguments: dict[str, object] = {
        "records": "project.registrations.data",
        "key": "id",
        "single": False,
        "paginate": True,
        "variables": {},
        **options,
    }

    problems = check_shape(query, **arguments)  # type: ignore[arg-type]

    assert any(expected in problem for problem in problems), problems


def test_shape_follows_aliases_and_fragments() -> None:
    """Fields reached through an alias or a fragment count as selected."""
    query = """
    query Q($project: ID!, $page: Int, $per_page: Int) {
      project(id: $project) {
        regs: registrations(page: $page, per_page: $per_page) { ...Page }
      }
    }
    fragment Page on RegistrationPagination { total last_page data { id } }
    """

    problems = check_shape(
        query,
        records="project.regs.data",
        key="id",
        single=False,
        paginate=True,
        variables={},
    )

    assert problems == []


def test_query_file_header_is_parsed() -> None:
    """A copied preset header sets the watch's defaults; flags are checked."""
    text = "# records: project.orders.data\n# ignore: a, b.c\n# single: no\nquery{x}"

    preset = parse_query_file(text, name="my-orders")

    assert preset.name == "my-orders"
    assert preset.entity == "order"
    assert preset.ignore == ("a", "b.c")
    assert preset.paginate
    with pytest.raises(ValueError, match="records"):
        parse_query_file("# key: id\nquery { x }", name="x")
    with pytest.raises(ValueError, match="true or false"):
        parse_query_file("# records: a\n# public: maybe\nquery{x}", name="x")


def test_load_schema_reports_unreadable_and_broken_files(tmp_path: Path) -> None:
    """A pulled schema that is missing or not SDL is a SchemaError."""
    broken = tmp_path / "broken.graphql"
    broken.write_text("type Query {")

    with pytest.raises(SchemaError, match="cannot read"):
        load_schema(tmp_path / "absent.graphql")
    with pytest.raises(SchemaError, match="schema pull"):
        load_schema(broken)
    assert load_schema(None) is bundled_schema()


async def test_pull_schema_from_the_fake_api(fake_api: FakeAtleta) -> None:
    """Introspection over HTTP gives SDL that every preset validates against."""
    sdl = await pull_schema(fake_api.url, fake_api.token)

    schema = build_schema(sdl)
    assert "Project" in schema.type_map
    assert "registrations_for_sale" in sdl
    for preset in PRESETS.values():
        assert validate_query(schema, preset.query) == [], preset.name
    assert fake_api.requests["introspection"] == 1


def _answer(status: int, body: object) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(401, {}, "refused the token", id="refused"),
        pytest.param(502, b"bad gateway", "HTTP 502", id="server-error"),
        pytest.param(200, b"<html>", "not JSON", id="not-json"),
        pytest.param(
            200,
            {"errors": [{"message": "introspection is disabled"}]},
            "introspection is disabled",
            id="graphql-errors",
        ),
        pytest.param(200, {"data": {"__schema": {}}}, "unusable", id="bad-shape"),
    ],
)
async def test_pull_schema_failures(status: int, body: object, expected: str) -> None:
    """Every way a pull can fail is a SchemaError that hides the token."""
    transport = _answer(status, body)

    with pytest.raises(SchemaError, match=expected) as caught:
        await pull_schema(
            "https://user:pw@example.org/api/graphql?key=SECRET",
            "tok-SECRET",
            transport=transport,
        )
    assert "SECRET" not in str(caught.value)
    assert "pw" not in str(caught.value)


async def test_pull_schema_sends_the_bearer_token() -> None:
    """The token goes in the Authorization header, nowhere else."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401)

    with pytest.raises(SchemaError):
        await pull_schema(
            "https://example.org/api/graphql",
            "tok-1",
            transport=httpx.MockTransport(handler),
        )
    assert seen[0].headers["Authorization"] == "Bearer tok-1"
    assert b"tok-1" not in seen[0].content


def _config(
    path: Path, api: FakeAtleta, watch: str = 'preset = "registrations"'
) -> Path:
    path.write_text(
        f"""
[api]
url = "{api.url}"
token = "{api.token}"

[[projects]]
id = "TEST"
  [[projects.watches]]
  {watch}
""",
        "utf-8",
    )
    return path


def test_schema_pull_command_saves_sdl_next_to_the_config(
    fake_api: FakeAtleta, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`schema pull` saves the live schema where the config looks for it."""
    config = _config(tmp_path / "notifier.toml", fake_api)

    code = run_cli(main_group, ["--config", str(config), "schema", "pull"])

    out = capsys.readouterr().out
    assert code == 0
    assert "saved the schema" in out
    assert "every watch query passes" in out
    assert (tmp_path / "atleta-schema.graphql").is_file()
    assert load_config(config, environ={}).schema_source == "pulled"


def test_schema_pull_to_another_file(
    fake_api: FakeAtleta, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--output` writes elsewhere and leaves the config's schema alone."""
    config = _config(tmp_path / "notifier.toml", fake_api)
    target = tmp_path / "out" / "live.graphql"

    code = run_cli(
        main_group, ["--config", str(config), "schema", "pull", "--output", str(target)]
    )

    assert code == 0
    assert "type Query" in target.read_text()
    assert not (tmp_path / "atleta-schema.graphql").exists()


def test_schema_pull_reports_queries_the_new_schema_rejects(
    fake_api: FakeAtleta, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A query the pulled schema rejects makes `schema pull` exit 2, file saved."""
    watch = """name = "mine"
  records = "project.registrations.data"
  query = '''query Q($project: ID!, $page: Int, $per_page: Int) {
    project(id: $project) {
      registrations(page: $page, per_page: $per_page) {
        total last_page data { id bib_colour } } } }'''"""
    config = _config(tmp_path / "notifier.toml", fake_api, watch)

    code = run_cli(main_group, ["--config", str(config), "schema", "pull"])

    err = capsys.readouterr().err
    assert code == 2
    assert "bib_colour" in err
    assert "pulled schema" in err
    assert (tmp_path / "atleta-schema.graphql").is_file()
    assert fake_api.token not in err


def test_schema_pull_with_url_and_no_config(
    fake_api: FakeAtleta,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With --url and no config file, the schema lands in the current folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATLETA_TOKEN", fake_api.token)

    code = run_cli(
        main_group,
        ["--config", "absent.toml", "schema", "pull", "--url", fake_api.url],
    )

    assert code == 0
    assert (tmp_path / "atleta-schema.graphql").is_file()


def test_schema_pull_failure_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreachable API is a runtime failure (exit 1) with one line."""
    config = tmp_path / "notifier.toml"
    config.write_text('[api]\nurl = "http://127.0.0.1:9/api/graphql"\ntimeout = "2s"\n')

    code = run_cli(main_group, ["--config", str(config), "schema", "pull"])

    assert code == 1
    assert "cannot reach http://127.0.0.1:9/api/graphql" in capsys.readouterr().err


async def test_resale_preset_sees_a_new_offer_keyed_by_registration(
    fake_api: FakeAtleta,
) -> None:
    """The resale preset, run anonymously, lists a new offer with its buy link."""
    from notifier.atleta import AtletaClient

    event_id = next(
        event_id
        for event_id in fake_api.data.events
        if event_id.startswith(fake_api.project_ids[0])
    )
    preset = PRESETS["resale"]
    client = AtletaClient(fake_api.url, rate_limit=100, burst=100)
    try:
        before = await client.execute(preset.query, {"event": event_id}, token=None)
        fake_api.data.open_resale(event_id)
        after = await client.execute(preset.query, {"event": event_id}, token=None)
        single = await client.execute(
            PRESETS["event"].query, {"event": event_id}, token=None
        )
    finally:
        await client.aclose()

    old = {row["id"] for row in before["event"]["registrations_for_sale"]}
    new = [r for r in after["event"]["registrations_for_sale"] if r["id"] not in old]
    assert len(new) == 1
    assert new[0]["resale"]["public_url"]
    assert isinstance(new[0]["resale"]["total_amount"], int)
    assert single["event"]["registrations_for_sale_count"] == len(old) + 1
