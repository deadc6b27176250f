"""`embedpipe dead-letters list|replay`: the logic on a fake of our own bus, then the command end to end on
Google's Pub/Sub emulator with Google's client.

The emulator does not dead-letter by itself, so the emulator test publishes to the hold topic what Pub/Sub
forwards: the message with its attributes plus CloudPubSubDeadLetterSource* ones naming its subscription.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from embedpipe import cli
from embedpipe.dead_letters import DeadLetter, peek, replay

HOLD = "projects/p/subscriptions/emb-stage-dlq-hold"
SOURCE_SUB = "eventarc-europe-west1-emb-stage-123-sub-456"
SOURCE_TOPIC = "projects/p/topics/emb-stage"


def _dead_letter(n: int, source: str | None = SOURCE_SUB, **attributes: str) -> DeadLetter:
    dl = {"CloudPubSubDeadLetterSourceSubscription": source, "CloudPubSubDeadLetterSourceSubscriptionProject": "p",
          "CloudPubSubDeadLetterSourceDeliveryCount": "100"} if source else {}
    return DeadLetter(hold=HOLD, ack_id=f"ack-{n}", message_id=f"m-{n}", data=f'{{"job_id": "job-{n}"}}'.encode(),
                      attributes={**dl, **attributes})


class FakeBus:
    """Our own in-memory stand-in for PubSubDeadLetters: held messages are leased when pulled."""

    def __init__(self, messages: list[DeadLetter], topics: dict[str, str | None] | None = None,
                 failing_topics: set[str] = frozenset()):
        self.held = {m.ack_id: m for m in messages}
        self.leased: set[str] = set()
        self.topics = topics if topics is not None else {f"projects/p/subscriptions/{SOURCE_SUB}": SOURCE_TOPIC}
        self.failing_topics = failing_topics
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.acked: list[str] = []
        self.topic_lookups = 0

    def holds(self):
        return [HOLD]

    def pull(self, subscription, max_messages):
        free = [m for a, m in self.held.items() if a not in self.leased][:max_messages]
        self.leased |= {m.ack_id for m in free}
        return free

    def release(self, subscription, ack_ids):
        self.leased -= set(ack_ids)

    def ack(self, subscription, ack_ids):
        for ack_id in ack_ids:
            assert ack_id in self.leased, "acknowledged a message it did not hold"
            self.held.pop(ack_id)
            self.leased.discard(ack_id)
            self.acked.append(ack_id)

    def topic_of(self, subscription):
        self.topic_lookups += 1
        return self.topics.get(subscription)

    def publish(self, topic, data, attributes):
        if topic in self.failing_topics:
            raise RuntimeError("publish refused")
        self.published.append((topic, data, attributes))
        return f"new-{len(self.published)}"


def test_peek_lists_and_consumes_nothing():
    bus = FakeBus([_dead_letter(n) for n in range(3)])
    assert [m.message_id for m in peek(bus, [HOLD])] == ["m-0", "m-1", "m-2"]
    assert not bus.leased and len(bus.held) == 3
    assert [m.message_id for m in peek(bus, [HOLD], limit=2)] == ["m-0", "m-1"]


def test_replay_publishes_to_the_source_topic_then_acknowledges():
    bus = FakeBus([_dead_letter(n, origin="storage") for n in range(3)])
    report = replay(bus, [HOLD])
    assert [(t, d) for t, d, _ in bus.published] == [(SOURCE_TOPIC, f'{{"job_id": "job-{n}"}}'.encode()) for n in range(3)]
    for n, (_, _, attributes) in enumerate(bus.published):
        assert attributes == {"origin": "storage", "replayed_from": f"m-{n}"}  # dead-letter attributes dropped
    assert bus.acked == ["ack-0", "ack-1", "ack-2"] and not bus.held
    assert [new for _, _, new in report.replayed] == ["new-1", "new-2", "new-3"] and not report.kept
    assert bus.topic_lookups == 1, "one lookup per source subscription"


def test_what_cannot_be_replayed_stays_held():
    unknown = _dead_letter(1, source=None)
    gone = _dead_letter(2, source="deleted-sub")
    failing = _dead_letter(3)
    bus = FakeBus([unknown, gone, failing], failing_topics={SOURCE_TOPIC})
    report = replay(bus, [HOLD])
    assert not bus.published and not bus.acked
    assert len(bus.held) == 3 and not bus.leased, "released, still held"
    reasons = [why for _, why in report.kept]
    assert "unknown or gone" in reasons[0] and "unknown or gone" in reasons[1]
    assert reasons[2] == f"publishing to {SOURCE_TOPIC} failed: RuntimeError: publish refused"


def test_dry_run_and_an_explicit_topic():
    bus = FakeBus([_dead_letter(1), _dead_letter(2, source=None)])
    report = replay(bus, [HOLD], to_topic="projects/p/topics/other", dry_run=True)
    assert [(m.message_id, t) for m, t, _ in report.replayed] == [("m-1", "projects/p/topics/other"),
                                                                ("m-2", "projects/p/topics/other")]
    assert not bus.published and len(bus.held) == 2 and not bus.leased


def test_replay_stops_at_the_limit():
    bus = FakeBus([_dead_letter(n) for n in range(5)])
    replay(bus, [HOLD], limit=2)
    assert len(bus.published) == 2 and len(bus.held) == 3


# -- end to end on the Pub/Sub emulator ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.fail("gcloud with the Pub/Sub emulator is needed (README: Prerequisites)")
    launcher = Path(os.path.realpath(gcloud)).parents[1] / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    assert launcher.is_file(), f"{launcher} is missing: install google-cloud-cli-pubsub-emulator"
    port = _free_port()
    process = subprocess.Popen([str(launcher), "--host=127.0.0.1", f"--port={port}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, "JAVA_OPTS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"})
    host = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://{host}/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "the Pub/Sub emulator exited"
            assert time.monotonic() < deadline, "the Pub/Sub emulator did not answer within 90 s"
            time.sleep(0.2)
        yield host
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_list_and_replay_through_the_command(emulator, tmp_path, monkeypatch, capsys):
    from google.cloud import pubsub_v1

    project = "dlq-test"
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    stage, hold_topic = publisher.topic_path(project, "emb-stage"), publisher.topic_path(project, "emb-stage-dlq")
    source, hold = subscriber.subscription_path(project, "emb-stage-sub"), subscriber.subscription_path(project, "emb-stage-dlq-hold")
    for topic in (stage, hold_topic):
        publisher.create_topic(name=topic)
    subscriber.create_subscription(name=source, topic=stage)
    subscriber.create_subscription(name=hold, topic=hold_topic, ack_deadline_seconds=60)
    for n in range(3):  # what Pub/Sub forwards after the last failed delivery
        publisher.publish(hold_topic, json.dumps({"job_id": f"job-{n}"}).encode(), origin="poller",
                          CloudPubSubDeadLetterSourceSubscription="emb-stage-sub",
                          CloudPubSubDeadLetterSourceSubscriptionProject=project,
                          CloudPubSubDeadLetterSourceDeliveryCount="100").result(timeout=30)
    env_file = tmp_path / "env"
    env_file.write_text(f"GOOGLE_CLOUD_PROJECT={project}\nPUBSUB_EMULATOR_HOST={emulator}\n")

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.run(["--env-file", str(env_file), "dead-letters", *args])
        out, err = capsys.readouterr()
        return code, out, err

    for _ in range(2):  # listing consumes nothing: twice the same three, found by the -dlq-hold suffix
        code, out, err = run("list", "--json")
        assert code == 0, err
        listed = json.loads(out)
        assert sorted(m["data"] for m in listed) == [json.dumps({"job_id": f"job-{n}"}) for n in range(3)]
        assert {m["source"] for m in listed} == {source} and {m["deliveries"] for m in listed} == {"100"}
        assert all(m["attributes"] == {"origin": "poller"} for m in listed)

    code, out, err = run("replay")
    assert code == 0, err
    assert out.count("to emb-stage as ") == 3 and "3 replayed, 0 kept." in err

    arrived = {}
    deadline = time.monotonic() + 60
    while len(arrived) < 3:
        assert time.monotonic() < deadline, f"only {len(arrived)} replayed messages arrived"
        answer = subscriber.pull(request={"subscription": source, "max_messages": 10}, timeout=10)
        for received in answer.received_messages:
            arrived[received.message.data.decode()] = dict(received.message.attributes)
        if answer.received_messages:
            subscriber.acknowledge(request={"subscription": source,
                                            "ack_ids": [r.ack_id for r in answer.received_messages]})
    assert sorted(arrived) == [json.dumps({"job_id": f"job-{n}"}) for n in range(3)]
    assert all(a["origin"] == "poller" and a["replayed_from"] and not any(k.startswith("CloudPubSub") for k in a)
               for a in arrived.values())

    code, out, err = run("list", "--json")
    assert code == 0 and json.loads(out) == [], "replayed messages are acknowledged on the hold subscription"
    publisher.stop()
    subscriber.close()
