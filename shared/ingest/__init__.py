"""Ingestion, input side: a landed object's bytes read into records to embed, streaming, resumable.

    read_records(stream, name=..., content_type=..., options=..., limits=..., content_encoding=...,
                 resume=None, seen_ids=None) -> RecordReader (an Iterator[Record | InputProblem])
    read_source(stream, job.source, job.options, settings, resume=None, seen_ids=None)
        the same for a job's source object, with the deployment's limits: how staging reads it

    reader.position() -> ReadPosition   after any item: to_dict() it; later, open the object at
        position.open_at and read_source(..., resume=ReadPosition.from_dict(d), seen_ids=...) gives exactly
        the items that followed it. reader.seen_ids.dump() / SeenIds.load(): the ids given so far.

Modules, by responsibility:
    formats     the format of an object, from its name or content type
    decoding    gzip (streaming, bounded), byte-order marks, binary sniffing, text blocks, bounded lines
    readers     documents (.txt/.md, split into passages), JSONL, CSV
    position    `ReadPosition`: where a read stands, to resume it
    splitter    the token-aware passage splitter, boundaries chosen by content
    tokens      `estimate_tokens`, a fast estimate of Gemini's token count, and `TokenIndex`
    ids         duplicate-id detection in about 8 bytes per id, serialisable
    problems    the problem codes
    limits      `ReadLimits`
"""

from shared.ingest import problems
from shared.ingest.formats import InputFormat, detect_format
from shared.ingest.ids import SeenIds
from shared.ingest.limits import ReadLimits
from shared.ingest.position import ReadPosition
from shared.ingest.read import RecordReader, read_records, read_source
from shared.ingest.tokens import estimate_tokens

__all__ = [
    "InputFormat", "ReadLimits", "ReadPosition", "RecordReader", "SeenIds", "detect_format", "estimate_tokens",
    "problems", "read_records", "read_source",
]
