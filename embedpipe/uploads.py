"""What `upload` sends: the object name, its content type, and the job options as custom metadata."""

from __future__ import annotations

from pathlib import Path

from embedpipe.errors import BadArgument
from shared.domain.capabilities import Capabilities
from shared.domain.options import JobOptions, OptionError, options_from_metadata
from shared.ingest import detect_format

__all__ = ["check_format", "content_type_for", "object_name", "upload_metadata"]

_CONTENT_TYPES = {
    ".jsonl": "application/jsonl",
    ".ndjson": "application/x-ndjson",
    ".csv": "text/csv",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".text": "text/plain",
}


def content_type_for(path: Path) -> str:
    """The content type to store `path` with (`.gz` files keep their inner type: the pipeline sniffs gzip)."""
    name = path.name.lower().removesuffix(".gz")
    suffix = name[name.rfind("."):] if "." in name else ""
    return _CONTENT_TYPES.get(suffix, "application/octet-stream")


def object_name(prefix: str, path: Path, name: str | None, several: bool) -> str:
    """`prefix` + the file's name; `--name` replaces the file's name (one file), or is a folder for all of
    them when it ends with a slash."""
    if name is None:
        return prefix + path.name
    name = name.lstrip("/")
    if name.endswith("/"):
        return prefix + name + path.name
    if several:
        raise BadArgument("--name names one object: give one PATH, or end --name with / to upload into a folder")
    if not name:
        raise BadArgument("--name is empty")
    return prefix + name


def upload_metadata(defaults: JobOptions, **options: object) -> dict[str, str]:
    """The options given (not None) as object metadata, with the keys `shared.domain.options` reads.

    Checked as the pipeline will check them (over `defaults`, the deployment's defaults), so a typo fails
    here instead of as a FAILED job."""
    metadata = {key: str(value) for key, value in options.items() if value is not None}
    try:
        options_from_metadata(metadata, defaults, published_capabilities)
    except OptionError as exc:
        allowed = ", ".join(exc.allowed) if isinstance(exc.allowed, list) else exc.allowed
        flag = "--dimensions" if exc.option == "output_dimensionality" else "--" + exc.option.replace("_", "-")
        raise BadArgument(f"{flag} {exc.value}: allowed values are {allowed}") from None
    return metadata


def published_capabilities(provider: str, model: str) -> Capabilities:
    """What each provider documents for its models (no call: the CLI checks options before uploading)."""
    from shared.adapters.gemini_provider import GEMINI_MODELS

    known = {"gemini": GEMINI_MODELS}
    try:
        from shared.adapters.vertex_provider import VERTEX_MODELS

        known["vertex"] = VERTEX_MODELS
    except ImportError:
        pass
    if provider not in known:
        raise OptionError("provider", provider, sorted(known))
    plain = model.rsplit("/", 1)[-1]
    if plain not in known[provider]:
        raise OptionError("model", model, sorted(known[provider]))
    return known[provider][plain]


def check_format(path: Path, content_type: str) -> None:
    if detect_format(path.name, content_type) is None:
        raise BadArgument(f"{path}: the pipeline reads .txt, .md, .jsonl, .ndjson and .csv files (optionally .gz), "
                          "not this one")
