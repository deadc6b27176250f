"""Fixtures of the hostile suite: a local stack of its own, up only while the suite's tests run.

Why not import the integration suite's fixtures: a session fixture imported into a second conftest is a
second fixture definition, so pytest would run it again, starting a second LocalStack in the same state
directory (`.local/pytest-PID`) while the first still runs: `AlreadyRunning`. So this suite starts its own
stack (state in `.local/hostile-PID/`, logs in its `logs/`) when a test first needs it and stops it as soon
as the run leaves `tests/hostile/` (or at the session's end): `make test` never runs two stacks at once.

Its own stack also lets the suite set the functions' settings, on top of the integration suite's
`TEST_OVERRIDES` and `LOCAL_STACK_OVERRIDES`:

- MAX_DECOMPRESSED_BYTES = 32 MiB: the gzip bomb goes through the real stack (upload, notification,
  submit, event) as a 64 MiB inflation of a 64 KB upload, instead of a 20 GiB one (minutes of CPU);
- GEMINI_MAX_RETRIES = 2: while the Gemini emulator is down a poll gives up in seconds, not half a minute;
- LOG_LEVEL = DEBUG: the logs searched for the secrets hold everything the functions can log;
- POLLER_TICK_SECONDS = 5 (the integration suite ticks every second, the cloud every minute): a tick fans
  every due shard out again until a poll worker has written it, so when the one poll worker instance lags
  behind the tick (dozens of jobs at once, as here) faster ticks only queue duplicates, each costing it a
  provider call.

Fixtures: `stack` (the running `LocalStack`; this process's environment points the Google clients at it,
as in the integration suite), `clean_stack` (reset first), `gemini_emulator` (faults cleared after the
test), `events` (a fresh subscription on the completion events topic).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.stack import LocalStack
from tests.integration.conftest import GeminiEmulator, emulator_of, environment_of, events, start_stack  # noqa: F401

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
HOSTILE_OVERRIDES = {
    "MAX_DECOMPRESSED_BYTES": str(32 * MIB),
    "GEMINI_MAX_RETRIES": "2",
    "LOG_LEVEL": "DEBUG",
    "POLLER_TICK_SECONDS": "5",
}


class _SuiteStack:
    """The suite's one stack: started on first use, stopped when the run leaves the folder."""

    def __init__(self) -> None:
        self.stack: LocalStack | None = None
        self._environment: contextlib.AbstractContextManager | None = None

    def get(self) -> LocalStack:
        if self.stack is None:
            self.stack = start_stack("hostile", HOSTILE_OVERRIDES)
            self._environment = environment_of(self.stack)
            self._environment.__enter__()
        return self.stack

    def stop(self) -> None:
        if self.stack is None:
            return
        local, self.stack = self.stack, None
        self._environment.__exit__(None, None, None)
        local.stop()


_SUITE = _SuiteStack()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    try:
        return (yield)  # the test's fixtures are torn down first: they may still need the stack
    finally:
        if nextitem is None or HERE not in Path(nextitem.path).resolve().parents:
            _SUITE.stop()


def pytest_sessionfinish(session: pytest.Session) -> None:
    _SUITE.stop()


@pytest.fixture(scope="module")
def stack() -> LocalStack:
    return _SUITE.get()


@pytest.fixture
def clean_stack(stack: LocalStack) -> LocalStack:
    stack.reset()
    return stack


@pytest.fixture
def gemini_emulator(stack: LocalStack) -> Iterator[GeminiEmulator]:
    yield from emulator_of(stack)
