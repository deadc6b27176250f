"""The entry point: an object's stored bytes in, records to embed and problems out, streaming."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

from shared.domain.options import JobOptions
from shared.domain.records import InputProblem, Record
from shared.ingest.decoding import open_content
from shared.ingest.formats import InputFormat, detect_format, is_markdown, supported_types_text
from shared.ingest.limits import ReadLimits
from shared.ingest.problems import UNSUPPORTED_TYPE, InputError
from shared.ingest.readers import read_csv, read_document, read_jsonl

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.domain.jobs import SourceObject

__all__ = ["read_records", "read_source"]


def read_source(
    stream: BinaryIO, source: SourceObject, options: JobOptions, settings: Settings,
) -> Iterator[Record | InputProblem]:
    """The records of a job's source object (its stored bytes in `stream`), read exactly as staging reads
    them: the same items in the same order, so the same ids. `embedpipe search` relies on that."""
    limits = ReadLimits(max_record_bytes=settings.max_record_bytes,
                        max_decompressed_bytes=settings.max_decompressed_bytes)
    return read_records(stream, name=source.name, content_type=source.content_type, options=options,
                        limits=limits, content_encoding=source.content_encoding)


def read_records(
    stream: BinaryIO,
    *,
    name: str,
    content_type: str | None,
    options: JobOptions,
    limits: ReadLimits = ReadLimits(),  # noqa: B008 - frozen, so one shared default is safe
    content_encoding: str | None = None,
) -> Iterator[Record | InputProblem]:
    """The records of the object `name`, and the problems met, in file order.

    `stream` gives the object's stored bytes (gzip or not), read sequentially in blocks: it is never
    sought, never read whole, and needs only `read(n)`. Memory stays bounded whatever the size: one block,
    one line or row of at most `limits.max_record_bytes`, one splitting window, and about 8 bytes per id
    seen (to report duplicates).

    The format comes from `detect_format(name, content_type)`; gzip from the content's magic bytes. A
    fatal problem (`InputProblem.fatal`) is the last item: records yielded before it stay valid. Other
    problems concern one record, which is skipped; reading goes on whatever `options.on_bad_record` says,
    the caller counts and decides. Errors of the stream itself (network, storage) propagate as they are.
    """
    input_format = detect_format(name, content_type)
    if input_format is None:
        shown_type = f"content type {content_type}" if content_type else "no content type"
        yield InputProblem(UNSUPPORTED_TYPE, (
            f"Cannot tell the format of {name!r} ({shown_type}): {supported_types_text()}."
        ), fatal=True)
        return
    try:
        content = open_content(
            stream, max_decompressed_bytes=limits.max_decompressed_bytes, content_encoding=content_encoding,
        )
        if input_format is InputFormat.DOCUMENT:
            yield from read_document(content, name=name, options=options, limits=limits,
                                     markdown=is_markdown(name, content_type))
        elif input_format is InputFormat.JSONL:
            yield from read_jsonl(content, limits=limits)
        else:
            yield from read_csv(content, options=options, limits=limits)
    except InputError as exc:
        yield exc.problem
