"""Per-file job options: what a user may set on an uploaded object's custom metadata.

Every option falls back to a configured default. An invalid value raises `OptionError`, whose message
names the option and the values it accepts, so the failed job tells the user exactly what to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    from shared.domain.capabilities import Capabilities

__all__ = [
    "MAX_CHUNK_TOKENS",
    "MAX_INPUT_TOKENS",
    "OnBadRecord",
    "OptionError",
    "JobOptions",
    "normalize_task_type",
    "options_from_metadata",
]

#: The largest passage a document may be cut into, whatever the model (a model may accept fewer: its
#: capabilities say, and the options are checked against them).
MAX_CHUNK_TOKENS = 2048
MAX_INPUT_TOKENS = MAX_CHUNK_TOKENS  # the readers' default bound on one input, by `estimate_tokens`
_MAX_NAME_CHARS = 256  # column names, model names: user strings kept on the job document


def normalize_task_type(value: str) -> str:
    """A task type as the wire spells it: `retrieval-document` -> `RETRIEVAL_DOCUMENT`."""
    return str(value).strip().upper().replace("-", "_")


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
    """The options of one job, validated. Field names are the metadata keys users set.

    Bounds here are the ones every provider shares; `check` validates the rest (task type, dimensions,
    input size) against the capabilities of the provider and model the job runs on.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = "gemini"
    model: str = "gemini-embedding-001"
    task_type: str = "RETRIEVAL_DOCUMENT"
    output_dimensionality: int = Field(768, ge=1)
    priority: int = 0
    display_name: str | None = None
    chunk_size: int = Field(512, ge=16, le=MAX_CHUNK_TOKENS)  # tokens per passage (.txt, .md)
    chunk_overlap: int = Field(64, ge=0)  # tokens shared by neighbouring passages
    on_bad_record: OnBadRecord = OnBadRecord.SKIP
    id_column: str = "id"  # .csv
    text_column: str = "text"  # .csv
    title_column: str = "title"  # .csv, optional column
    reuse: bool = True  # take embeddings of unchanged passages from the cache

    @model_validator(mode="after")
    def _overlap_below_size(self) -> JobOptions:
        if self.chunk_overlap >= self.chunk_size:
            raise OptionError("chunk_overlap", self.chunk_overlap, f"integers from 0 to chunk_size-1 ({self.chunk_size - 1})")
        return self

    def check(self, capabilities: Capabilities) -> JobOptions:
        """Raise `OptionError` unless the provider's model accepts these options; returns self."""
        if self.task_type not in capabilities.task_types:
            raise OptionError("task_type", self.task_type, list(capabilities.task_types))
        if not capabilities.min_dimensions <= self.output_dimensionality <= capabilities.max_dimensions:
            raise OptionError("output_dimensionality", self.output_dimensionality, capabilities.dimensions_text())
        if self.chunk_size > capabilities.max_input_tokens:
            raise OptionError("chunk_size", self.chunk_size, f"integers from 16 to {capabilities.max_input_tokens} (tokens)")
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
    "output_dimensionality": "integers (the model's range: see the README)",
    "priority": "integers (higher runs first; negatives allowed)",
    "chunk_size": f"integers from 16 to {MAX_CHUNK_TOKENS} (tokens)",
    "chunk_overlap": "integers from 0 to chunk_size-1 (tokens)",
    "on_bad_record": [m.value for m in OnBadRecord],
    "reuse": ["true", "false"],
    "model": f"a model name such as gemini-embedding-001 (up to {_MAX_NAME_CHARS} characters)",
    "provider": "a configured provider",
    "display_name": "any non-empty text up to 128 characters",
    "id_column": f"a column name (up to {_MAX_NAME_CHARS} characters)",
    "text_column": f"a column name (up to {_MAX_NAME_CHARS} characters)",
    "title_column": f"a column name (up to {_MAX_NAME_CHARS} characters)",
}
_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def options_from_metadata(
    metadata: dict[str, str] | None,
    defaults: JobOptions,
    capabilities: Callable[[str, str], Capabilities] | None = None,
) -> JobOptions:
    """Overlay an object's custom metadata on `defaults`, then check them against the capabilities of the
    chosen provider and model (`capabilities(provider, model)`, which raises `OptionError` for a provider
    or model it does not serve).

    Unknown metadata keys are left alone (users keep their own metadata on objects); a known key with a
    bad value raises `OptionError` naming it.
    """
    values = defaults.model_dump()
    for raw_key, raw_value in (metadata or {}).items():
        key = _ALIASES.get(raw_key.strip().lower(), raw_key.strip().lower())
        if key not in values:
            continue
        try:
            values[key] = _coerce(key, raw_value)
        except OptionError as exc:
            if key == "output_dimensionality" and capabilities is not None:  # name the model's own range
                chosen = capabilities(values["provider"], values["model"])
                raise OptionError(key, raw_value, chosen.dimensions_text()) from None
            raise exc from None
    try:
        options = JobOptions(**values)
    except ValidationError as exc:  # pydantic wraps a validator's OptionError: unwrapped below
        first = exc.errors()[0]
        option = str(first["loc"][0]) if first["loc"] else "options"
        if isinstance(first.get("ctx", {}).get("error"), OptionError):
            raise first["ctx"]["error"] from None
        raise OptionError(option, values.get(option), _ALLOWED.get(option, "see the README")) from None
    if capabilities is not None:
        options.check(capabilities(options.provider, options.model))
    return options


def _coerce(key: str, value: str) -> Any:
    text = str(value).strip()
    if key == "task_type":
        return normalize_task_type(text)
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
    if key == "reuse":
        if text.lower() not in _BOOLEANS:
            raise OptionError(key, value, _ALLOWED[key])
        return _BOOLEANS[text.lower()]
    if key == "display_name" and not (0 < len(text) <= 128):
        raise OptionError(key, value, _ALLOWED[key])
    if not text or len(text) > _MAX_NAME_CHARS:
        raise OptionError(key, value, _ALLOWED.get(key, "a non-empty value"))
    return text.lower() if key == "provider" else text
