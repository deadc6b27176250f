"""Token counts: what a batch enqueues (for the enqueued-tokens quota) and, optionally, each item's tokenCount.

Counted text of a request: its text parts and its title, joined by newlines (what the live API bills as
input). Two counters:

- `WordPieceCounter` (default): the emulator's own all-MiniLM-L6-v2 WordPiece tokenizer (tokenizer.json),
  with no truncation and no [CLS]/[SEP]; loaded lazily, once.
- `RegexCounter` (the hash encoder's, GEMINI_EMULATOR_TOKEN_COUNTER=words, and the fallback when no
  tokenizer.json is installed): words and punctuation marks; about 6x faster (measured in the README).

Neither is Gemini's tokenizer: counts differ from the live API's (see README, Fidelity). Counting can stop
early once a count passes a bound (`stop_above`): a batch over its quota needs no exact count.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from .wire import ApiError, field, loads

__all__ = ["RegexCounter", "TokenCounter", "WordPieceCounter", "count_chunks", "file_tokens", "request_text"]

log = logging.getLogger("gemini_emulator")
_WORDS = re.compile(r"\w+|[^\w\s]")
_CHUNK_LINES = 2048


class TokenCounter(Protocol):
    name: str

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text."""


class RegexCounter:
    name = "regex-words"

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(_WORDS.findall(text)) for text in texts]


class WordPieceCounter:
    """all-MiniLM-L6-v2's WordPiece tokenizer, untruncated; falls back to RegexCounter if it cannot load."""

    name = "wordpiece-minilm"

    def __init__(self, tokenizer_path: str | None = None) -> None:
        self._path = tokenizer_path
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._fallback: RegexCounter | None = None

    def _load(self) -> None:
        with self._lock:
            if self._tokenizer is not None or self._fallback is not None:
                return
            try:
                from tokenizers import Tokenizer

                from .encoder import locate_tokenizer

                tokenizer = Tokenizer.from_file(str(locate_tokenizer(self._path)))
                tokenizer.no_padding()
                tokenizer.no_truncation()
                self._tokenizer = tokenizer
            except Exception as exc:  # counting must never fail a create
                log.warning("token counts fall back to words and punctuation: %s", exc)
                self._fallback = RegexCounter()
                self.name = RegexCounter.name

    def count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        self._load()
        if self._fallback is not None:
            return self._fallback.count(texts)
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encodings]


def request_text(request: Any) -> str:
    """The counted text of an EmbedContentRequest JSON object (either spelling): text parts, then title.

    Tolerant: anything malformed counts as no text (the engine reports such lines as failed items).
    """
    if not isinstance(request, dict):
        return ""
    texts: list[str] = []
    content = request.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    for part in parts if isinstance(parts, list) else []:
        text = part.get("text") if isinstance(part, dict) else None
        if isinstance(text, str):
            texts.append(text)
    title = field(request, "title")
    if isinstance(title, str) and title:
        texts.append(title)
    return "\n".join(texts)


def _file_texts(path: Path) -> Iterator[list[str]]:
    chunk: list[str] = []
    with path.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = loads(line)
            except ApiError:
                obj = None
            chunk.append(request_text(obj.get("request")) if isinstance(obj, dict) else "")
            if len(chunk) >= _CHUNK_LINES:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def count_chunks(
    chunks: Iterable[Sequence[str]], counter: TokenCounter, stop_above: int | None = None
) -> tuple[int, bool]:
    """(tokens, complete): the sum over `chunks` of texts, or the sum so far once it passes `stop_above`."""
    total = 0
    for texts in chunks:
        total += sum(counter.count(texts))
        if stop_above is not None and total > stop_above:
            return total, False
    return total, True


def file_tokens(path: Path, counter: TokenCounter, stop_above: int | None = None) -> tuple[int, bool]:
    """(tokens, complete) of the request lines of an input file (JSONL), read in chunks."""
    return count_chunks(_file_texts(path), counter, stop_above)
