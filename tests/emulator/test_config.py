"""Settings from the environment, and what the command line does with bad ones."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infra.local.gemini_emulator.config import EmulatorSettings, SettingsError
from tests.emulator.emulator_helpers import ROOT


def test_defaults_and_overrides():
    settings = EmulatorSettings.from_env({})
    assert (settings.host, settings.port, settings.api_key, settings.workers, settings.strict) == (
        "127.0.0.1",
        8090,
        None,
        2,
        True,
    )
    env = {"GEMINI_EMULATOR_PORT": "9001", "GEMINI_EMULATOR_API_KEY": "k", "GEMINI_EMULATOR_STRICT": "false"}
    settings = EmulatorSettings.from_env(env, port=9002, host=None)
    assert (settings.port, settings.api_key, settings.strict, settings.host) == (
        9002,
        "k",
        False,
        "127.0.0.1",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GEMINI_EMULATOR_WORKERS": "0"}, "GEMINI_EMULATOR_WORKERS must be >= 1"),
        ({"GEMINI_EMULATOR_PORT": "http"}, "GEMINI_EMULATOR_PORT must be an integer"),
        ({"GEMINI_EMULATOR_STRICT": "maybe"}, "GEMINI_EMULATOR_STRICT must be a boolean"),
        ({"GEMINI_EMULATOR_ENCODER": "bert"}, "GEMINI_EMULATOR_ENCODER must be"),
        ({"GEMINI_EMULATOR_TOKEN_COUNTER": "bpe"}, "GEMINI_EMULATOR_TOKEN_COUNTER must be one of"),
        ({"GEMINI_EMULATOR_MAX_RUNNING": "-1"}, "GEMINI_EMULATOR_MAX_RUNNING must be >= 0"),
        (
            {"GEMINI_EMULATOR_WEBHOOK_BACKOFF_SECONDS": "0"},
            "GEMINI_EMULATOR_WEBHOOK_BACKOFF_SECONDS must be >= 0.01",
        ),
        (
            {"GEMINI_EMULATOR_WEBHOOK_RETRY_SECONDS": "nan"},
            "GEMINI_EMULATOR_WEBHOOK_RETRY_SECONDS must be >= 0",
        ),
        ({"GEMINI_EMULATOR_WEBHOOK_TIMEOUT_SECONDS": "soon"}, "must be a number"),
        ({"GEMINI_EMULATOR_ITEM_TOKEN_COUNTS": "2"}, "GEMINI_EMULATOR_ITEM_TOKEN_COUNTS must be a boolean"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        EmulatorSettings.from_env(env)


def test_the_command_exits_with_the_reason_on_a_bad_fault_plan():
    done = subprocess.run(
        [sys.executable, "-m", "infra.local.gemini_emulator", "--port", "1"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "GEMINI_EMULATOR_FAULTS": '{"create_429": 3}'},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "create_429 must be an object" in done.stderr


def test_new_settings_have_live_like_defaults_and_are_read():
    settings = EmulatorSettings.from_env({})
    assert (settings.max_running, settings.item_token_counts, settings.webhook_retry_seconds) == (
        0,
        False,
        86400.0,
    )
    assert (settings.quotas_json, settings.webhooks_json, settings.token_counter) == (None, None, "")
    env = {
        "GEMINI_EMULATOR_ENCODER": "HASH",
        "GEMINI_EMULATOR_MAX_RUNNING": "4",
        "GEMINI_EMULATOR_TOKEN_COUNTER": "words",
        "GEMINI_EMULATOR_WEBHOOK_BACKOFF_SECONDS": "0.5",
    }
    settings = EmulatorSettings.from_env(env)
    assert (
        settings.encoder,
        settings.max_running,
        settings.token_counter,
        settings.webhook_backoff_seconds,
    ) == (
        "hash",
        4,
        "words",
        0.5,
    )


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        ("[{", "GEMINI_EMULATOR_WEBHOOKS is not valid JSON"),
        ('[{"uri": "http://127.0.0.1:9/h", "subscribed_events": ["batch.succeeded"]}]', "signing_secret"),
        (
            '[{"uri": "http://127.0.0.1:9/h", "subscribed_events": ["batch.succeeded"], "signing_secret": "whsec_c2hvcnQ="}]',
            "24 to 64 bytes",
        ),
        (
            '{"uri": "mailto:x", "subscribed_events": ["batch.succeeded"], "signing_secret": "whsec_c3RhY2stc2lnbmluZy1zZWNyZXQtZm9yLXRlc3RzISE="}',
            "uri must be",
        ),
    ],
)
def test_the_command_exits_with_the_reason_on_a_bad_webhook(hooks, message):
    done = subprocess.run(
        [sys.executable, "-m", "infra.local.gemini_emulator", "--port", "1"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "GEMINI_EMULATOR_WEBHOOKS": hooks},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "GEMINI_EMULATOR_WEBHOOKS" in done.stderr and message in done.stderr
