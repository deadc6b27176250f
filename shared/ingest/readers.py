"""One reader per format, from opened content to records and problems.

Per-record problems are yielded in file order among the records; fatal ones are raised as `InputError`
after everything before them was yielded. Readers never look at `on_bad_record`: the caller counts.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

import orjson

from shared.domain.options import JobOptions
from shared.domain.records import InputProblem, Record
from shared.ingest.decoding import Content, TooLong, iter_lines, iter_text, utf8_reader
from shared.ingest.ids import SeenIds
from shared.ingest.limits import ReadLimits
from shared.ingest.problems import (
    DUPLICATE_ID,
    EMPTY_INPUT,
    EMPTY_TEXT,
    INVALID_ID,
    INVALID_METADATA,
    INVALID_TEXT,
    INVALID_TITLE,
    INVALID_UTF8,
    MALFORMED_JSON,
    MALFORMED_ROW,
    MISSING_COLUMN,
    MISSING_ID,
    MISSING_TEXT,
    NOT_AN_OBJECT,
    RECORD_TOO_LARGE,
    ROW_TOO_LARGE,
    TEXT_TOO_LONG,
    InputError,
)
from shared.ingest.splitter import split_passages
from shared.ingest.tokens import estimate_tokens

__all__ = ["read_csv", "read_document", "read_jsonl"]

Item = Record | InputProblem
_SHOWN_ID_CHARS = 80


def _shown(record_id: str) -> str:
    """An id as quoted in a message: long ones shortened."""
    text = record_id if len(record_id) <= _SHOWN_ID_CHARS else record_id[:_SHOWN_ID_CHARS - 3] + "..."
    return repr(text)


# -- documents ------------------------------------------------------------------------------------


class _Text:
    """The document's text blocks; a decoding or gzip failure ends them and is kept for later, so the
    splitter emits the passages before it first."""

    def __init__(self, content: Content):
        self._blocks = iter_text(content)
        self.error: InputError | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._blocks
        except InputError as exc:
            self.error = exc


def read_document(content: Content, *, name: str, options: JobOptions, limits: ReadLimits,
                  markdown: bool = False) -> Iterator[Item]:
    """Passages of one document as records `{name}#{index}`, with their offsets in the decoded text."""
    text = _Text(content)
    passages = split_passages(
        text,
        max_tokens=min(options.chunk_size, limits.max_input_tokens),
        overlap=options.chunk_overlap,
        markdown=markdown,
    )
    index = 0
    for passage in passages:
        yield Record(
            id=f"{name}#{index}",
            text=passage.text,
            metadata={"passage": index, "char_start": passage.start, "char_end": passage.end},
        )
        index += 1
    if text.error is not None:
        raise text.error
    if index == 0:
        raise InputError(EMPTY_INPUT, "The document has no text, only whitespace: upload a file with text to embed.")


# -- fields shared by JSONL and CSV ---------------------------------------------------------------


def _finish(record_id: str, text: str, title: str | None, metadata: dict[str, Any], line: int,
            limits: ReadLimits, seen: SeenIds) -> Item:
    """The record, or its problem once id and text are known to be strings."""
    if not text.strip():
        return InputProblem(EMPTY_TEXT, (
            f"Record {_shown(record_id)} on line {line} has an empty text: give it text to embed or remove it."
        ), line=line, record_id=record_id)
    tokens = estimate_tokens(text)
    if tokens > limits.max_input_tokens:
        return InputProblem(TEXT_TOO_LONG, (
            f"Record {_shown(record_id)} on line {line} has about {tokens} tokens, over the model's limit "
            f"of {limits.max_input_tokens}: split its text into smaller records."
        ), line=line, record_id=record_id)
    if not seen.add(record_id):
        return InputProblem(DUPLICATE_ID, (
            f"Record id {_shown(record_id)} on line {line} was already used earlier in the file, which "
            "keeps the first: give every record its own id."
        ), line=line, record_id=record_id)
    return Record(id=record_id, text=text, title=title or None, metadata=metadata)


# -- JSONL ----------------------------------------------------------------------------------------


def _json_record(value: Any, line: int, limits: ReadLimits, seen: SeenIds) -> Item:
    if not isinstance(value, dict):
        return InputProblem(NOT_AN_OBJECT, (
            f"Line {line} holds {_json_kind(value)}, not a JSON object: write each record as "
            '{"id": ..., "text": ...}.'
        ), line=line)
    raw_id = value.get("id")
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        return InputProblem(MISSING_ID, (
            f'The record on line {line} has no "id": give every record a non-empty string or integer id.'
        ), line=line)
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        return InputProblem(INVALID_ID, (
            f'The record on line {line} has an "id" that is {_json_kind(raw_id)}: use a string or an '
            "integer."
        ), line=line)
    record_id = str(raw_id)
    text = value.get("text")
    if text is None:
        return InputProblem(MISSING_TEXT, (
            f'Record {_shown(record_id)} on line {line} has no "text": add the text to embed.'
        ), line=line, record_id=record_id)
    if not isinstance(text, str):
        return InputProblem(INVALID_TEXT, (
            f'Record {_shown(record_id)} on line {line} has a "text" that is {_json_kind(text)}: make it '
            "a string."
        ), line=line, record_id=record_id)
    title = value.get("title")
    if title is not None and not isinstance(title, str):
        return InputProblem(INVALID_TITLE, (
            f'Record {_shown(record_id)} on line {line} has a "title" that is {_json_kind(title)}: make '
            "it a string or leave it out."
        ), line=line, record_id=record_id)
    metadata = value.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        return InputProblem(INVALID_METADATA, (
            f'Record {_shown(record_id)} on line {line} has a "metadata" that is {_json_kind(metadata)}: '
            "make it a JSON object or leave it out."
        ), line=line, record_id=record_id)
    return _finish(record_id, text, title, metadata, line, limits, seen)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def read_jsonl(content: Content, *, limits: ReadLimits) -> Iterator[Item]:
    """One record per line; blank lines skipped; per-line problems; EMPTY_INPUT when no line has content."""
    seen = SeenIds()
    any_content = False
    line_no = 0
    for line in iter_lines(utf8_reader(content), limits.max_record_bytes):
        line_no += 1
        if isinstance(line, TooLong):
            any_content = True
            yield InputProblem(RECORD_TOO_LARGE, (
                f"Line {line_no} is {line.size} bytes, over the limit of {limits.max_record_bytes} bytes "
                "for one record: split its text into smaller records."
            ), line=line_no)
            continue
        if not line.strip():
            continue
        any_content = True
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield _json_error(line, line_no, exc)
            continue
        yield _json_record(value, line_no, limits, seen)
    if not any_content:
        raise InputError(EMPTY_INPUT, "The file has no records, only blank lines: write one JSON object per line.")


def _json_error(line: bytes, line_no: int, exc: orjson.JSONDecodeError) -> InputProblem:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return InputProblem(INVALID_UTF8, (
            f"Line {line_no} is not valid UTF-8 at byte {bad.start} of the line: save the file as UTF-8."
        ), line=line_no)
    return InputProblem(MALFORMED_JSON, (
        f"Line {line_no} is not valid JSON ({exc.msg} at column {exc.colno}): write each record as one JSON "
        "object on one line."
    ), line=line_no)


# -- CSV ------------------------------------------------------------------------------------------


class _BadRow(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


class _RowFeeder:
    """The lines handed to `csv.reader`, row by row, with the row's size bounded.

    A row over the limit or with invalid UTF-8 raises `_BadRow` out of the csv reader (which starts
    afresh on its next call) after the rest of the row was skipped: lines are dropped while a quoted
    field is open, by the parity of the `"`s seen in the row.
    """

    def __init__(self, lines: Iterator[bytes | TooLong], max_row_bytes: int):
        self._lines = lines
        self._max = max_row_bytes
        self.line_no = 0
        self.exhausted = False
        self._row_bytes = 0
        self._quotes = 0

    def begin_row(self) -> None:
        self._row_bytes = 0
        self._quotes = 0

    @property
    def in_quotes(self) -> bool:
        return self._quotes % 2 == 1

    def _next_line(self) -> bytes | TooLong:
        try:
            line = next(self._lines)
        except StopIteration:
            self.exhausted = True
            raise
        self.line_no += 1
        return line

    def __iter__(self) -> _RowFeeder:
        return self

    def __next__(self) -> str:
        line = self._next_line()
        if isinstance(line, TooLong):
            self._quotes += line.quotes
            self._row_bytes += line.size
        else:
            self._quotes += line.count(b'"')
            self._row_bytes += len(line) + 1
        if self._row_bytes > self._max:
            self.skip_rest()
            raise _BadRow(ROW_TOO_LARGE, f"is over the limit of {self._max} bytes for one row")
        try:
            return line.decode("utf-8") + "\n"
        except UnicodeDecodeError as exc:
            bad_line = self.line_no
            self.skip_rest()
            raise _BadRow(INVALID_UTF8, f"is not valid UTF-8 at byte {exc.start} of line {bad_line}") from None

    def skip_rest(self) -> None:
        """Drop the lines left in the current row."""
        while self.in_quotes:
            try:
                line = self._next_line()
            except StopIteration:
                return
            self._quotes += line.quotes if isinstance(line, TooLong) else line.count(b'"')


def _delimiter(header_line: bytes) -> str:
    """Commas, unless the header has none but has tabs or semicolons (spreadsheet exports)."""
    if b"," not in header_line:
        for delimiter in (b"\t", b";"):
            if delimiter in header_line:
                return delimiter.decode()
    return ","


def _columns(header: list[str], options: JobOptions, line: int) -> tuple[int, int, int | None]:
    def find(column: str) -> int | None:
        if column in header:
            return header.index(column)
        folded = [name.casefold() for name in header]
        return folded.index(column.casefold()) if column.casefold() in folded else None

    found = ", ".join(repr(name) for name in header) or "none"
    indexes = {}
    for option, column in (("id_column", options.id_column), ("text_column", options.text_column)):
        index = find(column)
        if index is None:
            raise InputError(MISSING_COLUMN, (
                f"The CSV header has no column {column!r}: rename the column, or set the {option} option "
                f"(object metadata) to the column's name (columns found: {found})."
            ), line=line)
        indexes[option] = index
    return indexes["id_column"], indexes["text_column"], find(options.title_column)


def read_csv(content: Content, *, options: JobOptions, limits: ReadLimits) -> Iterator[Item]:
    """A header row naming the columns, then one record per row.

    The id, text and title columns are named by the options (matched exactly, else ignoring case); the
    other columns become string metadata, empty cells left out. Lines are counted in the file, a row by
    its first line. Rows over the size limit, with invalid UTF-8 or the wrong number of fields are
    reported and skipped; rows of empty cells are skipped silently. Commas separate fields, unless the
    header has none but has tabs or semicolons.
    """
    # The csv module's limit is per field and process-wide: raise it to the row limit, which the feeder
    # enforces itself, so no field can trip it first.
    if csv.field_size_limit() < limits.max_record_bytes:
        csv.field_size_limit(limits.max_record_bytes)
    lines = iter_lines(utf8_reader(content), limits.max_record_bytes)
    first = _first_line(lines)
    if first is None:
        raise InputError(EMPTY_INPUT, "The CSV file is empty: write a header row, then one row per record.")
    header_line_no, header_line = first
    if isinstance(header_line, TooLong):
        raise InputError(ROW_TOO_LARGE, (
            f"The CSV header on line {header_line_no} is over the limit of {limits.max_record_bytes} bytes: "
            "check that the file is a CSV with one header row."
        ), line=header_line_no)
    feeder = _RowFeeder(_chain(header_line, lines), limits.max_record_bytes)
    feeder.line_no = header_line_no - 1
    reader = csv.reader(feeder, delimiter=_delimiter(header_line))
    try:
        header = [name.strip() for name in next(reader)]
    except _BadRow as bad:
        raise InputError(bad.code, (
            f"The CSV header {bad.detail}: save the file as UTF-8 with one header row."
        ), line=header_line_no) from None
    except csv.Error as exc:
        raise InputError(MALFORMED_ROW, (
            f"The CSV header on line {header_line_no} cannot be parsed ({exc}): fix its quoting."
        ), line=header_line_no) from None
    id_index, text_index, title_index = _columns(header, options, header_line_no)
    names = [name or f"column_{index + 1}" for index, name in enumerate(header)]
    metadata_columns = [
        (index, name) for index, name in enumerate(names)
        if index not in (id_index, text_index, title_index) and name not in names[:index]
    ]
    seen = SeenIds()
    rows = 0
    while True:
        line = feeder.line_no + 1
        feeder.begin_row()
        try:
            row = next(reader)
        except StopIteration:
            break
        except _BadRow as bad:
            rows += 1
            yield InputProblem(bad.code, f"The row on line {line} {bad.detail}: fix or remove the row.", line=line)
            continue
        except csv.Error as exc:
            rows += 1
            feeder.skip_rest()
            yield InputProblem(MALFORMED_ROW, (
                f"The row on line {line} cannot be parsed ({exc}): fix its quoting or remove the row."
            ), line=line)
            continue
        if not any(cell.strip() for cell in row):
            continue  # blank lines, and rows of empty cells that spreadsheets append
        rows += 1
        yield _csv_record(row, line, header, feeder, id_index, text_index, title_index, metadata_columns,
                          limits, seen)
    if rows == 0:
        raise InputError(EMPTY_INPUT, "The CSV file has a header but no rows: add one row per record.")


def _csv_record(row: list[str], line: int, header: list[str], feeder: _RowFeeder, id_index: int,
                text_index: int, title_index: int | None, metadata_columns: list[tuple[int, str]],
                limits: ReadLimits, seen: SeenIds) -> Item:
    if feeder.exhausted and feeder.in_quotes:
        return InputProblem(MALFORMED_ROW, (
            f"The row on line {line} opens a quoted field that never closes: add the closing quote."
        ), line=line)
    if len(row) != len(header):
        return InputProblem(MALFORMED_ROW, (
            f"The row on line {line} has {_fields(len(row))} but the header has {len(header)}: quote fields "
            "that contain the delimiter, or fix the row."
        ), line=line)
    record_id = row[id_index]
    if not record_id.strip():
        return InputProblem(MISSING_ID, (
            f"The row on line {line} has an empty {header[id_index]!r} cell: give every row an id."
        ), line=line)
    title = row[title_index] if title_index is not None else None
    metadata = {name: row[index] for index, name in metadata_columns if row[index] != ""}
    return _finish(record_id, row[text_index], title, metadata, line, limits, seen)


def _fields(count: int) -> str:
    return "1 field" if count == 1 else f"{count} fields"


def _first_line(lines: Iterator[bytes | TooLong]) -> tuple[int, bytes | TooLong] | None:
    """The first line that is not blank, with its number."""
    for number, line in enumerate(lines, 1):
        if isinstance(line, TooLong) or line.strip():
            return number, line
    return None


def _chain(first: bytes, rest: Iterator[bytes | TooLong]) -> Iterator[bytes | TooLong]:
    yield first
    yield from rest
