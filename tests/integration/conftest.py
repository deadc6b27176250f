"""Fixtures of the integration tests: one local stack for the whole session, on free ports.

- `stack`: the session's `LocalStack` (started once, stopped at the end even on failure; its state and
  logs in `.local/pytest-PID/`). While it runs,
  this process's environment points the official clients at it (`storage.Client()`,
  `pubsub_v1.PublisherClient()`, `firestore.Client()` need no arguments) and holds its settings
  (INPUT_BUCKET, POLLER_TOKEN, ...); the previous environment is restored afterwards.
- `clean_stack`: the same stack after `reset()`: empty Firestore and buckets, no backlog, fresh emulator.
- `gemini_emulator`: the stack's Gemini emulator (`.base_url`, `.api_key`, `.set_faults(dict)`,
  `.clear_faults()`); its faults are cleared after each test.

Knobs (environment variables): LOCAL_STACK_OVERRIDES, a JSON object of extra settings for the functions;
LOCAL_STACK_WITHOUT, comma-separated parts not to start (e.g. `gemini,ticker`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from infra.local.stack import COMPONENTS, ENV_KEYS, FUNCTIONS, LocalStack, stop_orphaned
from shared.config import get_settings
from tests.integration.pipeline_helpers import EventSubscription

ROOT = Path(__file__).resolve().parents[2]
# Faster than the defaults, so tests wait less; still real retries and real ticks.
TEST_OVERRIDES = {
    "POLLER_TICK_SECONDS": "1",
    "RECONCILE_GRACE_MINUTES": "0.25",  # an upload whose event was lost is found after 15 s, not 10 minutes
    "RELAY_MIN_BACKOFF_SECONDS": "0.2",
    "RELAY_MAX_BACKOFF_SECONDS": "5",
    "PROVIDERS": "vertex",  # beside PROVIDER=gemini: a file may choose Vertex AI (test_pipeline_vertex)
}
# Settings of this process while the stack runs (the functions' settings plus where everything is).
PROCESS_ENV_KEYS = (
    *(key for key in ENV_KEYS if key != "LOG_LEVEL"),  # this process keeps its own log level
    *(f"{name.upper()}_URL" for name in FUNCTIONS),
)


def state_dir(kind: str) -> Path:
    """`.local/KIND-PID`: its logs stay there after the session. Stacks of earlier sessions that were
    killed before they could stop theirs are stopped now, and ended sessions' directories removed
    (never those of a session still running: several may run at once)."""
    parent = ROOT / ".local"
    parent.mkdir(exist_ok=True)
    stop_orphaned(parent)
    for old in parent.glob(f"{kind}-*"):
        pid = old.name.removeprefix(f"{kind}-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and not (old / "stack.json").exists():
            shutil.rmtree(old, ignore_errors=True)
    return parent / f"{kind}-{os.getpid()}"


def start_stack(kind: str, extra_overrides: dict[str, str] | None = None) -> LocalStack:
    """A started LocalStack on free ports with the tests' settings, LOCAL_STACK_OVERRIDES and
    `extra_overrides` (LOCAL_STACK_WITHOUT leaves parts out)."""
    overrides = {**TEST_OVERRIDES, **json.loads(os.environ.get("LOCAL_STACK_OVERRIDES", "{}")), **(extra_overrides or {})}
    without = {name.strip() for name in os.environ.get("LOCAL_STACK_WITHOUT", "").split(",") if name.strip()}
    components = [name for name in COMPONENTS if name not in without]
    return LocalStack(ROOT, overrides=overrides, components=components, state_dir=state_dir(kind)).start()


@contextlib.contextmanager
def environment_of(local: LocalStack) -> Iterator[None]:
    """This process's settings and Google clients point at `local` inside the block; restored after."""
    with mock.patch.dict(os.environ, {key: local.env[key] for key in PROCESS_ENV_KEYS if key in local.env}):
        get_settings.cache_clear()
        try:
            yield
        finally:
            get_settings.cache_clear()


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    local = start_stack("pytest")
    try:
        with environment_of(local):
            yield local
    finally:
        local.stop()


@pytest.fixture
def clean_stack(stack: LocalStack) -> LocalStack:
    stack.reset()
    return stack


@dataclass(frozen=True)
class GeminiEmulator:
    """The Gemini API emulator's address, key and fault switch (its admin API under /_emulator)."""

    base_url: str
    api_key: str

    def set_faults(self, faults: dict[str, Any]) -> None:
        httpx.put(f"{self.base_url}/_emulator/faults", json=faults, timeout=10, trust_env=False).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(f"{self.base_url}/_emulator/faults", timeout=10, trust_env=False).raise_for_status()


def emulator_of(stack: LocalStack) -> Iterator[GeminiEmulator]:
    """The stack's Gemini emulator, its faults cleared before and after."""
    if "gemini" not in stack.parts:
        pytest.skip(f"no Gemini emulator in the stack: {stack.skipped.get('gemini', 'not selected')}")
    emulator = GeminiEmulator(stack.env["GEMINI_API_BASE_URL"], stack.env["GEMINI_API_KEY"])
    emulator.clear_faults()
    try:
        yield emulator
    finally:
        emulator.clear_faults()


@pytest.fixture
def gemini_emulator(stack: LocalStack) -> Iterator[GeminiEmulator]:
    yield from emulator_of(stack)


@pytest.fixture
def events(clean_stack: LocalStack) -> Iterator[EventSubscription]:
    """A fresh subscription on the completion events topic (after the stack's reset)."""
    subscription = EventSubscription(clean_stack.env["GOOGLE_CLOUD_PROJECT"], clean_stack.env["EVENTS_TOPIC"])
    yield subscription
    subscription.close()
