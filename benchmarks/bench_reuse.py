"""Reuse by content: a corpus embedded once, then a new generation of every file with 5% of its passages
edited, 2% added and 1% removed, through the whole local stack (the embeddings cache in the Firestore
emulator, the Gemini emulator, functions-framework functions).

    python -m benchmarks.bench_reuse                  # 20,000 passages
    python -m benchmarks.bench_reuse --passages 4000  # a smaller corpus
    python -m benchmarks.bench_reuse --quick          # 2,000 passages

The corpus (fixed by a seed): half Markdown documents (several files of many paragraphs of prose-like text,
`bench_passages.Prose`, with headings), half JSONL records (a few files of 1-4 sentences each). Passages
are counted as the pipeline cuts them (`read_records` with the default options: 512 tokens, 64 overlap).
Run 2 uploads a new generation of every file: in JSONL, 5% of the records get three words replaced, 2% are
new records, 1% are dropped; in a document, 5% of run 1's passages get three words replaced at their
middle, after 2% a passage's worth of new paragraphs is inserted, and 1% lose the paragraphs lying inside
them. What the pipeline must send again is known here (the content keys of run 2's passages that run 1
did not have, `shared.domain.reuse.content_key`), and so are the passages that only moved because an edit
came near them (their text changed but holds no edit: the edits' neighbours).

Reported, every figure from the run: tokens sent in run 2 against run 1 (the jobs' estimates in
Firestore; the emulator's count of texts embedded as a check), whether the vectors of unchanged passages
are byte-identical (each embeddings JSONL line's `"embedding":[...]` bytes, compared through a BLAKE2b
digest; a document's passages are matched by text, their ids being ordinal), the passages of a document
whose boundaries moved after one paragraph was edited (splitter only, `bench_passages.compare`), the wall
time of each run (first upload to last completion event), and the cache's cost against the embedding
cost it saved, per million passages (cache reads and writes counted by the jobs, `CachePrices`, the
model's batch price).

It runs on a stack of its own with the emulator's hash encoder (vectors drawn from a hash of the text:
the time goes to the pipeline, not to a model) and Tier 3 quotas (10M enqueued tokens, so run 1 is not
paced by Tier 1's 500k); `python -m benchmarks reuse` runs it as part of the whole report.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import itertools
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_passages import _FUNCTION_WORDS, Prose, changed_region, compare  # noqa: E402
from benchmarks.common import BenchRun, EventWatcher, Section, Target, md_table, upload_file  # noqa: E402

__all__ = ["NAME", "TITLE", "run"]

NAME = "reuse"
TITLE = "9. Reuse by content: a new generation with 5% of passages edited, 2% added, 1% removed"
FULL, QUICK = 20_000, 2_000
EDITED, ADDED, REMOVED = 0.05, 0.02, 0.01
DOC_FILES, JSONL_FILES = 8, 4
SEED = 15
#: The stack started by `main`: the hash encoder, and Tier 3's enqueued tokens for the emulator and the ledger.
TIER3_TOKENS = 10_000_000
STACK_OVERRIDES = {
    "GEMINI_EMULATOR_ENCODER": "hash",
    "GEMINI_EMULATOR_QUOTAS": json.dumps({"enqueued_tokens": TIER3_TOKENS, "concurrent_batches": 100,
                                          "file_storage_bytes": 20 * 1024 ** 3, "file_bytes": 2 * 1024 ** 3}),
    "ENQUEUED_TOKENS_LIMIT": str(TIER3_TOKENS),
}
EVENT_TIMEOUT = 3600.0
STABILITY_TRIALS = 25  # single-paragraph edits per document, splitter only
STABILITY_CHARS = 300_000  # of each document (about 150 passages): the splitter's cost grows with the length


# -- the corpus -----------------------------------------------------------------------------------------


class FastProse(Prose):
    """bench_passages.Prose, the same words from the same seed, with the Zipf weights accumulated once
    (`random.choices` would accumulate 3,000 weights for every word)."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self._cumulative = list(itertools.accumulate(self._weights))

    def word(self) -> str:
        if self._rng.random() < 0.45:
            return self._rng.choice(_FUNCTION_WORDS)
        return self._rng.choices(self._vocabulary, cum_weights=self._cumulative)[0]


@dataclass
class Passage:
    id: str
    text: str
    key: str  # content_key, as staging computes it
    tokens: int
    start: int = -1  # offsets in the document (documents only)
    end: int = -1


@dataclass
class SourceFile:
    name: str  # the object name (INPUT_PREFIX included: document passage ids start with it)
    content_type: str
    first: bytes
    second: bytes = b""
    edits: dict[str, int] = field(default_factory=dict)
    edit_spans: list[tuple[int, int, str]] = field(default_factory=list)  # documents: run 2 offsets of each edit, kind

    @property
    def document(self) -> bool:
        return self.name.endswith(".md")


def read_passages(name: str, data: bytes, content_type: str) -> list[Passage]:
    """The records staging makes of `data` (same reader, default options), with their content keys."""
    from shared.config import Settings
    from shared.domain.reuse import content_key
    from shared.ingest import estimate_tokens, read_records

    options = Settings().default_options()
    out = []
    for item in read_records(io.BytesIO(data), name=name, content_type=content_type, options=options):
        if not hasattr(item, "text"):
            raise RuntimeError(f"{name}: the generated input has a problem: {item}")
        meta = item.metadata or {}
        out.append(Passage(item.id, item.text, content_key(options.provider, options.model, options.task_type,
                                                           options.output_dimensionality, item.title, item.text),
                           estimate_tokens(item.text), meta.get("char_start", -1), meta.get("char_end", -1)))
    return out


def _replace_words(text: str, at: int, prose: FastProse, count: int = 3) -> tuple[int, int, str]:
    """(start, end, new words): `count` words of `text` from the word at `at`, replaced by fresh ones."""
    start = text.rfind(" ", 0, at) + 1
    end = start
    for _ in range(count):
        following = text.find(" ", end + 1)
        if following < 0 or "\n" in text[end:following]:
            break
        end = following
    old = text[start:end]
    new = " ".join(prose.word() for _ in range(count))
    while new == old:
        new = " ".join(prose.word() for _ in range(count))
    return start, end, new


def _markdown(prose: FastProse, paragraphs: list[str]) -> list[str]:
    """Prose's numbered headings as Markdown headings."""
    return [f"## {p}" if p[:1].isdigit() and ". " in p[:6] and len(p) < 80 else p for p in paragraphs]


def _document(prose: FastProse, title: str, chars: int) -> str:
    paragraphs = [f"# {title}"]
    total = 0
    while total < chars:
        paragraphs += _markdown(prose, [prose.paragraph(5)])
        total += len(paragraphs[-1]) + 2
    return "\n\n".join(paragraphs) + "\n"


def _chars_per_passage() -> float:
    sample = _document(FastProse(SEED + 999), "Calibration", 300_000)
    return len(sample) / len(read_passages("calibration.md", sample.encode(), "text/markdown"))


def _edit_document(source: SourceFile, prose: FastProse, rng: random.Random) -> None:
    """Run 2 of a document: spans of run 1's text replaced, chosen from run 1's passages."""
    doc = source.first.decode()
    passages = read_passages(source.name, source.first, source.content_type)
    inner = list(range(1, len(passages) - 1))
    counts = {kind: max(1, round(share * len(passages))) for kind, share in
              (("edited", EDITED), ("added", ADDED), ("removed", REMOVED))}
    chosen = rng.sample(inner, sum(counts.values()))
    spans: list[tuple[int, int, str]] = []
    picks = iter(chosen)
    for kind, count in counts.items():
        for _ in range(count):
            p = passages[next(picks)]
            middle = (p.start + p.end) // 2
            if kind == "edited":
                spans.append(_replace_words(doc, middle, prose))
            elif kind == "added":
                at = doc.find("\n\n", middle, p.end)
                at = at if at >= 0 else doc.rfind("\n\n", p.start, middle)
                if at < 0:
                    continue
                new: list[str] = []
                while sum(len(x) + 2 for x in new) < p.end - p.start:
                    new.append(prose.paragraph(5))
                spans.append((at, at, "\n\n" + "\n\n".join(new)))
            else:
                breaks = [m.start() for m in re.finditer("\n\n", doc[p.start:p.end])]
                breaks = [p.start + b for b in breaks]
                if len(breaks) >= 2:
                    spans.append((breaks[0], breaks[-1], ""))
                else:  # one long paragraph: the one holding the middle goes
                    before = doc.rfind("\n\n", 0, middle)
                    after = doc.find("\n\n", middle)
                    spans.append((before, after if after >= 0 else len(doc), ""))
    source.second, source.edit_spans, source.edits = _apply(doc, spans, counts)


def _apply(doc: str, spans: list[tuple[int, int, str]], counts: dict[str, int]) -> tuple[bytes, list, dict]:
    """`doc` with the spans replaced (overlapping ones dropped), the replaced spans in the new text's
    offsets, and how many of each kind were applied."""
    out, placed, done, last, shift = [], [], dict.fromkeys(counts, 0), 0, 0
    for start, end, text in sorted(spans):
        if start < last:
            continue
        kind = "added" if start == end else "removed" if not text else "edited"
        out += [doc[last:start], text]
        placed.append((start + shift, start + shift + len(text), kind))
        shift += len(text) - (end - start)
        last = end
        done[kind] += 1
    out.append(doc[last:])
    return "".join(out).encode(), placed, done


def _jsonl_texts(prose: FastProse, count: int) -> list[str]:
    return [" ".join(prose.sentence() for _ in range(prose._rng.randint(1, 4))) for _ in range(count)]


def _edit_jsonl(source: SourceFile, prose: FastProse, rng: random.Random, next_id: Iterator[int]) -> None:
    import orjson

    rows = [orjson.loads(line) for line in source.first.splitlines()]
    n = len(rows)
    counts = {"edited": round(EDITED * n), "added": round(ADDED * n), "removed": round(REMOVED * n)}
    picked = rng.sample(range(n), counts["edited"] + counts["removed"])
    for i in picked[:counts["edited"]]:
        text = rows[i]["text"]
        start, end, new = _replace_words(text, len(text) // 2, prose)
        rows[i] = {**rows[i], "text": text[:start] + new + text[end:]}
    gone = set(picked[counts["edited"]:])
    kept = [row for i, row in enumerate(rows) if i not in gone]
    stem = source.name.rsplit("/", 1)[-1].split(".")[0]
    for text in _jsonl_texts(prose, counts["added"]):
        kept.insert(rng.randrange(len(kept) + 1), {"id": f"{stem}-{next(next_id)}", "text": text})
    source.second = b"".join(orjson.dumps(row) + b"\n" for row in kept)
    source.edits = counts


def build_corpus(n: int, seed: int = SEED, prefix: str = "incoming/") -> list[SourceFile]:
    """About n/2 document passages in DOC_FILES .md files and n/2 records in JSONL_FILES files, both
    generations."""
    import orjson

    prose, rng = FastProse(seed), random.Random(seed)
    doc_files = max(2, min(DOC_FILES, n // 2 // 150))
    per_doc = (n // 2) / doc_files
    chars = _chars_per_passage()
    files = [SourceFile(f"{prefix}bench-reuse/doc-{d}.md", "text/markdown",
                        _document(prose, f"Handbook volume {d}", int(per_doc * chars)).encode())
             for d in range(doc_files)]
    records = n - n // 2
    jsonl_files = max(1, min(JSONL_FILES, records // 250))
    texts, seen = [], set()
    while len(texts) < records:
        texts += [t for t in _jsonl_texts(prose, records - len(texts)) if t not in seen and not seen.add(t)]
    for f in range(jsonl_files):
        part = texts[f * records // jsonl_files:(f + 1) * records // jsonl_files]
        data = b"".join(orjson.dumps({"id": f"kb{f}-{i}", "text": t}) + b"\n" for i, t in enumerate(part))
        files.append(SourceFile(f"{prefix}bench-reuse/kb{f}.jsonl", "application/jsonl", data))
    next_id = iter(range(10 ** 6, 10 ** 7))
    for source in files:
        if source.document:
            _edit_document(source, prose, rng)
        else:
            _edit_jsonl(source, prose, rng, next_id)
    return files


# -- splitter stability ---------------------------------------------------------------------------------


def splitter_stability(files: list[SourceFile], trials: int, seed: int = SEED) -> dict[str, float]:
    """One paragraph edited (three words replaced at its middle) per trial: how many of the document's
    passages changed, how many of them hold the edit, and how many only moved (wholly before or after it)."""
    from shared.config import Settings
    from shared.ingest.splitter import split_passages

    options = Settings().default_options()

    def split(document: str) -> list[tuple[str, int, int]]:
        return [(p.text, p.start, p.end) for p in split_passages(
            [document], max_tokens=options.chunk_size, overlap=options.chunk_overlap, markdown=True)]

    rng, prose = random.Random(seed), FastProse(seed + 1)
    shares, changed, moved, totals = [], [], [], []
    for source in (f for f in files if f.document):
        doc = source.first.decode()[:STABILITY_CHARS]
        doc = doc[:doc.rfind("\n\n")]
        base = split(doc)
        starts = [m.end() for m in re.finditer("\n\n", doc)]
        for _ in range(trials):
            start = rng.choice(starts[1:-1])
            end = doc.find("\n\n", start)
            a, b, new = _replace_words(doc, (start + end) // 2, prose)
            edited = doc[:a] + new + doc[b:]
            count, before, after = compare(base, split(edited), changed_region(doc, edited))
            shares.append(count / len(base))
            changed.append(count)
            moved.append(before + after)
            totals.append(len(base))
    return {"trials": len(shares), "passages": statistics.fmean(totals), "share": statistics.fmean(shares),
            "changed": statistics.fmean(changed), "moved": statistics.fmean(moved), "max_changed": max(changed),
            "no_move": sum(1 for m in moved if m == 0) / len(moved)}


# -- one generation through the stack -----------------------------------------------------------------------


def _emulator_stats(bench: BenchRun) -> dict[str, Any]:
    return bench.emulator.stats()


def _generation(bench: BenchRun, files: list[SourceFile], which: str) -> dict[str, Any]:
    """Upload every file's `which` generation at once; wait for every completion event."""
    from google.cloud import firestore

    from shared.domain.jobs import job_id_for

    stack, env = bench.stack, bench.stack.env
    paths = {}
    for source in files:
        path = bench.workdir / source.name.replace("/", "_")
        path.write_bytes(getattr(source, which))
        paths[source.name] = path
    encoded_before = _emulator_stats(bench)["encodedTexts"]
    load = os.getloadavg()[0]
    with EventWatcher(stack) as events:
        t0 = time.time()

        def upload(source: SourceFile) -> str:
            blob = upload_file(stack, paths[source.name], source.name, source.content_type)
            return job_id_for(blob.bucket.name, blob.name, str(blob.generation))

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            job_ids = dict(zip([s.name for s in files], pool.map(upload, files), strict=True))
        uploaded = time.time()
        found = events.wait_for_all(job_ids.values(), EVENT_TIMEOUT)
    for path in paths.values():
        path.unlink()
    jobs = firestore.Client().collection(env["JOBS_COLLECTION"])
    out: dict[str, Any] = {"files": {}, "seconds": max(t for _, t in found.values()) - t0,
                           "upload_seconds": uploaded - t0, "load": (load, os.getloadavg()[0]),
                           "encoded": _emulator_stats(bench)["encodedTexts"] - encoded_before}
    for name, job_id in job_ids.items():
        event, _ = found[job_id]
        if event["status"] != "SUCCEEDED":
            raise RuntimeError(f"{name} ({which}): job {job_id} ended {event['status']}: {event.get('error')}")
        doc = jobs.document(job_id).get().to_dict()
        out["files"][name] = {"event": event, "job_id": job_id, "estimate": doc["estimate"],
                              "sent_tokens": doc["staging"]["tokens"], "vectors": _vectors(stack, event)}
    return out


def _vectors(stack: Any, event: dict[str, Any]) -> dict[str, bytes]:
    """id -> BLAKE2b digest of the exact bytes of its `"embedding":[...]` in the embeddings JSONL."""
    import orjson

    if event["output"].get("files_truncated"):
        raise RuntimeError("the event lists only part of the output files: raise EVENT_MAX_FILES or read the manifest")
    client = stack.storage_client()
    out: dict[str, bytes] = {}
    for uri in event["output"]["embeddings"]:
        bucket, name = uri.removeprefix("gs://").split("/", 1)
        for line in client.bucket(bucket).blob(name).download_as_bytes().splitlines():
            start = line.index(b'"embedding":[')
            end = line.index(b"]", start)
            out[orjson.loads(line)["id"]] = blake2b(line[start:end + 1], digest_size=16).digest()
    return out


# -- what was expected, what happened -----------------------------------------------------------------------


def _truth(files: list[SourceFile]) -> dict[str, dict[str, Any]]:
    """Per file: both generations' passages, and what run 2 must send (content keys run 1 did not have)."""
    out = {}
    for source in files:
        first = read_passages(source.name, source.first, source.content_type)
        second = read_passages(source.name, source.second, source.content_type)
        old_keys = {p.key for p in first}
        new = [p for p in second if p.key not in old_keys]
        holding = [p for p in new if any(p.start <= b and a <= p.end for a, b, _ in source.edit_spans)] \
            if source.document else new
        by_kind = {kind: sum(1 for p in new if any(p.start <= b and a <= p.end for a, b, k in source.edit_spans
                                                   if k == kind)) for kind in ("edited", "added", "removed")}
        out[source.name] = {"first": first, "second": second, "new": new, "holding": holding, "by_kind": by_kind}
    return out


def _identical(files: list[SourceFile], truth: dict, one: dict, two: dict) -> tuple[int, int, list[str]]:
    """(compared, identical, first mismatches) over run 2's passages whose text run 1 had."""
    compared = identical = 0
    bad: list[str] = []
    for source in files:
        t = truth[source.name]
        first_ids = {p.key: p.id for p in t["first"]}
        v1, v2 = one["files"][source.name]["vectors"], two["files"][source.name]["vectors"]
        for p in t["second"]:
            old_id = first_ids.get(p.key)
            if old_id is None:
                continue
            compared += 1
            if v1.get(old_id) is not None and v1.get(old_id) == v2.get(p.id):
                identical += 1
            elif len(bad) < 5:
                bad.append(f"{source.name}: {p.id} (run 1: {old_id})")
    return compared, identical, bad


def _id_changes(first: list[Passage], second: list[Passage]) -> dict[str, int]:
    """The changes by id that changes.jsonl should list (content hash compared per id)."""
    old = {p.id: p.key for p in first}
    new = {p.id: p.key for p in second}
    return {"added": sum(1 for i in new if i not in old), "removed": sum(1 for i in old if i not in new),
            "changed": sum(1 for i in new if i in old and old[i] != new[i]),
            "unchanged": sum(1 for i in new if i in old and old[i] == new[i])}


def _cache_entries(collection: str = "embedding_cache") -> int | None:
    from google.cloud import firestore

    with contextlib.suppress(Exception):  # an emulator without aggregation queries: the figure is left out
        return int(firestore.Client().collection(collection).count().get()[0][0].value)
    return None


# -- the report -------------------------------------------------------------------------------------------


def _sum(runs: dict[str, Any], names: list[str], *path: str) -> float:
    total = 0.0
    for name in names:
        value: Any = runs["files"][name]
        for key in path:
            value = value[key]
        total += value or 0
    return total


def run(bench: BenchRun, passages: int | None = None, command: str | None = None) -> Section:
    """On a stack of its own: the hash encoder (the time goes to the pipeline, not to a model), Tier 3 quotas."""
    with bench.own_stack(NAME, STACK_OVERRIDES) as stack:
        on_stack = BenchRun(quick=bench.quick, workdir=bench.workdir, _default=stack)
        return _measure(on_stack, passages, command)


def _measure(bench: BenchRun, passages: int | None, command: str | None) -> Section:
    from shared.adapters.gemini_provider import GEMINI_MODELS
    from shared.config import Settings
    from shared.domain.reuse import CachePrices

    n = passages or (QUICK if bench.quick else FULL)
    began = time.monotonic()
    files = build_corpus(n, prefix=bench.stack.env.get("INPUT_PREFIX", ""))
    truth = _truth(files)
    built = time.monotonic() - began
    stability = splitter_stability(files, max(3, STABILITY_TRIALS * n // FULL))
    stats = _emulator_stats(bench)
    bench.stack.reset()
    one = _generation(bench, files, "first")
    quota_one = _emulator_stats(bench)
    entries_after_one = _cache_entries()
    two = _generation(bench, files, "second")
    entries_after_two = _cache_entries()

    docs = [f.name for f in files if f.document]
    kbs = [f.name for f in files if not f.document]
    settings = Settings()
    dims = settings.default_output_dimensionality
    price = GEMINI_MODELS[settings.default_model].price_batch_per_million

    def tokens_of(names: list[str], key: str) -> int:
        return sum(p.tokens for name in names for p in truth[name][key])

    rows, sent = [], {}
    for label, names in (("documents (.md)", docs), ("records (.jsonl)", kbs), ("**all**", docs + kbs)):
        s1 = _sum(one, names, "sent_tokens")
        s2 = _sum(two, names, "sent_tokens")
        sent[label] = (s1, s2)
        p1 = sum(len(truth[x]["first"]) for x in names)
        p2 = sum(len(truth[x]["second"]) for x in names)
        embedded2 = int(_sum(two, names, "event", "reuse", "embedded"))
        holding = sum(len(truth[x]["holding"]) for x in names)
        neighbours = sum(len(truth[x]["new"]) for x in names) - holding
        rows.append([label, f"{p1:,}", f"{s1:,.0f}", f"{p2:,}", f"{embedded2:,} ({holding:,} + {neighbours:,})",
                     f"{s2:,.0f}", f"**{s2 / s1 * 100:.1f}%**" if s1 else "-",
                     f"{tokens_of(names, 'holding') / s1 * 100:.1f}%" if s1 else "-",
                     f"{tokens_of(names, 'new') / s1 * 100:.1f}%" if s1 else "-"])
    all_s1, all_s2 = sent["**all**"]
    expected_new = sum(len(truth[x]["new"]) for x in docs + kbs)
    embedded2 = int(_sum(two, docs + kbs, "event", "reuse", "embedded"))
    reused2 = int(_sum(two, docs + kbs, "event", "reuse", "reused"))

    compared, identical, bad = _identical(files, truth, one, two)

    # Changes (by id) as the events report them, against what the two generations' ids and hashes say.
    change_rows = []
    for label, names in (("documents (.md)", docs), ("records (.jsonl)", kbs)):
        got = {k: int(_sum(two, names, "event", "changes", k)) for k in ("added", "changed", "removed", "unchanged")}
        want = {k: 0 for k in got}
        for x in names:
            for k, v in _id_changes(truth[x]["first"], truth[x]["second"]).items():
                want[k] += v
        change_rows.append([label, *(f"{got[k]:,}" + ("" if got[k] == want[k] else f" (expected {want[k]:,})")
                                     for k in ("added", "changed", "removed", "unchanged"))])
    edits = {k: sum(f.edits.get(k, 0) for f in files if f.document) for k in ("edited", "added", "removed")}
    kind_rows = [[kind, f"{edits[kind]:,}", f"{sum(truth[x]['by_kind'][kind] for x in docs):,}",
                  f"{sum(truth[x]['by_kind'][kind] for x in docs) / max(1, edits[kind]):.2f}"]
                 for kind in ("edited", "added", "removed")]
    kind_rows.append(["neighbours (no edit inside)", "", f"{sum(len(truth[x]['new']) - len(truth[x]['holding']) for x in docs):,}", ""])
    kb_edits = {k: sum(f.edits.get(k, 0) for f in files if not f.document) for k in ("edited", "added", "removed")}

    # The cache's cost against what it saved.
    est = {r: {k: _sum(g, docs + kbs, "estimate", k) for k in ("cache_reads", "cache_writes", "reused_tokens")}
           for r, g in (("one", one), ("two", two))}
    p1 = sum(len(truth[x]["first"]) for x in docs + kbs)
    p2 = sum(len(truth[x]["second"]) for x in docs + kbs)
    per_m = 1e6 / p2
    reads2, writes2, reused_tok2 = est["two"]["cache_reads"], est["two"]["cache_writes"], est["two"]["reused_tokens"]
    cache2 = CachePrices.cost(int(reads2), int(writes2))
    saved2 = reused_tok2 * price / 1e6
    cache1 = CachePrices.cost(int(est["one"]["cache_reads"]), int(est["one"]["cache_writes"]))
    storage = CachePrices.storage_per_month(int(p1 + writes2), dims)
    full_cost2 = (all_s2 + reused_tok2) * price / 1e6
    cost_rows = [
        ["cache reads (lookups)", f"{est['one']['cache_reads']:,.0f}", f"{reads2:,.0f}",
         f"{reads2 * per_m:,.0f}", f"x ${CachePrices.READ_PER_100K}/100k = ${reads2 * per_m * CachePrices.READ_PER_100K / 1e5:.3f}"],
        ["cache writes (entries)", f"{est['one']['cache_writes']:,.0f}", f"{writes2:,.0f}",
         f"{writes2 * per_m:,.0f}", f"x ${CachePrices.WRITE_PER_100K}/100k = ${writes2 * per_m * CachePrices.WRITE_PER_100K / 1e5:.3f}"],
        ["**cache cost** (reads + writes)", f"${cache1:.4f}", f"${cache2:.4f}", "", f"**${cache2 * per_m:.3f}**"],
        ["tokens taken from the cache", f"{est['one']['reused_tokens']:,.0f}", f"{reused_tok2:,.0f}",
         f"{reused_tok2 * per_m:,.0f}", f"x ${price}/1M = ${saved2 * per_m:.3f}"],
        ["**embedding cost saved**", "$0", f"${saved2:.4f}", "", f"**${saved2 * per_m:.3f}**"],
        ["embedding cost without the cache", f"${all_s1 * price / 1e6:.4f}", f"${full_cost2:.4f}", "",
         f"${full_cost2 * per_m:.3f}"],
    ]
    encoder = stats.get("tokenCounter", "?")
    quotas = stats.get("quotas", {})
    loads = [f"{x:.2f}" for x in (*one["load"], *two["load"])]
    avg_doc = statistics.fmean(p.tokens for x in docs for p in truth[x]["first"])
    avg_kb = statistics.fmean(p.tokens for x in kbs for p in truth[x]["first"])
    cache_check = (f"{entries_after_one:,} cache entries after run 1, {entries_after_two:,} after run 2 "
                   "(Firestore count query)" if entries_after_one is not None else "cache entries not counted")
    byte_identical = compared == identical and compared > 0
    share = all_s2 / all_s1 * 100
    floor = tokens_of(docs + kbs, "new") / all_s1 * 100
    body = f"""
Corpus (seed {SEED}, built and split here in {built:.0f} s): {sum(len(truth[x]['first']) for x in docs):,} passages in
{len(docs)} Markdown documents ({avg_doc:.0f} estimated tokens each on average; default options: 512 tokens,
64 overlap) and {sum(len(truth[x]['first']) for x in kbs):,} records in {len(kbs)} JSONL files ({avg_kb:.0f} tokens
each). Run 2, a new generation of every file: documents {edits['edited']} passages edited (three words at
their middle), {edits['added']} passages' worth of paragraphs inserted, {edits['removed']} passages' inner
paragraphs removed; records {kb_edits['edited']} edited, {kb_edits['added']} added, {kb_edits['removed']}
removed. Stack: Gemini emulator's token counter `{encoder}` (`regex-words` = the hash encoder), quotas
{quotas.get('enqueued_tokens', '?'):,} enqueued tokens; the cache in the Firestore emulator.

**Tokens sent in run 2: {share:.1f}% of run 1** (estimated tokens of the records staged to send, the jobs'
`staging.tokens`). The floor is the passages whose text run 1 did not have: those holding an edit, plus
the neighbours whose text moved (a boundary or the 64-token overlap crossed the edit):

{md_table(["", "run 1 passages", "run 1 tokens sent", "run 2 passages", "run 2 embedded (holding an edit + neighbours)",
           "run 2 tokens sent", "share", "edits only", "edits + neighbours"], rows)}

Documents, by kind of edit (a passage is counted under each edit it holds; an insertion is a passage's
worth of paragraphs, so it lands in two or three passages, the ones around it included):

{md_table(["edit", "edits", "run 2 passages holding one", "per edit"], kind_rows)}

The pipeline sent {embedded2:,} passages and reused {reused2:,} (events' `reuse`); {expected_new:,} passages of run 2
have a content key run 1 did not have. The emulator embedded {one['encoded']:,} texts in run 1 and
{two['encoded']:,} in run 2; run 1 peaked at {quota_one.get('peakEnqueuedTokens', {}).get('total', 0):,} enqueued
tokens in the emulator, with {quota_one.get('quotaRejections', {}).get('total', 0)} quota refusals.

**Unchanged passages' vectors: {identical:,} of {compared:,} byte-identical** to run 1's
{"" if byte_identical else "(mismatches, first ones: " + "; ".join(bad) + ")"}(every run 2 passage whose
text run 1 had; documents matched by text since their ids are ordinal). The hash encoder draws the same
vector for the same text, so identity alone does not prove reuse: the counts above do (only
{two['encoded']:,} texts reached the emulator in run 2).

Changes by id (events' `changes`, summed; a document's ids are `name#index`, so every passage after an
insertion or a removal counts as changed by id even when its text is kept):

{md_table(["", "added", "changed", "removed", "unchanged"], change_rows)}

**Splitter alone: one paragraph edited moves {stability['moved']:.2f} other passages on average** (of
{stability['passages']:.0f} per document; {stability['changed']:.2f} passages changed in all, the ones holding
the edit included, {stability['share'] * 100:.2f}% of the document; at most {stability['max_changed']}; no other
passage moved in {stability['no_move'] * 100:.0f}% of {stability['trials']} trials: three words replaced at a
random paragraph's middle, `bench_passages.compare`).

**Wall time, first upload to last completion event: run 1 {one['seconds']:.1f} s, run 2 {two['seconds']:.1f} s
({two['seconds'] / one['seconds'] * 100:.0f}% of run 1)**; uploads took {one['upload_seconds']:.1f} s and
{two['upload_seconds']:.1f} s of that. Load average (1 min) before and after run 1, before and after run 2:
{", ".join(loads)} (2 cores).

The cache's cost against what it saved, run 2 scaled to a million passages (x {per_m:,.1f}; Firestore list
prices `CachePrices`, the model's batch price ${price}/1M tokens): cache cost = reads x ${CachePrices.READ_PER_100K}/100k
+ writes x ${CachePrices.WRITE_PER_100K}/100k; saved = tokens taken from the cache x ${price}/1M.

{md_table(["", "run 1", "run 2", "run 2 per 1M passages", "per 1M passages, USD"], cost_rows)}

Run 1 (a cold cache) pays its lookups and writes an entry per passage embedded: ${cache1 * 1e6 / p1:.3f} per
million passages, nothing saved. Storage: {p1 + writes2:,.0f} entries of {dims} float32 = ${storage:.4f} per
month (${storage * 1e6 / (p1 + writes2):.3f} per million entries a month, at ${CachePrices.STORAGE_PER_GIB_MONTH}/GiB
with ~100 bytes of overhead each). {cache_check}.
"""
    return Section(
        name=NAME, title=TITLE,
        command=command or bench.command(NAME), body=body,
        targets=[
            Target(f"run 2 sends only new text: ~8% of run 1's tokens plus the edits' neighbours ({floor:.1f}% at {n:,})",
                   all_s2 <= tokens_of(docs + kbs, "new"), f"{share:.1f}%"),
            Target("unchanged passages' vectors byte-identical", byte_identical, f"{identical:,} / {compared:,}"),
        ],
        plot={"share": share, "floor": floor, "seconds": (one["seconds"], two["seconds"]),
              "cache_usd_per_m": cache2 * per_m, "saved_usd_per_m": saved2 * per_m, "moved": stability["moved"]},
    )


# -- alone ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_reuse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=None, help=f"corpus size (default {FULL:,}; --quick {QUICK:,})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK:,} passages")
    parser.add_argument("--keep-logs", action="store_true", help="keep the stack's logs in .local/bench-PID-reuse")
    args = parser.parse_args(argv)
    if args.passages is not None and args.passages < 400:
        parser.error("--passages must be at least 400 (a few files of each kind)")
    flags = [f"--passages {args.passages}"] if args.passages else ["--quick"] if args.quick else []
    command = " ".join(["python -m benchmarks.bench_reuse", *flags])
    (ROOT / ".local").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-reuse-", dir=ROOT / ".local"))
    print(f"load average {os.getloadavg()}", flush=True)
    started = time.monotonic()
    try:
        section = run(BenchRun(quick=args.quick, workdir=workdir, keep_logs=args.keep_logs), args.passages, command)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(section.markdown())
    for target in section.targets:
        print(f"{'met' if target.met else 'MISSED'}: {target.what}: {target.measured}")
    print(f"(done in {time.monotonic() - started:.0f} s; load average {os.getloadavg()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
