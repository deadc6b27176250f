"""Start, await and stop the local stack's processes.

Each process runs in its own process group (so a Java emulator started by a wrapper script goes down with
it), writes its output to a log file (a pipe nobody reads fills up and hangs the child), and is stopped by
its group id only: nothing this module did not start is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "BASE_ENV_KEYS",
    "ManagedProcess",
    "StartupError",
    "answers",
    "base_env",
    "free_port",
    "group_alive",
    "port_in_use",
    "process_start_time",
    "serve_json",
    "stop_group",
    "wait_until",
]

# What a child inherits from the caller's environment: enough to run, never credentials
# (GOOGLE_APPLICATION_CREDENTIALS, a real GEMINI_API_KEY ...): everything else is passed explicitly.
BASE_ENV_KEYS = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "JAVA_HOME", "VIRTUAL_ENV",
    "SYSTEMROOT",
)


class StartupError(RuntimeError):
    """A process did not become ready; the message ends with the tail of its log."""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    """Poll `condition` until it is true; raise TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def base_env() -> dict[str, str]:
    """The part of this process's environment a child inherits (`BASE_ENV_KEYS`)."""
    return {key: os.environ[key] for key in BASE_ENV_KEYS if key in os.environ}


def answers(url: str, timeout: float = 1.0) -> bool:
    """True when `url` answers a GET with a status below 500."""
    try:
        return httpx.get(url, timeout=timeout, trust_env=False).status_code < 500
    except httpx.HTTPError:
        return False


def _stat_fields(path: Path) -> list[str] | None:
    """The fields of a `/proc/PID/stat` from the state (field 3) on, or None if it cannot be read."""
    try:
        stat = path.read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing one.
    return stat[stat.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot (Linux), or None if there is no such process.

    Recorded next to a pid so a later `down` never signals a process that merely reuses the number.
    """
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return None if fields is None else int(fields[19])


def group_alive(pgid: int) -> bool:
    """True while a process of the group `pgid` runs. Zombies do not count: a stopped process whose parent
    has not reaped it yet (e.g. an init that reaps slowly) is gone for every purpose here."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    members = _live_group_members(pgid)
    return True if members is None else bool(members)


def _live_group_members(pgid: int) -> list[int] | None:
    """Pids of the group's non-zombie processes, from /proc; None where there is no /proc."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry / "stat")
        if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def stop_group(pid: int, timeout: float = 10.0) -> None:
    """Stop the process group led by `pid`: SIGTERM, then SIGKILL after `timeout` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not group_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@dataclass
class ManagedProcess:
    """One child process: its own group, its output appended to `log_path`.

    The child's environment is `env` over this process's whole environment, or, with `inherit_env=False`,
    `env` over `base_env()` only.
    """

    name: str
    argv: list[str]
    log_path: Path
    health_url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    popen: subprocess.Popen | None = None
    inherit_env: bool = True

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**(os.environ if self.inherit_env else base_env()), **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Return when the health URL answers; raise `StartupError` if the process dies or times out."""
        if self.health_url is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise StartupError(f"{self.name} exited with {self.popen.returncode}\n{self.log_tail()}")
            if answers(self.health_url):
                return
            time.sleep(0.1)
        raise StartupError(f"{self.name} did not answer {self.health_url} within {timeout:.0f}s\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        stop_group(self.popen.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def serve_json(
    host: str,
    port: int,
    state: Callable[[], Mapping[str, Any]],
    actions: Mapping[str, Callable[[], Mapping[str, Any]]] | None = None,
) -> ThreadingHTTPServer:
    """Serve `GET /health` (any path) as the JSON of `state()`, and `POST /NAME` as the JSON of
    `actions[NAME]()`, from a daemon thread; return the server (`shutdown()` stops it).

    The stack's own helper processes (relay, ticker) use it so `wait_ready` can await them and tests can
    read their counters or pause them.
    """
    known = dict(actions or {})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self._reply(200, state())

        def do_POST(self) -> None:  # noqa: N802
            action = known.get(self.path.strip("/"))
            if action is None:
                self._reply(404, {"error": f"no action {self.path}", "actions": sorted(known)})
            else:
                self._reply(200, action())

        def _reply(self, status: int, payload: Mapping[str, Any]) -> None:
            body = json.dumps(payload, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request logs
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"health:{port}", daemon=True).start()
    return server
