"""Per-channel message templates: Jinja2 in a sandbox.

A channel's ``title_template`` and ``body_template`` replace the built-in
title and body. Templates run in Jinja2's sandbox (no access to Python
internals, bounded ranges and repetition), so a config file cannot run
code. Missing record fields render as nothing, because many Atleta fields
are unconfirmed; a refused attribute is an error, never silent.

Context: ``events`` (event JSON, plus ``kind``, ``entity``, ``label``,
``ticket``, ``race`` and ``offers`` for convenience), ``project``,
``projects``, ``watch``, ``watches``, ``counts``, ``money()``, ``esc()``
(escapes for the message format), ``now``, ``title`` and ``body`` (the
built-in ones), ``format``, ``channel`` and ``digest`` (``since``/``until``
or None).
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

from jinja2 import ChainableUndefined, Template, TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from notifier.errors import ConfigError, DeliveryError
from notifier.model import JSON, Channel, Event
from notifier.render.batch import classify, new_offers, subject
from notifier.render.document import escape_markdown, fit_title, size
from notifier.render.limits import Limit, MessageFormat
from notifier.render.values import (
    event_title,
    money,
    public_urls,
    record_label,
    ticket_title,
)

_MAX_REPEAT = 100_000
_MAX_POWER = 64


class _Undefined(ChainableUndefined):
    """Missing record fields render as nothing; refused attributes raise."""

    __slots__ = ()

    def _refuse(self) -> None:
        if self._undefined_exception is SecurityError:
            self._fail_with_undefined_error()

    def __str__(self) -> str:
        self._refuse()
        return ""

    def __getattr__(self, name: str) -> Any:
        self._refuse()
        if name[:2] == "__":
            raise AttributeError(name)
        return self

    __getitem__ = __getattr__


class _Sandbox(SandboxedEnvironment):
    """The sandbox, also refusing huge string or list repetition and powers."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Apply ``*`` and ``**`` only when the result stays small.

        :raises SecurityError: the result would be too large.
        """
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_POWER:
            raise SecurityError("the template raises a number to too high a power")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    if len(seq) * times > _MAX_REPEAT:
                        raise SecurityError(
                            "the template builds a value that is too large"
                        )
        return super().call_binop(context, operator, left, right)


def _environment(autoescape: bool) -> _Sandbox:
    env = _Sandbox(
        autoescape=autoescape,
        undefined=_Undefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["money"] = money
    env.filters["label"] = lambda record: record_label(record, None)
    return env


_PLAIN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


@lru_cache(maxsize=128)
def _compile(source: str, autoescape: bool) -> Template:
    return (_HTML if autoescape else _PLAIN).from_string(source)


def check_templates(channel: Channel) -> None:
    """Compile a channel's templates, so a typo is a config error at start-up.

    :raises ConfigError: a template does not compile (names the channel,
        the key and the line).
    """
    problems = []
    for key, source in (
        ("title_template", channel.title_template),
        ("body_template", channel.body_template),
    ):
        if source is None:
            continue
        try:
            _compile(source, channel.format == "html")
        except TemplateSyntaxError as exc:
            problems.append(
                f"channels.{channel.name}.{key}: line {exc.lineno}: {exc.message}"
            )
    if problems:
        raise ConfigError(problems)


def _escaper(message_format: MessageFormat) -> Callable[[object], str]:
    if message_format == "markdown":
        return lambda value: escape_markdown(str(value), "commonmark")
    if message_format == "html":
        return lambda value: html.escape(str(value))
    return str


def _event_view(event: Event, titles: Mapping[str, str]) -> dict[str, JSON]:
    record = subject(event)
    view = event.to_json()
    view.update(
        kind=event.kind,
        entity=event.entity,
        section=classify(event),
        label=record_label(record, event.key),
        ticket=ticket_title(record),
        race=event_title(record, event.entity, titles),
        offers=new_offers(event) or public_urls(record),
    )
    return view


def context(
    channel: Channel,
    events: Sequence[Event],
    *,
    built_title: str,
    built_body: str,
    message_format: MessageFormat,
    now: datetime,
    digest: tuple[datetime, datetime] | None,
    titles: Mapping[str, str],
) -> dict[str, Any]:
    """Everything a template can use (see the module docstring)."""
    counts: Counter[str] = Counter()
    for event in events:
        counts[event.type] += 1
        counts[classify(event)] += 1
    counts["total"] = len(events)
    projects = list({e.project.id: e.project for e in events}.values())
    watches = sorted({e.watch for e in events})
    return {
        "events": [_event_view(e, titles) for e in events],
        "project": {"id": projects[0].id, "name": projects[0].name}
        if projects
        else None,
        "projects": [{"id": p.id, "name": p.name} for p in projects],
        "watch": watches[0] if watches else None,
        "watches": watches,
        "counts": dict(counts),
        "money": money,
        "esc": _escaper(message_format),
        "now": now,
        "title": built_title,
        "body": Markup(built_body) if message_format == "html" else built_body,
        "format": message_format,
        "channel": channel.name,
        "digest": {"since": digest[0], "until": digest[1]} if digest else None,
    }


def _fail(channel: Channel, key: str, exc: Exception) -> NoReturn:
    reason = exc.message if isinstance(exc, TemplateSyntaxError) else str(exc)
    line = f" line {exc.lineno}:" if isinstance(exc, TemplateSyntaxError) else ""
    raise DeliveryError(
        f"channel {channel.name!r}: its {key} failed:{line} "
        f"{type(exc).__name__}: {reason}",
        permanent=True,
    ) from exc


def _run(
    channel: Channel, key: str, source: str, values: dict[str, Any], html_out: bool
) -> str:
    try:
        return _compile(source, html_out).render(values)
    except Exception as exc:  # any error a template expression can raise
        _fail(channel, key, exc)


def clip_lines(value: str, budget: int) -> str:
    """Whole lines of ``value`` that fit ``budget``, then "…" when some were left
    out (a template's own output is never cut inside a line)."""
    if size(value) <= budget:
        return value
    kept: list[str] = []
    used = 2
    for line in value.splitlines():
        if used + size(line) + 1 > budget:
            break
        kept.append(line)
        used += size(line) + 1
    return "\n".join([*kept, "…"])


def render_custom(
    channel: Channel,
    events: Sequence[Event],
    *,
    built_title: str,
    built_body: str,
    message_format: MessageFormat,
    limit: Limit,
    now: datetime,
    digest: tuple[datetime, datetime] | None,
    titles: Mapping[str, str],
) -> tuple[str, str]:
    """The title and body from a channel's templates (built-ins where unset).

    :raises DeliveryError: a template failed to compile or to render.
    """
    values = context(
        channel,
        events,
        built_title=built_title,
        built_body=built_body,
        message_format=message_format,
        now=now,
        digest=digest,
        titles=titles,
    )
    title, body = built_title, built_body
    if channel.title_template is not None:
        title = _run(channel, "title_template", channel.title_template, values, False)
        title = fit_title(title, limit.title or limit.body)
    if channel.body_template is not None:
        body = _run(
            channel,
            "body_template",
            channel.body_template,
            values,
            message_format == "html",
        )
        title_cost = size(title) + 2 if limit.shared or limit.merged else 0
        body = clip_lines(body.strip(), limit.budget - title_cost)
    return title, body
