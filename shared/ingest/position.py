"""Where a read stands after an item: enough to continue it in another process, exactly as if uninterrupted.

A `ReadPosition` is small (well under 2 KB as JSON, whatever the input: a CSV header longer than
`HEADER_INLINE_CHARS` is left out and read again) and plain data (`to_dict` / `from_dict`). To continue:

    stream = open the object at byte `position.open_at`   (a ranged read; 0 unless `raw_offset` is set)
    read_records(stream, ..., resume=position, seen_ids=SeenIds.load(...))

When `raw_offset` is set (the object is stored uncompressed, and the offset counts its own bytes:
documents in any encoding, JSONL and CSV in UTF-8), nothing before it is read again. Otherwise the reader
reads the object from byte 0 and drops the content before `offset` without parsing it: gzip is inflated
(zlib's state cannot be saved), UTF-16/32 lines are transcoded, a CSV with a long header re-reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["HEADER_INLINE_CHARS", "ReadPosition"]

VERSION = 1
#: A CSV header whose names take more characters than this is not kept in the position.
HEADER_INLINE_CHARS = 1024
_FORMATS = ("document", "jsonl", "csv")


@dataclass(frozen=True)
class ReadPosition:
    """Right after the `items`-th item of a read (0: the start)."""

    format: str  # document, jsonl or csv
    fingerprint: str  # the object's name, format and reading options it was taken with (a digest)
    items: int  # items (records and problems) given before it
    done: bool = False  # nothing follows: the input ended, or a fatal problem was the last item
    encoding: str = "utf-8"  # the content's codec
    bom_length: int = 0  # bytes of byte-order mark at the start of the content
    compressed: bool = False  # gzip
    offset: int = 0  # content bytes (after the mark) consumed: in `encoding` for documents, as UTF-8 else
    raw_offset: int | None = None  # byte of the stored object to continue from, when it can be range-read
    line: int = 0  # JSONL and CSV: lines consumed
    after_cr: bool = False  # the last line consumed ended with a lone CR: an LF next belongs to it
    accepted: int = 0  # JSONL and CSV: records given, so ids remembered (SeenIds)
    delimiter: str = ","  # CSV
    header: tuple[str, ...] | None = None  # CSV: the header's cells; None when longer than allowed
    passage: int = 0  # documents: the next passage's number
    char_offset: int = 0  # documents: the code point at `offset`
    start: int = 0  # documents: the code point where the next passage starts
    cut: int = 0  # documents: the code point where the last passage was cut

    @property
    def open_at(self) -> int:
        """The byte of the stored object the stream given to resume must start at."""
        return self.raw_offset if self.raw_offset is not None else 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = VERSION
        if self.header is not None:
            data["header"] = list(self.header)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReadPosition:
        """The position `to_dict` gave `data` of; ValueError naming the field for anything else."""
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"not a read position of version {VERSION}: {str(data)[:80]!r}")
        known = {field.name: field for field in fields(cls)}
        unknown = sorted(set(data) - set(known) - {"version"})
        if unknown:
            raise ValueError(f"unknown read position fields: {', '.join(unknown)}")
        values = {name: value for name, value in data.items() if name != "version"}
        header = values.get("header")
        if header is not None:
            if not isinstance(header, list | tuple) or not all(isinstance(cell, str) for cell in header):
                raise ValueError("read position field header must be a list of strings or null")
            values["header"] = tuple(header)
        try:
            position = cls(**values)
        except TypeError as exc:
            raise ValueError(f"incomplete read position: {exc}") from None
        position._check()
        return position

    def _check(self) -> None:
        if self.format not in _FORMATS:
            raise ValueError(f"read position field format must be one of {', '.join(_FORMATS)}, not {self.format!r}")
        for name in ("fingerprint", "encoding", "delimiter"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"read position field {name} must be a string")
        for name in ("done", "compressed", "after_cr"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"read position field {name} must be true or false")
        for name in ("items", "bom_length", "offset", "line", "accepted", "passage", "char_offset", "start", "cut"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"read position field {name} must be a non-negative integer, not {value!r}")
        raw = self.raw_offset
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int) or raw < 0):
            raise ValueError(f"read position field raw_offset must be a non-negative integer or null, not {raw!r}")
        if not self.char_offset <= self.start <= self.cut:
            raise ValueError("read position fields must satisfy char_offset <= start <= cut")
