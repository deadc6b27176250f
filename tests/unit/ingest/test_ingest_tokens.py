from __future__ import annotations

import math
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.ingest import estimate_tokens
from shared.ingest.tokens import MAX_CHARS_PER_TOKEN


@pytest.mark.parametrize(("text", "expected"), [
    ("", 0),
    ("a", 1),
    ("the", 1),
    ("with", 1),
    ("tokenizer", 3),
    ("The quick brown fox jumps over the lazy dog.", 13),
    ("2024", 4),  # digits one by one
    ("café", 1),  # Latin letters with accents stay in the word
    ("привет мир", 5),  # other alphabets: 2 letters a token
    ("日本語のテキスト", 8),  # CJK and kana: 1 each
    ("한국어", 3),
    ("a\n\nb", 4),  # newlines count
    (" " * 7, 0),
    (" " * 16, 2),
    ("\U0001f600", 1),
    ("\ud800", 1),  # a lone surrogate does not raise
])
def test_rule(text, expected):
    assert estimate_tokens(text) == expected


def _reference(text: str) -> int:
    """The documented rule, written out character by character."""
    def kind(char: str) -> str:
        code = ord(char)
        if char.isascii() and char.isalpha() or 0xC0 <= code <= 0x27F:
            return "latin"
        if 0x280 <= code <= 0x7FF:
            return "alphabet"
        if char == "\n":
            return "newline"
        if char in " \t\r\x0b\x0c":
            return "space"
        return "symbol"

    tokens = 0
    run_kind, run = None, 0

    def close() -> int:
        if run_kind == "latin":
            return math.ceil(run / 4)
        if run_kind == "alphabet":
            return math.ceil(run / 2)
        if run_kind == "space":
            return run // 8
        return 0

    for char in text:
        k = kind(char)
        if k in ("newline", "symbol"):
            tokens += close() + 1
            run_kind, run = None, 0
        elif k == run_kind:
            run += 1
        else:
            tokens += close()
            run_kind, run = k, 1
    return tokens + close()


_TEXT = st.text(alphabet=st.sampled_from(
    list("abcdXYZ éüßœǅ") + list("αβγжщيא") + list(" \t\r\n.,!?0123-") + list("日本語한ㅏ\u3000\u00a0\u2014") + ["\U0001f600"]
), max_size=200)


@given(_TEXT)
def test_matches_the_documented_rule(text):
    assert estimate_tokens(text) == _reference(text)


@given(_TEXT, st.integers(min_value=0, max_value=200))
def test_monotone_in_the_prefix(text, cut):
    assert estimate_tokens(text[:cut]) <= estimate_tokens(text)


@given(_TEXT)
def test_never_sparser_than_max_chars_per_token(text):
    # The splitter's window relies on it.
    assert estimate_tokens(text) >= len(text) // MAX_CHARS_PER_TOKEN - 1


def test_errs_high_on_english_prose():
    prose = (
        "Embeddings map text to vectors so that similar meanings land close together. A retrieval "
        "system stores the vectors of its documents, embeds each query the same way, and returns the "
        "nearest documents. Gemini averages about four characters per token on English text like this."
    )
    assert estimate_tokens(prose) >= len(prose) / 4


def test_speed_on_one_megabyte():
    random.seed(7)
    words = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "this", "are", "from", "at", "which", "information"]
    text = " ".join(random.choice(words) for _ in range(250_000))[:1_000_000]
    estimate_tokens(text)
    started = time.perf_counter()
    for _ in range(5):
        estimate_tokens(text)
    seconds = (time.perf_counter() - started) / 5
    speed = len(text) / seconds / 1e6
    print(f"estimate_tokens: {speed:.0f} MB/s on 1 MB of English")
    assert speed > 10  # about 70-110 MB/s on the development machine; 10 catches a Python loop


@settings(max_examples=50)
@given(st.text(max_size=300))
def test_any_text(text):
    assert estimate_tokens(text) >= 0


def test_repeated_calls_agree():
    text = "".join(["repeat", "ed words"])
    same = "repeated words"
    assert estimate_tokens(text) == estimate_tokens(text) == estimate_tokens(same) == 4
    assert estimate_tokens("other") == 2
    assert estimate_tokens(text) == 4
