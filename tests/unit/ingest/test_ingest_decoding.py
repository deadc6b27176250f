"""gzip, byte-order marks, binary content, line endings: the bytes below every format."""

from __future__ import annotations

import codecs
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.options import JobOptions
from shared.domain.records import InputProblem, Record
from shared.ingest import ReadLimits, problems, read_records
from shared.ingest.decoding import LineReader, TooLong, iter_lines
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

LINES = jsonl('{"id": "a", "text": "alpha"}', '{"id": "b", "text": "beta"}')


def ids(items):
    return [record.id for record in records(items)]


# -- gzip -----------------------------------------------------------------------------------------


def test_gzip_by_name():
    assert ids(read(gz(LINES), "in.jsonl.gz")) == ["a", "b"]


def test_gzip_by_magic_bytes_only():
    # GCS stores Content-Encoding: gzip objects compressed, under any name.
    assert ids(read(gz(LINES), "in.jsonl")) == ["a", "b"]
    assert ids(read(gz(LINES), "in.jsonl", content_encoding="gzip")) == ["a", "b"]


def test_gz_name_over_plain_bytes_reads_them_plain():
    assert ids(read(LINES, "in.jsonl.gz", content_encoding="gzip")) == ["a", "b"]


def test_concatenated_members_and_zero_padding():
    data = gz(jsonl('{"id": "a", "text": "alpha"}')) + gz(b"") + gz(jsonl('{"id": "b", "text": "beta"}'))
    assert ids(read(data + b"\x00" * 1000, "in.jsonl")) == ["a", "b"]


def test_gzip_of_a_document_and_a_csv():
    items = read(gz(b"Some words to embed."), "in.txt.gz")
    assert [r.text for r in records(items)] == ["Some words to embed."]
    items = read(gz(b"id,text\n1,one\n"), "in.csv.gz")
    assert [(r.id, r.text) for r in records(items)] == [("1", "one")]


def test_bomb_stops_at_the_decompressed_limit():
    bomb = gz(b'{"id": "a", "text": "alpha"}\n' + b" " * 5_000_000)
    assert len(bomb) < 10_000
    items = read(bomb, "in.jsonl", limits=ReadLimits(max_decompressed_bytes=1_000_000))
    assert ids(items) == ["a"]  # read before the limit: kept
    problem = only_problem(items)
    assert problem.code == problems.DECOMPRESSED_TOO_LARGE and problem.fatal
    assert "1000000" in problem.message
    assert_one_sentence(problem)


def test_bomb_never_inflates_in_memory():
    import tracemalloc

    bomb = gz(b"x" * 30_000_000)
    tracemalloc.start()
    try:
        found = [item.code for item in read_records(
            DownloadStream(bomb), name="in.txt", content_type=None, options=JobOptions(chunk_size=2048),
            limits=ReadLimits(max_decompressed_bytes=3_000_000),
        ) if isinstance(item, InputProblem)]  # the passages are not kept
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found == [problems.DECOMPRESSED_TOO_LARGE]
    assert peak < 4_000_000


def test_truncated_gzip_keeps_what_came_before():
    many = jsonl(*(f'{{"id": "{i}", "text": "record {i} {os.urandom(20).hex()}"}}' for i in range(2000)))
    data = gz(many)
    items = read(data[: len(data) // 2], "in.jsonl")
    assert codes(items) == [problems.TRUNCATED_GZIP]
    got = ids(items)
    assert 0 < len(got) < 2000
    assert got == [str(i) for i in range(len(got))]
    assert items[-1].fatal
    assert_one_sentence(items[-1])


def test_magic_bytes_alone_are_truncated():
    assert codes(read(b"\x1f\x8b", "in.jsonl")) == [problems.TRUNCATED_GZIP]


def test_corrupt_gzip():
    data = bytearray(gz(LINES * 50))
    data[len(data) // 2] ^= 0xFF
    problem = only_problem(read(bytes(data), "in.jsonl"))
    assert problem.code == problems.CORRUPT_GZIP and problem.fatal
    assert_one_sentence(problem)


def test_bad_checksum_is_corrupt():
    data = bytearray(gz(LINES))
    data[-8] ^= 0x01  # the CRC32 in the trailer
    items = read(bytes(data), "in.jsonl")
    assert codes(items) == [problems.CORRUPT_GZIP]


def test_bad_header_is_corrupt():
    assert codes(read(b"\x1f\x8b\x05\x00garbage", "in.jsonl")) == [problems.CORRUPT_GZIP]


def test_trailing_garbage_is_corrupt():
    items = read(gz(LINES) + b"not gzip", "in.jsonl")
    assert ids(items) == ["a", "b"]
    assert codes(items) == [problems.CORRUPT_GZIP]


def test_other_content_encodings_are_refused():
    problem = only_problem(read(LINES, "in.jsonl", content_encoding="br"))
    assert problem.code == problems.UNSUPPORTED_ENCODING and problem.fatal
    assert "'br'" in problem.message
    assert ids(read(LINES, "in.jsonl", content_encoding="identity")) == ["a", "b"]


# -- byte-order marks, encodings ------------------------------------------------------------------

ENCODINGS = [
    ("utf-8-sig", codecs.BOM_UTF8),
    ("utf-16-le", codecs.BOM_UTF16_LE),
    ("utf-16-be", codecs.BOM_UTF16_BE),
    ("utf-32-le", codecs.BOM_UTF32_LE),
    ("utf-32-be", codecs.BOM_UTF32_BE),
]
TEXT = 'Grüße, 世界 \U0001f600: "quoted", done.'


def _encoded(text: str, codec: str, bom: bytes) -> bytes:
    body = text.encode(codec)
    return body if codec == "utf-8-sig" else bom + body


@pytest.mark.parametrize(("codec", "bom"), ENCODINGS)
def test_boms_for_jsonl(codec, bom):
    data = _encoded('{"id": "x", "text": "' + TEXT.replace('"', '\\"') + '"}\r\n{"id": "y", "text": "second"}\n', codec, bom)
    got = records(read(data, "in.jsonl"))
    assert [(r.id, r.text) for r in got] == [("x", TEXT), ("y", "second")]


@pytest.mark.parametrize(("codec", "bom"), ENCODINGS)
def test_boms_for_documents(codec, bom):
    (record,) = records(read(_encoded(TEXT, codec, bom), "in.txt"))
    assert record.text == TEXT
    assert record.metadata == {"passage": 0, "char_start": 0, "char_end": len(TEXT)}  # after the mark


@pytest.mark.parametrize(("codec", "bom"), ENCODINGS)
def test_boms_for_csv(codec, bom):
    data = _encoded('id,text\r\nx,"' + TEXT.replace('"', '""') + '"\r\n', codec, bom)
    assert [(r.id, r.text) for r in records(read(data, "in.csv"))] == [("x", TEXT)]


def test_gzip_then_bom():
    data = gz(codecs.BOM_UTF16_LE + '{"id": "x", "text": "hi"}\n'.encode("utf-16-le"))
    assert ids(read(data, "in.jsonl.gz")) == ["x"]


def test_invalid_utf16_is_fatal_with_its_offset():
    data = codecs.BOM_UTF16_LE + "ok text ".encode("utf-16-le") + b"\x00\xdc" + "more".encode("utf-16-le")
    items = read(data, "in.txt")
    assert [r.text for r in records(items)] == ["ok text"]
    problem = items[-1]
    assert problem.code == problems.INVALID_ENCODING and problem.fatal
    assert "byte 18" in problem.message  # 2 (mark) + 16
    assert_one_sentence(problem)


# -- binary, empty --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["in.txt", "in.jsonl", "in.csv"])
def test_binary_content(name):
    problem = only_problem(read(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(100), name))
    assert problem.code == problems.BINARY_CONTENT and problem.fatal
    assert_one_sentence(problem)


def test_binary_content_names_common_kinds():
    assert "PDF" in only_problem(read(b"%PDF-1.4\n\x00\x01", "in.txt")).message
    assert "ZIP" in only_problem(read(b"PK\x03\x04\x14\x00\x00", "in.csv")).message


def test_utf16_without_a_bom_is_binary():
    assert codes(read("text".encode("utf-16-le"), "in.txt")) == [problems.BINARY_CONTENT]


def test_gzipped_binary():
    assert codes(read(gz(b"\x00" * 100), "in.jsonl.gz")) == [problems.BINARY_CONTENT]


@pytest.mark.parametrize("name", ["in.txt", "in.jsonl", "in.csv"])
@pytest.mark.parametrize("data", [b"", gz(b"")])
def test_empty(name, data):
    problem = only_problem(read(data, name))
    assert problem.code == problems.EMPTY_INPUT and problem.fatal
    assert_one_sentence(problem)


# -- lines ----------------------------------------------------------------------------------------


def _blocks(data: bytes, size: int):
    parts = [data[i:i + size] for i in range(0, len(data), size)]
    return lambda _n: parts.pop(0) if parts else b""


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_line_endings_lf_crlf_and_lone_cr(size):
    data = b"one\r\ntwo\rthree\n\nfive\r\rseven"
    assert list(iter_lines(_blocks(data, size), 100)) == [b"one", b"two", b"three", b"", b"five", b"", b"seven"]


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_long_lines_are_dropped_as_they_stream(size):
    data = b'short\n' + b'x"' * 60 + b"\nok\n" + b"y" * 11 + b"\r\nlast"
    assert list(iter_lines(_blocks(data, size), 10)) == [
        b"short", TooLong(120, 60), b"ok", TooLong(11, 0), b"last",
    ]


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.sampled_from([b"a", b"bc", b'"', b"\r", b"\n", b"\r\n", b"x" * 15]), max_size=60),
       size=st.integers(1, 20))
def test_line_offsets_resume_a_line_reader(pieces, size):
    data = b"".join(pieces)
    reader = LineReader(_blocks(data, size), 10)
    lines, marks = [], []
    for line in reader:
        lines.append(line)
        marks.append((reader.offset, reader.after_cr))
    assert reader.offset == len(data)
    for number, (offset, after_cr) in enumerate(marks):
        # through the line's end; a CR last in a block is counted before the LF that may follow it
        assert data[:offset].endswith((b"\n", b"\r")) or offset == len(data)
        assert after_cr == data[:offset].endswith(b"\r")
        resumed = LineReader(_blocks(data[offset:], size), 10, offset=offset, after_cr=after_cr)
        assert list(resumed) == lines[number + 1:]
        assert resumed.offset == len(data)


def test_a_final_line_without_end():
    assert list(iter_lines(_blocks(b"a\nb", 10), 10)) == [b"a", b"b"]
    assert list(iter_lines(_blocks(b"a\n", 10), 10)) == [b"a"]
    assert list(iter_lines(_blocks(b"", 10), 10)) == []


def test_crlf_documents_keep_their_line_endings_in_offsets():
    text = "First paragraph.\r\n\r\nSecond paragraph.\r\n"
    (record,) = records(read(text.encode(), "in.txt"))
    assert record.text == "First paragraph.\r\n\r\nSecond paragraph."
    assert isinstance(record, Record)


def test_short_reads_of_one_byte():
    assert ids(read(gz(LINES), "in.jsonl", block=1)) == ["a", "b"]
    assert ids(read(LINES, "in.jsonl", block=1)) == ["a", "b"]


def test_invalid_utf16_jsonl_keeps_the_records_before_it():
    good = '{"id": "a", "text": "alpha"}\n'.encode("utf-16-le")
    data = codecs.BOM_UTF16_LE + good + b"\x00\xdc" + '{"id": "b", "text": "beta"}\n'.encode("utf-16-le")
    items = read(data, "in.jsonl")
    assert ids(items) == ["a"]
    assert codes(items) == [problems.INVALID_ENCODING]
    assert f"byte {2 + len(good)}" in items[-1].message
