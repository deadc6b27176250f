"""A fast, deterministic estimate of how many tokens Gemini's tokenizer makes of a text.

No model, no download: the estimate classifies characters and counts runs, with a few C-level byte
operations (translate, count, replace) and no Python loop over characters, so it is cheap enough to run on
every passage of a multi-gigabyte file (see `tests/unit/ingest/test_tokens.py` for its speed).

`TokenIndex` answers `estimate_tokens` of any slice of a long text in constant time (exactly the same
number), from prefix sums built with numpy: the splitter asks it hundreds of times per passage.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_CHARS_PER_TOKEN", "TokenIndex", "estimate_tokens"]

#: No text has fewer estimated tokens than (characters / this) - 1: the sparsest text is runs of 4
#: letters, each followed by 7 spaces (1 token per 11 characters). The splitter relies on it to know how
#: much text surely holds a full passage.
MAX_CHARS_PER_TOKEN = 11

# Classes, one byte per character: the UTF-8 encoding with its continuation bytes deleted leaves exactly
# one byte per code point, its ASCII value or its lead byte.
_LATIN = ord("a")  # ASCII letters; U+00C0-U+027F (Latin-1 letters, Latin Extended-A/B)
_ALPHABET = ord("b")  # U+0280-U+07FF: IPA, Greek, Cyrillic, Armenian, Hebrew, Arabic, Syriac, Thaana
_SPACE = ord(" ")  # space, tab, CR, VT, FF
_NEWLINE = ord("n")
_SYMBOL = ord("p")  # everything else


def _class_table() -> bytes:
    table = bytearray([_SYMBOL]) * 256
    for byte in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
        table[byte] = _LATIN
    for lead in range(0xC3, 0xCA):  # U+00C0-U+027F
        table[lead] = _LATIN
    for lead in range(0xCA, 0xE0):  # U+0280-U+07FF
        table[lead] = _ALPHABET
    for byte in b" \t\r\x0b\x0c":
        table[byte] = _SPACE
    table[ord("\n")] = _NEWLINE
    return bytes(table)


_CLASSES = _class_table()
_CONTINUATION = bytes(range(0x80, 0xC0))
# The last text estimated and its count: the JSONL and CSV readers estimate each record's text, then
# the caller estimates the same string object again. Held by reference, so identity cannot be reused.
_last: tuple[str, int] = ("", 0)


def estimate_tokens(text: str) -> int:
    """An estimate of the number of Gemini tokens in `text`, on the high side for English prose.

    The rule, over code points:
      - a run of letters of the Latin script (ASCII letters and U+00C0-U+027F) counts ceil(length / 4):
        "a", "the" and "with" 1, "tokenizer" 3 (Gemini averages about 4 characters a token in English,
        where common words are one token; counting each word at least once errs high);
      - a run of letters of the other alphabets encoded in two UTF-8 bytes (U+0280-U+07FF: Greek,
        Cyrillic, Armenian, Hebrew, Arabic, ...) counts ceil(length / 2);
      - each newline counts 1; other whitespace (space, tab, CR, VT, FF) counts 1 per full run of 8;
      - every other code point counts 1: digits (Gemini splits numbers into digits), punctuation,
        symbols, U+0080-U+00BF, and all of U+0800 and above: CJK, kana, Hangul, Indic scripts, Thai,
        emoji.

    Deterministic, monotone (a text never has fewer tokens than its prefixes), 0 for "". Roughly
    70-100 MB/s of English on one core (a few C-level passes over the text's bytes).
    """
    global _last
    last_text, last_tokens = _last
    if text is last_text:
        return last_tokens
    if not text:
        return 0
    classes = text.encode("utf-8", "surrogatepass").translate(_CLASSES, _CONTINUATION)
    # ceil(L/4) per run of letters: floor(L/4) from the non-overlapping "aaaa"s, plus 1 for each run
    # whose length is not a multiple of 4: once the quads are removed those remainders are runs of 1-3.
    quads = classes.count(b"aaaa")
    rest = classes.replace(b"aaaa", b"")
    tokens = quads + rest.count(b"a") - rest.count(b"aa") - rest.count(b"aaa")
    if b"b" in classes:  # ceil(L/2) per run, the same way with pairs (from `classes`: removing the
        # quads from `rest` could join two runs)
        tokens += classes.count(b"bb") + classes.replace(b"bb", b"").count(b"b")
    tokens += classes.count(b"p") + classes.count(b"n") + classes.count(b"        ")
    _last = (text, tokens)
    return tokens


# -- prefix sums ----------------------------------------------------------------------------------

_INDEX_SLICE = 1 << 15  # characters indexed at a time: bounds the temporary arrays
# The classes again, as codes 0-4 for the index, in the order of _CLASS_OF_CODE.
_CLASS_OF_CODE = (_LATIN, _ALPHABET, _SPACE, _NEWLINE, _SYMBOL)
_CODES = _CLASSES.translate(bytes.maketrans(bytes(_CLASS_OF_CODE), bytes(range(len(_CLASS_OF_CODE)))))
# What a character adds, by code * 8 + (its index in its run) % 8: a Latin letter opens a token every 4
# letters of its run, another letter every 2, a space every 8th space; newlines and symbols count 1.
_ADDS = np.array([
    [1, 0, 0, 0, 1, 0, 0, 0],
    [1, 0, 1, 0, 1, 0, 1, 0],
    [0, 0, 0, 0, 0, 0, 0, 1],
    [1] * 8,
    [1] * 8,
], dtype=np.int32).ravel()


def _run_tokens(code: int, length: int) -> int:
    """Tokens of a run of `length` characters of one class (the rule of `estimate_tokens`)."""
    char_class = _CLASS_OF_CODE[code]
    if char_class == _LATIN:
        return -(-length // 4)
    if char_class == _ALPHABET:
        return -(-length // 2)
    if char_class == _SPACE:
        return length // 8
    return length


def _run_length_within(code: int, tokens: int) -> int:
    """The longest run of one class with at most `tokens` tokens."""
    char_class = _CLASS_OF_CODE[code]
    if char_class == _LATIN:
        return 4 * tokens
    if char_class == _ALPHABET:
        return 2 * tokens
    if char_class == _SPACE:
        return 8 * tokens + 7
    return tokens


class TokenIndex:
    """`estimate_tokens(text[a:b])` for any a <= b, in O(1), over a text that grows at the end and is
    dropped at the start (a sliding window over a stream).

    Each code point gets its contribution under the rule, counted from the start of its run (`_ADDS`);
    `_prefix[i]` sums those before position i. A slice that starts where a run starts counts exactly
    `_prefix[b] - _prefix[a]`; one that starts inside a run counts the rest of that run by the rule, then
    the prefix sums. Five bytes a character; appending n characters costs a few numpy passes over them.
    """

    def __init__(self) -> None:
        self._codes = b""  # one class code per character (bytes: fast to index one by one)
        self._prefix = np.zeros(1, dtype=np.int32)  # rebased on append: below the window's length
        self._last_code = -1  # the code of the last character appended, -1 before any
        self._last_run_index = 0  # its index within its run, modulo 8

    def __len__(self) -> int:
        return len(self._codes)

    def append(self, text: str) -> None:
        if not text:
            return
        codes = text.encode("utf-8", "surrogatepass").translate(_CODES, _CONTINUATION)
        old = self._prefix
        prefix = np.empty(old.size + len(codes), dtype=np.int32)
        np.subtract(old, old[0], out=prefix[:old.size])
        for begin in range(0, len(codes), _INDEX_SLICE):
            piece = np.frombuffer(codes, dtype=np.uint8, count=min(_INDEX_SLICE, len(codes) - begin),
                                  offset=begin)
            at = old.size + begin
            sums = prefix[at:at + piece.size]
            np.cumsum(self._contributions(piece), out=sums)
            sums += prefix[at - 1]
        self._prefix = prefix
        self._codes += codes

    def _contributions(self, codes: np.ndarray) -> np.ndarray:
        """Each character's token contribution; carries the run state over from the previous call."""
        size = codes.size
        opens = np.empty(size, dtype=bool)
        opens[0] = codes[0] != self._last_code
        np.not_equal(codes[1:], codes[:-1], out=opens[1:])
        position = np.arange(size, dtype=np.int32)
        run_start = np.where(opens, position, np.int32(-8))
        if not opens[0]:  # the first run goes on from the previous text: only its index modulo 8 counts
            run_start[0] = -((self._last_run_index + 1) & 7)
        np.maximum.accumulate(run_start, out=run_start)
        key = np.subtract(position, run_start, out=position)
        key &= 7
        self._last_code = int(codes[-1])
        self._last_run_index = int(key[-1])
        key += codes.astype(np.int32) << 3
        return _ADDS[key]

    def drop(self, count: int) -> None:
        """Forget the first `count` characters: positions shift down by `count`."""
        self._codes = self._codes[count:]
        self._prefix = self._prefix[count:]

    def _opens_run(self, position: int) -> bool:
        codes = self._codes
        return position > 0 and codes[position] != codes[position - 1]

    def _run_end(self, position: int, bound: int) -> int:
        """The end of the run holding `position`, at most `bound`."""
        same = np.frombuffer(self._codes, dtype=np.uint8, count=bound - position, offset=position)
        same = same == self._codes[position]
        other = int(np.argmin(same))
        return bound if same[other] else position + other

    def count(self, start: int, end: int) -> int:
        """`estimate_tokens` of characters start..end of the window."""
        if end <= start:
            return 0
        prefix = self._prefix
        if self._opens_run(start):
            return int(prefix[end]) - int(prefix[start])
        run_end = self._run_end(start, end)
        return _run_tokens(self._codes[start], run_end - start) + int(prefix[end]) - int(prefix[run_end])

    def longest_within(self, start: int, budget: int, bound: int) -> int:
        """The largest p <= bound with count(start, p) <= budget (the counts grow with p)."""
        if bound <= start:
            return start
        prefix = self._prefix
        if self._opens_run(start):
            target, lowest = int(prefix[start]) + budget, start
        else:
            run_end = self._run_end(start, bound)
            code = self._codes[start]
            head = _run_tokens(code, run_end - start)
            if head > budget:
                return min(run_end, start + _run_length_within(code, budget))
            target, lowest = int(prefix[run_end]) + budget - head, run_end
        return lowest + int(prefix[lowest:bound + 1].searchsorted(target, side="right")) - 1

    def first_reaching(self, start: int, tokens: int, bound: int) -> int:
        """The smallest p <= bound with count(start, p) >= tokens; bound when there is none."""
        if tokens <= 0 or bound <= start:
            return start
        if self._opens_run(start):
            target = int(self._prefix[start]) + tokens
            return min(bound, start + int(self._prefix[start:bound + 1].searchsorted(target, side="left")))
        if self.count(start, bound) < tokens:
            return bound
        return self.longest_within(start, tokens - 1, bound) + 1
