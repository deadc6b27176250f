"""Start, await and stop the local stack's processes.

Each process runs in its own process group (so a Java emulator started by a wrapper script goes down with
it), writes its output to a log file (a pipe nobody reads fills up and hangs the child), and is stopped by
its group id only: nothing this module did not start is touched.

`InstancePool` runs N copies of one server (a function's instances), each serving at most `concurrency`
calls at once; a call that outlives the pool's timeout has its instance's process group killed, and the
instance is started again, as Cloud Functions ends an invocation that runs past its timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "BASE_ENV_KEYS",
    "Instance",
    "InstancePool",
    "Invocation",
    "ManagedProcess",
    "PoolClosed",
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


#: Ports handed out by this process: never twice.
_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()
#: Where free ports are drawn from when the kernel's ephemeral range is unknown.
_LOWEST_PORT, _EPHEMERAL_START = 10000, 32768
_SLICES = 8


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _EPHEMERAL_START


def free_port(*, ephemeral: bool = False) -> int:
    """A port on 127.0.0.1 that nothing listens on right now.

    By default (the ports a stack assigns to its parts), below the kernel's ephemeral range (where outgoing
    connections and bind(0) draw theirs, so no other socket takes it before its server binds), never handed
    out twice by this process, and from a slice of its own for each pytest-xdist worker (`PYTEST_XDIST_WORKER`
    gwN): stacks started side by side never pick the same one. `ephemeral`: one the kernel picks (bind(0))
    in its ephemeral range, for processes that start servers of their own inside a stack (the relay's
    function instances): never one of the stack's own ports."""
    if ephemeral:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    low, high = _LOWEST_PORT, max(_ephemeral_start(), _LOWEST_PORT + _SLICES * 100)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    width = (high - low) // _SLICES
    start = low + (int(worker) % _SLICES if worker.isdigit() else 0) * width
    candidates = list(range(start, start + width))
    random.shuffle(candidates)
    with _HANDED_OUT_LOCK:
        for port in candidates:
            if port in _HANDED_OUT:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    raise OSError(f"no free port in {start}..{start + width - 1}")


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

    def exited_within(self, seconds: float) -> bool:
        """True when the process has ended, or ends within `seconds`."""
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

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
    actions: Mapping[str, Callable[[Mapping[str, Any]], Mapping[str, Any]]] | None = None,
    ready: Callable[[], bool] | None = None,
) -> ThreadingHTTPServer:
    """Serve `GET /ready` (200 once `ready()`, else 503), any other GET as the JSON of `state()`, and
    `POST /NAME` as the JSON of `actions[NAME](params)`, `params` being the request's JSON object body
    (`{}` without one), from a daemon thread; return the server (`shutdown()` stops it).

    An action raising `ValueError` answers 400 with its message. The stack's own helper processes (relay,
    ticker) use it so `wait_ready` can await them and tests can read their counters or steer them.
    """
    known = dict(actions or {})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path.split("?")[0] == "/ready":
                ok = ready is None or ready()
                self._reply(200 if ok else 503, {"ready": ok})
            else:
                self._reply(200, state())

        def do_POST(self) -> None:  # noqa: N802
            action = known.get(self.path.split("?")[0].strip("/"))
            if action is None:
                self._reply(404, {"error": f"no action {self.path}", "actions": sorted(known)})
                return
            try:
                self._reply(200, action(self._params()))
            except ValueError as exc:
                self._reply(400, {"error": str(exc)})

        def _params(self) -> Mapping[str, Any]:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                params = json.loads(body) if body.strip() else {}
            except ValueError as exc:
                raise ValueError(f"the body is not JSON: {exc}") from exc
            if not isinstance(params, dict):
                raise ValueError("the body must be a JSON object")
            return params

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


# -- a pool of instances ------------------------------------------------------------------------------------

INSTANCE_STOP_SECONDS = 3.0  # SIGTERM grace of an instance when the pool closes (a busy gunicorn waits 30 s)
RESTART_PAUSE_SECONDS = 1.0  # between attempts to start an instance that failed to come up
STACK_DUMP_SECONDS = 0.5  # a timed-out instance's time to print its stacks before SIGKILL
DEATH_GRACE_SECONDS = 2.0  # after a call failed without an answer, how long its instance may take to exit


def _kill_showing_stacks(pgid: int | None) -> None:
    """SIGKILL a process group, after a SIGSEGV that Python's faulthandler (PYTHONFAULTHANDLER=1 in the
    instances' environment) turns into every thread's stack in the process's log: where a timed-out call
    was. faulthandler handles SIGSEGV at the C level, which gunicorn's workers keep (it resets only its
    own signals when it forks them); its message calls it a segmentation fault."""
    for sent, pause in ((signal.SIGSEGV, STACK_DUMP_SECONDS), (signal.SIGKILL, 0.0)):
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.killpg(pgid, sent)  # type: ignore[arg-type]
        time.sleep(pause)


class PoolClosed(RuntimeError):
    """The pool is closing: no instance will be free again."""


@dataclass
class Instance:
    """One process of a pool: its port, how many calls it serves now, its history."""

    index: int
    port: int
    process: ManagedProcess
    url: str
    ready: bool = False
    active: int = 0  # calls under way
    calls: int = 0
    restarts: int = 0
    killed: bool = False  # a call outlived the timeout: the group was killed; restarted once its calls end

    def state(self) -> dict[str, Any]:
        return {"index": self.index, "pid": self.process.pid, "port": self.port, "ready": self.ready,
                "active": self.active, "calls": self.calls, "restarts": self.restarts}


@dataclass(frozen=True)
class Invocation:
    """The end of one call: what `send` returned or raised, how long it took, whether the timeout killed it."""

    instance: int
    seconds: float
    timed_out: bool
    value: Any = None
    error: BaseException | None = None


class InstancePool:
    """`count` copies of one server, started from `argv` (every `{port}` replaced by the instance's port),
    each serving at most `concurrency` calls at once.

    `with pool.instance() as instance:` waits for a free, ready instance; `pool.invoke(instance, send)` runs
    `send(instance.url)` under the timeout. A call still running after `timeout` seconds has its instance's
    process group killed (SIGKILL: its `send` then fails) and counts as timed out; an instance killed or
    found dead is started again in the background once its calls have ended, and takes calls when it
    answers `health_path` again. Counters: calls, the longest call, timeouts, crashes (an instance that
    died on its own). Logs: `log_path(index)`, appended across restarts.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Callable[[int], Path],
        timeout: float,
        count: int = 1,
        concurrency: int = 1,
        health_path: str = "/",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        host: str = "127.0.0.1",
        ready_timeout: float = 120.0,
        on_change: Callable[[], None] | None = None,
        log: Callable[[dict[str, Any]], None] | None = None,
    ):
        if count < 1 or concurrency < 1 or timeout <= 0:
            raise ValueError(f"{name}: instances and concurrency must be at least 1 and the timeout positive")
        self.name, self.timeout, self.concurrency = name, timeout, concurrency
        self._ready_timeout = ready_timeout
        self._on_change = on_change or (lambda: None)
        self._log = log or (lambda entry: None)
        self._cond = threading.Condition()
        self._closed = False
        self.calls = self.timeouts = self.crashes = 0
        self.longest = 0.0
        self.instances: list[Instance] = []
        for index in range(count):
            port = free_port(ephemeral=True)
            process = ManagedProcess(f"{name}#{index}", [part.replace("{port}", str(port)) for part in argv],
                                     log_path(index), f"http://{host}:{port}{health_path}", env=dict(env or {}),
                                     cwd=cwd, inherit_env=False)
            self.instances.append(Instance(index, port, process, f"http://{host}:{port}/"))

    # lifecycle

    def start(self) -> None:
        """Start every instance at once; return when each answers, else stop them all and raise
        `StartupError` naming each that failed, with its log tail."""
        failures: list[str] = []

        def bring_up(instance: Instance) -> None:
            try:
                self._boot(instance, "starting")
            except (StartupError, PoolClosed) as exc:
                failures.append(str(exc))

        threads = [threading.Thread(target=bring_up, args=(i,), daemon=True) for i in self.instances]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            self.close()
            raise StartupError("\n".join(failures))

    def close(self) -> None:
        """No call starts any more (waiters get `PoolClosed`); every instance is stopped, in parallel."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        threads = [threading.Thread(target=i.process.stop, args=(INSTANCE_STOP_SECONDS,), daemon=True)
                   for i in self.instances]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _boot(self, instance: Instance, why: str) -> None:
        process = instance.process
        with process.log_path.open("a") as out:  # logs accumulate: mark where this run begins
            out.write(f"----- {process.name} {why} {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC\n")
        process.start()
        with self._cond:
            closed = self._closed
        if closed:  # `close` ran meanwhile and may have missed this process: stop it here
            process.stop(INSTANCE_STOP_SECONDS)
            raise PoolClosed(f"{self.name} is stopping")
        self._on_change()
        process.wait_ready(self._ready_timeout)
        with self._cond:
            instance.ready, instance.killed = True, False
            self._cond.notify_all()

    # calls

    @contextlib.contextmanager
    def instance(self) -> Iterator[Instance]:
        """A ready instance with a free slot, held for the block; raises `PoolClosed` once closing."""
        with self._cond:
            while True:
                if self._closed:
                    raise PoolClosed(f"{self.name} is stopping")
                free = [i for i in self.instances if i.ready and i.active < self.concurrency]
                if free:
                    chosen = min(free, key=lambda i: (i.active, i.calls))
                    chosen.active += 1
                    break
                self._cond.wait(0.5)
        try:
            yield chosen
        finally:
            self._release(chosen)

    def invoke(self, instance: Instance, send: Callable[[str], Any]) -> Invocation:
        """`send(instance.url)` under the timeout; never raises what `send` raises (it is in the result)."""
        expired = threading.Event()

        def expire() -> None:
            with self._cond:
                if done:
                    return
                expired.set()
                instance.killed = True
            self._log({"severity": "WARNING", "message": "timeout: instance killed", "function": self.name,
                       "instance": instance.index, "pid": instance.process.pid, "timeout_s": self.timeout})
            _kill_showing_stacks(instance.process.pid)

        done = False
        watchdog = threading.Timer(self.timeout, expire)
        watchdog.daemon = True
        with self._cond:
            instance.calls += 1
        started = time.monotonic()
        watchdog.start()
        value: Any = None
        error: BaseException | None = None
        try:
            value = send(instance.url)
        except Exception as exc:  # noqa: BLE001 - handed back in the result
            error = exc
        finally:
            watchdog.cancel()
            with self._cond:
                done = True
                seconds = time.monotonic() - started
                self.calls += 1
                self.longest = max(self.longest, seconds)
                self.timeouts += expired.is_set()
        if error is not None and not expired.is_set():  # no answer: let a dying instance be seen dead
            instance.process.exited_within(DEATH_GRACE_SECONDS)
        return Invocation(instance.index, round(seconds, 3), expired.is_set(), value, error)

    def _release(self, instance: Instance) -> None:
        with self._cond:
            instance.active -= 1
            dead = instance.ready and (instance.killed or not instance.process.alive())
            if dead:
                instance.ready = False  # no new call; restarted once the calls under way have ended
                self.crashes += not instance.killed
            restart = not instance.ready and instance.active == 0 and not self._closed and (dead or instance.killed)
            self._cond.notify_all()
        if restart:
            threading.Thread(target=self._restart, args=(instance,), name=f"restart:{self.name}", daemon=True).start()

    def _restart(self, instance: Instance) -> None:
        why = "restarted after a timeout" if instance.killed else "restarted after it died"
        while True:
            instance.process.stop(INSTANCE_STOP_SECONDS)
            with self._cond:
                if self._closed:
                    return
                instance.restarts += 1
            try:
                self._boot(instance, why)
                return
            except PoolClosed:
                return
            except StartupError as exc:
                self._log({"severity": "ERROR", "message": "instance did not start again", "function": self.name,
                           "instance": instance.index, "error": str(exc)})
                time.sleep(RESTART_PAUSE_SECONDS)

    # reading

    def ready(self) -> bool:
        with self._cond:
            return all(i.ready for i in self.instances)

    def state(self) -> dict[str, Any]:
        with self._cond:
            return {"timeout_s": self.timeout, "concurrency": self.concurrency, "invocations": self.calls,
                    "longest_invocation_s": round(self.longest, 3), "timeouts": self.timeouts,
                    "crashes": self.crashes, "busy": sum(i.active for i in self.instances),
                    "instances": [i.state() for i in self.instances]}

    def reset_counters(self) -> None:
        with self._cond:
            self.calls = self.timeouts = self.crashes = 0
            self.longest = 0.0

    def records(self) -> list[dict[str, Any]]:
        """pid, start time and log of each running instance (recorded so a `down` can stop what a killed
        pool left behind)."""
        return [{"pid": i.process.pid, "start_time": process_start_time(i.process.pid),
                 "log": str(i.process.log_path)} for i in self.instances if i.process.pid is not None]
