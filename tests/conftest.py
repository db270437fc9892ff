"""Shared fixtures: the fake Atleta API over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from notifier.fake_atleta import FakeAtleta

FAKE_TOKEN = "test-token"


@pytest.fixture
def fake_api() -> Iterator[FakeAtleta]:
    """A started fake API: projects TEST and one more, 40 registrations each."""
    with FakeAtleta(seed=1, projects=2, registrations=40, token=FAKE_TOKEN) as api:
        yield api
