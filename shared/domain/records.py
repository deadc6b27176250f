"""What a landed file is read into: records to embed, and the problems found on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["InputProblem", "Record"]


@dataclass(frozen=True, slots=True)
class Record:
    """One text to embed, with the id and metadata it will carry into the output."""

    id: str
    text: str
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InputProblem:
    """Something wrong with the input.

    `fatal` problems end the reading of the file (unsupported type, undecodable content, truncated
    gzip, decompression limit): records read before them are kept. Other problems concern one record
    (`line` is 1-based; for CSV it is the row's line in the file).
    """

    code: str
    message: str
    line: int | None = None
    record_id: str | None = None
    fatal: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in {
            "code": self.code, "message": self.message, "line": self.line,
            "record_id": self.record_id, "fatal": self.fatal or None,
        }.items() if v is not None}
