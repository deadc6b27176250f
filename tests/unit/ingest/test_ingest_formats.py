from __future__ import annotations

import pytest

from shared.ingest import InputFormat, detect_format, problems
from shared.ingest.formats import is_markdown
from tests.unit.ingest.helpers import assert_one_sentence, only_problem, read

DOCUMENT, JSONL, CSV = InputFormat.DOCUMENT, InputFormat.JSONL, InputFormat.CSV


@pytest.mark.parametrize(("name", "content_type", "expected"), [
    ("a.txt", None, DOCUMENT),
    ("dir/sub/A.TXT", None, DOCUMENT),
    ("a.text", None, DOCUMENT),
    ("notes.md", None, DOCUMENT),
    ("notes.Markdown", None, DOCUMENT),
    ("a.jsonl", None, JSONL),
    ("a.NDJSON", None, JSONL),
    ("a.csv", None, CSV),
    ("a.csv.gz", "application/gzip", CSV),
    ("a.JSONL.GZ", None, JSONL),
    ("a.txt.gz", "application/octet-stream", DOCUMENT),
    ("a.txt", "text/csv", DOCUMENT),  # the extension wins
    ("data", "text/plain", DOCUMENT),
    ("data", "text/plain; charset=utf-8", DOCUMENT),
    ("data", "text/markdown", DOCUMENT),
    ("data", "application/jsonl", JSONL),
    ("data", "application/x-ndjson", JSONL),
    ("data", "Application/JSON-Lines", JSONL),
    ("data.gz", "text/csv", CSV),
    ("data.bin", "text/csv", CSV),
    ("a.json", None, None),
    ("a.pdf", "application/pdf", None),
    ("a.gz", None, None),
    ("data", None, None),
    ("data", "", None),
    (".txt", None, None),  # a dotfile, not an extension
])
def test_detect_format(name, content_type, expected):
    assert detect_format(name, content_type) == expected


def test_markdown_is_known_for_heading_breaks():
    assert is_markdown("a.md.gz", None)
    assert is_markdown("x", "text/markdown")
    assert not is_markdown("a.txt", "text/markdown")
    assert not is_markdown("a.txt", None)


def test_unsupported_type_is_one_fatal_problem_naming_the_supported_types():
    items = read(b"%PDF-1.7", "report.pdf", content_type="application/pdf")
    problem = only_problem(items)
    assert problem.code == problems.UNSUPPORTED_TYPE
    assert problem.fatal
    assert "report.pdf" in problem.message and "application/pdf" in problem.message
    for supported in (".txt", ".md", ".jsonl", ".csv", ".gz", "text/plain", "application/jsonl", "text/csv"):
        assert supported in problem.message
    assert_one_sentence(problem)


def test_unsupported_type_does_not_read_the_stream():
    from shared.domain.options import JobOptions
    from shared.ingest import read_records
    from tests.unit.ingest.helpers import DownloadStream

    stream = DownloadStream(b"x" * 100)
    assert len(list(read_records(stream, name="x.bin", content_type=None, options=JobOptions()))) == 1
    assert stream.bytes_read == 0
