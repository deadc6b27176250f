"""The emulator's settings, read from the environment at call time (never at import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "EmulatorSettings", "SettingsError"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090
DEFAULT_WORKERS = 2
DEFAULT_MODEL_BATCH = 32
DEFAULT_WINDOW = 2048
DEFAULT_CACHE_ENTRIES = 20_000
DEFAULT_SHUFFLE_ABOVE = 5
DEFAULT_MAX_TOKENS = 256


class SettingsError(ValueError):
    """An environment variable holds a value the emulator cannot use; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


@dataclass(frozen=True)
class EmulatorSettings:
    """Everything the emulator can be told; `from_env` reads `GEMINI_EMULATOR_*` variables.

    api_key None means any non-empty key is accepted; otherwise exactly that key is.
    strict True rejects what the brief's contract rejects (no displayName, outputDimensionality < 128);
    False accepts both, as Google's own recorded SDK tests suggest the live API may.
    emit_defaults False renders proto3 JSON as the live API does (done: false, zero counters and
    priority 0 left out); True writes every field.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    workers: int = DEFAULT_WORKERS
    model_batch_size: int = DEFAULT_MODEL_BATCH
    window_size: int = DEFAULT_WINDOW
    threads: int = 0  # 0: onnxruntime picks (one per core)
    encoder: str = "onnx"
    st_model: str | None = None
    model_path: str | None = None
    tokenizer_path: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    cache_entries: int = DEFAULT_CACHE_ENTRIES
    shuffle_above: int = DEFAULT_SHUFFLE_ABOVE
    data_dir: str | None = None
    faults_json: str | None = None
    strict: bool = True
    preload: bool = True
    emit_defaults: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> EmulatorSettings:
        """Read the environment (or `env`), then apply keyword overrides (the CLI's flags)."""
        env = os.environ if env is None else env
        api_key = env.get("GEMINI_EMULATOR_API_KEY") or None
        values: dict[str, object] = {
            "host": env.get("GEMINI_EMULATOR_HOST", "").strip() or DEFAULT_HOST,
            "port": _int(env, "GEMINI_EMULATOR_PORT", DEFAULT_PORT, minimum=0),
            "api_key": api_key,
            "workers": _int(env, "GEMINI_EMULATOR_WORKERS", DEFAULT_WORKERS, minimum=1),
            "model_batch_size": _int(env, "GEMINI_EMULATOR_MODEL_BATCH", DEFAULT_MODEL_BATCH, minimum=1),
            "window_size": _int(env, "GEMINI_EMULATOR_WINDOW", DEFAULT_WINDOW, minimum=1),
            "threads": _int(env, "GEMINI_EMULATOR_THREADS", 0, minimum=0),
            "encoder": (env.get("GEMINI_EMULATOR_ENCODER", "").strip() or "onnx").lower(),
            "st_model": env.get("GEMINI_EMULATOR_ST_MODEL") or None,
            "model_path": env.get("GEMINI_EMULATOR_MODEL_PATH") or None,
            "tokenizer_path": env.get("GEMINI_EMULATOR_TOKENIZER_PATH") or None,
            "max_tokens": _int(env, "GEMINI_EMULATOR_MAX_TOKENS", DEFAULT_MAX_TOKENS, minimum=8),
            "cache_entries": _int(env, "GEMINI_EMULATOR_CACHE_ENTRIES", DEFAULT_CACHE_ENTRIES, minimum=0),
            "shuffle_above": _int(env, "GEMINI_EMULATOR_SHUFFLE_ABOVE", DEFAULT_SHUFFLE_ABOVE, minimum=0),
            "data_dir": env.get("GEMINI_EMULATOR_DATA_DIR") or None,
            "faults_json": env.get("GEMINI_EMULATOR_FAULTS") or None,
            "strict": _bool(env, "GEMINI_EMULATOR_STRICT", True),
            "preload": _bool(env, "GEMINI_EMULATOR_PRELOAD", True),
            "emit_defaults": _bool(env, "GEMINI_EMULATOR_EMIT_DEFAULTS", False),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["encoder"] not in {"onnx", "sentence-transformers"}:
            raise SettingsError(
                f"GEMINI_EMULATOR_ENCODER must be 'onnx' or 'sentence-transformers', got {values['encoder']!r}"
            )
        return cls(**values)  # type: ignore[arg-type]
