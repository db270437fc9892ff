"""A fast executor for the plain queries the notifier sends to the fake API.

graphql-core spends about 40 ms completing a 250-record page; a benchmark
walking 100,000 records would measure the fake instead of the notifier.
This module compiles a validated query, for one set of variables, into
nested closures that read the same attributes graphql-core's default
resolver reads and serialize leaves with the same scalar types, so the
answer is identical. Whatever it does not cover (introspection,
``@defer``, fragment variables, any error or null in a non-null position)
raises ``Unsupported`` and the caller executes with graphql-core instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from keyword import iskeyword
from typing import Any

from graphql import (
    DirectiveNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLBoolean,
    GraphQLField,
    GraphQLID,
    GraphQLIncludeDirective,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLSkipDirective,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    Visitor,
    get_argument_values,
    get_directive_values,
    get_variable_values,
    visit,
)
from graphql.execution.values import VariableValues

Completer = Callable[[Any], Any]
INT_RANGE = range(-(2**31), 2**31)
# Python classes whose values the built-in scalars serialize unchanged.
PLAIN = {"String": "str", "ID": "str", "Int": "int", "Boolean": "bool"}


class Unsupported(Exception):
    """A query or an answer the fast path leaves to graphql-core."""


class Context:
    """The part of graphql-core's resolve info the resolvers read."""

    __slots__ = ("context",)

    def __init__(self, context: Mapping[str, Any]) -> None:
        self.context = context


class CompiledQuery:
    """A query operation compiled once, run with any variables.

    Field arguments are re-read from the variables on every run, so one
    compilation serves every page of a walk. Variables used by ``@skip``
    or ``@include`` shape the compiled code: callers key their cache on
    ``directive_variables`` too.
    """

    def __init__(
        self,
        schema: GraphQLSchema,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        variables: Mapping[str, Any],
    ) -> None:
        """Compile ``operation`` for these directive variable values.

        :raises Unsupported: for a shape the fast path does not cover.
        """
        if operation.operation is not OperationType.QUERY or schema.query_type is None:
            raise Unsupported("not a query")
        fragments: dict[str, FragmentDefinitionNode] = {}
        for definition in document.definitions:
            if isinstance(definition, FragmentDefinitionNode):
                if definition.variable_definitions:
                    raise Unsupported("fragment variables")
                fragments[definition.name.value] = definition
        self._schema = schema
        self._definitions = operation.variable_definitions or ()
        self._compiler = _Compiler(fragments, self._coerce(variables))
        self._render = self._compiler.object(
            schema.query_type, [operation.selection_set]
        )

    def _coerce(self, variables: Mapping[str, Any]) -> VariableValues:
        coerced = get_variable_values(self._schema, self._definitions, dict(variables))
        if not isinstance(coerced, VariableValues):
            raise Unsupported("variables do not coerce")
        return coerced

    def run(
        self, root: Any, context: Mapping[str, Any], variables: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Execute against ``root``; one caller at a time.

        :raises Unsupported: when graphql-core must answer instead (errors,
            nulls in non-null positions).
        """
        coerced = self._coerce(variables)
        for definition, node, arguments in self._compiler.arguments:
            arguments.clear()
            arguments.update(get_argument_values(definition, node, coerced))
        self._compiler.info.context = context
        try:
            data = self._render(root)
        except Unsupported:
            raise
        except Exception as error:
            # graphql-core turns the same exception into an error entry.
            raise Unsupported(str(error)) from error
        return {"data": data}


def directive_variables(document: DocumentNode) -> frozenset[str]:
    """Names of the variables that ``@skip``/``@include`` read in ``document``."""
    names: set[str] = set()

    class Finder(Visitor):
        def enter_directive(self, node: DirectiveNode, *_args: Any) -> None:
            for argument in node.arguments or ():
                if isinstance(argument.value, VariableNode):
                    names.add(argument.value.name.value)

    visit(document, Finder())
    return frozenset(names)


class _Compiler:
    def __init__(
        self, fragments: dict[str, FragmentDefinitionNode], variables: VariableValues
    ) -> None:
        self.fragments = fragments
        self.variables = variables
        self.info = Context({})
        self.arguments: list[tuple[GraphQLField, FieldNode, dict[str, Any]]] = []

    def object(
        self, type_: GraphQLObjectType, selection_sets: list[SelectionSetNode]
    ) -> Callable[[Any], dict[str, Any]]:
        # Generated source (one function per object selection) builds each
        # record as one dict display, without a Python loop per field.
        fields: dict[str, list[FieldNode]] = {}
        for selection_set in selection_sets:
            self._collect(type_, selection_set, fields, set())
        namespace: dict[str, Any] = {"info": self.info, "Unsupported": Unsupported}
        lines = ["def render(s):"]
        entries = []
        for index, (key, nodes) in enumerate(fields.items()):
            entries.append(
                f"{key!r}: {self._field(type_, index, nodes, lines, namespace)}"
            )
        lines.append("    return {" + ", ".join(entries) + "}")
        exec("\n".join(lines), namespace)
        render: Callable[[Any], dict[str, Any]] = namespace["render"]
        return render

    def _field(
        self,
        type_: GraphQLObjectType,
        index: int,
        nodes: list[FieldNode],
        lines: list[str],
        namespace: dict[str, Any],
    ) -> str:
        name = nodes[0].name.value
        if name == "__typename":
            return repr(type_.name)
        if name.startswith("__"):
            raise Unsupported("introspection")
        definition = type_.fields[name]
        value = f"v{index}"
        access = (
            f"s.{name}"
            if name.isidentifier() and not iskeyword(name)
            else f"getattr(s, {name!r})"
        )
        lines.append(f"    {value} = {access}")
        if definition.args:
            arguments = get_argument_values(definition, nodes[0], self.variables)
            self.arguments.append((definition, nodes[0], arguments))
            namespace[f"a{index}"] = arguments
            lines.append(
                f"    if callable({value}): {value} = {value}(info, **a{index})"
            )
        children = [node.selection_set for node in nodes if node.selection_set]
        return self._expression(definition.type, children, value, lines, namespace)

    def _expression(
        self,
        type_: GraphQLOutputType,
        children: list[SelectionSetNode],
        value: str,
        lines: list[str],
        namespace: dict[str, Any],
    ) -> str:
        slot = f"{value}_{len(namespace)}"
        if isinstance(type_, GraphQLNonNull):
            lines.append(
                f"    if {value} is None: raise Unsupported('null in non-null')"
            )
            return self._expression(type_.of_type, children, value, lines, namespace)
        if isinstance(type_, GraphQLObjectType):
            namespace[f"r{slot}"] = self.object(type_, children)
            return f"(None if {value} is None else r{slot}({value}))"
        if isinstance(type_, GraphQLList):
            item = type_.of_type
            if isinstance(item, GraphQLObjectType):
                namespace[f"r{slot}"] = self.object(item, children)
                each = f"None if x is None else r{slot}(x)"
            else:
                namespace[f"c{slot}"] = self._completer(item, children)
                each = f"c{slot}(x)"
            return f"(None if {value} is None else [{each} for x in {value}])"
        if isinstance(type_, GraphQLScalarType):
            namespace[f"c{slot}"] = _scalar(type_)
            plain = PLAIN.get(type_.name)
            if plain is None:
                return f"c{slot}({value})"
            guard = f"{value}.__class__ is {plain}"
            if plain == "int":
                guard += f" and -2147483648 <= {value} <= 2147483647"
            return f"({value} if {guard} else c{slot}({value}))"
        raise Unsupported(f"output type {type_}")

    def _completer(
        self, type_: GraphQLOutputType, children: list[SelectionSetNode]
    ) -> Completer:
        if isinstance(type_, GraphQLNonNull):
            inner = self._completer(type_.of_type, children)

            def non_null(value: Any) -> Any:
                if value is None:
                    raise Unsupported("null in a non-null position")
                return inner(value)

            return non_null
        if isinstance(type_, GraphQLList):
            item = self._completer(type_.of_type, children)
            return lambda value: (
                None if value is None else [item(each) for each in value]
            )
        if isinstance(type_, GraphQLObjectType):
            render = self.object(type_, children)
            return lambda value: None if value is None else render(value)
        if isinstance(type_, GraphQLScalarType):
            return _scalar(type_)
        raise Unsupported(f"output type {type_}")

    def _collect(
        self,
        type_: GraphQLObjectType,
        selection_set: SelectionSetNode,
        fields: dict[str, list[FieldNode]],
        seen: set[str],
    ) -> None:
        for selection in selection_set.selections:
            if not self._included(selection):
                continue
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                fields.setdefault(key, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                if condition is None or condition.name.value == type_.name:
                    self._collect(type_, selection.selection_set, fields, seen)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if name in seen or fragment is None:
                    continue
                seen.add(name)
                if fragment.type_condition.name.value == type_.name:
                    self._collect(type_, fragment.selection_set, fields, seen)

    def _included(
        self, node: FieldNode | InlineFragmentNode | FragmentSpreadNode | Any
    ) -> bool:
        for directive in node.directives or ():
            if directive.name.value not in ("skip", "include"):
                raise Unsupported(f"directive @{directive.name.value}")
        skip = get_directive_values(GraphQLSkipDirective, node, self.variables)
        if skip is not None and skip.get("if") is True:
            return False
        include = get_directive_values(GraphQLIncludeDirective, node, self.variables)
        return not (include is not None and include.get("if") is False)


def _scalar(type_: GraphQLScalarType) -> Completer:
    serialize = type_.serialize
    if type_ is GraphQLInt:
        return lambda value: (
            value if type(value) is int and value in INT_RANGE
            else None if value is None else serialize(value)
        )  # fmt: skip
    if type_ is GraphQLBoolean:
        return lambda value: (
            value
            if type(value) is bool
            else None
            if value is None
            else serialize(value)
        )
    # String and ID both serialize a str as itself.
    plain = str if type_.name in ("String", "ID") or type_ is GraphQLID else None
    return lambda value: (
        value if type(value) is plain else None if value is None else serialize(value)
    )
