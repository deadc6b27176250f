"""What the hostile tests share: reading the stack's state and awaiting events. Workers that die
mid-way are `tests.fakes.mortal`."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from urllib.parse import quote

import httpx
from google.cloud import firestore, storage

from infra.local.processes import wait_until
from infra.local.relay import storage_event
from shared.adapters.firestore_jobs import shards_collection
from shared.domain.jobs import SourceObject
from shared.domain.paths import JobPaths
from shared.gemini import GeminiClient
from tests.integration.pipeline_helpers import EventSubscription, read_gs

# -- the stack's state ---------------------------------------------------------------------------------


def jobs_collection(env: dict[str, str], collection: str | None = None):
    name = collection or env.get("JOBS_COLLECTION", "embedding_jobs")
    return firestore.Client(project=env["GOOGLE_CLOUD_PROJECT"]).collection(name)


def job_doc(env: dict[str, str], job_id: str, collection: str | None = None) -> dict:
    return jobs_collection(env, collection).document(job_id).get().to_dict() or {}


def shard_docs(env: dict[str, str], job_id: str, collection: str | None = None) -> list[dict]:
    """The job's shard documents (its subcollection `<jobs collection>_shards`), by index."""
    jobs = jobs_collection(env, collection)
    shards = jobs.document(job_id).collection(shards_collection(jobs.id))
    return [s.to_dict() for s in shards.order_by("index").stream()]


def ledger_holds(env: dict[str, str], job_ids: Iterable[str], collection: str = "embedding_ledgers") -> dict[str, list[str]]:
    """job id -> what the capacity ledgers still hold for it (`shard N: tokens, batch, file bytes, expiry`)."""
    wanted = set(job_ids)
    held: dict[str, list[str]] = {}
    for ledger in firestore.Client(project=env["GOOGLE_CLOUD_PROJECT"]).collection(collection).stream():
        for hold in (ledger.to_dict().get("holds") or {}).values():
            if hold["job_id"] in wanted:
                held.setdefault(hold["job_id"], []).append(
                    f"shard {hold['shard']}: {hold['tokens']} tokens, batch {hold['batch']}, {hold['file_bytes']} file "
                    f"bytes, expires {hold.get('expires_at')}")
    return held


def wait_for_state(env: dict[str, str], job_id: str, *states: str, timeout: float = 120) -> dict:
    wait_until(lambda: job_doc(env, job_id).get("state") in states, timeout, 0.2, f"job {job_id} in {states}")
    return job_doc(env, job_id)


def is_due(doc: dict) -> bool:
    """A job's or shard's next poll time has come."""
    when = doc.get("next_poll_at")
    return when is not None and when.timestamp() <= time.time()


def lease_lapsed(doc: dict) -> bool:
    """No live lease on a job or shard document."""
    until = doc.get("lease_until")
    return until is None or until.timestamp() < time.time()


def bucket_objects(env: dict[str, str], bucket_key: str) -> dict[str, int]:
    """name -> size of every object in the bucket the setting `bucket_key` names."""
    return {b.name: b.size for b in storage.Client().list_blobs(env[bucket_key])}


def paths_of(env: dict[str, str], job: dict) -> JobPaths:
    return JobPaths.for_source(SourceObject(**job["source"]), env["OUTPUT_BUCKET"], env["OUTPUT_PREFIX"])


def staging_objects(env: dict[str, str], job: dict) -> list[str]:
    staging = paths_of(env, job).staging
    prefix = staging.removeprefix(f"gs://{env['OUTPUT_BUCKET']}/")
    return [b.name for b in storage.Client().list_blobs(env["OUTPUT_BUCKET"], prefix=prefix)]


def staging_left(env: dict[str, str], job: dict, timeout: float = 30) -> list[str]:
    """The job's staging files once its ender had time to delete them (they go just after the event)."""
    deadline = time.monotonic() + timeout
    while (left := staging_objects(env, job)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def output_rows(event: dict) -> list[dict]:
    """Every row of every embeddings file the event names."""
    return [json.loads(line) for uri in (event.get("output") or {}).get("embeddings", [])
            for line in read_gs(uri).splitlines()]


def emulator_batches(env: dict[str, str]) -> list:
    with GeminiClient(env["GEMINI_API_KEY"], base_url=env["GEMINI_API_BASE_URL"]) as client:
        return list(client.iter_batches())


def batches_per_job(env: dict[str, str]) -> Counter:
    """How many provider batches carry each job's recovery tag (`... [job-id/sNaM]`)."""
    counts: Counter = Counter()
    for batch in emulator_batches(env):
        tag = batch.display_name.rsplit("[", 1)[-1]
        counts[tag.split("/", 1)[0]] += 1
    return counts


def deliveries_of(stack, object_name: str) -> list[dict]:
    """The relay's deliveries of the finalize events of `object_name` (its recent ones)."""
    return [d for d in stack.relay_state()["recent"] if d.get("subject") == f"objects/{object_name}"]


def await_events(events: EventSubscription, job_ids: Iterable[str], timeout: float) -> dict[str, list[dict]]:
    """Pull until every job has an event or the deadline passes; then a little longer, to catch repeats.
    Returns job id -> every completion event received for it (missing jobs: an empty list)."""
    wanted = set(job_ids)
    deadline = time.monotonic() + timeout

    def arrived() -> set[str]:
        return {attrs.get("job_id") for attrs, _ in events.received} & wanted

    while arrived() != wanted and time.monotonic() < deadline:
        events.pull(timeout=1.0)
    events.drain(3)
    found: dict[str, list[dict]] = {job_id: [] for job_id in wanted}
    for attrs, data in events.received:
        if attrs.get("job_id") in found:
            found[attrs["job_id"]].append(data)
    return found


#: What the CloudEvents HTTP binding leaves unencoded in a header value: printable ASCII but `"` and `%`.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def deliver_finalize(env: dict[str, str], blob: storage.Blob, event_id: str) -> int:
    """POST the finalize event of `blob` straight to SUBMIT_URL as Eventarc would, its `ce-*` header
    values percent-encoded as the CloudEvents HTTP binding requires beyond printable ASCII."""
    blob.reload()
    attributes = {"eventType": "OBJECT_FINALIZE", "bucketId": blob.bucket.name, "objectId": blob.name,
                  "payloadFormat": "JSON_API_V1"}
    headers, body = storage_event(event_id, attributes, json.dumps(blob._properties).encode()).http()
    headers = {key: quote(value, safe=_HEADER_SAFE) for key, value in headers.items()}
    return httpx.post(env["SUBMIT_URL"], headers=headers, content=body, timeout=120).status_code


def check_output_layout(env: dict[str, str], jobs: dict[str, dict], events: dict[str, list[dict]],
                        objects: Iterable[str]) -> None:
    """Every object belongs to exactly one job's output or staging prefix (a source's `latest.json`, beside
    its generations, to one of its jobs), under OUTPUT_PREFIX, with a name Cloud Storage allows and no segment a file system would resolve; the jobs' outputs (as their
    events name them) are under their own prefixes, and no two jobs share one."""
    bucket, base = env["OUTPUT_BUCKET"], env["OUTPUT_PREFIX"]
    prefixes = {}
    for key, job in jobs.items():
        paths = paths_of(env, job)
        prefixes[key] = (paths.prefix.removeprefix(f"gs://{bucket}/"), paths.staging.removeprefix(f"gs://{bucket}/"))
    for key, (prefix, staging) in prefixes.items():
        assert prefix.startswith(base) and not prefix.startswith(base + "_staging/"), (key, prefix)
        assert staging.startswith(base + "_staging/"), (key, staging)
        for event in events.get(key, []):
            output = event.get("output") or {}
            for uri in [*output.get("embeddings", []), *output.get("parquet", []), output.get("manifest"),
                        output.get("errors")]:
                assert uri is None or uri.startswith(f"gs://{bucket}/{prefix}"), (key, uri)
    assert len({p for p, _ in prefixes.values()}) == len(prefixes), "two jobs share an output prefix"
    for name in objects:
        owners = [key for key, (prefix, staging) in prefixes.items() if name.startswith((prefix, staging))]
        if name.endswith("/latest.json"):  # the source's pointer to its newest generation, beside them
            owners = [key for key, (prefix, _) in prefixes.items() if name == prefix.rsplit("/", 2)[0] + "/latest.json"]
            owners = owners[:1]
        assert name.startswith(base), f"{name!r} is outside OUTPUT_PREFIX {base!r}"
        assert len(owners) == 1, f"{name!r} belongs to {owners or 'no job'}"
        assert not {"", ".", ".."} & set(name.split("/")), f"{name!r} has a segment a file system would resolve"
        assert len(name.encode()) <= 1024, f"{name!r} is longer than Cloud Storage allows"
