"""A ``console://`` Apprise scheme that writes messages to the terminal.

Importing this module registers the scheme with Apprise (the registration is
process-wide). ``demo`` uses it so that a newcomer sees alerts without any
account; it also suits a dry run of a new config. Messages go to stdout, a
rule above each, so they stand apart from log lines on stderr.
"""

from __future__ import annotations

import shutil
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any, cast

from apprise.decorators import notify

SCHEME = "console"

# Apprise runs plugins on a thread pool; one lock keeps two messages from
# interleaving their lines.
_write_lock = threading.Lock()

_MARKS = {"info": "*", "success": "+", "warning": "!", "failure": "x"}


def format_message(title: str, body: str, notify_type: Any, width: int = 72) -> str:
    """The text block one message prints as: a rule with the title, then the body."""
    mark = _MARKS.get(str(getattr(notify_type, "value", notify_type)), "*")
    head = f"-- {mark} {title} " if title else f"-- {mark} "
    rule = head + "-" * max(3, width - len(head))
    lines = [rule, *(line.rstrip() for line in body.strip("\n").splitlines())]
    return "\n".join(lines) + "\n"


def console_notify(
    body: str,
    title: str,
    notify_type: Any,
    *args: Any,
    **kwargs: Any,
) -> bool:
    """Write one message to stdout; always succeeds unless stdout is gone."""
    width = min(shutil.get_terminal_size((72, 24)).columns, 100)
    text = format_message(title, body, notify_type, width)
    with _write_lock:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (OSError, ValueError):
            return False
    return True


# Apprise ships no type information; the cast keeps its decorator from
# untyping the function above, which stays callable directly in tests.
_register = cast(Callable[..., Callable[[Callable[..., bool]], object]], notify)
with warnings.catch_warnings():
    # Registering makes Apprise import all its plugins, and its e-mail
    # plugin imports the stdlib's deprecated ``imghdr`` (Python 3.11-3.12),
    # which would fail a run with warnings as errors; nothing here uses it.
    warnings.filterwarnings(
        "ignore", message="'imghdr' is deprecated", category=DeprecationWarning
    )
    _register(on=SCHEME, name="Console")(console_notify)
