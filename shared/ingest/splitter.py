"""Splitting one document into passages that fit the model, streaming.

Guarantees, for text read as a sequence of chunks (the document is their concatenation):
  - each passage is `document[start:end]` exactly, stripped of surrounding whitespace, never empty;
  - `estimate_tokens(passage) <= max_tokens`;
  - consecutive passages overlap by at most `overlap` estimated tokens (about that many when the text
    allows), or leave only whitespace between them: together they cover every non-space character;
  - memory is bounded by the chunk size plus a window of `MAX_CHARS_PER_TOKEN * (max_tokens + 2)`
    characters, whatever the document (a 50 MB line without spaces included).

Each passage is cut at the last paragraph break (a blank line; before a heading in Markdown) in the
second half of the longest text that fits, else at the last sentence end there, else at the last
whitespace there, else hard at the limit. The limit is found by searching on `estimate_tokens` of
prefixes (monotone in the prefix length), guided by the characters-per-token of the text so far.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from shared.ingest.tokens import MAX_CHARS_PER_TOKEN, estimate_tokens

__all__ = ["Passage", "split_passages"]


@dataclass(frozen=True, slots=True)
class Passage:
    text: str
    start: int  # code-point offsets into the document: document[start:end] == text
    end: int


_NL = r"(?:\r\n|\r(?!\n)|\n)"
_PARAGRAPH = re.compile(rf"{_NL}[ \t]*{_NL}")
_MARKDOWN_PARAGRAPH = re.compile(rf"{_NL}[ \t]*{_NL}|{_NL}(?= {{0,3}}#{{1,6}}[ \t])")
_SENTENCE = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*(?=\s)|[\u3002\uff01\uff1f]")
_NON_SPACE = re.compile(r"\S")
_SPACES = re.compile(r"\s+")
_WHITESPACE = (" ", "\n", "\t", "\r")
_TRIM_AT = 1 << 16  # characters before the current passage kept before the buffer is shifted
_SEARCH_STEPS = 64
# The limit search stops within 1/16 of max_tokens below it (the break search then cuts back further
# anyway), and its first guess aims a little short: a guess that fits and is close is one call.
_SLACK_DIVISOR = 16
_GUESS_SHORT = 0.97


def split_passages(
    chunks: Iterable[str], *, max_tokens: int, overlap: int = 0, markdown: bool = False,
) -> Iterator[Passage]:
    """The passages of the document made of `chunks` (see the module's docstring for the guarantees)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, not {max_tokens}")
    return _Splitter(chunks, max_tokens, max(0, min(overlap, max_tokens - 1)), markdown).run()


class _Splitter:
    def __init__(self, chunks: Iterable[str], max_tokens: int, overlap: int, markdown: bool):
        self._chunks = iter(chunks)
        self._max = max_tokens
        self._overlap = overlap
        self._paragraph = _MARKDOWN_PARAGRAPH if markdown else _PARAGRAPH
        # More characters than this always estimate above max_tokens: a window this long holds the limit.
        self._window = MAX_CHARS_PER_TOKEN * (max_tokens + 2)
        self._slack = max(1, max_tokens // _SLACK_DIVISOR)
        self._ratio = 4.0  # characters per token of the text so far: where to look for the limit
        self._buf = ""
        self._base = 0  # offset in the document of self._buf[0]
        self._eof = False

    def _fill(self, size: int) -> None:
        if len(self._buf) >= size or self._eof:
            return
        parts = [self._buf]
        have = len(self._buf)
        while have < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        self._buf = "".join(parts)

    def _shift(self, count: int) -> None:
        self._buf = self._buf[count:]
        self._base += count

    def run(self) -> Iterator[Passage]:
        start = 0  # where the next passage starts, in the buffer: a non-space character
        cut = 0  # where the last passage was cut: the next one must reach beyond it
        while True:
            if start > _TRIM_AT:
                self._shift(start)
                cut -= start
                start = 0
            self._fill(start + self._window)
            buf = self._buf
            found = _NON_SPACE.search(buf, cut)
            if found is None:
                if self._eof:
                    return
                if len(buf) - cut > self._window:
                    # Whitespace after the cut, more than an overlap could span: drop it.
                    self._shift(len(buf))
                    start = cut = 0
                else:
                    self._fill(len(buf) + 1)
                continue
            first_new = found.start()
            low_tokens = 0 if start == cut else estimate_tokens(buf[start:first_new + 1])
            if start == cut or low_tokens > self._max:
                start = first_new  # no overlap, or one that leaves no room for new text
                low_tokens = estimate_tokens(buf[start])
                self._fill(start + self._window)
                buf = self._buf
            bound = min(len(buf), start + self._window)
            limit, everything = self._limit(buf, start, first_new + 1, low_tokens, bound)
            if everything and self._eof and bound == len(buf):
                end_cut = bound
            else:
                end_cut = self._break(buf, start, first_new + 1, limit)
            end = start + len(buf[start:end_cut].rstrip())
            yield Passage(buf[start:end], self._base + start, self._base + end)
            if end_cut >= len(buf) and self._eof:
                return
            overlap_start = self._overlap_start(buf, start, end)
            cut = end_cut
            start = cut if overlap_start is None else overlap_start

    def _limit(self, buf: str, start: int, low: int, low_tokens: int, bound: int) -> tuple[int, bool]:
        """(p, everything): buf[start:p] is about the longest prefix within max_tokens (to the slack), and
        `everything` when that is all of buf[start:bound]. buf[start:low] must fit, in `low_tokens`."""
        budget = self._max
        slack = min(self._slack, (budget - low_tokens) // 4)  # a large overlap leaves little room: be exact
        high, high_tokens = -1, 0
        for step in range(_SEARCH_STEPS):
            if low_tokens >= budget - slack:
                break
            if high < 0:
                guess = min(bound, low + max(1, int((budget - low_tokens) * self._ratio * _GUESS_SHORT)))
            elif high - low <= 1:
                break
            elif step % 3 == 2:  # interpolation can crawl on uneven text: bisect now and then
                guess = (low + high) // 2
            else:
                guess = low + int((high - low) * (budget - low_tokens) / (high_tokens - low_tokens))
                guess = min(high - 1, max(low + 1, guess))
            tokens = estimate_tokens(buf[start:guess])
            if tokens <= budget:
                low, low_tokens = guess, tokens
                if guess >= bound:
                    return bound, True
            else:
                high, high_tokens = guess, tokens
        if low_tokens > 0 and low - start > 0:
            self._ratio = max(1.0, (low - start) / low_tokens)
        return low, False

    def _break(self, buf: str, start: int, low: int, limit: int) -> int:
        """Where to end the passage buf[start:...]: a preferred break in the second half of
        buf[start:limit] and not before `low`, else `limit`."""
        region = max(low, start + (limit - start) // 2)
        last = None
        for last in self._paragraph.finditer(buf, region, limit):  # noqa: B007 - we want the last
            pass
        if last is not None:
            return last.start()
        for last in _SENTENCE.finditer(buf, region, limit):  # noqa: B007
            pass
        if last is not None:
            return last.end()
        space = max(buf.rfind(char, region, limit) for char in _WHITESPACE)
        return space if space >= region else limit

    def _overlap_start(self, buf: str, start: int, end: int) -> int | None:
        """The start of the next passage: within buf[start+1:end], at a word's start when there is one,
        with at most `overlap` tokens before `end`; None for no overlap."""
        if self._overlap == 0:
            return None
        position = max(start + 1, end - int(self._overlap * self._ratio))
        for _ in range(_SEARCH_STEPS):
            if position >= end:
                return None
            if not (buf[position - 1].isspace() and not buf[position].isspace()):
                spaces = _SPACES.search(buf, position, end)
                if spaces is not None and spaces.end() < end:
                    position = spaces.end()
            tokens = estimate_tokens(buf[position:end])
            if tokens <= self._overlap:
                return position
            position += max(1, (end - position) * (tokens - self._overlap) // tokens)
        return None
