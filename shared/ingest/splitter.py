"""Splitting one document into passages that fit the model, streaming, at boundaries chosen by content.

Guarantees, for text read as a sequence of chunks (the document is their concatenation):
  - each passage is `document[start:end]` exactly, stripped of surrounding whitespace, never empty;
  - `estimate_tokens(passage) <= max_tokens`;
  - consecutive passages overlap by at most `overlap` estimated tokens (as many as fit, from a word's
    start), or leave only whitespace between them: together they cover every non-space character;
  - the chunks do not matter: any split of the same document gives the same passages;
  - memory is bounded by one chunk plus two windows of `MAX_CHARS_PER_TOKEN * (max_tokens + 2)`
    characters (about six bytes each, with the token index), whatever the document (a 50 MB line without
    spaces included);
  - stable under edits: where a passage ends depends only on the text from `LOOKBEHIND` characters
    before its start to the end of its window (below) and the character after it, the one that would
    exceed `max_tokens`; or, when the window reaches the end of the document, on all the rest (where the
    document ends is part of that text). Where the next one starts depends only on that passage and the
    text after it up to the first non-space character. So an edit (a change of the text: deleting the
    last paragraph also deletes the break before it) moves no passage whose window and the character
    after it lie before the edit; and once the splitter reaches a `SplitState` it reached before the edit
    (shifted by the change in length) whose `origin` lies past the edit, every later passage is the same,
    shifted. `SplitState`, a few integers, is all the splitter carries from one passage to the next: a
    read can resume from it.

Where a passage ends. Its window is the text from where it reaches `WINDOW_START` of `max_tokens` to
where it would exceed `max_tokens`. The candidates in the window are paragraph breaks (a blank line;
before a heading in Markdown), else sentence ends, else the starts of whitespace, else there is a hard cut
at the window's end. Among the candidates of the first kind found, the passage ends at the one with the
highest score: a hash of the `LOOKBEHIND` characters before it (uniform in [0, 1)), plus its share of
`max_tokens` times `FULLNESS_WEIGHT`. The hash makes the choice a property of the text: when an edit
moves a passage's start, the best candidate of its window usually stays the best, so the next passages
line up again with the old ones, typically at once (a greedy cut at the last break before the limit
moved every boundary that followed). The share keeps passages about as long as greedy cuts did; being
linear in tokens, it does not make which of two candidates wins depend on where the passage started (the
tokens between them decide), only the window's edges do. `python -m benchmarks.bench_passages` measures
both against the old splitter.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from shared.ingest.tokens import MAX_CHARS_PER_TOKEN, TokenIndex

__all__ = ["LOOKBEHIND", "SPLITTER_VERSION", "Passage", "PassageSplitter", "SplitState", "split_passages"]

#: Changes whenever the same document would split differently (1: greedy cuts, before content scores).
SPLITTER_VERSION = 2

#: Characters before a candidate end that its score hashes.
LOOKBEHIND = 32
#: A passage ends at or after this share of max_tokens (unless the document ends first).
WINDOW_START = 0.3
#: How much a candidate's share of max_tokens adds to its hash score: longer passages win ties.
FULLNESS_WEIGHT = 2.0


@dataclass(frozen=True, slots=True)
class Passage:
    text: str
    start: int  # code-point offsets into the document: document[start:end] == text
    end: int


@dataclass(frozen=True, slots=True)
class SplitState:
    """Where the splitter stands between two passages, in code points of the document.

    To continue, give it the document from `origin` (`origin_bytes` bytes into the document's encoding).
    """

    origin: int  # the first character it needs: LOOKBEHIND before `start`, or 0
    origin_bytes: int  # `origin` as a byte offset in the encoding given to the splitter
    start: int  # where the next passage starts (its overlap included)
    cut: int  # where the last passage was cut: the next one must reach beyond it


_NL = r"(?:\r\n|\r(?!\n)|\n)"
_PARAGRAPH = re.compile(rf"{_NL}[ \t]*{_NL}")
_MARKDOWN_PARAGRAPH = re.compile(rf"{_NL}[ \t]*{_NL}|{_NL}(?= {{0,3}}#{{1,6}}[ \t])")
_SENTENCE = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*(?=\s)|[\u3002\uff01\uff1f]")
_SPACE_START = re.compile(r"(?<=\S)\s")
_WORD_START = re.compile(r"\s\S")
_NON_SPACE = re.compile(r"\S")
_HASH_SCALE = 1 / (1 << 32)


def split_passages(
    chunks: Iterable[str], *, max_tokens: int, overlap: int = 0, markdown: bool = False,
    resume: SplitState | None = None, encoding: str = "utf-8",
) -> PassageSplitter:
    """The passages of the document made of `chunks` (see the module's docstring for the guarantees).

    With `resume`, `chunks` is the document from `resume.origin` on, and the passages are those that
    followed the state. `encoding` only serves `SplitState.origin_bytes`.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, not {max_tokens}")
    return PassageSplitter(chunks, max_tokens, max(0, min(overlap, max_tokens - 1)), markdown, resume,
                           encoding)


class PassageSplitter:
    """An iterator of passages; `state()` tells where it stands after the last one it gave."""

    def __init__(self, chunks: Iterable[str], max_tokens: int, overlap: int, markdown: bool,
                 resume: SplitState | None, encoding: str):
        self._chunks = iter(chunks)
        self._max = max_tokens
        self._overlap = overlap
        self._window_start = math.ceil(WINDOW_START * max_tokens)
        self._paragraph = _MARKDOWN_PARAGRAPH if markdown else _PARAGRAPH
        self._encoding = encoding
        # More characters than this always estimate above max_tokens: a window this long holds the limit.
        self._window = MAX_CHARS_PER_TOKEN * (max_tokens + 2)
        self._buf = ""
        self._tokens = TokenIndex()
        self._eof = False
        resume = resume or SplitState(0, 0, 0, 0)
        if not resume.origin <= resume.start <= resume.cut or resume.start - resume.origin > LOOKBEHIND:
            raise ValueError(f"invalid split state {resume}")
        self._base = resume.origin  # offset in the document of self._buf[0]
        self._base_bytes = resume.origin_bytes
        self._start = resume.start - resume.origin  # where the next passage starts, in the buffer
        self._cut = resume.cut - resume.origin  # where the last passage was cut
        self._passages = self._run()

    def __iter__(self) -> PassageSplitter:
        return self

    def __next__(self) -> Passage:
        return next(self._passages)

    def state(self) -> SplitState:
        origin = max(0, self._start - LOOKBEHIND)
        origin_bytes = self._base_bytes + len(self._buf[:origin].encode(self._encoding, "surrogatepass"))
        return SplitState(self._base + origin, origin_bytes, self._base + self._start, self._base + self._cut)

    # -- the buffer ---------------------------------------------------------------------------------

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
            self._tokens.append(chunk)
            have += len(chunk)
        self._buf = "".join(parts)

    def _trim(self, needed: int) -> None:
        """Drop the buffer before `needed` but LOOKBEHIND characters."""
        count = needed - LOOKBEHIND
        if count <= 0:
            return
        self._base_bytes += len(self._buf[:count].encode(self._encoding, "surrogatepass"))
        self._buf = self._buf[count:]
        self._tokens.drop(count)
        self._base += count
        self._start -= count
        self._cut -= count

    # -- passages -----------------------------------------------------------------------------------

    def _run(self) -> Iterator[Passage]:
        tokens = self._tokens
        while True:
            if len(self._buf) < self._start + self._window and not self._eof:
                self._trim(self._start)  # before filling: the buffer never holds more than it needs
                self._fill(self._start + self._window)
            start, cut = self._start, self._cut
            buf = self._buf
            found = _NON_SPACE.search(buf, cut)
            if found is None:
                if self._eof:
                    return
                if len(buf) - cut > self._window:
                    # Whitespace after the cut, more than an overlap could span: drop it.
                    self._start = self._cut = len(buf)
                    self._trim(len(buf))
                else:
                    self._fill(len(buf) + 1)
                continue
            first_new = found.start()
            if start == cut or tokens.count(start, first_new + 1) > self._max:
                start = first_new  # no overlap, or one that leaves no room for new text
                self._fill(start + self._window)
                buf = self._buf
            bound = min(len(buf), start + self._window)
            if self._eof and bound == len(buf) and tokens.count(start, bound) <= self._max:
                end_cut = bound
            else:
                end_cut = self._choose_end(buf, start, first_new + 1, tokens.longest_within(start, self._max, bound))
            end = start + len(buf[start:end_cut].rstrip())
            self._cut = end_cut
            self._start = self._next_start(buf, start, end, end_cut)
            yield Passage(buf[start:end], self._base + start, self._base + end)
            if end_cut >= len(buf) and self._eof:
                return

    def _choose_end(self, buf: str, start: int, low: int, limit: int) -> int:
        """Where to end the passage buf[start:...]: the best candidate in its window (at least `low`,
        at most `limit`, the longest text within max_tokens), else `limit`."""
        window_start = max(low, self._tokens.first_reaching(start, self._window_start, limit))
        kinds = (
            (match.start() for match in self._paragraph.finditer(buf, window_start, limit)),
            (match.end() for match in _SENTENCE.finditer(buf, max(low, window_start - LOOKBEHIND), limit)),
            (match.start() for match in _SPACE_START.finditer(buf, window_start, limit)),
        )
        for candidates in kinds:
            best, best_score = -1, -1.0
            for position in candidates:
                if position < window_start:
                    continue
                score = self._score(buf, start, position)
                if score >= best_score:
                    best, best_score = position, score
            if best >= 0:
                return best
        return limit

    def _score(self, buf: str, start: int, position: int) -> float:
        context = buf[max(0, position - LOOKBEHIND):position].encode("utf-8", "surrogatepass")
        share = self._tokens.count(start, position) / self._max
        return zlib.crc32(context) * _HASH_SCALE + FULLNESS_WEIGHT * share

    def _next_start(self, buf: str, start: int, end: int, end_cut: int) -> int:
        """Where the next passage starts: the earliest word start in buf[start+1:end] with at most
        `overlap` tokens from it to `end`, else the cut (no overlap)."""
        if self._overlap == 0:
            return end_cut
        # At a word's start p the counts add up: count(start, end) = count(start, p) + count(p, end).
        excess = self._tokens.count(start, end) - self._overlap
        earliest = self._tokens.first_reaching(start, excess, end)
        word = _WORD_START.search(buf, max(start, earliest - 1), end)
        if word is None or word.start() + 1 >= end:
            return end_cut
        return word.start() + 1
