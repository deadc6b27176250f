"""Per-file job options: what a user may set on an uploaded object's custom metadata.

Every option falls back to a configured default. An invalid value raises `OptionError`, whose message
names the option and the values it accepts, so the failed job tells the user exactly what to fix.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "DEFAULT_MODEL",
    "model_resource",
    "MAX_DIMENSIONS",
    "MAX_INPUT_TOKENS",
    "MIN_DIMENSIONS",
    "OnBadRecord",
    "OptionError",
    "JobOptions",
    "TaskType",
    "options_from_metadata",
]

DEFAULT_MODEL = "gemini-embedding-001"


def model_resource(model: str) -> str:
    """The API's resource name of a model: `models/NAME`, whether given as `NAME` or already so."""
    return model if "/" in model else f"models/{model}"
MIN_DIMENSIONS = 128
MAX_DIMENSIONS = 3072
#: gemini-embedding-001 reads at most this many tokens of one input.
MAX_INPUT_TOKENS = 2048


class TaskType(StrEnum):
    """The Gemini API's TaskType values, as the wire spells them."""

    TASK_TYPE_UNSPECIFIED = "TASK_TYPE_UNSPECIFIED"
    RETRIEVAL_QUERY = "RETRIEVAL_QUERY"
    RETRIEVAL_DOCUMENT = "RETRIEVAL_DOCUMENT"
    SEMANTIC_SIMILARITY = "SEMANTIC_SIMILARITY"
    CLASSIFICATION = "CLASSIFICATION"
    CLUSTERING = "CLUSTERING"
    QUESTION_ANSWERING = "QUESTION_ANSWERING"
    FACT_VERIFICATION = "FACT_VERIFICATION"
    CODE_RETRIEVAL_QUERY = "CODE_RETRIEVAL_QUERY"

    @classmethod
    def parse(cls, value: str | TaskType) -> TaskType:
        """Accepts the wire name in any case, with or without dashes (`retrieval-document`)."""
        if isinstance(value, TaskType):
            return value
        normalised = str(value).strip().upper().replace("-", "_")
        try:
            return cls(normalised)
        except ValueError:
            raise OptionError("task_type", value, [t.value for t in cls]) from None


class OnBadRecord(StrEnum):
    """What a bad record (malformed line, missing id, text too long) does to its file."""

    SKIP = "skip"  # report it with its line number, embed the rest
    FAIL = "fail"  # fail the whole file


class OptionError(ValueError):
    """An option has a value outside what it accepts."""

    def __init__(self, option: str, value: Any, allowed: str | list[str]):
        self.option = option
        self.value = value
        self.allowed = allowed
        allowed_text = ", ".join(allowed) if isinstance(allowed, list) else allowed
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        super().__init__(f"invalid option {option}={shown}: allowed values are {allowed_text}")


class JobOptions(BaseModel):
    """The options of one job, validated. Field names are the metadata keys users set."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    model: str = DEFAULT_MODEL
    task_type: TaskType = TaskType.RETRIEVAL_DOCUMENT
    output_dimensionality: int = Field(768, ge=MIN_DIMENSIONS, le=MAX_DIMENSIONS)
    priority: int = 0
    display_name: str | None = None
    chunk_size: int = Field(512, ge=16, le=MAX_INPUT_TOKENS)  # tokens per passage (.txt, .md)
    chunk_overlap: int = Field(64, ge=0)  # tokens shared by neighbouring passages
    on_bad_record: OnBadRecord = OnBadRecord.SKIP
    id_column: str = "id"  # .csv
    text_column: str = "text"  # .csv
    title_column: str = "title"  # .csv, optional column

    @model_validator(mode="after")
    def _overlap_below_size(self) -> JobOptions:
        if self.chunk_overlap >= self.chunk_size:
            raise OptionError("chunk_overlap", self.chunk_overlap, f"integers from 0 to chunk_size-1 ({self.chunk_size - 1})")
        return self


#: Metadata keys users may write instead of the canonical ones.
_ALIASES = {
    "dimensions": "output_dimensionality",
    "output-dimensionality": "output_dimensionality",
    "task-type": "task_type",
    "display-name": "display_name",
    "chunk-size": "chunk_size",
    "chunk-overlap": "chunk_overlap",
    "on-bad-record": "on_bad_record",
}

_ALLOWED = {
    "output_dimensionality": f"integers from {MIN_DIMENSIONS} to {MAX_DIMENSIONS} (768, 1536 or 3072 recommended)",
    "priority": "integers (higher runs first; negatives allowed)",
    "chunk_size": f"integers from 16 to {MAX_INPUT_TOKENS} (tokens)",
    "chunk_overlap": "integers from 0 to chunk_size-1 (tokens)",
    "on_bad_record": [m.value for m in OnBadRecord],
    "model": "a model name such as gemini-embedding-001",
    "display_name": "any non-empty text up to 128 characters",
    "id_column": "a column name",
    "text_column": "a column name",
    "title_column": "a column name",
}


def options_from_metadata(metadata: dict[str, str] | None, defaults: JobOptions) -> JobOptions:
    """Overlay an object's custom metadata on `defaults`.

    Unknown metadata keys are left alone (users keep their own metadata on objects); a known key with a
    bad value raises `OptionError` naming it.
    """
    values = defaults.model_dump()
    for raw_key, raw_value in (metadata or {}).items():
        key = _ALIASES.get(raw_key.strip().lower(), raw_key.strip().lower())
        if key not in values:
            continue
        values[key] = _coerce(key, raw_value)
    try:
        return JobOptions(**values)
    except ValidationError as exc:  # pydantic wraps a validator's OptionError: unwrapped below
        first = exc.errors()[0]
        option = str(first["loc"][0]) if first["loc"] else "options"
        if isinstance(first.get("ctx", {}).get("error"), OptionError):
            raise first["ctx"]["error"] from None
        raise OptionError(option, values.get(option), _ALLOWED.get(option, "see the README")) from None


def _coerce(key: str, value: str) -> Any:
    text = str(value).strip()
    if key == "task_type":
        return TaskType.parse(text)
    if key in ("output_dimensionality", "priority", "chunk_size", "chunk_overlap"):
        try:
            return int(text)
        except ValueError:
            raise OptionError(key, value, _ALLOWED[key]) from None
    if key == "on_bad_record":
        try:
            return OnBadRecord(text.lower())
        except ValueError:
            raise OptionError(key, value, _ALLOWED[key]) from None
    if key == "display_name" and not (0 < len(text) <= 128):
        raise OptionError(key, value, _ALLOWED[key])
    if not text:
        raise OptionError(key, value, _ALLOWED.get(key, "a non-empty value"))
    return text
