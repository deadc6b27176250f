"""The entry point: an object's stored bytes in, records to embed and problems out, streaming, resumable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from hashlib import blake2b
from typing import TYPE_CHECKING, BinaryIO

from shared.domain.options import JobOptions
from shared.domain.records import InputProblem, Record
from shared.ingest.decoding import Content, open_content
from shared.ingest.formats import InputFormat, detect_format, is_markdown, supported_types_text
from shared.ingest.ids import SeenIds
from shared.ingest.limits import ReadLimits
from shared.ingest.position import ReadPosition
from shared.ingest.problems import UNSUPPORTED_TYPE, InputError
from shared.ingest.readers import CsvReader, DocumentReader, JsonlReader
from shared.ingest.splitter import SPLITTER_VERSION

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.domain.jobs import SourceObject

__all__ = ["RecordReader", "read_records", "read_source"]

Item = Record | InputProblem


def read_source(
    stream: BinaryIO, source: SourceObject, options: JobOptions, settings: Settings, *,
    resume: ReadPosition | None = None, seen_ids: SeenIds | None = None,
) -> RecordReader:
    """The records of a job's source object (its stored bytes in `stream`), read exactly as staging reads
    them: the same items in the same order, so the same ids. `embedpipe search` relies on that."""
    limits = ReadLimits(max_record_bytes=settings.max_record_bytes,
                        max_decompressed_bytes=settings.max_decompressed_bytes)
    return read_records(stream, name=source.name, content_type=source.content_type, options=options,
                        limits=limits, content_encoding=source.content_encoding, resume=resume,
                        seen_ids=seen_ids)


def read_records(
    stream: BinaryIO,
    *,
    name: str,
    content_type: str | None,
    options: JobOptions,
    limits: ReadLimits = ReadLimits(),  # noqa: B008 - frozen, so one shared default is safe
    content_encoding: str | None = None,
    resume: ReadPosition | None = None,
    seen_ids: SeenIds | None = None,
) -> RecordReader:
    """The records of the object `name`, and the problems met, in file order.

    `stream` gives the object's stored bytes (gzip or not), read sequentially in blocks: it is never
    sought, never read whole, and needs only `read(n)`. Memory stays bounded whatever the size: one block,
    one line or row of at most `limits.max_record_bytes`, one splitting window, and about 8 bytes per id
    seen (to report duplicates).

    The format comes from `detect_format(name, content_type)`; gzip from the content's magic bytes. A
    fatal problem (`InputProblem.fatal`) is the last item: records yielded before it stay valid. Other
    problems concern one record, which is skipped; reading goes on whatever `options.on_bad_record` says,
    the caller counts and decides. Errors of the stream itself (network, storage) propagate as they are.

    Resuming: `resume` is a `RecordReader.position()` taken by an earlier read of the same object
    generation with the same options; `stream` must then start at the object's byte `resume.open_at`,
    and the items are exactly those that followed the position. `seen_ids` are the ids of the records
    given before it (`SeenIds.load` of the earlier reader's `seen_ids.dump()`, or `SeenIds.of` the staged
    records' ids), so duplicates are reported across the whole file; a fresh read starts an empty set.
    Raises ValueError when the position does not fit the object or the options.
    """
    return RecordReader(stream, name=name, content_type=content_type, options=options, limits=limits,
                        content_encoding=content_encoding, resume=resume, seen_ids=seen_ids)


def _fingerprint(input_format: InputFormat, name: str, markdown: bool, options: JobOptions,
                 limits: ReadLimits) -> str:
    """What the items depend on besides the object's bytes, as a short digest."""
    parts: list[object] = [input_format.value, name, markdown, limits.max_record_bytes,
                           limits.max_decompressed_bytes, limits.max_input_tokens]
    if input_format is InputFormat.DOCUMENT:
        parts += [options.chunk_size, options.chunk_overlap, SPLITTER_VERSION]
    elif input_format is InputFormat.CSV:
        parts += [options.id_column, options.text_column, options.title_column]
    return blake2b(json.dumps(parts).encode(), digest_size=8).hexdigest()


class RecordReader:
    """The items of one read, and `position()` after any of them (see `read_records`)."""

    def __init__(self, stream: BinaryIO, *, name: str, content_type: str | None, options: JobOptions,
                 limits: ReadLimits, content_encoding: str | None, resume: ReadPosition | None,
                 seen_ids: SeenIds | None):
        self._stream = stream
        self._name = name
        self._content_type = content_type
        self._options = options
        self._limits = limits
        self._content_encoding = content_encoding
        self._format = detect_format(name, content_type)
        self._markdown = is_markdown(name, content_type)
        self._fingerprint = "" if self._format is None else _fingerprint(
            self._format, name, self._markdown, options, limits)
        if resume is not None and resume.items == 0 and not resume.done:
            resume = None  # the start: a fresh read
        self._check(resume, seen_ids)
        self._resume = resume
        self._seen_ids = seen_ids
        self._items_given = resume.items if resume else 0
        self._done = bool(resume and resume.done)
        self._content: Content | None = None
        self._reader: DocumentReader | JsonlReader | CsvReader | None = None
        self._items = iter(()) if self._done else self._read()

    def _check(self, resume: ReadPosition | None, seen_ids: SeenIds | None) -> None:
        if resume is None or resume.done:
            return  # nothing follows a done position, whatever it was taken from
        if self._format is None or resume.format != self._format.value or resume.fingerprint != self._fingerprint:
            raise ValueError(f"the resume position was taken from another object or with other options "
                             f"(format {resume.format}, fingerprint {resume.fingerprint}): resume only the "
                             "same object generation, read with the same options and limits")
        if self._format is not InputFormat.DOCUMENT:
            count = len(seen_ids) if seen_ids is not None else 0
            if count != resume.accepted:
                raise ValueError(f"the resume position follows {resume.accepted} accepted records but "
                                 f"seen_ids holds {count} ids: pass the SeenIds dumped with the position, "
                                 "or SeenIds.of the ids of the records staged before it")

    @property
    def seen_ids(self) -> SeenIds:
        """The ids of the records given so far (JSONL, CSV; documents need none): dump it with a position."""
        if self._seen_ids is None:
            self._seen_ids = SeenIds()  # on demand: its bitmap takes 4 MB
        return self._seen_ids

    def __iter__(self) -> RecordReader:
        return self

    def __next__(self) -> Item:
        try:
            item = next(self._items)
        except StopIteration:
            self._done = True
            raise
        self._items_given += 1
        if isinstance(item, InputProblem) and item.fatal:
            self._done = True
        return item

    def position(self) -> ReadPosition:
        """Where the read stands right after the last item given: resuming there gives the items that
        would have followed it. Small and JSON-ready (`to_dict`)."""
        fields = {"format": self._format.value if self._format else "document",
                  "fingerprint": self._fingerprint, "items": self._items_given}
        if self._done:
            return ReadPosition(**fields, done=True)
        if self._reader is None:  # no item given yet by this reader
            return self._resume or ReadPosition(**fields)
        content = self._content
        cursor = self._reader.cursor()
        raw = not content.compressed and self._reader.raw_resumable
        return ReadPosition(
            **fields, encoding=content.encoding, bom_length=content.bom_length, compressed=content.compressed,
            raw_offset=content.bom_length + cursor["offset"] if raw else None, **cursor,
        )

    def _read(self) -> Iterator[Item]:
        if self._format is None:
            shown_type = f"content type {self._content_type}" if self._content_type else "no content type"
            yield InputProblem(UNSUPPORTED_TYPE, (
                f"Cannot tell the format of {self._name!r} ({shown_type}): {supported_types_text()}."
            ), fatal=True)
            return
        try:
            positioned = self._open()
            self._reader = self._format_reader(positioned)
            yield from self._reader.items()
        except InputError as exc:
            yield exc.problem

    def _open(self) -> bool:
        """Open the content; True when the stream starts at the resume position's offset."""
        resume = self._resume
        if resume is not None and resume.raw_offset is not None:
            self._content = Content(read=self._stream.read, encoding=resume.encoding,
                                    bom_length=resume.bom_length, compressed=False)
            return True
        self._content = open_content(self._stream, max_decompressed_bytes=self._limits.max_decompressed_bytes,
                                     content_encoding=self._content_encoding)
        if resume is not None:
            found = (self._content.encoding, self._content.bom_length, self._content.compressed)
            if found != (resume.encoding, resume.bom_length, resume.compressed):
                raise ValueError(f"the content is {found}, not {(resume.encoding, resume.bom_length, resume.compressed)} "
                                 "as when the resume position was taken: resume only the same object generation")
        return False

    def _format_reader(self, positioned: bool) -> DocumentReader | JsonlReader | CsvReader:
        content, resume, limits = self._content, self._resume, self._limits
        if self._format is InputFormat.DOCUMENT:
            return DocumentReader(content, name=self._name, options=self._options, limits=limits,
                                  markdown=self._markdown, resume=resume, positioned=positioned)
        if self._format is InputFormat.JSONL:
            return JsonlReader(content, limits=limits, seen=self.seen_ids, resume=resume, positioned=positioned)
        return CsvReader(content, options=self._options, limits=limits, seen=self.seen_ids, resume=resume,
                         positioned=positioned)
