"""Which reader a landed object needs: by its name's extension, else by its content type."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["InputFormat", "detect_format", "is_markdown", "supported_types_text"]


class InputFormat(StrEnum):
    DOCUMENT = "document"  # .txt, .md: one text split into passages
    JSONL = "jsonl"  # one {"id", "text", "title"?, "metadata"?} object per line
    CSV = "csv"  # a header row, then one record per row


_EXTENSIONS = {
    ".txt": InputFormat.DOCUMENT,
    ".text": InputFormat.DOCUMENT,
    ".md": InputFormat.DOCUMENT,
    ".markdown": InputFormat.DOCUMENT,
    ".jsonl": InputFormat.JSONL,
    ".ndjson": InputFormat.JSONL,
    ".csv": InputFormat.CSV,
}

_CONTENT_TYPES = {
    "text/plain": InputFormat.DOCUMENT,
    "text/markdown": InputFormat.DOCUMENT,
    "text/x-markdown": InputFormat.DOCUMENT,
    "application/jsonl": InputFormat.JSONL,
    "application/x-ndjson": InputFormat.JSONL,
    "application/json-lines": InputFormat.JSONL,
    "application/jsonlines": InputFormat.JSONL,
    "application/x-jsonlines": InputFormat.JSONL,
    "text/csv": InputFormat.CSV,
}

_MARKDOWN_EXTENSIONS = (".md", ".markdown")
_MARKDOWN_TYPES = ("text/markdown", "text/x-markdown")


def _base_name(name: str) -> str:
    """The last path segment, lower case, without a `.gz` suffix."""
    base = name.rsplit("/", 1)[-1].strip().lower()
    return base[:-3] if base.endswith(".gz") else base


def _extension(name: str) -> str:
    base = _base_name(name)
    dot = base.rfind(".")
    return base[dot:] if dot > 0 else ""


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def detect_format(name: str, content_type: str | None) -> InputFormat | None:
    """The format of an object: by extension (after stripping `.gz`, any case), else by content type.

    None when neither is recognised. The content type decides only when the extension says nothing, so
    `notes.txt` stored as `application/octet-stream` is a document, and `data` stored as `text/csv` a CSV.
    """
    by_extension = _EXTENSIONS.get(_extension(name))
    if by_extension is not None:
        return by_extension
    return _CONTENT_TYPES.get(_media_type(content_type))


def is_markdown(name: str, content_type: str | None) -> bool:
    """Markdown documents also break passages before headings."""
    extension = _extension(name)
    if extension in _EXTENSIONS:
        return extension in _MARKDOWN_EXTENSIONS
    return _media_type(content_type) in _MARKDOWN_TYPES


def supported_types_text() -> str:
    return (
        "name the file .txt, .text, .md, .markdown (a document), .jsonl, .ndjson or .csv, optionally "
        "followed by .gz, or set its content type to text/plain, text/markdown, application/jsonl or text/csv"
    )
