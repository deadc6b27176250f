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
