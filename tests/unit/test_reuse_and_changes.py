"""Reuse by content and changes between generations, through the use cases over the fakes: only changed
passages are sent, unchanged ones come back byte-identical from the cache, `changes.jsonl` and the event say
what moved against the previous generation, and `latest.json` names the newest one."""

from __future__ import annotations

import orjson
import pytest

from shared.config import Settings
from shared.domain.jobs import JobState, ShardOrigin
from shared.services.submit import submit_object
from tests.fakes import make_context
from tests.unit.test_pipeline_use_cases import EVENTS, Driver, upload


def records(texts: dict[str, str]) -> bytes:
    return b"".join(orjson.dumps({"id": i, "text": t}) + b"\n" for i, t in texts.items())


def corpus(n: int) -> dict[str, str]:
    return {f"doc-{i}": f"passage {i} on the subject of item number {i * 7}" for i in range(n)}


def sent_items(ctx) -> int:
    return ctx.provider.items_uploaded


def vectors(ctx, event: dict) -> dict[str, bytes]:
    found = {}
    for uri in event["output"]["embeddings"]:
        for line in ctx.blobs.read(uri).splitlines():
            row = orjson.loads(line)
            found[row["id"]] = orjson.dumps(row["embedding"])
    return found


def run(ctx, driver, name: str, data: bytes, metadata: dict | None = None) -> dict:
    job_id = submit_object(ctx.for_invocation(), upload(ctx, name, data, metadata)).job_id
    driver.until_ended(job_id)
    return next(e for e in ctx.publisher.on(EVENTS) if e["job_id"] == job_id)


@pytest.fixture
def world():
    ctx = make_context(Settings(max_tokens_per_batch=200))
    ctx.provider.results_deletable = True
    return ctx, Driver(ctx)


def test_a_new_generation_sends_only_what_changed_and_reports_the_changes(world):
    ctx, driver = world
    first_texts = corpus(100)
    first = run(ctx, driver, "incoming/kb.jsonl", records(first_texts))
    assert first["status"] == "SUCCEEDED" and sent_items(ctx) == 100
    assert first["reuse"]["embedded"] == 100 and first["reuse"]["reused"] == 0
    assert first["changes"] == {"added": 100, "changed": 0, "removed": 0, "unchanged": 0,
                                "uri": first["changes"]["uri"]}
    before = vectors(ctx, first)

    second_texts = dict(first_texts)
    for i in range(5):
        second_texts[f"doc-{i * 10}"] += " (edited)"
    del second_texts["doc-99"]
    second_texts["new-1"], second_texts["new-2"] = "a brand new passage", "another new passage"
    ctx.provider.salt = "the model drifted: "  # a vector sent again would differ from the first run's
    ctx.provider.items_uploaded = 0
    second = run(ctx, driver, "incoming/kb.jsonl", records(second_texts))
    assert second["status"] == "SUCCEEDED" and second["counts"]["succeeded"] == 101
    assert sent_items(ctx) == 7, "only the 5 edited and 2 new passages are sent"
    assert second["counts"]["reused"] == 94 and second["reuse"]["embedded"] == 7
    assert second["reuse"]["reused_tokens"] > 0 and second["reuse"]["saved_usd"] > 0
    after = vectors(ctx, second)
    unchanged = [i for i in second_texts if i in first_texts and second_texts[i] == first_texts[i]]
    assert len(unchanged) == 94 and all(after[i] == before[i] for i in unchanged), "reused vectors are byte-identical"
    assert all(after[f"doc-{i * 10}"] != before[f"doc-{i * 10}"] for i in range(5))
    changes = second["changes"]
    assert (changes["added"], changes["changed"], changes["removed"], changes["unchanged"]) == (2, 5, 1, 94)
    assert changes["previous_manifest"] == first["output"]["manifest"]
    listed = [orjson.loads(line) for line in ctx.blobs.read(changes["uri"]).splitlines()]
    assert sorted((r["change"], r["id"]) for r in listed) == sorted(
        [("added", "new-1"), ("added", "new-2"), ("removed", "doc-99")]
        + [("changed", f"doc-{i * 10}") for i in range(5)])
    latest = orjson.loads(ctx.blobs.read(second["output"]["manifest"].rsplit("/", 2)[0] + "/latest.json"))
    assert latest["manifest"] == second["output"]["manifest"]
    manifest = orjson.loads(ctx.blobs.read(second["output"]["manifest"]))
    assert manifest["reuse"]["reused"] == 94 and manifest["changes"]["changed"] == 5
    shards = list(ctx.jobs.shards(second["job_id"]))
    assert {s.origin for s in shards} == {ShardOrigin.INPUT, ShardOrigin.CACHE}


def test_the_same_passage_in_another_file_is_embedded_once(world):
    ctx, driver = world
    run(ctx, driver, "incoming/a.jsonl", records(corpus(30)))
    other = run(ctx, driver, "incoming/b.jsonl", records({f"b-{k}": v for k, v in corpus(30).items()}))
    assert sent_items(ctx) == 30 and other["counts"]["reused"] == 30
    assert other["changes"]["added"] == 30, "another source: its first generation"


def test_a_file_can_turn_reuse_off_and_everything_is_sent(world):
    ctx, driver = world
    run(ctx, driver, "incoming/a.jsonl", records(corpus(20)))
    again = run(ctx, driver, "incoming/a.jsonl", records(corpus(20)), {"reuse": "false"})
    assert sent_items(ctx) == 40 and again["counts"]["reused"] == 0
    assert again["changes"]["unchanged"] == 20, "changes are reported all the same"


def test_an_older_generation_finishing_late_never_replaces_the_newer_in_latest(world):
    ctx, driver = world
    old = submit_object(ctx.for_invocation(), upload(ctx, "incoming/a.jsonl", records(corpus(10)))).job_id
    newer = run(ctx, driver, "incoming/a.jsonl", records(corpus(12)))
    driver.until_ended(old)
    older = ctx.jobs.get(old)
    assert older.state == JobState.SUCCEEDED
    latest_uri = newer["output"]["manifest"].rsplit("/", 2)[0] + "/latest.json"
    assert orjson.loads(ctx.blobs.read(latest_uri))["manifest"] == newer["output"]["manifest"]


def test_an_edited_paragraph_leaves_the_other_passages_of_a_document_reused(world):
    ctx, driver = world
    paragraphs = [f"Section {p}. " + " ".join(f"term{p}x{w}" for w in range(120)) for p in range(30)]
    first = run(ctx, driver, "incoming/book.md", "\n\n".join(paragraphs).encode(), None)
    total = first["counts"]["succeeded"]
    paragraphs[15] = paragraphs[15].replace("term15x60", "an edited phrase")
    ctx.provider.items_uploaded = 0
    second = run(ctx, driver, "incoming/book.md", "\n\n".join(paragraphs).encode(), None)
    changed = second["reuse"]["embedded"]
    assert total > 20 and 1 <= changed <= 3, f"{changed} of {total} passages sent again after one edit"
    assert second["changes"]["changed"] + second["changes"]["added"] <= 3


def test_status_shows_what_reuse_saved_and_what_changed(world):
    from embedpipe import render
    from shared.views import describe_job
    from tests.unit.test_cli_render import text

    ctx, driver = world
    run(ctx, driver, "incoming/a.jsonl", records(corpus(20)))
    second = run(ctx, driver, "incoming/a.jsonl", records({**corpus(20), "extra": "one more passage"}))
    job = ctx.jobs.get(second["job_id"])
    out = text(render.status_view(job, describe_job(ctx.jobs, ctx.ledgers, job.job_id, ctx.clock()), ctx.clock()))
    assert "1 embedded, 20 reused from the cache" in out
    assert "1 added, 0 changed, 0 removed, 20 unchanged" in out
