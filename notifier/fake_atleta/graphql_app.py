"""GraphQL execution for the fake API: schema, root resolvers and a page cache.

Queries are executed by graphql-core against the schema file bundled with
the notifier, so the fake serves exactly the types the notifier validates
against. Results are cached per (query, operation, variables, token scope)
and thrown away on the next mutation: walking an unchanged 100,000-record
project twice costs one execution per page.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLFormattedError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    build_schema,
    execute_sync,
    get_operation_ast,
    parse,
    validate,
    value_from_ast_untyped,
)

from notifier.fake_atleta.dataset import Dataset
from notifier.fake_atleta.fastpath import (
    CompiledQuery,
    Unsupported,
    directive_variables,
)
from notifier.fake_atleta.records import Event, Info, Page, Project, paginate

CACHE_LIMIT = 4096
LIST_FIELDS = ("registrations", "orders", "purchases", "events", "event")


@lru_cache(maxsize=1)
def bundled_schema() -> GraphQLSchema:
    """The schema the notifier ships, built once per process."""
    text = resources.files("notifier").joinpath("atleta.graphql").read_text("utf-8")
    return build_schema(text)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """What the server needs to know about a query before running it."""

    document: DocumentNode | None
    operation: OperationDefinitionNode | None = None
    errors: tuple[GraphQLFormattedError, ...]
    kind: str
    needs_token: bool
    project_arg: Any = None  # the literal or VariableNode of project(id:)
    directive_variables: frozenset[str] = frozenset()


@lru_cache(maxsize=512)
def analyse(query: str, operation_name: str | None) -> Analysis:
    """Parse and validate ``query``; name its request kind for counters and faults."""
    try:
        document = parse(query)
    except GraphQLError as error:
        return Analysis(
            document=None, errors=(error.formatted,), kind="invalid", needs_token=False
        )
    errors = validate(bundled_schema(), document)
    operation = get_operation_ast(document, operation_name)
    if errors or operation is None:
        formatted = tuple(error.formatted for error in errors) or (
            {"message": f"Unknown operation named {operation_name!r}."},
        )
        return Analysis(
            document=None, errors=formatted, kind="invalid", needs_token=False
        )
    fields = _top_fields(document, operation.selection_set)
    names = [field.name.value for field in fields]
    project = next((field for field in fields if field.name.value == "project"), None)
    return Analysis(
        document=document,
        operation=operation,
        errors=(),
        kind=_kind(document, names, project),
        needs_token=project is not None,
        project_arg=_argument(project, "id") if project is not None else None,
        directive_variables=directive_variables(document),
    )


def _top_fields(
    document: DocumentNode, selection_set: SelectionSetNode
) -> list[FieldNode]:
    fragments = {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
    found: list[FieldNode] = []
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            found.append(selection)
        elif isinstance(selection, InlineFragmentNode):
            found.extend(_top_fields(document, selection.selection_set))
        elif isinstance(selection, FragmentSpreadNode):
            fragment = fragments.get(selection.name.value)
            if fragment is not None:
                found.extend(_top_fields(document, fragment.selection_set))
    return found


def _kind(document: DocumentNode, names: list[str], project: FieldNode | None) -> str:
    if project is not None and project.selection_set is not None:
        inner = [
            field.name.value for field in _top_fields(document, project.selection_set)
        ]
        listed = next((name for name in inner if name in LIST_FIELDS), None)
        return f"project.{listed}" if listed else "project"
    data_fields = [name for name in names if not name.startswith("__")]
    return data_fields[0] if data_fields else "introspection"


def _argument(field: FieldNode, name: str) -> Any:
    for argument in field.arguments or ():
        if argument.name.value == name:
            return argument.value
    return None


def project_of(analysis: Analysis, variables: Mapping[str, Any]) -> str | None:
    """The project code a query asks for, from its literal or its variable."""
    node = analysis.project_arg
    if node is None:
        return None
    if isinstance(node, VariableNode):
        value = variables.get(node.name.value)
        return value if isinstance(value, str) else None
    value = value_from_ast_untyped(node)
    return value if isinstance(value, str) else None


class Root:
    """Resolvers of the Query type over a dataset."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def project(self, info: Info, id: str) -> Project:
        """The project, if the token's app is connected to it.

        :raises GraphQLError: for a project the token may not see or that
            does not exist.
        """
        allowed = info.context.get("projects")
        if allowed is not None and id not in allowed:
            raise GraphQLError(
                "This action is unauthorized.", extensions={"category": "authorization"}
            )
        found = self.dataset.projects.get(id)
        if found is None:
            raise GraphQLError(
                f"No project with id {id!r}.", extensions={"category": "not_found"}
            )
        return found

    def event(self, _info: Info, id: str) -> Event | None:
        """Any event by id; public data needs no token."""
        return self.dataset.events.get(id)

    def publicEvents(self, _info: Info, **arguments: Any) -> Page:
        """Filtered, sorted, paged public calendar."""
        events = _filter_public(self.dataset.public_events(), arguments)
        return paginate(events, arguments.get("page"), arguments.get("per_page"))


def _filter_public(events: list[Event], arguments: Mapping[str, Any]) -> list[Event]:
    search = (arguments.get("search") or "").lower()
    sports = arguments.get("sport_types")
    months = {month[:7] for month in arguments.get("months") or []}
    countries = arguments.get("countries")
    low = arguments.get("min_distance")
    high = arguments.get("max_distance")
    chosen = [
        event for event in events
        if search in event.title.lower()
        and (not sports or event.sport_type in sports)
        and (not months or event.start_date[:7] in months)
        and (not countries or event.country in countries)
        and (low is None or event.distance >= low)
        and (high is None or event.distance <= high)
    ]  # fmt: skip
    if arguments.get("sort") == "popularity":
        return sorted(chosen, key=lambda event: -event.popularity)
    return sorted(chosen, key=lambda event: (event.start_date, event.id))


class Executor:
    """Run queries against a dataset and cache the encoded answers."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.root = Root(dataset)
        self._cache: dict[tuple[Any, ...], bytes] = {}
        self._version = -1
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.fast_runs = 0
        self._compiled_queries: dict[
            tuple[int, str], tuple[Analysis, CompiledQuery]
        ] = {}
        self.slow_runs = 0

    def run(
        self,
        analysis: Analysis,
        query: str,
        variables: Mapping[str, Any],
        operation_name: str | None,
        projects: frozenset[str] | None,
    ) -> bytes:
        """The JSON body answering this query, from the cache when unchanged."""
        variables_key = json.dumps(variables, sort_keys=True, separators=(",", ":"))
        key = (query, operation_name, variables_key, projects)
        with self.dataset.lock, self._lock:
            if self._version != self.dataset.version or len(self._cache) > CACHE_LIMIT:
                self._cache.clear()
                self._version = self.dataset.version
            body = self._cache.get(key)
            if body is not None:
                self.hits += 1
                return body
            self.misses += 1
            result = self.execute(analysis, variables, operation_name, projects)
            body = json.dumps(result, separators=(",", ":")).encode()
            self._cache[key] = body
            return body

    def _compiled(
        self, analysis: Analysis, variables: Mapping[str, Any]
    ) -> CompiledQuery:
        shaping = {name: variables.get(name) for name in analysis.directive_variables}
        key = (id(analysis), json.dumps(shaping, sort_keys=True))
        found = self._compiled_queries.get(key)
        # The id of a dropped analysis can be reused; the identity check
        # keeps a stale compilation from answering another query.
        if found is not None and found[0] is analysis:
            return found[1]
        assert analysis.document is not None
        assert analysis.operation is not None
        compiled = CompiledQuery(
            bundled_schema(), analysis.document, analysis.operation, variables
        )
        if len(self._compiled_queries) > CACHE_LIMIT:
            self._compiled_queries.clear()
        self._compiled_queries[key] = (analysis, compiled)
        return compiled

    def execute(
        self,
        analysis: Analysis,
        variables: Mapping[str, Any],
        operation_name: str | None,
        projects: frozenset[str] | None,
        *,
        fast: bool = True,
    ) -> dict[str, Any]:
        """Run one query: the fast path when it applies, else graphql-core."""
        assert analysis.document is not None
        assert analysis.operation is not None
        context = {"projects": projects}
        if fast:
            try:
                result = self._compiled(analysis, variables).run(
                    self.root, context, variables
                )
            except Unsupported:
                self.slow_runs += 1
            else:
                self.fast_runs += 1
                return result
        executed = execute_sync(
            bundled_schema(),
            analysis.document,
            root_value=self.root,
            context_value=context,
            variable_values=dict(variables),
            operation_name=operation_name,
        )
        return dict(executed.formatted)
