"""Fixtures of the Gemini client's unit tests: the in-memory API, a fake clock, a client over both."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.gemini import GeminiClient
from tests.unit.gemini.gemini_fakes import API_KEY, BASE_URL, FakeClock, FakeGemini


@pytest.fixture
def fake() -> FakeGemini:
    return FakeGemini()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(fake: FakeGemini, clock: FakeClock) -> Iterator[GeminiClient]:
    with GeminiClient(
        API_KEY,
        base_url=BASE_URL,
        transport=fake.transport(),
        sleep=clock.sleep,
        clock=clock,
        rand=lambda: 0.5,
    ) as gemini:
        yield gemini
