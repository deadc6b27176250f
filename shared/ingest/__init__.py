"""Ingestion, input side: a landed object's bytes read into records to embed, streaming.

    read_records(stream, name=..., content_type=..., options=..., limits=..., content_encoding=...)
        -> Iterator[Record | InputProblem]
    read_source(stream, job.source, job.options, settings)
        the same for a job's source object, with the deployment's limits: how staging reads it

Modules, by responsibility:
    formats     the format of an object, from its name or content type
    decoding    gzip (streaming, bounded), byte-order marks, binary sniffing, text blocks, bounded lines
    readers     documents (.txt/.md, split into passages), JSONL, CSV
    splitter    the token-aware passage splitter
    tokens      `estimate_tokens`, a fast estimate of Gemini's token count
    ids         duplicate-id detection in about 8 bytes per id
    problems    the problem codes
    limits      `ReadLimits`
"""

from shared.ingest import problems
from shared.ingest.formats import InputFormat, detect_format
from shared.ingest.limits import ReadLimits
from shared.ingest.read import read_records, read_source
from shared.ingest.tokens import estimate_tokens

__all__ = ["InputFormat", "ReadLimits", "detect_format", "estimate_tokens", "problems", "read_records", "read_source"]
