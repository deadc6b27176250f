"""The local stack itself: it starts, answers, is wired as in the cloud, plays the cloud's limits, resets,
and stops without a trace.

The relay's CloudEvents are checked at a recording HTTP server (a second relay process on its own
subscription); the stack's own wiring with the real functions that exist. The cloud's limits (timeouts,
instances, dead letters, lost events) on a stack of their own whose functions are the test-only rows of
tests/integration/stack_functions: each invocation is written to a log the tests read.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.http import from_http
from google.cloud import firestore, pubsub_v1, storage

from embedpipe.config import parse_env_file
from infra.local.processes import ManagedProcess, answers, free_port, group_alive, wait_until
from infra.local.stack import (
    ENV_KEYS,
    FUNCTIONS,
    AlreadyRunning,
    Function,
    Http,
    LocalStack,
    StackError,
    Storage,
    Topic,
    stop_orphaned,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


# -- helpers -------------------------------------------------------------------------------------------


class Recorder:
    """An HTTP server on 127.0.0.1 that records each POST; answers `fail_first` 503s, then 204s."""

    def __init__(self, fail_first: int = 0):
        self.requests: list[dict[str, Any]] = []
        self.fail_first = fail_first
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    recorder.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                    status = 503 if len(recorder.requests) <= recorder.fail_first else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder(fail_first=1)
    yield server
    server.close()


def start_relay(stack: LocalStack, tmp_path: Path, kind: str, topic: str, url: str) -> tuple[ManagedProcess, str]:
    """A second relay: its own subscription on `topic` (a full path), delivering to `url`."""
    project = stack.env["GOOGLE_CLOUD_PROJECT"]
    subscription = f"projects/{project}/subscriptions/test-relay-{uuid.uuid4().hex[:10]}"
    subscriber = stack.subscriber_client()
    subscriber.create_subscription(name=subscription, topic=topic)
    subscriber.close()
    port = free_port()
    relay = ManagedProcess(
        "test-relay",
        [sys.executable, "-m", "infra.local.relay", f"--{kind}", f"{subscription}={url}", "--port", str(port),
         "--min-backoff", "0.1", "--max-backoff", "1"],
        tmp_path / "relay.log",
        f"http://127.0.0.1:{port}/health",
        env={"PYTHONPATH": str(ROOT), "PUBSUB_EMULATOR_HOST": stack.env["PUBSUB_EMULATOR_HOST"],
             "GOOGLE_CLOUD_PROJECT": project},
        cwd=ROOT,
        inherit_env=False,
    ).start()
    relay.wait_ready(30)
    return relay, subscription


def delete_subscription(stack: LocalStack, subscription: str) -> None:
    subscriber = stack.subscriber_client()
    try:
        subscriber.delete_subscription(subscription=subscription)
    finally:
        subscriber.close()


def relay_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


# -- the session stack -----------------------------------------------------------------------------------


def test_every_part_answers_and_the_env_file_holds_every_setting(stack: LocalStack):
    env = parse_env_file(stack.env_path.read_text())
    assert env == stack.env
    missing = [key for key in ENV_KEYS if key not in env]
    assert not missing
    for name in FUNCTIONS:
        assert (f"{name.upper()}_URL" in env) == (name in stack.functions)
    urls = [value for key, value in env.items() if key.endswith("_URL") and key != "GEMINI_API_BASE_URL"]
    urls += [f"http://{env['FIRESTORE_EMULATOR_HOST']}/", f"http://{env['PUBSUB_EMULATOR_HOST']}/",
             f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b"]
    if "gemini" in stack.parts:
        urls.append(f"{env['GEMINI_API_BASE_URL']}/_emulator/health")
    else:
        urls.remove(env["GEMINI_EMULATOR_ADMIN_URL"])
    silent = [url for url in urls if not answers(url, timeout=5)]
    assert not silent, f"not answering: {silent}"
    assert os.stat(stack.env_path).st_mode & 0o077 == 0, "the env file holds local secrets: owner only"
    recorded = json.loads(stack.state_path.read_text())["processes"]
    assert {name: rec["pid"] for name, rec in recorded.items()} == {name: p.pid for name, p in stack.parts.items()}
    assert all(group_alive(part.pid) for part in stack.parts.values())
    instances = json.loads(stack.instances_path.read_text())
    assert set(instances) == set(stack.functions)
    assert all(group_alive(rec["pid"]) for records in instances.values() for rec in records)
    groups = stack.process_groups()
    assert {name: len(groups[name]) for name in stack.functions} == {n: f.instances for n, f in stack.functions.items()}


def test_an_upload_reaches_the_target_as_eventarcs_storage_cloudevent_with_retry(clean_stack, recorder, tmp_path):
    relay, subscription = start_relay(clean_stack, tmp_path, "storage",
                                      clean_stack.topic_path("GCS_NOTIFICATION_TOPIC"), recorder.url)
    try:
        bucket = storage.Client().bucket(os.environ["INPUT_BUCKET"])
        blob = bucket.blob(f"relay-test/{uuid.uuid4().hex} a.jsonl")  # outside INPUT_PREFIX: submit ignores it
        blob.metadata = {"dimensions": "256"}
        blob.upload_from_string(b'{"text": "hello"}\n', content_type="application/x-ndjson")

        wait_until(lambda: len(recorder.requests) >= 2, 30, what="a failed delivery and its retry")
    finally:
        relay.stop()
        delete_subscription(clean_stack, subscription)

    first, second = recorder.requests[:2]
    assert first["headers"]["ce-id"] == second["headers"]["ce-id"], "a retry is the same event"
    assert first["body"] == second["body"]
    headers, body = second["headers"], json.loads(second["body"])
    bucket_name = os.environ["INPUT_BUCKET"]
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-type"] == "google.cloud.storage.object.v1.finalized"
    assert headers["ce-source"] == f"//storage.googleapis.com/projects/_/buckets/{bucket_name}"
    # Header values are percent-encoded (CloudEvents HTTP binding): the name's space travels as %20.
    assert " " not in headers["ce-subject"] and urllib.parse.unquote(headers["ce-subject"]) == f"objects/{blob.name}"
    assert headers["ce-bucket"] == bucket_name
    assert headers["ce-time"].endswith("Z")
    assert headers["content-type"] == "application/json"
    assert body["kind"] == "storage#object"
    assert (body["bucket"], body["name"], body["generation"]) == (bucket_name, blob.name, str(blob.generation))
    assert (body["size"], body["md5Hash"], body["crc32c"]) == (str(blob.size), blob.md5_hash, blob.crc32c)
    assert body["metadata"] == {"dimensions": "256"} and body["metageneration"] == "1"
    event = from_http(second["headers"], second["body"])  # what functions-framework will build
    assert event["id"] == headers["ce-id"] and event.get_data() == body

    lines = [entry for entry in relay_log(tmp_path / "relay.log") if entry.get("id") == headers["ce-id"]]
    assert [(e["status"], e["outcome"], e["attempt"]) for e in lines] == [(503, "nack", 1), (204, "ack", 2)]
    assert all(e["target"] == recorder.url and isinstance(e["ms"], int) for e in lines)


def test_a_message_reaches_the_target_as_eventarcs_pubsub_cloudevent(clean_stack, recorder, tmp_path):
    project = clean_stack.env["GOOGLE_CLOUD_PROJECT"]
    topic = f"projects/{project}/topics/test-relay-{uuid.uuid4().hex[:10]}"
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=topic)
    relay, subscription = start_relay(clean_stack, tmp_path, "pubsub", topic, recorder.url)
    try:
        message_id = publisher.publish(topic, b'{"job_id": "job-1"}', job_id="job-1").result(timeout=30)
        wait_until(lambda: len(recorder.requests) >= 2, 30, what="a failed delivery and its retry")
    finally:
        relay.stop()
        delete_subscription(clean_stack, subscription)
        publisher.delete_topic(topic=topic)

    headers, body = recorder.requests[1]["headers"], json.loads(recorder.requests[1]["body"])
    assert headers["ce-id"] == message_id
    assert headers["ce-type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert headers["ce-source"] == f"//pubsub.googleapis.com/{topic}"
    assert headers["ce-specversion"] == "1.0" and headers["ce-time"].endswith("Z")
    message = body["message"]
    assert base64.b64decode(message["data"]) == b'{"job_id": "job-1"}'
    assert message["attributes"] == {"job_id": "job-1"}
    assert message["messageId"] == message["message_id"] == message_id
    assert message["publishTime"] == message["publish_time"] == headers["ce-time"]
    assert body["subscription"] == subscription


def test_the_stacks_relay_delivers_uploads_to_the_real_submit_function(clean_stack):
    if "submit" not in clean_stack.functions:
        pytest.skip(clean_stack.skipped.get("submit", "submit not selected"))
    name = f"wiring-test/{uuid.uuid4().hex}.txt"  # outside INPUT_PREFIX: submit acknowledges and ignores it
    storage.Client().bucket(os.environ["INPUT_BUCKET"]).blob(name).upload_from_string(b"x")

    def delivered() -> list[dict[str, Any]]:
        return [d for d in clean_stack.relay_state()["recent"] if d.get("subject") == f"objects/{name}"]

    wait_until(lambda: any(d["outcome"] == "ack" for d in delivered()), 30, what="the relay to deliver to submit")
    assert delivered()[-1]["target"] == clean_stack.env["SUBMIT_URL"] and delivered()[-1]["function"] == "submit"
    stats = clean_stack.function_stats()["submit"]
    assert stats["invocations"] >= 1 and stats["longest_invocation_s"] > 0 and stats["timeouts"] == 0


def test_the_ticker_calls_the_poller_with_the_token(stack):
    if "ticker" not in stack.parts:
        pytest.skip(stack.skipped.get("ticker", "ticker not selected"))
    start = stack.ticker_state()["ticks"]
    wait_until(lambda: stack.ticker_state()["ticks"] >= start + 1, 30, what="a tick")
    state = stack.ticker_state()
    assert state["last_status"] == 200, state
    assert isinstance(state["last_summary"], dict)
    unauthorized = httpx.post(stack.env["POLLER_URL"], headers={"Authorization": "Bearer wrong"}, trust_env=False)
    assert unauthorized.status_code == 401


def test_reset_empties_the_store_and_the_buckets(stack):
    client = storage.Client()
    for key in ("INPUT_BUCKET", "OUTPUT_BUCKET"):
        client.bucket(os.environ[key]).blob("reset-test/x.txt").upload_from_string(b"x")
    db = firestore.Client()
    db.collection("reset_test").document("doc").set({"a": 1})

    stack.reset()

    assert [b.name for b in client.list_blobs(os.environ["INPUT_BUCKET"])] == []
    assert [b.name for b in client.list_blobs(os.environ["OUTPUT_BUCKET"])] == []
    assert not db.collection("reset_test").document("doc").get().exists
    assert all(group_alive(part.pid) for part in stack.parts.values()), "reset keeps the processes"


def test_the_gemini_emulator_answers_the_stacks_key_only(gemini_emulator):
    gemini_emulator.set_faults({})
    gemini_emulator.clear_faults()
    url = f"{gemini_emulator.base_url}/v1beta/batches"
    wrong_key = httpx.get(url, headers={"x-goog-api-key": "wrong"}, trust_env=False)
    right_key = httpx.get(url, headers={"x-goog-api-key": gemini_emulator.api_key}, trust_env=False)
    assert wrong_key.status_code in (400, 401, 403), wrong_key.text
    assert right_key.status_code == 200, right_key.text


# -- a stack of its own ------------------------------------------------------------------------------------


def test_stop_leaves_no_process_behind(tmp_path):
    local = LocalStack(ROOT, components=["firestore", "pubsub", "gcs"], state_dir=tmp_path)
    with local:
        groups = {name: part.pid for name, part in local.parts.items()}
        assert local.env_path.is_file() and local.state_path.is_file()
    # group_alive counts every live process of the group: a Java emulator outliving its launcher too
    assert not [name for name, pgid in groups.items() if group_alive(pgid)]
    assert not local.env_path.exists() and not local.state_path.exists()


def test_a_second_stack_on_the_same_state_dir_is_refused_and_harms_nothing(tmp_path):
    with LocalStack(ROOT, components=["pubsub"], state_dir=tmp_path) as first:
        second = LocalStack(ROOT, components=["pubsub"], state_dir=tmp_path)
        with pytest.raises(AlreadyRunning, match="already running"):
            second.start()
        second.stop()
        assert first.state_path.is_file() and first.env_path.is_file()
        assert group_alive(first.parts["pubsub"].pid)


def test_a_stack_whose_owner_was_killed_is_stopped_by_the_next_session(tmp_path):
    state_dir = tmp_path / "pytest-killed"
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from infra.local.stack import LocalStack\n"
        f"LocalStack(Path({str(ROOT)!r}), components=['pubsub', 'gcs'], state_dir=Path({str(state_dir)!r})).start()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    pids = [rec["pid"] for rec in json.loads((state_dir / "stack.json").read_text())["processes"].values()]
    assert pids and all(group_alive(pid) for pid in pids), "the parts outlive their killed owner"

    assert stop_orphaned(tmp_path) == {state_dir: ["pubsub", "gcs"]}
    assert not [pid for pid in pids if group_alive(pid)]


def test_cli_up_status_env_down_on_free_ports(tmp_path):
    state_dir = tmp_path / "state"

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "infra.local.stack", *args, "--state-dir", str(state_dir)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})

    up = cli("up", "--free-ports", "--without", "gemini", env={"FUNCTION_INSTANCES": '{"complete": 2}',
                                                                "FUNCTION_TIMEOUTS": '{"complete": 77}'})
    try:
        assert up.returncode == 0, up.stderr
        assert "Local stack up in" in up.stdout
        env = parse_env_file((state_dir / "env").read_text())
        assert not [key for key in ENV_KEYS if key not in env]
        urls = [v for k, v in env.items() if k.endswith("_URL") and not k.startswith(("GEMINI", "VERTEX"))]
        assert not [url for url in urls if not answers(url, timeout=5)]
        status = cli("status")
        assert status.returncode == 0, status.stdout
        assert re.search(r"\n  complete +2 instance\(s\), timeout 77s: \d+ invocations", status.stdout), status.stdout
        instance_pids = [r["pid"] for rs in json.loads((state_dir / "instances.json").read_text()).values() for r in rs]
        assert cli("env").stdout == (state_dir / "env").read_text()
        again = cli("up", "--free-ports")
        assert again.returncode == 1 and "already running" in again.stderr
        pids = [rec["pid"] for rec in json.loads((state_dir / "stack.json").read_text())["processes"].values()]
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert not [pid for pid in pids + instance_pids if group_alive(pid)], "a process of the stack outlived `down`"
    assert not (state_dir / "env").exists() and not (state_dir / "stack.json").exists()
    assert cli("status").returncode == 3


# -- the cloud's limits, on a stack of test-only functions -----------------------------------------------------

PROBES = "tests/integration/stack_functions"
PROBE_ROWS = [
    Function("landing", PROBES, "probe", "cloudevent", Storage(), 540),
    Function("sleepy", PROBES, "probe", "cloudevent", Topic("SLEEPY_TOPIC", "test-sleepy"), 540),
    Function("pair", PROBES, "probe", "cloudevent", Topic("PAIR_TOPIC", "test-pair"), 540, max_instances=2),
    Function("doomed", PROBES, "probe", "cloudevent", Topic("DOOMED_TOPIC", "test-doomed"), 540),
    Function("slow_http", PROBES, "probe_http", "http", Http(), 540),
]
TIMEOUT = 3  # seconds, of sleepy and slow_http: far above what their quick calls take, even on a loaded machine
MAX_ATTEMPTS = 3


class Probes:
    """The limits stack and the log its functions write."""

    def __init__(self, stack: LocalStack, log: Path):
        self.stack, self.log = stack, log

    def records(self, **match: Any) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in lines if all(r.get(k) == v for k, v in match.items())]

    def publish(self, topic_key: str, ask: dict[str, Any]) -> str:
        publisher = self.stack.publisher_client()
        try:
            return publisher.publish(self.stack.topic_path(topic_key), json.dumps(ask).encode()).result(timeout=30)
        finally:
            publisher.transport.close()

    def stats(self, function: str) -> dict[str, Any]:
        return self.stack.function_stats()[function]


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Iterator[Probes]:
    state_dir = tmp_path_factory.mktemp("limits")
    log = state_dir / "probe.jsonl"
    log.touch()
    overrides = {"PROBE_LOG": str(log), "RELAY_MAX_DELIVERY_ATTEMPTS": str(MAX_ATTEMPTS),
                 "RELAY_MIN_BACKOFF_SECONDS": "0.2", "RELAY_MAX_BACKOFF_SECONDS": "1",
                 "FUNCTION_TIMEOUTS": json.dumps({"sleepy": TIMEOUT, "slow_http": TIMEOUT}),
                 "FUNCTION_INSTANCES": json.dumps({"pair": 2})}
    stack = LocalStack(ROOT, components=["pubsub", "gcs", "relay", *(row.name for row in PROBE_ROWS)],
                       function_table=PROBE_ROWS, overrides=overrides, state_dir=state_dir).start()
    try:
        yield Probes(stack, log)
    finally:
        stack.stop()


def test_a_delivery_that_runs_past_its_timeout_is_killed_and_redelivered(probes):
    before = probes.stats("sleepy")
    first_pid = before["instances"][0]["pid"]
    message_id = probes.publish("SLEEPY_TOPIC", {"sleep_first": 120})

    wait_until(lambda: probes.records(id=message_id, stage="end"), 60, 0.1, "the redelivery to end")

    starts = probes.records(id=message_id, stage="start")
    assert len(starts) == 2 and len(probes.records(id=message_id, stage="end")) == 1
    assert starts[0]["group"] == first_pid and starts[1]["group"] != first_pid, "the killed instance was replaced"
    assert not group_alive(first_pid), "the timed-out instance's process group is gone"
    after = probes.stats("sleepy")
    assert after["timeouts"] - before["timeouts"] == 1
    assert after["invocations"] - before["invocations"] == 2
    assert TIMEOUT <= after["longest_invocation_s"] < TIMEOUT + 10
    assert after["instances"][0]["restarts"] == before["instances"][0]["restarts"] + 1
    deliveries = [d for d in probes.stack.relay_state()["recent"] if d["id"] == message_id]
    assert [(d["attempt"], d["outcome"]) for d in deliveries] == [(1, "nack"), (2, "ack")]
    assert f"timed out after {TIMEOUT}s" in deliveries[0]["error"] and deliveries[0]["status"] is None


def test_an_http_call_past_its_timeout_answers_504_and_the_next_gets_a_new_instance(probes):
    url = probes.stack.env["SLOW_HTTP_URL"]
    before = probes.stats("slow_http")
    old_pid = before["instances"][0]["pid"]

    started = time.monotonic()
    answer = httpx.get(f"{url}?sleep=120", timeout=60, trust_env=False)

    assert answer.status_code == 504 and f"timed out after {TIMEOUT}s" in answer.text
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 10
    quick = httpx.get(url, timeout=60, trust_env=False)  # waits for the restarted instance
    assert quick.status_code == 200 and quick.json()["group"] not in (old_pid, None)
    assert probes.stats("slow_http")["timeouts"] == before["timeouts"] + 1


def test_two_instances_take_one_delivery_each_at_a_time(probes):
    pids = {i["pid"] for i in probes.stats("pair")["instances"]}
    assert len(pids) == 2
    held = [probes.publish("PAIR_TOPIC", {"hold_until": 2}) for _ in range(2)]
    wait_until(lambda: all(probes.records(id=m, stage="end") for m in held), 60, 0.1, "both held deliveries")
    # Each waited until both had started: they ran at once, one on each instance.
    assert {probes.records(id=m, stage="start")[0]["group"] for m in held} == pids
    more = [probes.publish("PAIR_TOPIC", {}) for _ in range(6)]
    wait_until(lambda: all(probes.records(id=m, stage="end") for m in more), 60, 0.1, "six more deliveries")

    for pid in pids:  # an instance never ran two invocations at once
        spans = sorted((start["time"], probes.records(id=start["id"], stage="end")[0]["time"])
                       for start in probes.records(function="pair", stage="start", group=pid))
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))
    assert all(len(probes.records(id=m, stage="start")) == 1 for m in [*held, *more]), "each delivered once"


def test_a_delivery_that_keeps_failing_goes_to_its_dead_letter_topic(probes):
    stack = probes.stack
    before = probes.stats("doomed")
    message_id = probes.publish("DOOMED_TOPIC", {"fail": True})
    subscriber = stack.subscriber_client()
    received: list[Any] = []

    def pulled() -> bool:
        answer = subscriber.pull(subscription=stack.dead_letter_hold("doomed"), max_messages=10, timeout=5)
        if answer.received_messages:
            subscriber.acknowledge(subscription=stack.dead_letter_hold("doomed"),
                                   ack_ids=[m.ack_id for m in answer.received_messages])
        received.extend(m.message for m in answer.received_messages)
        return bool(received)

    try:
        wait_until(pulled, 60, 0.1, "the dead letter")
    finally:
        subscriber.close()

    [letter] = received
    assert json.loads(letter.data) == {"fail": True}
    assert dict(letter.attributes) == {
        "CloudPubSubDeadLetterSourceDeliveryCount": str(MAX_ATTEMPTS),
        "CloudPubSubDeadLetterSourceSubscription": stack.subscription("doomed").rsplit("/", 1)[1],
        "CloudPubSubDeadLetterSourceSubscriptionProject": stack.env["GOOGLE_CLOUD_PROJECT"],
        "CloudPubSubDeadLetterSourceTopicPublishTime": letter.attributes["CloudPubSubDeadLetterSourceTopicPublishTime"],
    }
    assert stack.env["DOOMED_DEAD_LETTER_TOPIC"] == "embedding-doomed-dlq"
    assert len(probes.records(id=message_id, stage="start")) == MAX_ATTEMPTS
    after = probes.stats("doomed")
    assert after["dead_lettered"] - before["dead_lettered"] == 1
    assert after["invocations"] - before["invocations"] == MAX_ATTEMPTS
    outcomes = [d["outcome"] for d in stack.relay_state()["recent"] if d["id"] == message_id]
    assert outcomes == ["nack"] * (MAX_ATTEMPTS - 1) + ["dead-lettered"]


def test_a_dropped_finalize_event_never_reaches_the_function(probes):
    stack = probes.stack
    client = stack.storage_client()
    bucket = client.bucket(stack.env["INPUT_BUCKET"])
    before = stack.relay_state()["dropped_on_request"]
    stack.drop_next("storage", 1)

    lost = bucket.blob(f"drop/{uuid.uuid4().hex}-lost.txt")
    lost.upload_from_string(b"x")
    wait_until(lambda: stack.relay_state()["dropped_on_request"] == before + 1, 30, 0.1, "the drop")
    kept = bucket.blob(f"drop/{uuid.uuid4().hex}-kept.txt")
    kept.upload_from_string(b"x")
    wait_until(lambda: probes.records(subject=f"objects/{kept.name}", stage="end"), 30, 0.1, "the next event")

    assert probes.records(subject=f"objects/{lost.name}") == [], "the lost event was never delivered"
    outcomes = {d.get("subject"): d["outcome"] for d in stack.relay_state()["recent"]}
    assert (outcomes[f"objects/{lost.name}"], outcomes[f"objects/{kept.name}"]) == ("dropped", "ack")
    [route] = [r for r in stack.relay_state()["routes"] if r["function"] == "landing"]
    assert route["drops_pending"] == 0 and route["trigger"] == "storage"
    with pytest.raises(StackError, match="no route 'nothing'"):
        stack.drop_next("nothing")


def test_instances_a_killed_relay_left_behind_are_stopped_with_the_stack(tmp_path):
    rows = [Function("lonely", PROBES, "probe", "cloudevent", Topic("LONELY_TOPIC", "test-lonely"), 540)]
    local = LocalStack(ROOT, components=["pubsub", "relay", "lonely"], function_table=rows, state_dir=tmp_path,
                       overrides={"PROBE_LOG": str(tmp_path / "probe.jsonl"), "FUNCTION_INSTANCES": '{"lonely": 1}'})
    with local:
        [instance] = local.function_stats()["lonely"]["instances"]
        os.kill(local.parts["relay"].pid, signal.SIGKILL)  # the relay's own group; its instances have theirs
        wait_until(lambda: not group_alive(local.parts["relay"].pid), 10, what="the relay to die")
        assert group_alive(instance["pid"]), "an instance outlives its killed relay"
    assert not group_alive(instance["pid"])
    assert not local.instances_path.exists() and not local.relay_config_path.exists()


def test_the_gemini_emulator_gets_its_quota_and_webhook_settings(tmp_path):
    quotas = '{"enqueued_tokens": {"models/gemini-embedding-001": 1000}, "concurrent_batches": 5}'
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    webhooks = json.dumps([{"uri": "${GEMINI_API_BASE_URL}/hook", "signing_secret": secret,
                            "subscribed_events": ["batch.succeeded"]}])
    with LocalStack(ROOT, components=["gemini"], state_dir=tmp_path,
                    overrides={"GEMINI_EMULATOR_QUOTAS": quotas, "GEMINI_EMULATOR_WEBHOOKS": webhooks}) as local:
        if "gemini" not in local.parts:
            pytest.skip(local.skipped["gemini"])
        raw = Path(f"/proc/{local.parts['gemini'].pid}/environ").read_bytes()
        environ = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    assert environ["GEMINI_EMULATOR_QUOTAS"] == quotas
    assert json.loads(environ["GEMINI_EMULATOR_WEBHOOKS"]) == [{
        "uri": f"{local.env['GEMINI_API_BASE_URL']}/hook", "signing_secret": secret, "subscribed_events": ["batch.succeeded"]}]
