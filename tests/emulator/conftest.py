"""Fixtures of the Gemini API emulator's tests.

- `emulator`: one emulator process for the session (free port, GEMINI_EMULATOR_API_KEY=API_KEY, model
  loaded before the first test), stopped at the end even on failure; its log in `.local/`.
- `api`: an httpx client on it with the key; the emulator is reset (no batches, files, faults) first.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.emulator.emulator_helpers import API_KEY, RunningEmulator, start_emulator


@pytest.fixture(scope="session")
def emulator() -> Iterator[RunningEmulator]:
    running = start_emulator("gemini-emulator-tests", {"GEMINI_EMULATOR_API_KEY": API_KEY})
    try:
        yield running
    finally:
        running.process.stop()


@pytest.fixture
def api(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    emulator.admin("POST", "reset").raise_for_status()
    with httpx.Client(
        base_url=emulator.base_url, headers={"x-goog-api-key": API_KEY}, timeout=60, trust_env=False
    ) as client:
        yield client
    emulator.admin("DELETE", "faults")
