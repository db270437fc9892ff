"""GraphQL schemas, query validation and the bundled presets.

A query is checked twice: against a schema (the one ``schema pull`` saved
from the live API, else the bundled reconstruction ``atleta.graphql``), and
against the notifier's own needs (the record list is selected, a paginated
query takes ``$page``/``$per_page`` and selects ``total``/``last_page``).

Presets are ``notifier/presets/<name>.graphql`` files. Each starts with a
comment block of ``# name: value`` lines (``entity``, ``records``, ``key``,
``single``, ``paginate``, ``public``, ``ignore``) so that a user can copy
one, edit it, and point a watch at the copy with ``query_file``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import httpx
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    IntrospectionQuery,
    OperationDefinitionNode,
    SelectionSetNode,
    build_client_schema,
    build_schema,
    get_introspection_query,
    parse,
    print_schema,
    validate,
)
from graphql.execution.values import get_variable_values
from graphql.language import DocumentNode, NonNullTypeNode

from notifier.errors import SchemaError

PAGE_VARIABLES = ("page", "per_page")
"""Variables the client sets on every page of a paginated query."""

CLIENT_VARIABLES = frozenset({"project", *PAGE_VARIABLES})
"""Variables the client fills in itself; a watch never sets them."""

_META_KEYS = ("entity", "records", "key", "single", "paginate", "public", "ignore")
_META_LINE = re.compile(r"^#\s*([a-z_]+)\s*:\s*(.*?)\s*$")
_BOOLEANS = {"true": True, "yes": True, "false": False, "no": False}


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A ready-made watch: query text plus where its records are and their key.

    ``records`` is the dotted path from ``data`` to the record list (or the
    single object when ``single``); ``entity`` names the event types
    (``registration.created``); ``public`` queries need no token.
    """

    name: str
    entity: str
    query: str
    records: str
    key: str = "id"
    single: bool = False
    paginate: bool = True
    public: bool = False
    ignore: tuple[str, ...] = ()


def parse_query_file(text: str, *, name: str) -> Preset:
    """Read a ``.graphql`` file with a leading metadata comment block.

    ``name`` (the file's stem) names the preset; a ``# preset:`` line only
    records where a copy came from. Missing ``entity`` defaults to the last
    name in ``records`` without a plural ``s``; missing ``records`` is an
    error.

    :raises ValueError: when the block is malformed or ``records`` is missing.
    """
    meta: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        match = _META_LINE.match(stripped)
        if match and match.group(1) in _META_KEYS:
            meta[match.group(1)] = match.group(2)

    records = meta.get("records")
    if not records:
        raise ValueError(
            "the comment block at the top names no `# records: path.to.list` line"
        )
    flags = {flag: _parse_flag(meta, flag) for flag in ("single", "paginate", "public")}
    single = bool(flags["single"])
    paginate = flags["paginate"] if flags["paginate"] is not None else not single
    ignore = tuple(part for part in re.split(r"[\s,]+", meta.get("ignore", "")) if part)
    return Preset(
        name=name,
        entity=meta.get("entity") or default_entity(records),
        query=text,
        records=records,
        key=meta.get("key") or "id",
        single=single,
        paginate=bool(paginate),
        public=bool(flags["public"]),
        ignore=ignore,
    )


def _parse_flag(meta: Mapping[str, str], name: str) -> bool | None:
    raw = meta.get(name)
    if raw is None or raw == "":
        return None
    try:
        return _BOOLEANS[raw.lower()]
    except KeyError:
        raise ValueError(f"`# {name}:` must be true or false, not {raw!r}") from None


def default_entity(records: str) -> str:
    """The entity name a record path suggests: ``project.orders.data`` -> ``order``."""
    parts = [part for part in records.split(".") if part and part != "data"]
    last = parts[-1] if parts else "record"
    return last[:-1] if last.endswith("s") and len(last) > 1 else last


def _load_presets() -> Mapping[str, Preset]:
    presets: dict[str, Preset] = {}
    folder = resources.files("notifier") / "presets"
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".graphql"):
            name = entry.name.removesuffix(".graphql")
            presets[name] = parse_query_file(entry.read_text("utf-8"), name=name)
    return MappingProxyType(presets)


PRESETS: Mapping[str, Preset] = _load_presets()
"""The bundled presets by name."""


@functools.cache
def bundled_schema() -> GraphQLSchema:
    """The bundled reconstruction of the Atleta schema (``notifier/atleta.graphql``)."""
    text = (resources.files("notifier") / "atleta.graphql").read_text("utf-8")
    return build_schema(text)


def load_schema(pulled: Path | None) -> GraphQLSchema:
    """The schema at ``pulled`` (saved by ``schema pull``), else the bundled one.

    :raises SchemaError: when the pulled file cannot be read or is not SDL.
    """
    if pulled is None:
        return bundled_schema()
    try:
        text = pulled.read_text("utf-8")
    except OSError as error:
        raise SchemaError(
            f"cannot read schema file {pulled}: {error.strerror}"
        ) from None
    try:
        return build_schema(text)
    except (GraphQLError, TypeError) as error:
        raise SchemaError(
            f"schema file {pulled} is not a valid GraphQL schema: {_describe(error)}; "
            "run `atleta-notifier schema pull` again"
        ) from None


def _describe(error: Exception) -> str:
    if isinstance(error, GraphQLError):
        return _located(error)
    return str(error)


def _located(error: GraphQLError) -> str:
    if error.locations:
        where = ", ".join(
            f"line {loc.line}, column {loc.column}" for loc in error.locations
        )
        return f"{error.message} (query {where})"
    return error.message


def parse_query(text: str) -> tuple[DocumentNode | None, list[str]]:
    """Parse ``text`` into a document, or return the syntax problem."""
    try:
        return parse(text), []
    except GraphQLError as error:
        return None, [_located(error)]


def validate_query(schema: GraphQLSchema, text: str) -> list[str]:
    """Problems of ``text`` against ``schema``, one line each (empty: valid)."""
    document, problems = parse_query(text)
    if document is None:
        return problems
    operations = _operations(document)
    if len(operations) != 1:
        return [f"the query must hold exactly one operation, found {len(operations)}"]
    return [_located(error) for error in validate(schema, document)]


def check_variable_values(
    schema: GraphQLSchema, text: str, variables: Mapping[str, Any]
) -> list[str]:
    """Problems of the watch's variable values against the types the query declares."""
    document, problems = parse_query(text)
    if document is None or not variables:
        return problems
    definitions = [
        definition
        for operation in _operations(document)
        for definition in operation.variable_definitions or ()
        if definition.variable.name.value in variables
    ]
    result = get_variable_values(schema, definitions, dict(variables))
    if isinstance(result, list):
        return [error.message for error in result]
    return []


def _operations(document: DocumentNode) -> list[OperationDefinitionNode]:
    return [
        node
        for node in document.definitions
        if isinstance(node, OperationDefinitionNode)
    ]


def declared_variables(text: str) -> dict[str, bool]:
    """The variables a query declares, each with whether it is required."""
    document, _ = parse_query(text)
    if document is None:
        return {}
    declared: dict[str, bool] = {}
    for operation in _operations(document):
        for definition in operation.variable_definitions or ():
            required = (
                isinstance(definition.type, NonNullTypeNode)
                and definition.default_value is None
            )
            declared[definition.variable.name.value] = required
    return declared


def check_shape(
    text: str,
    *,
    records: str,
    key: str,
    single: bool,
    paginate: bool,
    variables: Mapping[str, Any],
) -> list[str]:
    """Problems of a query against what the poller needs from it.

    The record path must be selected, with the key inside each record; a
    paginated query must declare ``$page`` and ``$per_page`` and select
    ``total`` and ``last_page`` next to the list; the watch's variables must
    match the variables the query declares.
    """
    document, problems = parse_query(text)
    if document is None:
        return problems
    operations = _operations(document)
    if len(operations) != 1:
        return [f"the query must hold exactly one operation, found {len(operations)}"]
    fragments = {
        node.name.value: node
        for node in document.definitions
        if isinstance(node, FragmentDefinitionNode)
    }
    problems += _check_variables(declared_variables(text), variables, paginate)
    return problems + _check_records(
        operations[0].selection_set, fragments, records, key, paginate and not single
    )


def _check_records(
    selection: SelectionSetNode | None,
    fragments: Mapping[str, FragmentDefinitionNode],
    records: str,
    key: str,
    paginate: bool,
) -> list[str]:
    """Problems of the path to the records, their key, and the page fields."""
    path = [part for part in records.split(".") if part]
    parent: SelectionSetNode | None = None
    for depth, name in enumerate(path):
        field = _find_field(selection, name, fragments)
        if field is None:
            where = ".".join(path[:depth]) or "the query's top level"
            return [f"records path {records!r}: {where} selects no {name!r}"]
        parent, selection = selection, field.selection_set
    if selection is None:
        return [f"records path {records!r} ends on a scalar, not on records"]

    problems: list[str] = []
    for name in (part for part in key.split(".") if part):
        field = _find_field(selection, name, fragments)
        if field is None:
            problems.append(f"key {key!r} is not selected inside {records!r}")
            break
        selection = field.selection_set

    if paginate:
        wrapper = ".".join(path[:-1]) or "the query's top level"
        for name in ("total", "last_page"):
            if _find_field(parent, name, fragments) is None:
                problems.append(f"a paginated query must select {name!r} in {wrapper}")
    return problems


def _check_variables(
    declared: Mapping[str, bool], given: Mapping[str, Any], paginate: bool
) -> list[str]:
    problems: list[str] = []
    if paginate:
        missing = [name for name in PAGE_VARIABLES if name not in declared]
        if missing:
            problems.append(
                "a paginated query must declare "
                + " and ".join(f"${name}: Int" for name in missing)
                + " (the poller sets them on every page; or set paginate = false)"
            )
    for name, required in declared.items():
        if required and name not in CLIENT_VARIABLES and name not in given:
            problems.append(
                f"the query needs ${name}: set variables = {{ {name} = ... }}"
            )
    for name in given:
        if name in CLIENT_VARIABLES:
            problems.append(f"variables.{name} is set by the poller; remove it")
        elif name not in declared:
            known = ", ".join(f"${item}" for item in declared) or "none"
            problems.append(
                f"variables.{name}: the query declares no ${name} ({known})"
            )
    return problems


def _find_field(
    selection: SelectionSetNode | None,
    name: str,
    fragments: Mapping[str, FragmentDefinitionNode],
) -> FieldNode | None:
    for field in _fields(selection, fragments, set()):
        response_name = field.alias.value if field.alias else field.name.value
        if response_name == name:
            return field
    return None


def _fields(
    selection: SelectionSetNode | None,
    fragments: Mapping[str, FragmentDefinitionNode],
    seen: set[str],
) -> Iterator[FieldNode]:
    if selection is None:
        return
    for node in selection.selections:
        if isinstance(node, FieldNode):
            yield node
        elif isinstance(node, InlineFragmentNode):
            yield from _fields(node.selection_set, fragments, seen)
        elif isinstance(node, FragmentSpreadNode):
            name = node.name.value
            if name in fragments and name not in seen:
                seen.add(name)
                yield from _fields(fragments[name].selection_set, fragments, seen)


async def pull_schema(
    url: str,
    token: str | None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    request_timeout: float = 30.0,
) -> str:
    """Fetch the live schema by introspection and return it as SDL text.

    :raises SchemaError: when the API cannot be reached, refuses the token,
        or answers something that is not an introspection result.
    """
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"query": get_introspection_query(descriptions=True)}
    async with httpx.AsyncClient(
        transport=transport, timeout=request_timeout
    ) as client:
        try:
            response = await client.post(url, json=body, headers=headers)
        except httpx.HTTPError as error:
            raise SchemaError(
                f"cannot reach {_safe_url(url)}: {type(error).__name__}"
            ) from None
    return _sdl_from_response(url, response)


def _sdl_from_response(url: str, response: httpx.Response) -> str:
    if response.status_code in (401, 403):
        raise SchemaError(
            f"{_safe_url(url)} refused the token (HTTP {response.status_code})"
        )
    if response.status_code != 200:
        raise SchemaError(f"{_safe_url(url)} answered HTTP {response.status_code}")
    try:
        payload = response.json()
    except ValueError:
        raise SchemaError(
            f"{_safe_url(url)} answered something that is not JSON"
        ) from None
    errors = payload.get("errors") if isinstance(payload, dict) else None
    data = payload.get("data") if isinstance(payload, dict) else None
    if errors or not isinstance(data, dict):
        messages = _error_messages(errors)
        raise SchemaError(f"introspection failed at {_safe_url(url)}: {messages}")
    try:
        return print_schema(build_client_schema(cast(IntrospectionQuery, data))) + "\n"
    except (GraphQLError, TypeError, KeyError) as error:
        raise SchemaError(
            f"{_safe_url(url)} answered an unusable introspection result: {error}"
        ) from None


def _error_messages(errors: object) -> str:
    if isinstance(errors, Sequence) and errors:
        texts = [str(item.get("message")) for item in errors if isinstance(item, dict)]
        return "; ".join(texts[:3]) or "unknown error"
    return "no data in the answer"


def _safe_url(url: str) -> str:
    """The URL without user info or query string, for messages."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(username=None, password=None, query=None))
