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
DEFAULT_WEBHOOK_RETRY_SECONDS = 24 * 3600.0  # the live API retries failed deliveries for 24 h
DEFAULT_WEBHOOK_BACKOFF_SECONDS = 1.0
DEFAULT_WEBHOOK_TIMEOUT_SECONDS = 10.0
ENCODERS = ("onnx", "sentence-transformers", "hash")
TOKEN_COUNTERS = ("wordpiece", "words")


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


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from exc
    if not value >= minimum:  # also refuses nan
        raise SettingsError(f"{name} must be >= {minimum}, got {raw}")
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
    quotas_json / webhooks_json are validated when the emulator is built (quotas.py, webhooks.py).
    max_running caps the RUNNING batches (0: no cap); item_token_counts adds response.tokenCount to
    every embedded batch item.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    workers: int = DEFAULT_WORKERS
    model_batch_size: int = DEFAULT_MODEL_BATCH
    window_size: int = DEFAULT_WINDOW
    threads: int = 0  # 0: onnxruntime picks (one per core)
    spin: bool = False  # onnxruntime's idle threads spin (its own default) rather than sleep
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
    token_counter: str = ""  # "": wordpiece, or words with the hash encoder
    quotas_json: str | None = None
    webhooks_json: str | None = None
    max_running: int = 0
    item_token_counts: bool = False
    webhook_retry_seconds: float = DEFAULT_WEBHOOK_RETRY_SECONDS
    webhook_backoff_seconds: float = DEFAULT_WEBHOOK_BACKOFF_SECONDS
    webhook_timeout_seconds: float = DEFAULT_WEBHOOK_TIMEOUT_SECONDS
    # -- the Vertex AI surface (vertex_routes.py): its bearer token (None: any), Cloud Storage, row limit
    vertex_token: str | None = None
    storage_host: str | None = None
    vertex_max_rows: int = 1_000_000

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
            "spin": _bool(env, "GEMINI_EMULATOR_SPIN", False),
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
            "token_counter": env.get("GEMINI_EMULATOR_TOKEN_COUNTER", "").strip().lower(),
            "quotas_json": env.get("GEMINI_EMULATOR_QUOTAS") or None,
            "webhooks_json": env.get("GEMINI_EMULATOR_WEBHOOKS") or None,
            "max_running": _int(env, "GEMINI_EMULATOR_MAX_RUNNING", 0, minimum=0),
            "item_token_counts": _bool(env, "GEMINI_EMULATOR_ITEM_TOKEN_COUNTS", False),
            "webhook_retry_seconds": _float(
                env, "GEMINI_EMULATOR_WEBHOOK_RETRY_SECONDS", DEFAULT_WEBHOOK_RETRY_SECONDS
            ),
            "webhook_backoff_seconds": _float(
                env, "GEMINI_EMULATOR_WEBHOOK_BACKOFF_SECONDS", DEFAULT_WEBHOOK_BACKOFF_SECONDS, minimum=0.01
            ),
            "webhook_timeout_seconds": _float(
                env, "GEMINI_EMULATOR_WEBHOOK_TIMEOUT_SECONDS", DEFAULT_WEBHOOK_TIMEOUT_SECONDS, minimum=0.1
            ),
            # -- the Vertex AI surface
            "vertex_token": env.get("GEMINI_EMULATOR_VERTEX_TOKEN") or None,
            "storage_host": env.get("GEMINI_EMULATOR_STORAGE_HOST") or env.get("STORAGE_EMULATOR_HOST") or None,
            "vertex_max_rows": _int(env, "GEMINI_EMULATOR_VERTEX_MAX_ROWS", 1_000_000, minimum=1),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["token_counter"] and values["token_counter"] not in TOKEN_COUNTERS:
            raise SettingsError(
                f"GEMINI_EMULATOR_TOKEN_COUNTER must be one of {list(TOKEN_COUNTERS)}, got {values['token_counter']!r}"
            )
        if values["encoder"] not in ENCODERS:
            raise SettingsError(f"GEMINI_EMULATOR_ENCODER must be one of {list(ENCODERS)}, got {values['encoder']!r}")
        return cls(**values)  # type: ignore[arg-type]
