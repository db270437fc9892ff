"""Reading the file and reporting its problems with file, key and line."""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic_core import ErrorDetails
from pydantic_settings.exceptions import SettingsError

from notifier.config.fields import SECRET_KEYS, TABLES, Environment
from notifier.config.values import (
    ENV_PREFIX,
    Loc,
)
from notifier.errors import ConfigError

# ---------------------------------------------------------------------------
# Where keys sit in the file, for messages.

_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([^\]]+?)\s*\]\]")
_TABLE_HEADER = re.compile(r"^\s*\[\s*([^\]\[]+?)\s*\]")
# One TOML key part: bare, "basic" or 'literal'; a dotted key joins several.
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY_LINE = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")


def _split_key(text: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return [part.strip("\"'") for part in parts]


class KeyLines:
    """Line numbers of the keys and tables of a TOML text, by location."""

    def __init__(self, text: str) -> None:
        self.lines: dict[Loc, int] = {}
        self._counts: dict[Loc, int] = {}
        table: Loc = ()
        in_string = False
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string:
                in_string = _toggles_string(line, in_string)
                continue
            if match := _ARRAY_HEADER.match(line):
                table = self._array(_split_key(match.group(1)))
                self.lines.setdefault(table, number)
            elif match := _TABLE_HEADER.match(line):
                table = self._resolve(_split_key(match.group(1)))
                self.lines.setdefault(table, number)
            elif match := _KEY_LINE.match(line):
                self.lines.setdefault((*table, *_split_key(match.group(1))), number)
                in_string = _toggles_string(line[match.end() :], in_string)

    def _resolve(self, names: Sequence[str]) -> Loc:
        loc: Loc = ()
        for name in names:
            loc = (*loc, name)
            if loc in self._counts:
                loc = (*loc, self._counts[loc] - 1)
        return loc

    def _array(self, names: Sequence[str]) -> Loc:
        parent = self._resolve(names[:-1])
        array = (*parent, names[-1])
        self._counts[array] = self._counts.get(array, 0) + 1
        return (*array, self._counts[array] - 1)

    def line(self, loc: Loc) -> int | None:
        """The line of ``loc``, else of its nearest enclosing key or table."""
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def _toggles_string(text: str, inside: bool) -> bool:
    for _ in re.finditer(r'"""|\'\'\'', text):
        inside = not inside
    return inside


def dotted(loc: Loc) -> str:
    """A location as a dotted key: ``projects[0].watches[1].interval``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


class Problems:
    """Collects problems and warnings, each tied to the file, key and line.

    ``broken`` holds the keys whose values were set aside or could not be
    expanded; a problem reported on a table that holds one of them is
    usually its consequence, so it is left out.
    """

    def __init__(self, path: Path, text: str, env_keys: Mapping[Loc, str]) -> None:
        self.path = path
        self.text = text
        self._lines: KeyLines | None = None
        self.env_keys = env_keys
        self.broken: set[Loc] = set()
        self._errors: list[tuple[int, str]] = []
        self._warnings: list[tuple[int, str]] = []

    @property
    def errors(self) -> list[str]:
        """Every problem, in the order of the file."""
        return [text for _, text in sorted(self._errors, key=lambda item: item[0])]

    @property
    def warnings(self) -> list[str]:
        """Every warning, in the order of the file."""
        return [text for _, text in sorted(self._warnings, key=lambda item: item[0])]

    def key_line(self, loc: Loc) -> int | None:
        """The line where the key at ``loc`` itself is written, if it is."""
        if self._lines is None:
            self._lines = KeyLines(self.text)
        return self._lines.lines.get(loc)

    def is_broken(self, loc: Loc) -> bool:
        """True when the value at ``loc`` was set aside or not expanded."""
        return loc in self.broken

    def _entry(self, loc: Loc, message: str) -> tuple[int, str]:
        where = str(self.path)
        env = next(
            (var for key, var in self.env_keys.items() if loc[: len(key)] == key), None
        )
        if env is not None:
            return 0, f"{where}: {dotted(loc)} (from {env}): {message}"
        if self._lines is None:
            # Only a file with problems pays for finding its keys' lines.
            self._lines = KeyLines(self.text)
        line = self._lines.line(loc)
        if line is None:
            return 0, f"{where}: {dotted(loc)}: {message}"
        return line, f"{where}:{line}: {dotted(loc)}: {message}"

    def error(self, loc: Loc, message: str) -> None:
        """Record a problem that stops the load."""
        if any(key[: len(loc)] == loc for key in self.broken):
            return
        entry = self._entry(loc, message)
        if entry not in self._errors:
            self._errors.append(entry)

    def warn(self, loc: Loc, message: str) -> None:
        """Record something worth a look that does not stop the load."""
        self._warnings.append(self._entry(loc, message))


# ---------------------------------------------------------------------------
# Reading: TOML, ${VAR} references, environment overrides.

_REFERENCE = re.compile(r"\$(\$)|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: Any, loc: Loc, environ: Mapping[str, str], problems: Problems) -> Any:
    """``value`` with ``${VAR}`` references replaced, reporting unset variables.

    Keys that an ``ATLETA_NOTIFIER_*`` variable overrides are left as they
    are: their value from the file is never used.
    """
    if loc in problems.env_keys:
        return value
    if isinstance(value, dict):
        return {k: expand(v, (*loc, k), environ, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, (*loc, i), environ, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        name, default = match.group(2), match.group(3)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.error(
            loc,
            f"environment variable {name} is not set "
            f"(set it, or write ${{{name}:-default}} for an optional value)",
        )
        problems.broken.add(loc)
        return ""

    return _REFERENCE.sub(substitute, value)


def read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"{path}: no such config file (write one with `atleta-notifier init`)"]
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"{path}: cannot read the config file: {error}"]) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([_syntax_problem(path, error)]) from None


def _syntax_problem(path: Path, error: tomllib.TOMLDecodeError) -> str:
    message = str(error)
    match = re.search(r"\(at line (\d+), column (\d+)\)", message)
    if match:
        reason = message[: match.start()].strip()
        return f"{path}:{match.group(1)}:{match.group(2)}: TOML syntax error: {reason}"
    return f"{path}: TOML syntax error: {message}"


def env_layer(
    path: Path, environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[Loc, str]]:
    """The ``ATLETA_NOTIFIER_*`` overrides as nested values, and each key's variable.

    :raises ConfigError: when a variable names a table or list and is not JSON.
    """
    try:
        values = dict(Environment(environ)())
    except SettingsError as error:
        match = re.search(r'field "([^"]+)"', str(error))
        name = ENV_PREFIX + (match.group(1).upper() if match else "...")
        raise ConfigError(
            [
                f"{path}: {name} sets a whole table or list and is not JSON; "
                f"set single keys as {ENV_PREFIX}<TABLE>__<KEY>, or use ${{VAR}} "
                "references in the file"
            ]
        ) from None
    keys: dict[Loc, str] = {}

    def walk(value: Any, loc: Loc) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, (*loc, key))
        else:
            keys[loc] = ENV_PREFIX + "__".join(str(part).upper() for part in loc)

    walk(values, ())
    return values, keys


def merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ---------------------------------------------------------------------------
# pydantic's errors, reworded for people.


def report_validation(items: Sequence[ErrorDetails], problems: Problems) -> None:
    """Report pydantic's errors as readable problems."""
    for item in items:
        loc: Loc = tuple(part for part in item["loc"] if part != "[key]")
        problems.error(loc, _reword(item, loc))


def _reword(item: Mapping[str, Any], loc: Loc) -> str:
    kind = item["type"]
    message = str(item["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch":
        message = _PATTERN_HINTS.get(_table_of(loc), message)
    message = _TYPE_HINTS.get(kind, message)
    secret = any(part in SECRET_KEYS for part in loc if isinstance(part, str))
    value = item.get("input")
    if kind != "value_error" and not secret and isinstance(value, str | int | float):
        message += f", got {value!r}"
    return message


_TYPE_HINTS = {
    "list_type": 'expected a list, like ["a", "b"]',
    "dict_type": 'expected a table, like { key = "value" } or [section]',
    "model_type": 'expected a table, like { key = "value" } or [section]',
    "model_attributes_type": 'expected a table, like { key = "value" } or [section]',
    "string_type": "expected a string in quotes",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
}

_PATTERN_HINTS = {
    ("api", "url"): "expected an http:// or https:// URL",
    ("projects", "*", "watches", "*", "name"): "expected letters, digits, '_', '-' "
    "or '.'",
    ("projects", "*", "watches", "*", "entity"): "expected a lower-case name like "
    "'registration'",
    ("channels", "*"): "a channel name may hold letters, digits, '_' and '-'",
    ("channels", "*", "events", "*"): "expected an event type or pattern like "
    "'registration.created' or 'registration.*'",
}


def _table_of(loc: Loc) -> tuple[str, ...]:
    shape: list[str] = []
    for index, part in enumerate(loc):
        after_channels = index == 1 and loc[0] == "channels"
        shape.append("*" if isinstance(part, int) or after_channels else part)
    return tuple(shape)


def _unknown_key(loc: Loc) -> str:
    name = str(loc[-1])
    model = TABLES.get(_table_of(loc[:-1]))
    if model is None:
        return f"unknown key {name!r}"
    known = sorted(info.alias or key for key, info in model.model_fields.items())
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {name!r}{hint} (expected one of: {', '.join(known)})"
