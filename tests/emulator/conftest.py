"""Fixtures of the Gemini API emulator's tests.

- `emulator`: one emulator process for the session (free port, GEMINI_EMULATOR_API_KEY=API_KEY, model
  loaded before the first test), stopped at the end even on failure; its log in `.local/`.
- `api`: an httpx client on it with the key; the emulator is reset (no batches, files, faults) first.
- `receiver`: a webhook receiver on 127.0.0.1 for the session.
- `configured` / `configured_api`: a second emulator, configured the other way at start: the hash encoder,
  item token counts, quotas and a webhook (to `receiver`, secret `STACK_SECRET`) from the environment,
  fast webhook retries; reset before each test like `api`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.emulator.emulator_helpers import (
    API_KEY,
    Receiver,
    RunningEmulator,
    start_emulator,
    start_receiver,
    wait_for,
)

STACK_SECRET = "whsec_c3RhY2stc2lnbmluZy1zZWNyZXQtZm9yLXRlc3RzISE="  # base64 of 32 bytes
STACK_QUOTAS = {"concurrent_batches": 50, "enqueued_tokens": 1_000_000}
BATCH_EVENTS = ["batch.succeeded", "batch.failed", "batch.expired", "batch.cancelled"]


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


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    running = start_receiver()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="session")
def configured(receiver: Receiver) -> Iterator[RunningEmulator]:
    hook = {
        "id": "stack-hook",
        "uri": receiver.url,
        "subscribed_events": BATCH_EVENTS,
        "signing_secret": STACK_SECRET,
    }
    env = {
        "GEMINI_EMULATOR_API_KEY": API_KEY,
        "GEMINI_EMULATOR_ENCODER": "hash",
        "GEMINI_EMULATOR_ITEM_TOKEN_COUNTS": "1",
        "GEMINI_EMULATOR_QUOTAS": json.dumps(STACK_QUOTAS),
        "GEMINI_EMULATOR_WEBHOOKS": json.dumps([hook]),
        "GEMINI_EMULATOR_WEBHOOK_BACKOFF_SECONDS": "0.05",
        "GEMINI_EMULATOR_WEBHOOK_RETRY_SECONDS": "2",
        "GEMINI_EMULATOR_WEBHOOK_TIMEOUT_SECONDS": "5",
    }
    running = start_emulator("gemini-emulator-configured", env)
    try:
        yield running
    finally:
        running.process.stop()


@pytest.fixture
def configured_api(configured: RunningEmulator, receiver: Receiver) -> Iterator[httpx.Client]:
    configured.admin("POST", "reset").raise_for_status()  # no batches, no queued deliveries from here on
    wait_for(
        lambda: configured.stats()["webhookDeliveries"]["inFlight"] == 0, 30, "deliveries under way to end"
    )
    configured.admin("POST", "reset").raise_for_status()  # their counts too
    with receiver.lock:
        receiver.received.clear()
        receiver.failures = 0
    with httpx.Client(
        base_url=configured.base_url, headers={"x-goog-api-key": API_KEY}, timeout=60, trust_env=False
    ) as client:
        yield client
    configured.admin("DELETE", "faults")
