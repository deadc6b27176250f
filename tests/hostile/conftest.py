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
- LOG_LEVEL = DEBUG: the logs searched for the API key hold everything the functions can log.

Fixtures: `stack` (the running `LocalStack`; this process's environment points the Google clients at it,
as in the integration suite), `clean_stack` (reset first), `gemini_emulator` (faults cleared after the
test), `events` (a fresh subscription on the completion events topic).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.stack import COMPONENTS, LocalStack, stop_orphaned
from tests.integration.conftest import PROCESS_ENV_KEYS, ROOT, TEST_OVERRIDES, GeminiEmulator
from tests.integration.pipeline_helpers import EventSubscription

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
HOSTILE_OVERRIDES = {
    "MAX_DECOMPRESSED_BYTES": str(32 * MIB),
    "GEMINI_MAX_RETRIES": "2",
    "LOG_LEVEL": "DEBUG",
}


class _SuiteStack:
    """The suite's one stack: started on first use, stopped when the run leaves the folder."""

    def __init__(self) -> None:
        self.stack: LocalStack | None = None
        self.saved_env: dict[str, str | None] = {}

    def get(self) -> LocalStack:
        if self.stack is None:
            self.stack = self._start()
        return self.stack

    def _start(self) -> LocalStack:
        parent = ROOT / ".local"
        parent.mkdir(exist_ok=True)
        stop_orphaned(parent)  # stacks of killed sessions (theirs or ours)
        for old in parent.glob("hostile-*"):
            pid = old.name.removeprefix("hostile-")
            if pid.isdigit() and not Path(f"/proc/{pid}").exists() and not (old / "stack.json").exists():
                shutil.rmtree(old, ignore_errors=True)
        overrides = {**TEST_OVERRIDES, **json.loads(os.environ.get("LOCAL_STACK_OVERRIDES", "{}")), **HOSTILE_OVERRIDES}
        without = {n.strip() for n in os.environ.get("LOCAL_STACK_WITHOUT", "").split(",") if n.strip()}
        local = LocalStack(ROOT, overrides=overrides, components=[n for n in COMPONENTS if n not in without],
                           state_dir=parent / f"hostile-{os.getpid()}")
        local.start()
        self.saved_env = {key: os.environ.get(key) for key in PROCESS_ENV_KEYS}
        os.environ.update({key: local.env[key] for key in PROCESS_ENV_KEYS if key in local.env})
        _clear_settings_cache()
        return local

    def stop(self) -> None:
        if self.stack is None:
            return
        local, self.stack = self.stack, None
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _clear_settings_cache()
        local.stop()


_SUITE = _SuiteStack()


def _clear_settings_cache() -> None:
    from shared.config import get_settings

    get_settings.cache_clear()


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
    if "gemini" not in stack.parts:
        pytest.skip(f"no Gemini emulator in the stack: {stack.skipped.get('gemini', 'not selected')}")
    emulator = GeminiEmulator(stack.env["GEMINI_API_BASE_URL"], stack.env["GEMINI_API_KEY"])
    emulator.clear_faults()
    try:
        yield emulator
    finally:
        emulator.clear_faults()


@pytest.fixture
def events(clean_stack: LocalStack) -> Iterator[EventSubscription]:
    subscription = EventSubscription(clean_stack.env["GOOGLE_CLOUD_PROJECT"], clean_stack.env["EVENTS_TOPIC"])
    yield subscription
    subscription.close()
