"""Shared fixtures: the fake Atleta API over real HTTP on 127.0.0.1."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from notifier.cli.common import NOISY_LOGGERS
from notifier.fake_atleta import FakeAtleta

FAKE_TOKEN = "test-token"


@pytest.fixture
def fake_api() -> Iterator[FakeAtleta]:
    """A started fake API: projects TEST and one more, 40 registrations each."""
    with FakeAtleta(seed=1, projects=2, registrations=40, token=FAKE_TOKEN) as api:
        yield api


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what a CLI command run in-process did to the logging setup.

    Commands configure the root logger and hold noisy library loggers at
    WARNING; left in place, that would hide log lines from later tests that
    assert a secret is absent from them.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)
