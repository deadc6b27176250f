"""The codes of the problems found while reading an input file, in one place.

A problem is an `InputProblem` (shared.domain.records): a code from here, one sentence a user can act on,
the 1-based line and the record's id when known. Fatal problems end the reading (records before them are
kept); the others concern one record, which is skipped.

Fatal, about the whole file:
    UNSUPPORTED_TYPE        the name and content type match no supported format
    UNSUPPORTED_ENCODING    a Content-Encoding other than gzip (br, deflate, ...)
    EMPTY_INPUT             nothing to embed: no bytes, only whitespace, only blank lines, a header only
    BINARY_CONTENT          NUL bytes in the first block and no UTF-16/32 byte-order mark
    DECOMPRESSED_TOO_LARGE  the gzip content inflates beyond `ReadLimits.max_decompressed_bytes`
    TRUNCATED_GZIP          the gzip stream ends before its end marker
    CORRUPT_GZIP            the gzip stream is damaged (bad data, bad checksum, trailing garbage)
    INVALID_ENCODING        a UTF-16/32 file with an invalid code unit (cannot resynchronise)
    MISSING_COLUMN          a CSV header without the id or text column
    INVALID_UTF8            fatal in a document (.txt/.md) and in a CSV header; per record elsewhere

Per record (JSONL line or CSV row):
    INVALID_UTF8, RECORD_TOO_LARGE (JSONL), ROW_TOO_LARGE (CSV), MALFORMED_JSON, NOT_AN_OBJECT,
    MALFORMED_ROW, MISSING_ID, INVALID_ID, DUPLICATE_ID, MISSING_TEXT, EMPTY_TEXT, INVALID_TEXT,
    INVALID_TITLE, INVALID_METADATA, TEXT_TOO_LONG
"""

from __future__ import annotations

from shared.domain.records import InputProblem

__all__ = [
    "BINARY_CONTENT",
    "CORRUPT_GZIP",
    "DECOMPRESSED_TOO_LARGE",
    "DUPLICATE_ID",
    "EMPTY_INPUT",
    "EMPTY_TEXT",
    "INVALID_ENCODING",
    "INVALID_ID",
    "INVALID_METADATA",
    "INVALID_TEXT",
    "INVALID_TITLE",
    "INVALID_UTF8",
    "InputError",
    "MALFORMED_JSON",
    "MALFORMED_ROW",
    "MISSING_COLUMN",
    "MISSING_ID",
    "MISSING_TEXT",
    "NOT_AN_OBJECT",
    "RECORD_TOO_LARGE",
    "ROW_TOO_LARGE",
    "TEXT_TOO_LONG",
    "TRUNCATED_GZIP",
    "UNSUPPORTED_ENCODING",
    "UNSUPPORTED_TYPE",
]

UNSUPPORTED_TYPE = "UNSUPPORTED_TYPE"
UNSUPPORTED_ENCODING = "UNSUPPORTED_ENCODING"
EMPTY_INPUT = "EMPTY_INPUT"
BINARY_CONTENT = "BINARY_CONTENT"
DECOMPRESSED_TOO_LARGE = "DECOMPRESSED_TOO_LARGE"
TRUNCATED_GZIP = "TRUNCATED_GZIP"
CORRUPT_GZIP = "CORRUPT_GZIP"
INVALID_ENCODING = "INVALID_ENCODING"
INVALID_UTF8 = "INVALID_UTF8"
MISSING_COLUMN = "MISSING_COLUMN"

RECORD_TOO_LARGE = "RECORD_TOO_LARGE"
ROW_TOO_LARGE = "ROW_TOO_LARGE"
MALFORMED_JSON = "MALFORMED_JSON"
NOT_AN_OBJECT = "NOT_AN_OBJECT"
MALFORMED_ROW = "MALFORMED_ROW"
MISSING_ID = "MISSING_ID"
INVALID_ID = "INVALID_ID"
DUPLICATE_ID = "DUPLICATE_ID"
MISSING_TEXT = "MISSING_TEXT"
EMPTY_TEXT = "EMPTY_TEXT"
INVALID_TEXT = "INVALID_TEXT"
INVALID_TITLE = "INVALID_TITLE"
INVALID_METADATA = "INVALID_METADATA"
TEXT_TOO_LONG = "TEXT_TOO_LONG"


class InputError(Exception):
    """Raised inside the readers for a fatal problem; `read_records` yields `problem` and stops."""

    def __init__(self, code: str, message: str, line: int | None = None):
        super().__init__(message)
        self.problem = InputProblem(code=code, message=message, line=line, fatal=True)
