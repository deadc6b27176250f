"""Properties: the splitter's guarantees, and JSONL's id mapping, over generated inputs."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.domain.records import InputProblem, Record
from shared.ingest import estimate_tokens, problems
from shared.ingest.splitter import split_passages
from tests.unit.ingest.helpers import read

_PIECES = st.sampled_from([
    "word", "the", "a", "tokenization", "x" * 40, "2024", "café", "привет", "日本語", "\U0001f600",
    " ", " ", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\r\n\r\n", "\r", ". ", "! ", "? ", ".\n", ",", "\u3002",
    "\n# Heading\n", "\n \n", "\u00a0", " " * 20,
])
_DOCUMENTS = st.lists(_PIECES, max_size=300).map("".join)


def _chunked(document: str, sizes: list[int]) -> list[str]:
    chunks, position = [], 0
    for size in sizes:
        if position >= len(document):
            break
        chunks.append(document[position:position + size])
        position += size
    chunks.append(document[position:])
    return chunks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=_DOCUMENTS,
    max_tokens=st.integers(min_value=1, max_value=64),
    overlap_fraction=st.floats(min_value=0, max_value=0.9),
    sizes=st.lists(st.integers(min_value=1, max_value=50), max_size=40),
    markdown=st.booleans(),
)
def test_splitter_guarantees(document, max_tokens, overlap_fraction, sizes, markdown):
    overlap = int(max_tokens * overlap_fraction)
    passages = list(split_passages(_chunked(document, sizes), max_tokens=max_tokens, overlap=overlap,
                                   markdown=markdown))
    if not document.strip():
        assert passages == []
        return
    for passage in passages:
        # offsets reproduce the passage text; stripped, never empty; within the token limit
        assert document[passage.start:passage.end] == passage.text
        assert passage.text == passage.text.strip() != ""
        assert estimate_tokens(passage.text) <= max_tokens
    # the first and last passages reach the first and last non-space characters
    assert passages[0].start == len(document) - len(document.lstrip())
    assert passages[-1].end == len(document.rstrip())
    for before, after in zip(passages, passages[1:], strict=False):
        assert before.start < after.start and before.end < after.end
        if after.start < before.end:  # overlap bounded
            assert estimate_tokens(document[after.start:before.end]) <= overlap
        else:  # no gaps beyond whitespace
            assert document[before.end:after.start].strip() == ""
    # block boundaries do not matter
    assert passages == list(split_passages([document], max_tokens=max_tokens, overlap=overlap,
                                           markdown=markdown))


_IDS = st.one_of(st.text(min_size=1, max_size=8).filter(str.strip), st.integers(-10**6, 10**6))
_TEXTS = st.one_of(st.text(max_size=30), st.integers(), st.none())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_IDS, _TEXTS, st.booleans()), max_size=60))
def test_jsonl_id_mapping(rows):
    lines, expected, seen, expected_duplicates = [], [], set(), []
    for number, (record_id, text, blank_after) in enumerate(rows, 1):
        lines.append(json.dumps({"id": record_id, "text": text}, ensure_ascii=number % 2 == 0))
        valid = isinstance(text, str) and text.strip() != "" and estimate_tokens(text) <= 2048
        if valid:
            if str(record_id) in seen:
                expected_duplicates.append(str(record_id))
            else:
                seen.add(str(record_id))
                expected.append((str(record_id), text))
        if blank_after:
            lines.append("")
    data = ("\n".join(lines) + "\n").encode()
    items = read(data)
    if not rows:
        assert [p.code for p in items] == [problems.EMPTY_INPUT]
        return
    # every valid record yields exactly one Record with its id, in order; the first of an id wins
    assert [(r.id, r.text) for r in items if isinstance(r, Record)] == expected
    duplicates = [p.record_id for p in items if isinstance(p, InputProblem) and p.code == problems.DUPLICATE_ID]
    assert duplicates == expected_duplicates
    assert len(items) == len(rows)  # one item per non-blank line
    assert all(not p.fatal for p in items if isinstance(p, InputProblem))
