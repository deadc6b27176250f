"""Every `embedpipe` command against the local stack, as an operator types them (typer's CliRunner; the
`events` listener as a real process). The CLI reads the session stack's env file (`--env-file`).

The module uploads the examples once and waits for them (`finished`); later tests add jobs of their own
under unique names and never reset the stack, so the finished jobs stay for every test that reads them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from google.cloud import firestore, storage
from typer.testing import CliRunner

from embedpipe import cli
from infra.local.processes import wait_until
from shared.domain.jobs import job_id_for
from tests.integration.pipeline_helpers import jsonl_records

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FAQ = ROOT / "examples" / "faq.jsonl"
HANDBOOK = ROOT / "examples" / "handbook.md"


@dataclass
class Upload:
    job_id: str
    bucket: str
    name: str
    generation: str


def embedpipe(env_file: Path, *args: str):
    """The CLI as a user runs it, on a 200-column terminal (tables are not cut to a worker's COLUMNS)."""
    return CliRunner().invoke(cli.app, ["--env-file", str(env_file), *[str(a) for a in args]], env={"COLUMNS": "200"})


def uploads_in(output: str) -> list[Upload]:
    """`job-...  gs://bucket/name#generation` lines."""
    found = []
    for line in output.splitlines():
        job_id, _, uri = line.partition("  gs://")
        if job_id.startswith("job-") and uri:
            location, _, generation = uri.rpartition("#")
            bucket, _, name = location.partition("/")
            found.append(Upload(job_id, bucket, name, generation))
    return found


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedpipe: error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def job_state(stack, job_id: str) -> str | None:
    document = firestore.Client(project=stack.env["GOOGLE_CLOUD_PROJECT"]).collection(
        stack.env["JOBS_COLLECTION"]).document(job_id).get()
    return (document.to_dict() or {}).get("state")


@pytest.fixture(scope="module")
def env_file(stack) -> Path:
    return stack.env_path


@pytest.fixture(scope="module")
def finished(stack, env_file):
    """The two examples uploaded with options, and `watch` run until both ended."""
    stack.reset()
    faq = embedpipe(env_file, "upload", FAQ, "--dimensions", "256", "--display-name", "FAQ index")
    handbook = embedpipe(env_file, "upload", HANDBOOK, "--chunk-size", "64", "--chunk-overlap", "8", "--name", "docs/")
    assert faq.exit_code == 0 and handbook.exit_code == 0, faq.output + handbook.output
    [faq_upload], [handbook_upload] = uploads_in(faq.stdout), uploads_in(handbook.stdout)
    watch = embedpipe(env_file, "watch", faq_upload.job_id, handbook_upload.job_id, "--interval", "0.5", "--timeout", "180")
    return {"faq": faq_upload, "handbook": handbook_upload, "upload_output": faq.stdout, "watch": watch}


def test_upload_prints_the_job_id_of_the_uploaded_generation(stack, finished):
    faq, handbook = finished["faq"], finished["handbook"]
    assert (faq.bucket, faq.name) == (stack.env["INPUT_BUCKET"], stack.env["INPUT_PREFIX"] + "faq.jsonl")
    assert handbook.name == stack.env["INPUT_PREFIX"] + "docs/handbook.md"
    for upload in (faq, handbook):
        blob = storage.Client().bucket(upload.bucket).get_blob(upload.name)
        assert str(blob.generation) == upload.generation
        assert upload.job_id == job_id_for(upload.bucket, upload.name, blob.generation)
    blob = storage.Client().bucket(faq.bucket).get_blob(faq.name)
    assert blob.metadata == {"output_dimensionality": "256", "display_name": "FAQ index"}
    assert blob.content_type == "application/jsonl"


def test_watch_exits_0_when_every_job_succeeded(finished):
    watch = finished["watch"]
    assert watch.exit_code == 0, watch.output
    for key in ("faq", "handbook"):
        assert f"{finished[key].job_id} SUCCEEDED" in watch.stdout


def test_jobs_lists_the_newest_jobs(env_file, finished):
    result = embedpipe(env_file, "jobs")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert finished["faq"].job_id in rows, result.stdout
    faq = rows[finished["faq"].job_id]
    assert faq[1:6] == ["SUCCEEDED", "incoming/faq.jsonl", "100.0%", "20/0/20", "100.0%"]
    assert rows[finished["handbook"].job_id][1] == "SUCCEEDED"
    result = embedpipe(env_file, "jobs", "--state", "failed", "--json")
    assert finished["faq"].job_id not in result.stdout


def test_status_shows_counts_cost_shards_and_outputs(env_file, finished):
    result = embedpipe(env_file, "status", finished["faq"].job_id)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in ("SUCCEEDED", "256 dims", "20 succeeded, 0 failed, 0 pending of 20", "Success rate   100.0%",
                     "batch vs", "interactive", "Shards (1, 0 open)", "WRITTEN", "manifest.json", "1 embeddings files",
                     "Capacity", "tokens in flight of 500,000 (gemini~gemini-embedding-001)"):
        assert expected in out, expected
    document = json.loads(embedpipe(env_file, "status", finished["faq"].job_id, "--json").stdout)
    assert document["counts"]["succeeded"] == 20 and "lease_owner" not in document
    assert document["shards"]["by_state"] == {"WRITTEN": 1} and document["capacity"]["tokens_held"] >= 0


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".npy"])
def test_fetch_writes_every_row(env_file, finished, tmp_path, suffix):
    out = tmp_path / f"faq{suffix}"
    result = embedpipe(env_file, "fetch", finished["faq"].job_id, "--out", out)
    assert result.exit_code == 0, result.output
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        ids, matrix = [r["id"] for r in rows], np.array([r["embedding"] for r in rows])
    elif suffix == ".parquet":
        table = pq.read_table(out)
        ids, matrix = table.column("id").to_pylist(), np.array(table.column("embedding").to_pylist())
        assert "category" in table.column_names and "title" in table.column_names
    else:
        matrix = np.load(out)
        ids = (tmp_path / "faq.npy.ids.txt").read_text().splitlines()
        assert matrix.dtype == np.float32 and "faq.npy.ids.txt" in result.stdout
    assert sorted(ids) == [f"faq-{i:02d}" for i in range(1, 21)]
    assert matrix.shape == (20, 256)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)


def test_search_finds_the_passage_whose_text_is_the_query(env_file, finished):
    records = [json.loads(line) for line in FAQ.read_text().splitlines()]
    target = records[6]
    result = embedpipe(env_file, "search", target["text"], "--job", finished["faq"].job_id, "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["id"] == target["id"] and hits[0]["text"] == target["text"] and hits[0]["title"] == target["title"]
    # Not exactly 1: the document was embedded with its title, and 256 dimensions are a projection.
    assert hits[0]["score"] > 0.95 and hits[1]["score"] < hits[0]["score"] - 0.1

    result = embedpipe(env_file, "search", "How many days of paid holiday do we get?", "--job",
                       finished["handbook"].job_id, "-k", "1")
    assert result.exit_code == 0, result.output
    assert "holidays" in result.stdout and "docs/handbook.md#" in result.stdout


def test_events_prints_the_completion_event_of_a_new_job(stack, env_file, tmp_path):
    listener = subprocess.Popen(
        [sys.executable, "-m", "embedpipe", "--env-file", str(env_file), "events", "--count", "1", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert listener.stderr.readline().startswith("Listening on"), "the subscription exists before the upload"
        path = tmp_path / "events.jsonl"
        path.write_bytes(jsonl_records(["an event is published when this job ends"]))
        [upload] = uploads_in(embedpipe(env_file, "upload", path, "--name", f"events/{uuid.uuid4().hex}.jsonl").stdout)
        stdout, stderr = listener.communicate(timeout=150)
    finally:
        listener.kill()
    assert listener.returncode == 0, stderr
    [line] = stdout.splitlines()
    assert " SUCCEEDED " in line and upload.job_id in line and "1/1 ok (100.0%)" in line and "manifest.json" in line
    subscriptions = [s.name for s in stack.subscriber_client().list_subscriptions(
        request={"project": f"projects/{stack.env['GOOGLE_CLOUD_PROJECT']}"})]
    assert not [s for s in subscriptions if "embedpipe-events" in s], "the temporary subscription is deleted"


def upload_one(env_file: Path, tmp_path: Path, texts: list[str]) -> Upload:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(jsonl_records(texts))
    result = embedpipe(env_file, "upload", path, "--name", f"cli/{uuid.uuid4().hex}.jsonl")
    assert result.exit_code == 0, result.output
    [upload] = uploads_in(result.stdout)
    return upload


def test_watch_exits_1_when_a_job_fails(env_file, gemini_emulator, tmp_path):
    gemini_emulator.set_faults({"expire_batches": True})
    upload = upload_one(env_file, tmp_path, ["this batch will expire"])
    result = embedpipe(env_file, "watch", upload.job_id, "--interval", "0.5", "--timeout", "120")
    assert result.exit_code == 1, result.output
    assert f"{upload.job_id} FAILED" in result.stdout and "EXPIRED" in result.stdout


def test_watch_exits_2_when_a_job_partially_succeeded(env_file, gemini_emulator, tmp_path):
    gemini_emulator.set_faults({"fail_texts_containing": "POISON"})
    upload = upload_one(env_file, tmp_path, ["a fine passage", "another fine one", "a POISON pill"])
    result = embedpipe(env_file, "watch", upload.job_id, "--interval", "0.5", "--timeout", "150")
    assert result.exit_code == 2, result.output
    assert f"{upload.job_id} PARTIALLY_SUCCEEDED: 2/3 succeeded" in result.stdout


def test_cancel_a_held_job(stack, env_file, gemini_emulator, tmp_path):
    gemini_emulator.set_faults({"pending_seconds": 600})
    upload = upload_one(env_file, tmp_path, ["held until cancelled"])
    wait_until(lambda: job_state(stack, upload.job_id) == "RUNNING", 60, 0.2, "the job to run")
    result = embedpipe(env_file, "watch", upload.job_id, "--timeout", "1")
    assert result.exit_code == 3 and "timed out" in one_line_error(result)
    result = embedpipe(env_file, "fetch", upload.job_id, "--out", tmp_path / "x.jsonl")
    assert result.exit_code == 4 and "no output yet" in one_line_error(result)

    result = embedpipe(env_file, "cancel", upload.job_id)
    assert result.exit_code == 0, result.output
    # At once, or (when a poller tick holds the job just then) by the next worker that holds it.
    assert result.stdout.startswith(f"{upload.job_id} CANCELLED") or "cancel requested" in result.stdout, result.stdout
    result = embedpipe(env_file, "watch", upload.job_id, "--interval", "0.5", "--timeout", "60")
    assert result.exit_code == 1 and f"{upload.job_id} CANCELLED" in result.stdout


def test_errors_are_one_line_with_exit_code_4(stack, env_file, tmp_path):
    for args in (["status", "job-unknown"], ["fetch", "job-unknown", "--out", tmp_path / "x.npy"],
                 ["search", "query", "--job", "job-unknown"], ["cancel", "job-unknown"],
                 ["watch", "job-unknown", "--appear-timeout", "0"]):
        result = embedpipe(env_file, *args)
        assert result.exit_code == 4, (args, result.output)
        assert "no job job-unknown" in one_line_error(result)

    settings = {k: v for k, v in stack.env.items() if k != "STATUS_URL"}
    missing = tmp_path / "missing.env"
    missing.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    result = embedpipe(missing, "cancel", "job-x")
    assert result.exit_code == 4
    assert "STATUS_URL is not set" in one_line_error(result) and "make up" in result.stderr

    down = tmp_path / "down.env"
    down.write_text("".join(f"{k}={v}\n" for k, v in {**settings, "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9"}.items()))
    result = embedpipe(down, "jobs")
    assert result.exit_code == 4 and "cannot reach the Firestore emulator" in one_line_error(result)

    result = embedpipe(env_file, "upload", FAQ, "--dimensions", "5")
    assert result.exit_code == 64 and "--dimensions 5" in one_line_error(result)
