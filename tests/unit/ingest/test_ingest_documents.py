""".txt and .md: one document split into passages."""

from __future__ import annotations

import random

import pytest

from shared.domain.options import JobOptions
from shared.domain.records import InputProblem, Record
from shared.ingest import ReadLimits, estimate_tokens, problems, read_records
from shared.ingest.splitter import split_passages
from tests.unit.ingest.helpers import (
    DownloadStream,
    assert_one_sentence,
    codes,
    gz,
    only_problem,
    read,
    records,
)

WORDS = ["the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "this", "are", "from", "at", "which", "embedding"]


def prose(paragraphs: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(rng.randint(1, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 18))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "?", "!"]))
        out.append(" ".join(sentences))
    return "\n\n".join(out) + "\n"


def check_passages(document: str, items, chunk_size: int, overlap: int) -> list[Record]:
    got = records(items)
    assert got, items
    for index, record in enumerate(got):
        start, end = record.metadata["char_start"], record.metadata["char_end"]
        assert record.metadata == {"passage": index, "char_start": start, "char_end": end}
        assert document[start:end] == record.text == record.text.strip() != ""
        assert estimate_tokens(record.text) <= chunk_size
    for before, after in zip(got, got[1:], strict=False):
        b_start, b_end = before.metadata["char_start"], before.metadata["char_end"]
        a_start, a_end = after.metadata["char_start"], after.metadata["char_end"]
        assert b_start < a_start and b_end < a_end
        if a_start < b_end:
            assert estimate_tokens(document[a_start:b_end]) <= overlap
        else:
            assert document[b_end:a_start].strip() == ""
    assert got[0].metadata["char_start"] == len(document) - len(document.lstrip())
    assert got[-1].metadata["char_end"] == len(document.rstrip())
    return got


def test_passages_ids_and_offsets():
    document = prose(60)
    items = read(document.encode(), "docs/guide.txt", chunk_size=64, chunk_overlap=8)
    got = check_passages(document, items, 64, 8)
    assert len(got) > 10
    assert [r.id for r in got] == [f"docs/guide.txt#{i}" for i in range(len(got))]
    assert all(r.title is None for r in got)


def test_passages_fill_the_chunk_size_and_overlap():
    document = prose(200)
    got = check_passages(document, read(document.encode(), "a.txt", chunk_size=128, chunk_overlap=16), 128, 16)
    sizes = [estimate_tokens(r.text) for r in got[:-1]]
    assert sum(sizes) / len(sizes) > 0.6 * 128
    overlaps = [
        estimate_tokens(document[b.metadata["char_start"]:a.metadata["char_end"]])
        for a, b in zip(got, got[1:], strict=False) if b.metadata["char_start"] < a.metadata["char_end"]
    ]
    assert len(overlaps) > 0.9 * (len(got) - 1)
    assert sum(overlaps) / len(overlaps) > 8  # about chunk_overlap, never above


def test_prefers_paragraph_breaks():
    paragraphs = [" ".join(["word"] * 30) + "." for _ in range(12)]  # 31 tokens each
    document = "\n\n".join(paragraphs)
    got = records(read(document.encode(), "a.txt", chunk_size=100, chunk_overlap=0))
    assert all(r.text.endswith(".") for r in got)  # every passage ends a paragraph
    assert all(r.text.count("\n\n") in (1, 2) for r in got[:-1])


def test_then_sentence_ends():
    document = " ".join(f"Sentence number {i} has several words in it." for i in range(100))
    got = records(read(document.encode(), "a.txt", chunk_size=64, chunk_overlap=0))
    assert len(got) > 5
    assert all(r.text.endswith(".") for r in got)


def test_then_whitespace():
    document = " ".join(["lorem"] * 2000)
    got = check_passages(document, read(document.encode(), "a.txt", chunk_size=50, chunk_overlap=5), 50, 5)
    assert all(r.text.startswith("lorem") and r.text.endswith("lorem") for r in got)


def test_markdown_breaks_before_headings():
    sections = [f"# Section {i}\n" + " ".join(["text"] * 25) + "\n" for i in range(10)]
    document = "".join(sections)
    got = records(read(document.encode(), "notes.md", chunk_size=70, chunk_overlap=0))
    assert all(r.text.startswith("# Section") for r in got)


def test_long_single_line_without_spaces_splits_hard():
    line = "abcdefghij" * 30_000  # 300 kB, 4 characters a token
    items = read(line.encode(), "a.txt", chunk_size=16, chunk_overlap=2)
    got = check_passages(line, items, 16, 2)
    assert len(got) > 300_000 // 64
    assert max(len(r.text) for r in got) <= 64


def test_fifty_megabyte_line_streams():
    """A 50 MB line without spaces, generated as it is read: splits with bounded memory."""
    import tracemalloc

    block = b"x" * 1_000_000
    stream = DownloadStream((block for _ in range(50)), block=1 << 20)
    tracemalloc.start()
    try:
        count = last_end = 0
        for item in read_records(stream, name="big.txt", content_type=None,
                                 options=JobOptions(chunk_size=2048, chunk_overlap=0)):
            assert isinstance(item, Record)
            assert item.metadata["char_start"] == last_end
            last_end = item.metadata["char_end"]
            count += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert last_end == 50_000_000
    assert 50_000_000 / (4 * 2048) < count < 50_000_000 / (4 * 1920) + 1  # within 1/16 of the size
    assert peak < 8_000_000


def test_passages_never_exceed_the_model_limit():
    document = prose(30)
    limits = ReadLimits(max_input_tokens=40)
    got = records(read(document.encode(), "a.txt", limits=limits, chunk_size=512, chunk_overlap=8))
    assert max(estimate_tokens(r.text) for r in got) <= 40


def test_unicode_offsets_are_code_points():
    document = ("日本語の文章です。" * 40 + "\n\n" + "Emoji \U0001f600 and accents: café, naïve. " * 30)
    got = check_passages(document, read(document.encode(), "a.txt", chunk_size=32, chunk_overlap=4), 32, 4)
    assert any("\U0001f600" in r.text for r in got)


def test_cr_only_line_endings():
    document = "\r".join(f"Line {i} of an old Mac file." for i in range(200)) + "\r"
    check_passages(document, read(document.encode(), "a.txt", chunk_size=32, chunk_overlap=4), 32, 4)


def test_crlf_paragraphs():
    document = prose(40).replace("\n", "\r\n")
    got = check_passages(document, read(document.encode(), "a.txt", chunk_size=48, chunk_overlap=0), 48, 0)
    assert sum(r.text.endswith((".", "?", "!")) for r in got) >= len(got) - 1


@pytest.mark.parametrize("data", [b"   \n\n\t  \r\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf  \n", gz(b"\n\n")])
def test_whitespace_only_is_empty_input(data):
    problem = only_problem(read(data, "a.txt"))
    assert problem.code == problems.EMPTY_INPUT and problem.fatal
    assert_one_sentence(problem)


def test_invalid_utf8_keeps_the_passages_before_it():
    good = prose(40)
    data = good.encode() + b"\xff\xfe tail words"
    items = read(data, "a.txt", chunk_size=64, chunk_overlap=0)
    problem = items[-1]
    assert isinstance(problem, InputProblem)
    assert problem.code == problems.INVALID_UTF8 and problem.fatal
    assert f"byte {len(good.encode())}" in problem.message
    assert_one_sentence(problem)
    got = check_passages(good, items[:-1], 64, 0)
    assert got[-1].metadata["char_end"] == len(good.rstrip())


def test_invalid_utf8_at_the_start():
    items = read(b"\xc3\x28 rest", "a.txt")
    assert codes(items) == [problems.INVALID_UTF8] and not records(items)
    assert "byte 0" in items[0].message


def test_truncated_multibyte_character_at_the_end():
    items = read("fin café".encode()[:-1], "a.txt")
    assert [r.text for r in records(items)] == ["fin caf"]
    assert codes(items) == [problems.INVALID_UTF8]
    assert "byte 7" in items[-1].message


def test_truncated_gzip_keeps_passages():
    document = prose(400, seed=5)
    data = gz(document.encode())
    items = read(data[: len(data) * 2 // 3], "a.txt.gz", chunk_size=64, chunk_overlap=0)
    assert codes(items) == [problems.TRUNCATED_GZIP]
    got = records(items)
    assert len(got) > 10
    for record in got:
        assert document[record.metadata["char_start"]:record.metadata["char_end"]] == record.text


def test_splitting_does_not_depend_on_block_boundaries():
    document = prose(50, seed=9)
    whole = list(split_passages([document], max_tokens=40, overlap=6))
    for size in (1, 7, 100, 4096):
        pieces = [document[i:i + size] for i in range(0, len(document), size)]
        assert list(split_passages(pieces, max_tokens=40, overlap=6)) == whole


def test_long_whitespace_gaps_between_words():
    document = "word " * 100 + " " * 5000 + "\n" * 300 + "word " * 100
    whole = list(split_passages([document], max_tokens=16, overlap=4))
    for size in (3, 64, 1000):
        pieces = [document[i:i + size] for i in range(0, len(document), size)]
        assert list(split_passages(pieces, max_tokens=16, overlap=4)) == whole
    for before, after in zip(whole, whole[1:], strict=False):
        assert document[before.end:after.start].strip() == "" or after.start < before.end
    assert whole[-1].end == len(document.rstrip())
