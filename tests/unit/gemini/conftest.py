"""Fixtures of the Gemini client's unit tests: the in-memory API, a fake clock, a client over both."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.gemini import GeminiClient
from tests.unit.gemini.gemini_fakes import FakeClock, FakeGemini, make_client


@pytest.fixture
def fake() -> FakeGemini:
    return FakeGemini()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(fake: FakeGemini, clock: FakeClock) -> Iterator[GeminiClient]:
    with make_client(fake.handler, clock) as gemini:
        yield gemini
