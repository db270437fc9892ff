"""Resolving ``[channels.NAME]`` tables: Apprise URLs or a signed webhook."""

from __future__ import annotations

import base64
import binascii
import difflib
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from notifier.config.fields import QUIET_HOURS, ChannelModel, parse_duration
from notifier.config.problems import Problems
from notifier.config.values import Loc
from notifier.model import Channel


@dataclass(frozen=True, kw_only=True)
class ChannelContext:
    """What resolving a channel needs from the rest of the file."""

    problems: Problems
    timezone: str
    read_secret: Callable[[Loc, str], str | None]


def build_channel(
    name: str, model: ChannelModel, context: ChannelContext
) -> Channel | None:
    """The Channel for ``[channels.NAME]``, or None when it has problems."""
    loc: Loc = ("channels", name)
    errors_before = len(context.problems.errors)
    if model.kind == "webhook":
        urls, secrets = _webhook(context, loc, model)
    else:
        urls, secrets = _apprise(context, loc, model), ()
    digest_interval, digest_cron = _split_digest(model.digest)
    for key in ("title_template", "body_template"):
        _template(context, (*loc, key), getattr(model, key))
    if len(context.problems.errors) > errors_before:
        return None
    return Channel(
        name=name,
        kind=model.kind,
        urls=urls,
        format=model.format,
        digest_interval=digest_interval,
        digest_cron=digest_cron,
        quiet_hours=_split_quiet(model.quiet_hours),
        timezone=model.timezone or context.timezone,
        flood_cap=model.flood_cap,
        title_template=model.title_template,
        body_template=model.body_template,
        secrets=secrets,
        timeout=model.timeout,
        events=tuple(model.events),
    )


def _apprise(context: ChannelContext, loc: Loc, model: ChannelModel) -> tuple[str, ...]:
    for key in ("url", "secret", "secret_file"):
        if getattr(model, key) is not None:
            context.problems.error(
                (*loc, key),
                f'{key} belongs to kind = "webhook" channels; an Apprise '
                "channel takes urls = [...]",
            )
    if not model.urls:
        context.problems.error(
            (*loc, "urls"),
            'an Apprise channel needs urls = ["slack://...", ...] '
            '(or set kind = "webhook")',
        )
    schemes = _apprise_schemes()
    for index, url in enumerate(model.urls):
        match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
        if match is None:
            context.problems.error(
                (*loc, "urls", index),
                "expected an Apprise URL like 'slack://...' or 'mailto://...' "
                "(the value is not shown)",
            )
        elif match.group(1).lower() not in schemes:
            scheme = match.group(1).lower()
            close = difflib.get_close_matches(scheme, sorted(schemes), n=1)
            hint = f"; did you mean '{close[0]}://'?" if close else ""
            context.problems.error(
                (*loc, "urls", index), f"Apprise has no '{scheme}://' service{hint}"
            )
    return tuple(model.urls)


def _webhook(
    context: ChannelContext, loc: Loc, model: ChannelModel
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if model.urls:
        context.problems.error(
            (*loc, "urls"), "a webhook channel takes one url = ..., not urls"
        )
    if not model.url:
        context.problems.error(
            (*loc, "url"), 'a webhook channel needs url = "https://..."'
        )
    elif not re.match(r"^https?://\S+$", model.url):
        context.problems.error(
            (*loc, "url"),
            "expected an http:// or https:// URL (the value is not shown)",
        )
    return ((model.url,) if model.url else ()), _webhook_secrets(context, loc, model)


def _webhook_secrets(
    context: ChannelContext, loc: Loc, model: ChannelModel
) -> tuple[str, ...]:
    values: list[Any]
    key = "secret"
    if model.secret is not None and model.secret_file is not None:
        context.problems.error(
            (*loc, "secret_file"), "set secret or secret_file, not both"
        )
    if model.secret_file is not None:
        key = "secret_file"
        text = context.read_secret((*loc, key), model.secret_file) or ""
        values = [line.strip() for line in text.splitlines() if line.strip()]
    elif isinstance(model.secret, str):
        values = [model.secret]
    elif isinstance(model.secret, list):
        values = model.secret
    elif model.secret is None:
        context.problems.error(
            (*loc, key),
            'a webhook channel needs secret = "whsec_..." (or a list of them '
            "during a rotation, or secret_file)",
        )
        return ()
    else:
        context.problems.error((*loc, key), "expected a string or a list of strings")
        return ()
    for index, value in enumerate(values):
        if not _is_webhook_secret(value):
            where = (*loc, key, index) if len(values) > 1 else (*loc, key)
            context.problems.error(
                where,
                "expected a secret like whsec_<base64>, as Standard Webhooks "
                "defines it (the value is not shown)",
            )
    return tuple(str(value) for value in values)


def _template(context: ChannelContext, loc: Loc, text: str | None) -> None:
    if text is None:
        return
    try:
        SandboxedEnvironment().parse(text)
    except TemplateSyntaxError as error:
        context.problems.error(
            loc,
            f"template syntax error on line {error.lineno}: {error.message}",
        )


def _split_digest(text: str | None) -> tuple[float | None, str | None]:
    if text is None:
        return None, None
    try:
        return parse_duration(text), None
    except ValueError:
        return None, text.strip()


def _split_quiet(text: str | None) -> tuple[str, str] | None:
    match = QUIET_HOURS.match(text or "")
    return (match.group(1), match.group(2)) if match else None


def _is_webhook_secret(value: object) -> bool:
    if not isinstance(value, str) or not value.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(value.removeprefix("whsec_"), validate=True)) > 0
    except (binascii.Error, ValueError):
        return False


_SCHEMES: set[str] = set()


def _apprise_schemes() -> set[str]:
    """URL schemes Apprise can send to, with the notifier's own plugins loaded."""
    if not _SCHEMES:
        # Apprise loads every plugin on import, which takes a moment: only a
        # config with Apprise channels pays for it.
        from apprise.manager_plugins import NotificationManager

        try:
            # Registers the console:// plugin when the daemon module ships it.
            importlib.import_module("notifier.console")
        except ImportError:
            pass
        manager = NotificationManager()  # type: ignore[no-untyped-call]
        schemes = manager.schemas()  # type: ignore[no-untyped-call]
        _SCHEMES.update(str(scheme).lower() for scheme in schemes)
    return _SCHEMES
