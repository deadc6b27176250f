"""Helpers of the ingestion tests: a stream like a GCS download, and short ways to read bytes."""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from typing import Any

from shared.domain.options import JobOptions
from shared.domain.records import InputProblem, Record
from shared.ingest import ReadLimits, read_records


class DownloadStream:
    """Only `read(n)`, and short reads of at most `block` bytes: no seek, no peek, no readline."""

    def __init__(self, data: bytes | Iterable[bytes], block: int = 4093):
        self._parts: Iterator[bytes] = iter([data]) if isinstance(data, bytes) else iter(data)
        self._pending = b""
        self._block = block
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        while not self._pending:
            part = next(self._parts, None)
            if part is None:
                return b""
            self._pending = part
        take = self._block if size is None or size < 0 else min(size, self._block)
        out, self._pending = self._pending[:take], self._pending[take:]
        self.bytes_read += len(out)
        return out


def read(data: bytes | Iterable[bytes], name: str = "input.jsonl", *, content_type: str | None = None,
         limits: ReadLimits | None = None, content_encoding: str | None = None, block: int = 4093,
         **options: Any) -> list[Record | InputProblem]:
    return list(read_records(
        DownloadStream(data, block), name=name, content_type=content_type, options=JobOptions(**options),
        limits=limits or ReadLimits(), content_encoding=content_encoding,
    ))


def records(items: list[Record | InputProblem]) -> list[Record]:
    return [item for item in items if isinstance(item, Record)]


def problems(items: list[Record | InputProblem]) -> list[InputProblem]:
    return [item for item in items if isinstance(item, InputProblem)]


def codes(items: list[Record | InputProblem]) -> list[str]:
    return [item.code for item in problems(items)]


def only_problem(items: list[Record | InputProblem]) -> InputProblem:
    found = problems(items)
    assert len(found) == 1, found
    return found[0]


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def assert_one_sentence(problem: InputProblem) -> None:
    """Messages are one sentence a user can act on: a capital, one final period, an instruction."""
    message = problem.message
    assert message[0].isupper(), message
    assert message.endswith("."), message
    assert ": " in message, message  # what is wrong: what to do
    assert "\n" not in message, message


def jsonl(*lines: str | bytes) -> bytes:
    return b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines)


__all__ = [
    "DownloadStream", "assert_one_sentence", "codes", "gz", "jsonl", "only_problem", "problems", "read",
    "records",
]
