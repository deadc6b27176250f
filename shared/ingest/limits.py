"""The bounds a read stays within, whatever the input."""

from __future__ import annotations

from dataclasses import dataclass

from shared.domain.options import MAX_INPUT_TOKENS

__all__ = ["DEFAULT_MAX_DECOMPRESSED_BYTES", "DEFAULT_MAX_RECORD_BYTES", "ReadLimits"]

MIB = 1024 * 1024
DEFAULT_MAX_RECORD_BYTES = 1 * MIB
DEFAULT_MAX_DECOMPRESSED_BYTES = 20 * 1024 * MIB


@dataclass(frozen=True)
class ReadLimits:
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES  # one JSONL line / CSV row, UTF-8 bytes
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES  # gzip bomb guard
    max_input_tokens: int = MAX_INPUT_TOKENS  # the model's input limit, by `estimate_tokens`

    def __post_init__(self) -> None:
        for name in ("max_record_bytes", "max_decompressed_bytes", "max_input_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"ReadLimits.{name} must be positive, not {getattr(self, name)}")
