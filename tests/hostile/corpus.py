"""The hostile inputs, generated at test time (nothing big is committed), each with what must come of it.

A `Case` is one object to upload (name under INPUT_PREFIX, bytes, content type, metadata) and the
expected outcome: the final status, the error code of a failed job, the problems (line -> code) the job
must report, text every message must contain, and either the exact ids that must be embedded (JSONL,
CSV) or the decoded text the passages must cover (documents).
"""

from __future__ import annotations

import codecs
import gzip
import json
import random
import zlib
from dataclasses import dataclass, field

MIB = 1024 * 1024
#: The first block the readers sniff (`shared.ingest.decoding.BINARY_PROBE_BYTES`): the boundary the
#: byte-order-mark and line-end cases straddle on purpose.
PROBE_BYTES = 8000

WORDS = ["river", "mountain", "harbour", "lantern", "orchard", "violin", "granite", "meadow", "compass", "thunder",
         "willow", "saddle", "cathedral", "pepper", "glacier", "tractor", "library", "falcon", "mosaic", "ember"]


def sentence(seed: int, words: int = 12) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def record(rid: object, text: object, **extra: object) -> bytes:
    return json.dumps({"id": rid, "text": text, **extra}, ensure_ascii=False).encode()


def jsonl(records: list[bytes], end: bytes = b"\n") -> bytes:
    return b"".join(r + end for r in records)


@dataclass(frozen=True)
class Case:
    key: str  # the test id
    name: str  # object name under INPUT_PREFIX
    data: bytes
    status: str  # SUCCEEDED, PARTIALLY_SUCCEEDED, FAILED
    content_type: str = "application/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)
    error_code: str | None = None  # the job's (and event's) error code, for a FAILED job
    messages: tuple[str, ...] = ()  # each in the job's error message, or in some problem's message
    problems: dict[int | None, str] = field(default_factory=dict)  # line -> code, all of them (when listed)
    problem_count: int | None = None  # when the problems are too many to list
    ids: frozenset[str] | None = None  # exactly the ids embedded
    document: str | None = None  # the decoded text the passages must cover (documents)
    contiguous: bool = False  # documents: passages follow each other without overlap
    same_vectors_as: str | None = None  # key of a case whose vectors must be the same, id by id
    echoes: dict[str, str] | None = None  # id -> the exact text its `echo` metadata must carry to the output


# -- binary and encodings -----------------------------------------------------------------------------


def binary_cases() -> list[Case]:
    rng = random.Random(7)
    noise = bytes(rng.randrange(256) for _ in range(20_000))
    return [
        Case("binary-png-as-txt", "hostile/enc/picture.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + noise, "FAILED",
             "text/plain", error_code="BINARY_CONTENT", messages=("binary data",)),
        Case("binary-pdf-as-jsonl", "hostile/enc/report.jsonl", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n\x00" + noise, "FAILED",
             "application/jsonl", error_code="BINARY_CONTENT", messages=("looks like a PDF",)),
        Case("binary-zip-as-csv", "hostile/enc/sheet.csv", b"PK\x03\x04\x14\x00\x00\x00" + noise, "FAILED",
             "text/csv", error_code="BINARY_CONTENT", messages=("ZIP archive",)),
        Case("unsupported-type", "hostile/enc/slides.pptx", b"hello", "FAILED", "application/vnd.ms-powerpoint",
             error_code="UNSUPPORTED_TYPE", messages=(".jsonl",)),
    ]


def invalid_utf8_cases() -> list[Case]:
    good = "\n\n".join(" ".join(sentence(i * 10 + j) for j in range(6)) for i in range(8)) + "\n\n"
    later = good.encode() + b"Caf\xe9 au lait, encoded in Latin-1.\n" + sentence(99).encode()
    offset = len(good.encode()) + len("Caf")
    lines = [record(f"doc-{i}", sentence(i)) for i in range(5)]
    lines[2] = b'{"id": "doc-2", "text": "na\xefve caf\xe9"}'  # Latin-1 bytes inside a JSON string
    return [
        Case("invalid-utf8-at-start-txt", "hostile/enc/latin1.txt", b"\xe9t\xe9 " + good.encode(), "FAILED", "text/plain",
             error_code="INVALID_UTF8", messages=("not valid UTF-8 at byte 0",)),
        Case("invalid-utf8-later-txt", "hostile/enc/mixed.txt", later, "PARTIALLY_SUCCEEDED", "text/plain",
             metadata={"chunk_size": "64", "chunk_overlap": "8"}, problems={None: "INVALID_UTF8"},
             messages=(f"not valid UTF-8 at byte {offset}",), document=good + "Caf"),
        Case("invalid-utf8-line-jsonl", "hostile/enc/latin1-line.jsonl", jsonl(lines), "PARTIALLY_SUCCEEDED",
             "application/jsonl", problems={3: "INVALID_UTF8"}, messages=("Line 3 is not valid UTF-8",),
             ids=frozenset({"doc-0", "doc-1", "doc-3", "doc-4"})),
    ]


#: Texts every encoding variant carries: accents, CJK, and emoji (surrogate pairs in UTF-16).
VARIANT_TEXTS = [
    "Crème brûlée 🙂 at the café, naïve façade",
    "日本語のテキスト、東京の天気は晴れです 🌤️",
    "Ελληνικά και русский текст — em dash, “quotes”",
    "Emoji run 🙂🙃😉🚀🌍 between words",
    "Plain ASCII sentence about rivers and mountains.",
    "Tabs\tand\tescaped \\n backslashes \\ \" quotes",
]


def _variant(encoding: str, bom: bytes, end: str, straddle: str = "", before: int = 0) -> bytes:
    """The variant's JSONL: the same records, encoded as asked. With `straddle`, the first line is padded
    with JSON whitespace (outside strings: the records are unchanged) so that the end of the first block
    the readers take (`PROBE_BYTES`) falls `before` bytes into `straddle`'s encoding."""
    lines = [record(f"doc-{i}", t, metadata={"echo": t}).decode() for i, t in enumerate(VARIANT_TEXTS)]
    text = end.join(lines) + end
    if straddle:
        unit = len(" ".encode(encoding))
        offset = len(bom) + len(text[:text.index(straddle)].encode(encoding))
        pad, rest = divmod(PROBE_BYTES - before - offset, unit)
        assert pad > 0 and rest == 0, (offset, pad, rest)
        text = text[:1] + " " * pad + text[1:]
    data = bom + text.encode(encoding)
    if straddle:
        encoded = straddle.encode(encoding)
        assert data[PROBE_BYTES - before:PROBE_BYTES - before + len(encoded)] == encoded
    return data


def encoding_cases() -> list[Case]:
    ids = frozenset(f"doc-{i}" for i in range(len(VARIANT_TEXTS)))
    echoes = {f"doc-{i}": t for i, t in enumerate(VARIANT_TEXTS)}  # each text also in its metadata, to compare
    base = {"status": "SUCCEEDED", "content_type": "application/jsonl", "ids": ids, "echoes": echoes,
            "same_vectors_as": "utf8-reference"}
    document = "\r\n".join(" ".join(sentence(i * 7 + j) for j in range(5)) + " 🙂 ünïcödé" for i in range(12)) + "\r\n"
    return [
        Case("utf8-reference", "hostile/enc/reference.jsonl", _variant("utf-8", b"", "\n"),
             "SUCCEEDED", "application/jsonl", ids=ids, echoes=echoes),
        # The emoji's surrogate pair is cut by the first block's end.
        Case("utf16-le-bom-jsonl", "hostile/enc/utf16le.jsonl", _variant("utf-16-le", codecs.BOM_UTF16_LE, "\n", "🙂", 2), **base),
        Case("utf16-be-bom-jsonl", "hostile/enc/utf16be.jsonl", _variant("utf-16-be", codecs.BOM_UTF16_BE, "\r\n", "😉", 2), **base),
        # CR then LF on either side of the first block's end.
        Case("utf8-bom-crlf-jsonl", "hostile/enc/bom-crlf.jsonl", _variant("utf-8", codecs.BOM_UTF8, "\r\n", "\r\n{", 1), **base),
        Case("cr-only-jsonl", "hostile/enc/classic-mac.jsonl", _variant("utf-8", b"", "\r"), **base),
        Case("utf16-le-bom-crlf-txt", "hostile/enc/utf16.txt", codecs.BOM_UTF16_LE + document.encode("utf-16-le"),
             "SUCCEEDED", "text/plain", metadata={"chunk_size": "48", "chunk_overlap": "0"}, document=document),
    ]


# -- empty, huge, broken ------------------------------------------------------------------------------


def empty_cases() -> list[Case]:
    return [
        Case("empty-0-bytes", "hostile/empty/zero.txt", b"", "FAILED", "text/plain", error_code="EMPTY_INPUT",
             messages=("empty (0 bytes)",)),
        Case("whitespace-only-txt", "hostile/empty/blank.txt", b" \n\t\r\n  \n", "FAILED", "text/plain",
             error_code="EMPTY_INPUT", messages=("only whitespace",)),
        Case("blank-lines-jsonl", "hostile/empty/blank.jsonl", b"\n\n   \n\r\n", "FAILED", "application/jsonl",
             error_code="EMPTY_INPUT", messages=("only blank lines",)),
        Case("header-only-csv", "hostile/empty/header.csv", b"id,text\n", "FAILED", "text/csv",
             error_code="EMPTY_INPUT", messages=("no rows",)),
    ]


def huge_cases() -> list[Case]:
    big = record("big", "x" * (50 * MIB))
    lines = [record("doc-0", sentence(1)), big, record("doc-2", sentence(2)), record("doc-3", sentence(3))]
    long_line = "".join(WORDS[i % len(WORDS)] for i in range(200_000))[:1_000_000]  # no spaces at all
    return [
        Case("50mb-line-jsonl", "hostile/huge/one-big-line.jsonl", jsonl(lines), "PARTIALLY_SUCCEEDED",
             "application/jsonl", problems={2: "RECORD_TOO_LARGE"},
             messages=(f"Line 2 is {len(big)} bytes, over the limit of {MIB} bytes",),
             ids=frozenset({"doc-0", "doc-2", "doc-3"})),
        Case("1mb-line-txt", "hostile/huge/one-line.txt", long_line.encode(), "SUCCEEDED", "text/plain",
             metadata={"chunk_size": "2048", "chunk_overlap": "0"}, document=long_line, contiguous=True),
    ]


def broken_jsonl_case() -> Case:
    long_text = " ".join(["word"] * 3000)
    lines = [
        record("doc-0", sentence(10)),  # 1
        b'{"id": "doc-1", "text": "unterminated',  # 2
        b"[1, 2, 3]",  # 3
        b'"just a string"',  # 4
        b'{"text": "a record without an id"}',  # 5
        b'{"id": "doc-5"}',  # 6
        record("doc-6", "metadata is a list", metadata=[1, 2]),  # 7
        b'{"id": 1.5, "text": "a float id"}',  # 8
        b'{"id": "doc-8", "text": 42}',  # 9
        record("doc-9", "   \t  "),  # 10
        record("doc-10", "a numeric title", title=7),  # 11
        b"",  # 12: blank, skipped silently
        record("doc-12", sentence(12), metadata={"lang": "en", "page": 3}),  # 13
        record("doc-0", "the same id again"),  # 14
        b'{"id": true, "text": "a boolean id"}',  # 15
        b'{"id": "doc-15", "text": "trailing garbage"} xx',  # 16
        b"null",  # 17
        record("doc-17", long_text),  # 18
        record(19, sentence(19)),  # 19: an integer id
        b'{"id": "doc-19", "text": "\\ud800 a lone surrogate escape"}',  # 20
    ]
    return Case(
        "broken-lines-jsonl", "hostile/broken/lines.jsonl", jsonl(lines), "PARTIALLY_SUCCEEDED", "application/jsonl",
        problems={2: "MALFORMED_JSON", 3: "NOT_AN_OBJECT", 4: "NOT_AN_OBJECT", 5: "MISSING_ID", 6: "MISSING_TEXT",
                  7: "INVALID_METADATA", 8: "INVALID_ID", 9: "INVALID_TEXT", 10: "EMPTY_TEXT", 11: "INVALID_TITLE",
                  14: "DUPLICATE_ID", 15: "INVALID_ID", 16: "MALFORMED_JSON", 17: "NOT_AN_OBJECT",
                  18: "TEXT_TOO_LONG", 20: "MALFORMED_JSON"},
        messages=("Line 2 is not valid JSON", 'on line 5 has no "id"', "Line 3 holds an array",
                  "Record id 'doc-0' on line 14 was already used"),
        ids=frozenset({"doc-0", "doc-12", "19"}),
    )


DISTINCT_IDS = 50
DUPLICATE_LINES = 100_000


def duplicate_ids_case() -> Case:
    lines = [record(f"id-{i % DISTINCT_IDS}", f"{sentence(i % DISTINCT_IDS)} (copy {i})") for i in range(DUPLICATE_LINES)]
    return Case(
        "100k-duplicate-ids", "hostile/broken/duplicates.jsonl", jsonl(lines), "PARTIALLY_SUCCEEDED", "application/jsonl",
        problem_count=DUPLICATE_LINES - DISTINCT_IDS, messages=("Record id 'id-0' on line 51 was already used",),
        ids=frozenset(f"id-{i}" for i in range(DISTINCT_IDS)),
    )


def csv_cases() -> list[Case]:
    rows = b"id,body,lang\n1,First row about harbours,en\n2,Second row about glaciers,en\n"
    return [
        Case("csv-without-text-column", "hostile/csv/no-text.csv", rows, "FAILED", "text/csv",
             error_code="MISSING_COLUMN", messages=("no column 'text'", "text_column", "'id', 'body', 'lang'")),
        Case("csv-text-column-option-missing", "hostile/csv/wrong-option.csv", rows, "FAILED", "text/csv",
             metadata={"text_column": "content"}, error_code="MISSING_COLUMN", messages=("no column 'content'", "text_column")),
        Case("csv-text-column-option", "hostile/csv/right-option.csv", rows, "SUCCEEDED", "text/csv",
             metadata={"text_column": "body"}, ids=frozenset({"1", "2"})),
    ]


def option_cases() -> list[Case]:
    data = jsonl([record("doc-0", sentence(0))])
    return [
        Case("hostile-option-value", "hostile/options/dims.jsonl", data, "FAILED", "application/jsonl",
             metadata={"dimensions": "1e9"}, error_code="INVALID_OPTION", messages=("output_dimensionality", "128")),
    ]


# -- gzip ---------------------------------------------------------------------------------------------


def gzip_stream(parts: list[tuple[bytes, int]]) -> bytes:
    """gzip of each (block, times) in turn, without ever holding the inflated content."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = []
    for block, times in parts:
        for _ in range(times):
            out.append(compressor.compress(block))
    out.append(compressor.flush())
    return b"".join(out)


def gzip_cases(limit: int) -> list[Case]:
    """Bombs inflating to twice `limit` (the stack's MAX_DECOMPRESSED_BYTES), and a cut-short upload."""
    good = jsonl([record(f"doc-{i}", sentence(i)) for i in range(5)])
    newlines = b"\n" * MIB
    bomb_after_records = gzip_stream([(good, 1), (newlines, 2 * limit // MIB)])
    pure_bomb = gzip_stream([(b" " * MIB, 2 * limit // MIB)])
    assert len(bomb_after_records) < MIB and len(pure_bomb) < MIB

    records = [record(f"doc-{i}", f"{sentence(i, 30)} {random.Random(i).random()}") for i in range(200)]
    whole = gzip.compress(jsonl(records), compresslevel=6)
    cut = whole[: len(whole) // 2]
    inflated = zlib.decompressobj(31).decompress(cut)
    complete = inflated[: inflated.rfind(b"\n") + 1]
    survivors = frozenset(json.loads(line)["id"] for line in complete.splitlines())
    assert 0 < len(survivors) < len(records)
    return [
        Case("gzip-bomb-after-records", "hostile/gzip/bomb.jsonl.gz", bomb_after_records, "PARTIALLY_SUCCEEDED",
             "application/gzip", problems={None: "DECOMPRESSED_TOO_LARGE"},
             messages=(f"more than {limit} bytes",), ids=frozenset(f"doc-{i}" for i in range(5))),
        Case("gzip-bomb", "hostile/gzip/pure-bomb.txt.gz", pure_bomb, "FAILED", "application/gzip",
             error_code="DECOMPRESSED_TOO_LARGE", messages=(f"more than {limit} bytes",)),
        Case("gzip-truncated", "hostile/gzip/cut.jsonl.gz", cut, "PARTIALLY_SUCCEEDED", "application/gzip",
             problems={None: "TRUNCATED_GZIP"}, messages=("gzip data ends early",), ids=survivors),
    ]


# -- names --------------------------------------------------------------------------------------------


def _named(names: dict[str, str], input_prefix: str) -> list[Case]:
    data = jsonl([record("doc-0", sentence(0)), record("doc-1", sentence(1))])
    for key, name in names.items():
        assert len((input_prefix + name).encode()) <= 1024, (key, len((input_prefix + name).encode()))
    return [Case(key, name, data, "SUCCEEDED", "application/jsonl", ids=frozenset({"doc-0", "doc-1"}))
            for key, name in names.items()]


def name_cases(input_prefix: str) -> list[Case]:
    """ASCII object names that try to escape their job's prefix, or to break what builds paths from them."""
    room = 1000 - len(input_prefix.encode())
    return _named({
        "name-spaces-everywhere": "hostile/names/ a  b /  c  .jsonl",
        "name-dot-dot-to-staging": "hostile/../../_staging/x/../../../y.jsonl",
        "name-dot-and-empty-segments": "hostile/./names//.//z.jsonl",
        "name-escaped-lookalike": "hostile/%2e2e/%2e/y.jsonl",
        "name-1000-bytes-ascii": "hostile/names/" + "/".join(["segment"] * ((room - 40) // 8)) + "/long.jsonl",
    }, input_prefix)


def unicode_name_cases(input_prefix: str) -> list[Case]:
    """Names beyond ASCII: multi-byte characters, emoji, and a cut of a long name inside a character."""
    room = 1000 - len(input_prefix.encode())
    return _named({
        "name-unicode-and-spaces": "hostile/names/données 日本語 ✓/файл 🙂 one.jsonl",
        "name-1000-bytes-unicode": "hostile/names/" + "é" * ((room - 40) // 2) + ".jsonl",
    }, input_prefix)


def all_cases(input_prefix: str, decompressed_limit: int) -> list[Case]:
    cases = [
        *binary_cases(), *invalid_utf8_cases(), *encoding_cases(), *empty_cases(), *huge_cases(),
        broken_jsonl_case(), duplicate_ids_case(), *csv_cases(), *option_cases(), *gzip_cases(decompressed_limit),
        *name_cases(input_prefix),
    ]
    keys = [c.key for c in cases]
    assert len(keys) == len(set(keys)), keys
    return cases


CASE_KEYS = [
    "binary-png-as-txt", "binary-pdf-as-jsonl", "binary-zip-as-csv", "unsupported-type",
    "invalid-utf8-at-start-txt", "invalid-utf8-later-txt", "invalid-utf8-line-jsonl",
    "utf8-reference", "utf16-le-bom-jsonl", "utf16-be-bom-jsonl", "utf8-bom-crlf-jsonl", "cr-only-jsonl",
    "utf16-le-bom-crlf-txt", "empty-0-bytes", "whitespace-only-txt", "blank-lines-jsonl", "header-only-csv",
    "50mb-line-jsonl", "1mb-line-txt", "broken-lines-jsonl", "100k-duplicate-ids", "csv-without-text-column",
    "csv-text-column-option-missing", "csv-text-column-option", "hostile-option-value",
    "gzip-bomb-after-records", "gzip-bomb", "gzip-truncated",
    "name-spaces-everywhere", "name-dot-dot-to-staging", "name-dot-and-empty-segments",
    "name-escaped-lookalike", "name-1000-bytes-ascii",
]
