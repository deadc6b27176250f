"""JSONL: one {"id", "text", "title"?, "metadata"?} object per line."""

from __future__ import annotations

import json

import pytest

from shared.domain.options import JobOptions, OnBadRecord
from shared.domain.records import InputProblem, Record
from shared.ingest import ReadLimits, problems, read_records
from shared.ingest.ids import SeenIds
from tests.unit.ingest.helpers import (
    DownloadStream,
    assert_one_sentence,
    codes,
    gz,
    jsonl,
    only_problem,
    read,
    records,
)


def test_records_with_title_and_metadata():
    data = jsonl(
        '{"id": "a", "text": "alpha", "title": "A", "metadata": {"lang": "en", "n": 1}}',
        '{"id": 7, "text": "seven", "title": null, "metadata": null, "extra": "ignored"}',
        '{"id": "t", "text": "titled", "title": ""}',
    )
    assert read(data) == [
        Record(id="a", text="alpha", title="A", metadata={"lang": "en", "n": 1}),
        Record(id="7", text="seven"),
        Record(id="t", text="titled"),
    ]


def test_blank_lines_are_skipped_and_lines_counted():
    data = b'\n  \n{"id": "a", "text": "x"}\r\n\r\n\t\n{"id": "b"}\n\n'
    items = read(data)
    assert [r.id for r in records(items)] == ["a"]
    problem = only_problem(items)
    assert (problem.code, problem.line, problem.record_id) == (problems.MISSING_TEXT, 6, "b")


def test_a_last_line_without_newline():
    assert [r.id for r in records(read(b'{"id": "a", "text": "x"}'))] == ["a"]


@pytest.mark.parametrize(("line", "code", "record_id"), [
    ('{"id": "a", "text": "x"', problems.MALFORMED_JSON, None),
    ("not json at all", problems.MALFORMED_JSON, None),
    ('{"id": "a", "text": "x"} trailing', problems.MALFORMED_JSON, None),
    ('["a", "x"]', problems.NOT_AN_OBJECT, None),
    ('"just a string"', problems.NOT_AN_OBJECT, None),
    ("42", problems.NOT_AN_OBJECT, None),
    ("null", problems.NOT_AN_OBJECT, None),
    ('{"text": "x"}', problems.MISSING_ID, None),
    ('{"id": null, "text": "x"}', problems.MISSING_ID, None),
    ('{"id": "", "text": "x"}', problems.MISSING_ID, None),
    ('{"id": "  ", "text": "x"}', problems.MISSING_ID, None),
    ('{"id": 1.5, "text": "x"}', problems.INVALID_ID, None),
    ('{"id": true, "text": "x"}', problems.INVALID_ID, None),
    ('{"id": ["a"], "text": "x"}', problems.INVALID_ID, None),
    ('{"id": {"a": 1}, "text": "x"}', problems.INVALID_ID, None),
    ('{"id": "a"}', problems.MISSING_TEXT, "a"),
    ('{"id": "a", "text": null}', problems.MISSING_TEXT, "a"),
    ('{"id": "a", "text": ""}', problems.EMPTY_TEXT, "a"),
    ('{"id": "a", "text": " \\n\\t "}', problems.EMPTY_TEXT, "a"),
    ('{"id": "a", "text": 5}', problems.INVALID_TEXT, "a"),
    ('{"id": "a", "text": ["x"]}', problems.INVALID_TEXT, "a"),
    ('{"id": "a", "text": "x", "title": 3}', problems.INVALID_TITLE, "a"),
    ('{"id": "a", "text": "x", "metadata": "m"}', problems.INVALID_METADATA, "a"),
    ('{"id": "a", "text": "x", "metadata": [1]}', problems.INVALID_METADATA, "a"),
    (b'{"id": "a", "text": "caf\xe9"}', problems.INVALID_UTF8, None),
    ('{"id": "a", "text": "\\ud800"}', problems.MALFORMED_JSON, None),  # a lone surrogate escape
])
def test_per_record_problems(line, code, record_id):
    data = jsonl('{"id": "before", "text": "ok"}', line, '{"id": "after", "text": "ok"}')
    items = read(data)
    assert [r.id for r in records(items)] == ["before", "after"]  # never fatal
    problem = only_problem(items)
    assert (problem.code, problem.line, problem.record_id, problem.fatal) == (code, 2, record_id, False)
    assert "line 2" in problem.message.lower()
    assert_one_sentence(problem)


def test_text_too_long_gives_the_estimate_and_the_limit():
    text = " ".join(["word"] * 3000)
    items = read(jsonl(json.dumps({"id": "long", "text": text}), '{"id": "b", "text": "short"}'))
    problem = only_problem(items)
    assert (problem.code, problem.record_id, problem.line) == (problems.TEXT_TOO_LONG, "long", 1)
    assert "3000" in problem.message and "2048" in problem.message
    assert_one_sentence(problem)
    assert [r.id for r in records(items)] == ["b"]


def test_text_too_long_follows_the_limits():
    items = read(jsonl('{"id": "a", "text": "one two three four five"}'), limits=ReadLimits(max_input_tokens=4))
    assert codes(items) == [problems.TEXT_TOO_LONG]


def test_record_too_large_is_dropped_without_holding_it():
    huge = json.dumps({"id": "huge", "text": "x" * 5000})
    items = read(jsonl('{"id": "a", "text": "x"}', huge, '{"id": "b", "text": "y"}'),
                 limits=ReadLimits(max_record_bytes=1000), block=100)
    assert [r.id for r in records(items)] == ["a", "b"]
    problem = only_problem(items)
    assert (problem.code, problem.line, problem.fatal) == (problems.RECORD_TOO_LARGE, 2, False)
    assert str(len(huge)) in problem.message and "1000" in problem.message
    assert_one_sentence(problem)


def test_a_huge_line_streams_in_bounded_memory():
    import tracemalloc

    def parts():
        yield b'{"id": "a", "text": "x"}\n{"id": "huge", "text": "'
        for _ in range(40):
            yield b"y" * 1_000_000
        yield b'"}\n{"id": "b", "text": "z"}\n'

    tracemalloc.start()
    try:
        items = list(read_records(DownloadStream(parts(), block=1 << 18), name="a.jsonl", content_type=None,
                                  options=JobOptions()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.id for r in records(items)] == ["a", "b"]
    assert codes(items) == [problems.RECORD_TOO_LARGE]
    assert peak < 12_000_000  # the record limit (1 MiB), blocks and their copies: not the 40 MB line


def test_duplicates_keep_the_first():
    data = jsonl(
        '{"id": "a", "text": "first"}',
        '{"id": "b", "text": "b"}',
        '{"id": "a", "text": "second"}',
        '{"id": 1, "text": "int"}',
        '{"id": "1", "text": "string one"}',
    )
    items = read(data)
    assert [(r.id, r.text) for r in records(items)] == [("a", "first"), ("b", "b"), ("1", "int")]
    assert [(p.code, p.line, p.record_id) for p in items if isinstance(p, InputProblem)] == [
        (problems.DUPLICATE_ID, 3, "a"), (problems.DUPLICATE_ID, 5, "1"),
    ]
    assert_one_sentence(items[2])


def test_an_invalid_record_does_not_claim_its_id():
    items = read(jsonl('{"id": "a", "text": ""}', '{"id": "a", "text": "fixed"}'))
    assert codes(items) == [problems.EMPTY_TEXT]
    assert [r.text for r in records(items)] == ["fixed"]


@pytest.mark.parametrize("data", [b"\n\n  \n", b"\r\n", gz(b"\n")])
def test_only_blank_lines_is_empty_input(data):
    problem = only_problem(read(data))
    assert problem.code == problems.EMPTY_INPUT and problem.fatal
    assert_one_sentence(problem)


def test_only_bad_lines_is_not_empty_input():
    assert codes(read(b"{\n[]\n")) == [problems.MALFORMED_JSON, problems.NOT_AN_OBJECT]


def test_on_bad_record_does_not_stop_the_reading():
    data = jsonl("{", '{"id": "a", "text": "x"}')
    for policy in OnBadRecord:
        items = read(data, on_bad_record=policy)
        assert codes(items) == [problems.MALFORMED_JSON] and len(records(items)) == 1


def test_unicode_text_and_ids():
    data = jsonl(json.dumps({"id": "日本-1", "text": "Grüße \U0001f600", "metadata": {"k": "ü"}}, ensure_ascii=False))
    assert read(data) == [Record(id="日本-1", text="Grüße \U0001f600", metadata={"k": "ü"})]


def test_ndjson_and_content_type():
    data = jsonl('{"id": "a", "text": "x"}')
    assert len(records(read(data, "in.ndjson"))) == 1
    assert len(records(read(data, "blob", content_type="application/x-ndjson"))) == 1


def test_hundred_thousand_duplicates():
    data = b"".join(b'{"id": "%d", "text": "t"}\n' % (i % 1000) for i in range(101_000))
    items = read(data, block=1 << 16)
    assert len(records(items)) == 1000
    assert codes(items) == [problems.DUPLICATE_ID] * 100_000


def test_many_distinct_ids_in_about_8_bytes_each():
    # 250k ids through 15 merges here; benchmarks/bench_ingest.py checks a million and 100k duplicates.
    seen = SeenIds(recent_max=1 << 14)
    assert all(map(seen.add, map(str, range(250_000))))
    assert len(seen) == 250_000
    assert seen._sorted.nbytes <= 8 * 250_000 and len(seen._recent) < 1 << 14
    assert not any(map(seen.add, map(str, range(0, 250_000, 97))))
    assert seen.add("250000")


def test_read_source_reads_a_job_source_with_the_deployment_limits():
    from shared.config import Settings
    from shared.domain.jobs import SourceObject
    from shared.ingest import read_source

    huge = json.dumps({"id": "huge", "text": "x" * 5000})
    data = jsonl('{"id": "a", "text": "x"}', huge, '{"id": "b", "text": "y"}')
    source = SourceObject(bucket="in", name="in/data.jsonl", generation="1", content_type="application/jsonl")
    settings = Settings(google_cloud_project="p", max_record_bytes=1000)
    items = list(read_source(DownloadStream(gz(data)), source, JobOptions(), settings))
    assert items == read(gz(data), name=source.name, content_type=source.content_type,
                         limits=ReadLimits(max_record_bytes=1000))
    assert [r.id for r in records(items)] == ["a", "b"] and codes(items) == [problems.RECORD_TOO_LARGE]
