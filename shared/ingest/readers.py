"""One reader per format, from opened content to records and problems, resumable.

Per-record problems are yielded in file order among the records; fatal ones are raised as `InputError`
after everything before them was yielded. Readers never look at `on_bad_record`: the caller counts.

Each reader is built either fresh or from a `ReadPosition` (its content then continues at the position's
offset: `positioned`, or from the start, and the reader skips to it). Between two items, `cursor()` gives
the fields of the position right after the last one: the reader's state, nothing else, lives in them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import orjson

from shared.domain.options import JobOptions
from shared.domain.records import InputProblem, Record
from shared.ingest.decoding import Content, LineReader, TooLong, iter_text, skip, utf8_reader
from shared.ingest.ids import SeenIds
from shared.ingest.limits import ReadLimits
from shared.ingest.position import HEADER_INLINE_CHARS, ReadPosition
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
from shared.ingest.splitter import SplitState, split_passages
from shared.ingest.tokens import estimate_tokens

__all__ = ["CsvReader", "DocumentReader", "JsonlReader"]

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

    def __init__(self, content: Content, offset: int):
        self._blocks = iter_text(content, offset=offset)
        self.error: InputError | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._blocks
        except InputError as exc:
            self.error = exc


class DocumentReader:
    """Passages of one document as records `{name}#{index}`, with their offsets in the decoded text."""

    def __init__(self, content: Content, *, name: str, options: JobOptions, limits: ReadLimits,
                 markdown: bool = False, resume: ReadPosition | None = None, positioned: bool = False):
        self._name = name
        state = None
        if resume is not None:
            state = SplitState(resume.char_offset, resume.offset, resume.start, resume.cut)
            if not positioned:
                content = dataclasses.replace(content, read=skip(content.read, resume.offset))
        self._text = _Text(content, resume.offset if resume else 0)
        self._splitter = split_passages(
            self._text,
            max_tokens=min(options.chunk_size, limits.max_input_tokens),
            overlap=options.chunk_overlap,
            markdown=markdown,
            resume=state,
            encoding=content.encoding,
        )
        self._index = resume.passage if resume else 0
        self.raw_resumable = True  # offsets count the content's own bytes

    def items(self) -> Iterator[Item]:
        for passage in self._splitter:
            index = self._index
            self._index += 1
            yield Record(
                id=f"{self._name}#{index}",
                text=passage.text,
                metadata={"passage": index, "char_start": passage.start, "char_end": passage.end},
            )
        if self._text.error is not None:
            raise self._text.error
        if self._index == 0:
            raise InputError(EMPTY_INPUT, "The document has no text, only whitespace: upload a file with text to embed.")

    def cursor(self) -> dict[str, Any]:
        state = self._splitter.state()
        return {"offset": state.origin_bytes, "char_offset": state.origin, "start": state.start,
                "cut": state.cut, "passage": self._index}


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


def _lines(content: Content, limits: ReadLimits, resume: ReadPosition | None, positioned: bool) -> LineReader:
    """The content's lines as UTF-8, from the start or from the resume position."""
    read = utf8_reader(content)
    if resume is None:
        return LineReader(read, limits.max_record_bytes)
    if not positioned:
        read = skip(read, resume.offset)
    return LineReader(read, limits.max_record_bytes, offset=resume.offset, after_cr=resume.after_cr)


class JsonlReader:
    """One record per line; blank lines skipped; per-line problems; EMPTY_INPUT when no line has content."""

    def __init__(self, content: Content, *, limits: ReadLimits, seen: SeenIds,
                 resume: ReadPosition | None = None, positioned: bool = False):
        self._limits = limits
        self._seen = seen
        self._lines = _lines(content, limits, resume, positioned)
        self._line_no = resume.line if resume else 0
        self._any_content = bool(resume and resume.items)  # every line with content gives an item
        self.raw_resumable = content.encoding == "utf-8"  # else offsets count transcoded bytes

    def items(self) -> Iterator[Item]:
        limits, seen = self._limits, self._seen
        for line in self._lines:
            self._line_no += 1
            line_no = self._line_no
            if isinstance(line, TooLong):
                self._any_content = True
                yield InputProblem(RECORD_TOO_LARGE, (
                    f"Line {line_no} is {line.size} bytes, over the limit of {limits.max_record_bytes} bytes "
                    "for one record: split its text into smaller records."
                ), line=line_no)
                continue
            if not line.strip():
                continue
            self._any_content = True
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield _json_error(line, line_no, exc)
                continue
            yield _json_record(value, line_no, limits, seen)
        if not self._any_content:
            raise InputError(EMPTY_INPUT, "The file has no records, only blank lines: write one JSON object per line.")

    def cursor(self) -> dict[str, Any]:
        return {"offset": self._lines.offset, "line": self._line_no, "after_cr": self._lines.after_cr,
                "accepted": len(self._seen)}


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


class _Header:
    """What a CSV's header row tells: its cells, the delimiter, the columns to read."""

    def __init__(self, cells: list[str], delimiter: str, options: JobOptions, line: int):
        self.cells = cells
        self.delimiter = delimiter
        self.id_index, self.text_index, self.title_index = _columns(cells, options, line)
        names = [name or f"column_{index + 1}" for index, name in enumerate(cells)]
        self.metadata_columns = [
            (index, name) for index, name in enumerate(names)
            if index not in (self.id_index, self.text_index, self.title_index) and name not in names[:index]
        ]
        self.inline = len(json.dumps(cells)) <= HEADER_INLINE_CHARS  # small enough for a ReadPosition


class CsvReader:
    """A header row naming the columns, then one record per row.

    The id, text and title columns are named by the options (matched exactly, else ignoring case); the
    other columns become string metadata, empty cells left out. Lines are counted in the file, a row by
    its first line. Rows over the size limit, with invalid UTF-8 or the wrong number of fields are
    reported and skipped; rows of empty cells are skipped silently. Commas separate fields, unless the
    header has none but has tabs or semicolons.
    """

    def __init__(self, content: Content, *, options: JobOptions, limits: ReadLimits, seen: SeenIds,
                 resume: ReadPosition | None = None, positioned: bool = False):
        # The csv module's limit is per field and process-wide: raise it to the row limit, which the
        # feeder enforces itself, so no field can trip it first.
        if csv.field_size_limit() < limits.max_record_bytes:
            csv.field_size_limit(limits.max_record_bytes)
        self._content = content
        self._options = options
        self._limits = limits
        self._seen = seen
        self._resume = resume
        self._positioned = positioned
        self._header: _Header | None = None
        self._lines: LineReader | None = None
        self._feeder: _RowFeeder | None = None
        self._any_row = bool(resume and resume.items)  # every row after the header gives an item

    @property
    def raw_resumable(self) -> bool:
        return self._content.encoding == "utf-8" and self._header is not None and self._header.inline

    def items(self) -> Iterator[Item]:
        resume = self._resume
        if resume is not None and resume.header is not None:
            self._lines = _lines(self._content, self._limits, resume, self._positioned)
            self._header = _Header(list(resume.header), resume.delimiter, self._options, resume.line)
            self._feeder = _RowFeeder(self._lines, self._limits.max_record_bytes)
            self._feeder.line_no = resume.line
        else:
            self._lines = _lines(self._content, self._limits, None, False)
            self._read_header()
            if resume is not None:  # its header was too long to keep: read again, then skip rows
                self._skip_to(resume)
        yield from self._rows()

    def _read_header(self) -> None:
        lines, limits = self._lines, self._limits
        first = _first_line(lines)
        if first is None:
            raise InputError(EMPTY_INPUT, "The CSV file is empty: write a header row, then one row per record.")
        header_line_no, header_line = first
        if isinstance(header_line, TooLong):
            raise InputError(ROW_TOO_LARGE, (
                f"The CSV header on line {header_line_no} is over the limit of {limits.max_record_bytes} "
                "bytes: check that the file is a CSV with one header row."
            ), line=header_line_no)
        feeder = _RowFeeder(_chain(header_line, lines), limits.max_record_bytes)
        feeder.line_no = header_line_no - 1
        delimiter = _delimiter(header_line)
        try:
            cells = [name.strip() for name in next(csv.reader(feeder, delimiter=delimiter))]
        except _BadRow as bad:
            raise InputError(bad.code, (
                f"The CSV header {bad.detail}: save the file as UTF-8 with one header row."
            ), line=header_line_no) from None
        except csv.Error as exc:
            raise InputError(MALFORMED_ROW, (
                f"The CSV header on line {header_line_no} cannot be parsed ({exc}): fix its quoting."
            ), line=header_line_no) from None
        self._header = _Header(cells, delimiter, self._options, header_line_no)
        self._feeder = feeder

    def _skip_to(self, resume: ReadPosition) -> None:
        """Drop the lines up to the resume position (it is at a row's end)."""
        lines, feeder = self._lines, self._feeder
        while lines.offset < resume.offset and next(lines, None) is not None:
            feeder.line_no += 1
        if (lines.offset, feeder.line_no) != (resume.offset, resume.line):
            raise ValueError(f"the content does not match the resume position (line {feeder.line_no} at "
                             f"byte {lines.offset}, not line {resume.line} at byte {resume.offset})")

    def _rows(self) -> Iterator[Item]:
        header, feeder, limits, seen = self._header, self._feeder, self._limits, self._seen
        reader = csv.reader(feeder, delimiter=header.delimiter)
        while True:
            line = feeder.line_no + 1
            feeder.begin_row()
            try:
                row = next(reader)
            except StopIteration:
                break
            except _BadRow as bad:
                self._any_row = True
                yield InputProblem(bad.code, f"The row on line {line} {bad.detail}: fix or remove the row.", line=line)
                continue
            except csv.Error as exc:
                self._any_row = True
                feeder.skip_rest()
                yield InputProblem(MALFORMED_ROW, (
                    f"The row on line {line} cannot be parsed ({exc}): fix its quoting or remove the row."
                ), line=line)
                continue
            if not any(cell.strip() for cell in row):
                continue  # blank lines, and rows of empty cells that spreadsheets append
            self._any_row = True
            yield _csv_record(row, line, header, feeder, limits, seen)
        if not self._any_row:
            raise InputError(EMPTY_INPUT, "The CSV file has a header but no rows: add one row per record.")

    def cursor(self) -> dict[str, Any]:
        header = self._header
        return {"offset": self._lines.offset, "line": self._feeder.line_no, "after_cr": self._lines.after_cr,
                "accepted": len(self._seen), "delimiter": header.delimiter,
                "header": tuple(header.cells) if header.inline else None}


def _csv_record(row: list[str], line: int, header: _Header, feeder: _RowFeeder, limits: ReadLimits,
                seen: SeenIds) -> Item:
    if feeder.exhausted and feeder.in_quotes:
        return InputProblem(MALFORMED_ROW, (
            f"The row on line {line} opens a quoted field that never closes: add the closing quote."
        ), line=line)
    cells = header.cells
    if len(row) != len(cells):
        return InputProblem(MALFORMED_ROW, (
            f"The row on line {line} has {_fields(len(row))} but the header has {len(cells)}: quote fields "
            "that contain the delimiter, or fix the row."
        ), line=line)
    record_id = row[header.id_index]
    if not record_id.strip():
        return InputProblem(MISSING_ID, (
            f"The row on line {line} has an empty {cells[header.id_index]!r} cell: give every row an id."
        ), line=line)
    title = row[header.title_index] if header.title_index is not None else None
    metadata = {name: row[index] for index, name in header.metadata_columns if row[index] != ""}
    return _finish(record_id, row[header.text_index], title, metadata, line, limits, seen)


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
