"""Resuming a read from a ReadPosition gives exactly the items an uninterrupted read gives after it."""

from __future__ import annotations

import codecs
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.domain.options import JobOptions
from shared.domain.records import Record
from shared.ingest import ReadLimits, ReadPosition, SeenIds, problems, read_records
from tests.unit.ingest.helpers import DownloadStream, gz, jsonl

_ENCODINGS = {
    "utf-8": (b"", "utf-8"),
    "utf-8-bom": (codecs.BOM_UTF8, "utf-8"),
    "utf-16-le": (codecs.BOM_UTF16_LE, "utf-16-le"),
    "utf-16-be": (codecs.BOM_UTF16_BE, "utf-16-be"),
    "utf-32-le": (codecs.BOM_UTF32_LE, "utf-32-le"),
    "utf-32-be": (codecs.BOM_UTF32_BE, "utf-32-be"),
}
_ENDS = st.sampled_from(["\n", "\r\n", "\r"])

# -- inputs of every format, good and bad -------------------------------------------------------------

_WORDS = st.sampled_from(["word", "the", "a", "tokenization", "2024", "café", "привет", "日本語", "\U0001f600", "x" * 30])
_SEPARATORS = st.sampled_from([" ", " ", " ", ". ", "! ", "? ", ", ", "\n", "\n\n", "\r\n\r\n", "\t", "  ", "\n# Title\n"])
_DOCUMENTS = st.lists(st.tuples(_WORDS, _SEPARATORS), max_size=200).map(lambda pairs: "".join(a + b for a, b in pairs))


@st.composite
def _jsonl_text(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(["record", "record", "record", "blank", "bad", "array", "noid", "empty", "long"]))
        record_id = draw(st.sampled_from(["a", "b", "c", "d", "e", "f", 7, "日本"]))
        if kind == "record":
            lines.append(json.dumps({"id": record_id, "text": draw(_DOCUMENTS) or "t", "metadata": {"n": len(lines)}},
                                    ensure_ascii=draw(st.booleans())))
        elif kind == "blank":
            lines.append(draw(st.sampled_from(["", "  "])))
        elif kind == "bad":
            lines.append('{"id": "x", "text": ')
        elif kind == "array":
            lines.append("[1, 2]")
        elif kind == "noid":
            lines.append('{"text": "no id"}')
        elif kind == "empty":
            lines.append(json.dumps({"id": record_id, "text": "  "}))
        else:
            lines.append(json.dumps({"id": record_id, "text": "y" * 300}))  # over max_record_bytes
    end = draw(_ENDS)
    return end.join(lines) + draw(st.sampled_from(["", end]))


@st.composite
def _csv_text(draw) -> str:
    end = draw(_ENDS.filter(lambda e: e != "\r"))  # the csv module reads a lone CR as a line end of its own
    rows = [draw(st.sampled_from(["id,text,lang", "ID;Text;lang", "\nid,text,lang"]))]
    delimiter = ";" if ";" in rows[0] else ","
    for number in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["row", "row", "quoted", "multiline", "short", "noid", "blank", "dup", "long"]))
        record_id = f"r{number}" if kind != "dup" else "r0"
        text = draw(_WORDS)
        if kind in ("row", "dup"):
            rows.append(delimiter.join([record_id, text, "en"]))
        elif kind == "quoted":
            rows.append(delimiter.join([record_id, f'"say ""{text}"", {text}"', ""]))
        elif kind == "multiline":
            rows.append(delimiter.join([record_id, f'"{text}{end}second{end}{end}third"', "fr"]))
        elif kind == "short":
            rows.append(delimiter.join([record_id, text]))
        elif kind == "noid":
            rows.append(delimiter.join(["", text, "en"]))
        elif kind == "blank":
            rows.append(draw(st.sampled_from(["", delimiter * 2])))
        else:
            rows.append(delimiter.join([record_id, "z" * 300, "en"]))  # over max_record_bytes
    if draw(st.booleans()):
        rows.append(delimiter.join(["last", '"never closed', "more"]))
    return end.join(rows) + draw(st.sampled_from(["", end]))


@st.composite
def _inputs(draw) -> tuple[bytes, str, JobOptions]:
    kind = draw(st.sampled_from(["txt", "md", "jsonl", "csv"]))
    if kind in ("txt", "md"):
        text = draw(_DOCUMENTS)
        chunk_size = draw(st.integers(16, 64))
        options = JobOptions(chunk_size=chunk_size, chunk_overlap=int(chunk_size * draw(st.floats(0, 0.9))))
    else:
        text = draw(_jsonl_text() if kind == "jsonl" else _csv_text())
        options = JobOptions()
    bom, codec = _ENCODINGS[draw(st.sampled_from(sorted(_ENCODINGS)))]
    data = bom + text.encode(codec)
    if codec == "utf-8" and draw(st.integers(0, 5)) == 0:
        data += b"tail \xff bytes\n"  # invalid UTF-8: fatal in a document, one bad line or row elsewhere
    if draw(st.booleans()):
        data = gz(data)
    return data, f"input.{kind}", options


_LIMITS = ReadLimits(max_record_bytes=200, max_input_tokens=100)


def _read_all(data: bytes, name: str, options: JobOptions, block: int):
    reader = read_records(DownloadStream(data, block), name=name, content_type=None, options=options, limits=_LIMITS)
    items, positions, dumps = [], [reader.position()], [reader.seen_ids.dump()]
    for item in reader:
        items.append(item)
        positions.append(reader.position())
        dumps.append(reader.seen_ids.dump())
    return items, positions, dumps, reader.position()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=_inputs(), block=st.sampled_from([1, 7, 64, 4093]), rebuild_ids=st.booleans())
def test_resuming_at_any_item_gives_the_rest(case, block, rebuild_ids):
    data, name, options = case
    items, positions, dumps, final = _read_all(data, name, options, block)
    assert final.done and final.items == len(items)
    for cut, position in enumerate(positions):
        # as a stager would: the position through JSON, a fresh stream opened at position.open_at
        as_json = json.dumps(position.to_dict())
        assert len(as_json) < 2048
        position = ReadPosition.from_dict(json.loads(as_json))
        if rebuild_ids:  # from the ids of the records already staged
            seen = SeenIds.of(item.id for item in items[:cut] if isinstance(item, Record))
        else:
            seen = SeenIds.load(dumps[cut])
        stream = DownloadStream(data[position.open_at:], block)
        resumed = read_records(stream, name=name, content_type=None, options=options, limits=_LIMITS,
                               resume=position, seen_ids=seen)
        assert list(resumed) == items[cut:], cut
        assert resumed.position() == final


# -- where the stager opens the object ----------------------------------------------------------------

LINES = jsonl(*(f'{{"id": "{i}", "text": "record {i}"}}' for i in range(50)))


def _position_after(data: bytes, name: str, count: int, **options) -> tuple[ReadPosition, bytes]:
    reader = read_records(DownloadStream(data), name=name, content_type=None, options=JobOptions(**options))
    for _ in range(count):
        next(reader)
    return reader.position(), reader.seen_ids.dump()


@pytest.mark.parametrize(("data", "name", "raw"), [
    (LINES, "a.jsonl", True),
    (codecs.BOM_UTF8 + LINES, "a.jsonl", True),
    (gz(LINES), "a.jsonl", False),  # gzip: inflated from the start
    (codecs.BOM_UTF16_LE + LINES.decode().encode("utf-16-le"), "a.jsonl", False),  # lines are transcoded
    (b"id,text\n" + b"".join(b"%d,t\n" % i for i in range(50)), "a.csv", True),
    (b"The text of a document. " * 400, "a.txt", True),
    (codecs.BOM_UTF16_BE + ("The text of a document. " * 400).encode("utf-16-be"), "a.txt", True),
    (gz(b"The text of a document. " * 400), "a.txt", False),
])
def test_raw_offset_only_when_the_object_can_be_range_read(data, name, raw):
    position, dump = _position_after(data, name, 3, chunk_size=16, chunk_overlap=4)
    assert (position.raw_offset is not None) is raw
    if raw:
        assert position.raw_offset == position.bom_length + position.offset == position.open_at > 0
        stream = DownloadStream(data[position.open_at:])
        items = list(read_records(stream, name=name, content_type=None, resume=position,
                                  seen_ids=SeenIds.load(dump), options=JobOptions(chunk_size=16, chunk_overlap=4)))
        assert items and stream.bytes_read == len(data) - position.open_at  # nothing before it read again
    else:
        assert position.open_at == 0


def test_a_long_csv_header_is_read_again_not_kept():
    header = "id,text," + ",".join(f"a_rather_long_column_name_{i}" for i in range(200))
    data = (header + "\n" + "".join(f"{i},text {i}" + "," * 200 + "\n" for i in range(20))).encode()
    position, dump = _position_after(data, "wide.csv", 5)
    assert position.header is None and position.raw_offset is None
    assert len(json.dumps(position.to_dict())) < 2048
    rest = list(read_records(DownloadStream(data), name="wide.csv", content_type=None, options=JobOptions(),
                             resume=position, seen_ids=SeenIds.load(dump)))
    assert [r.id for r in rest] == [str(i) for i in range(5, 20)]


def test_a_done_position_reads_nothing():
    reader = read_records(DownloadStream(LINES), name="a.jsonl", content_type=None, options=JobOptions())
    list(reader)
    position = reader.position()
    assert position.done and position.items == 50
    stream = DownloadStream(LINES)
    assert list(read_records(stream, name="a.jsonl", content_type=None, options=JobOptions(), resume=position)) == []
    assert stream.bytes_read == 0


def test_a_fatal_problem_ends_the_read_for_good():
    data = gz(LINES)
    reader = read_records(DownloadStream(data[:len(data) // 2]), name="a.jsonl", content_type=None,
                          options=JobOptions())
    for item in reader:
        if not isinstance(item, Record):
            break
    assert item.code == problems.TRUNCATED_GZIP and item.fatal
    assert reader.position().done  # at once, not only once the reader is exhausted


def test_the_start_position_is_a_fresh_read():
    reader = read_records(DownloadStream(LINES), name="a.jsonl", content_type=None, options=JobOptions())
    start = reader.position()
    assert (start.items, start.done, start.open_at) == (0, False, 0)
    assert len(list(read_records(DownloadStream(LINES), name="a.jsonl", content_type=None,
                                 options=JobOptions(), resume=start))) == 50


# -- what the reader refuses ---------------------------------------------------------------------------


def test_other_options_or_another_object_are_refused():
    position, _ = _position_after(b"Some words. " * 500, "a.txt", 2, chunk_size=32, chunk_overlap=0)
    with pytest.raises(ValueError, match="other options"):
        read_records(DownloadStream(b""), name="a.txt", content_type=None, resume=position,
                     options=JobOptions(chunk_size=64, chunk_overlap=0))
    with pytest.raises(ValueError, match="another object"):
        read_records(DownloadStream(b""), name="b.txt", content_type=None, resume=position,
                     options=JobOptions(chunk_size=32, chunk_overlap=0))


def test_resuming_lines_needs_the_ids_seen_before():
    position, dump = _position_after(LINES, "a.jsonl", 10)
    assert position.accepted == 10
    with pytest.raises(ValueError, match="seen_ids holds 0 ids"):
        read_records(DownloadStream(LINES[position.open_at:]), name="a.jsonl", content_type=None,
                     options=JobOptions(), resume=position)
    duplicate = jsonl('{"id": "3", "text": "again"}')
    items = list(read_records(DownloadStream(LINES[position.open_at:] + duplicate), name="a.jsonl",
                              content_type=None, options=JobOptions(), resume=position,
                              seen_ids=SeenIds.load(dump)))
    assert items[-1].code == problems.DUPLICATE_ID and items[-1].line == 51


def test_an_object_shorter_than_the_position_is_refused():
    position, _ = _position_after(gz(LINES), "a.jsonl", 40)
    stream = DownloadStream(gz(LINES[:1000]))
    with pytest.raises(ValueError, match="before the resume offset"):
        list(read_records(stream, name="a.jsonl", content_type=None, options=JobOptions(), resume=position,
                          seen_ids=SeenIds.of(str(i) for i in range(40))))


def test_content_that_changed_kind_is_refused():
    position, dump = _position_after(gz(LINES), "a.jsonl", 5)
    with pytest.raises(ValueError, match="same object generation"):
        list(read_records(DownloadStream(LINES), name="a.jsonl", content_type=None, options=JobOptions(),
                          resume=position, seen_ids=SeenIds.load(dump)))


@pytest.mark.parametrize(("change", "message"), [
    ({"version": 2}, "version 1"),
    ({"colour": "red"}, "unknown read position fields: colour"),
    ({"format": "xml"}, "format must be one of"),
    ({"items": -1}, "items must be a non-negative integer"),
    ({"offset": True}, "offset must be a non-negative integer"),
    ({"raw_offset": "12"}, "raw_offset must be"),
    ({"done": 1}, "done must be true or false"),
    ({"header": ["id", 3]}, "header must be a list of strings"),
    ({"start": 5, "cut": 2}, "char_offset <= start <= cut"),
])
def test_bad_positions_are_refused_by_name(change, message):
    data = ReadPosition(format="csv", fingerprint="f", items=3, header=("id", "text")).to_dict()
    with pytest.raises(ValueError, match=message):
        ReadPosition.from_dict({**data, **change})
    data.pop("items")
    with pytest.raises(ValueError, match="incomplete read position"):
        ReadPosition.from_dict(data)


# -- SeenIds, serialised -------------------------------------------------------------------------------


def test_seen_ids_dump_and_load():
    seen = SeenIds(recent_max=64)  # some merged, some recent
    ids = [f"id-{i}" for i in range(1000)]
    assert all(seen.add(record_id) for record_id in ids)
    data = seen.dump()
    assert len(data) == 16 + 8 * 1000
    loaded = SeenIds.load(data)
    assert len(loaded) == 1000
    assert not any(loaded.add(record_id) for record_id in ids)
    assert loaded.add("id-1000") and not loaded.add("id-1000")
    assert SeenIds.of(ids).dump() == data == SeenIds.of(reversed(ids)).dump()
    assert SeenIds.load(SeenIds().dump()).add("first")


@pytest.mark.parametrize("data", [b"", b"not a dump at all", SeenIds.of(["a", "b"]).dump()[:-1],
                                  SeenIds.of(["a"]).dump() * 2])
def test_seen_ids_refuse_other_bytes(data):
    with pytest.raises(ValueError, match="not a dump of SeenIds"):
        SeenIds.load(data)
