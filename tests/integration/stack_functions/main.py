"""Test-only functions for tests/integration/test_local_stack.py: rows the test adds to the stack's table.

Each invocation appends JSON lines to $PROBE_LOG (one write each, so concurrent instances' lines stay
whole): `{"stage": "start" | "end", "function": $K_SERVICE, "id": event id, "subject", "group", "time"}`
(`group`: the process group, whose id is the instance's pid),
and does in between what the Pub/Sub message's JSON data asks:

    {"sleep_first": S}   sleep S seconds on the event's first delivery only (a retry returns at once)
    {"hold_until": N}    wait (up to 30 s) until N invocations of this function have started
    {"fail": true}       raise: functions-framework answers 500

`probe_http` (an HTTP function) sleeps `?sleep=S` seconds, then answers its process group.
"""

import base64
import json
import os
import time

import flask
import functions_framework
from cloudevents.http import CloudEvent

HOLD_SECONDS = 30.0


def _record(stage: str, event_id: str, subject: str = "") -> None:
    line = {"stage": stage, "function": os.environ["K_SERVICE"], "id": event_id, "subject": subject,
            "group": os.getpgrp(), "time": time.time()}
    with open(os.environ["PROBE_LOG"], "a") as out:
        out.write(json.dumps(line) + "\n")


def _starts(**match: str) -> int:
    with open(os.environ["PROBE_LOG"]) as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    return sum(1 for r in records if r["stage"] == "start" and all(r[k] == v for k, v in match.items()))


@functions_framework.cloud_event
def probe(event: CloudEvent) -> None:
    data = event.get_data() or {}
    message = data.get("message") if isinstance(data, dict) else None
    ask = json.loads(base64.b64decode(message["data"]) or b"{}") if message else {}
    event_id = event["id"]
    _record("start", event_id, event.get("subject") or "")
    if ask.get("sleep_first") and _starts(id=event_id) == 1:
        time.sleep(float(ask["sleep_first"]))
    if ask.get("hold_until"):
        deadline = time.monotonic() + HOLD_SECONDS
        while _starts(function=os.environ["K_SERVICE"]) < int(ask["hold_until"]) and time.monotonic() < deadline:
            time.sleep(0.05)
    if ask.get("fail"):
        raise RuntimeError("asked to fail")
    _record("end", event_id, event.get("subject") or "")


@functions_framework.http
def probe_http(request: flask.Request):
    time.sleep(float(request.args.get("sleep", "0")))
    return {"group": os.getpgrp()}
