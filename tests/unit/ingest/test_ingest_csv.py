"""CSV: a header row naming the columns, then one record per row."""

from __future__ import annotations

import pytest

from shared.domain.records import Record
from shared.ingest import ReadLimits, problems
from tests.unit.ingest.helpers import assert_one_sentence, codes, gz, only_problem, read, records


def csv_read(text: str | bytes, **kwargs):
    return read(text.encode() if isinstance(text, str) else text, "in.csv", **kwargs)


def test_rows_with_title_and_metadata():
    items = csv_read("id,title,text,lang,empty\n1,One,first text,en,\n2,,second,,\n")
    assert items == [
        Record(id="1", text="first text", title="One", metadata={"lang": "en"}),
        Record(id="2", text="second", title=None, metadata={}),
    ]


def test_columns_named_by_the_options():
    items = csv_read("Key,Body,Heading,x\nk1,hello,H,1\n", id_column="Key", text_column="Body",
                     title_column="Heading")
    assert items == [Record(id="k1", text="hello", title="H", metadata={"x": "1"})]


def test_column_names_match_case_insensitively_and_trimmed():
    assert csv_read(" ID , Text \n1,hello\n") == [Record(id="1", text="hello")]


def test_title_column_is_optional():
    assert csv_read("id,text\n1,a\n") == [Record(id="1", text="a")]


@pytest.mark.parametrize(("header", "column", "option"), [
    ("identifier,text,other", "id", "id_column"),
    ("id,body,other", "text", "text_column"),
])
def test_missing_column_is_fatal_and_says_what_to_set(header, column, option):
    problem = only_problem(csv_read(f"{header}\n1,a,b\n"))
    assert problem.code == problems.MISSING_COLUMN and problem.fatal
    assert repr(column) in problem.message and option in problem.message
    for found in header.split(","):
        assert repr(found) in problem.message
    assert_one_sentence(problem)


def test_quoted_fields_spanning_lines_and_line_numbers():
    text = 'id,text\n1,"first\nsecond\nthird"\n2,"a ""quoted"", comma"\n3,\n4,ok\n'
    items = csv_read(text)
    assert [(r.id, r.text) for r in records(items)] == [
        ("1", "first\nsecond\nthird"), ("2", 'a "quoted", comma'), ("4", "ok"),
    ]
    problem = only_problem(items)
    assert (problem.code, problem.line, problem.record_id) == (problems.EMPTY_TEXT, 6, "3")


def test_crlf_and_embedded_crlf():
    items = csv_read('id,text\r\n1,"two\r\nlines"\r\n2,b\r\n')
    assert [(r.id, r.text) for r in records(items)] == [("1", "two\nlines"), ("2", "b")]


def test_wrong_field_counts_are_malformed_rows():
    items = csv_read("id,text,lang\n1,a,en\n2,b\n3,c,en,extra\n4,d,fr\n")
    assert [r.id for r in records(items)] == ["1", "4"]
    assert [(p.code, p.line) for p in items if not isinstance(p, Record)] == [
        (problems.MALFORMED_ROW, 3), (problems.MALFORMED_ROW, 4),
    ]
    assert "2 fields" in items[1].message and "3" in items[1].message
    assert_one_sentence(items[1])


def test_unclosed_quote_at_the_end():
    items = csv_read('id,text\n1,a\n2,"never closed\nmore\n')
    assert [r.id for r in records(items)] == ["1"]
    problem = only_problem(items)
    assert (problem.code, problem.line) == (problems.MALFORMED_ROW, 3)
    assert_one_sentence(problem)


def test_missing_id_and_duplicates():
    items = csv_read("id,text\n1,a\n,b\n1,c\n2,d\n")
    assert [(r.id, r.text) for r in records(items)] == [("1", "a"), ("2", "d")]
    assert [(p.code, p.line) for p in items if not isinstance(p, Record)] == [
        (problems.MISSING_ID, 3), (problems.DUPLICATE_ID, 4),
    ]


def test_text_too_long():
    items = csv_read("id,text\nlong," + " ".join(["word"] * 3000) + "\nok,fine\n")
    problem = only_problem(items)
    assert (problem.code, problem.record_id, problem.line) == (problems.TEXT_TOO_LONG, "long", 2)
    assert [r.id for r in records(items)] == ["ok"]


def test_row_too_large_on_one_line():
    items = csv_read("id,text\n1,a\n2," + "x" * 5000 + "\n3,c\n", limits=ReadLimits(max_record_bytes=1000))
    assert [r.id for r in records(items)] == ["1", "3"]
    problem = only_problem(items)
    assert (problem.code, problem.line, problem.fatal) == (problems.ROW_TOO_LARGE, 3, False)
    assert_one_sentence(problem)


def test_row_too_large_across_quoted_lines_skips_the_whole_row():
    big = "\n".join(["y" * 300] * 10)  # ten lines, each under the limit, the row over it
    items = csv_read(f'id,text\n1,a\n2,"{big}"\n3,c\n', limits=ReadLimits(max_record_bytes=1000))
    assert [r.id for r in records(items)] == ["1", "3"]
    assert [(p.code, p.line) for p in items if not isinstance(p, Record)] == [(problems.ROW_TOO_LARGE, 3)]


def test_huge_quoted_line_inside_a_row():
    items = csv_read('id,text\n1,"start\n' + "z" * 5000 + '\nend"\n2,b\n', limits=ReadLimits(max_record_bytes=1000))
    assert [r.id for r in records(items)] == ["2"]
    assert codes(items) == [problems.ROW_TOO_LARGE]


def test_invalid_utf8_row():
    data = b'id,text\n1,a\n2,"caf\xe9\nsecond line"\n3,c\n'
    items = csv_read(data)
    assert [r.id for r in records(items)] == ["1", "3"]
    problem = only_problem(items)
    assert (problem.code, problem.line, problem.fatal) == (problems.INVALID_UTF8, 3, False)
    assert_one_sentence(problem)


def test_invalid_utf8_header_is_fatal():
    problem = only_problem(csv_read(b"id,t\xffext\n1,a\n"))
    assert (problem.code, problem.fatal, problem.line) == (problems.INVALID_UTF8, True, 1)


def test_oversized_header_is_fatal():
    problem = only_problem(csv_read("id,text," + "c" * 2000 + "\n1,a,b\n", limits=ReadLimits(max_record_bytes=1000)))
    assert (problem.code, problem.fatal) == (problems.ROW_TOO_LARGE, True)


@pytest.mark.parametrize("data", ["id,text\n", "id,text\n\n,\n  ,  \n", "\n\n"])
def test_header_only_or_nothing_is_empty_input(data):
    problem = only_problem(csv_read(data))
    assert problem.code == problems.EMPTY_INPUT and problem.fatal
    assert_one_sentence(problem)


def test_blank_lines_and_empty_rows_are_skipped():
    items = csv_read("\n\nid,text\n\n1,a\n,\n\n2,b\n")
    assert [r.id for r in records(items)] == ["1", "2"]
    assert not codes(items)


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_spreadsheet_delimiters(delimiter):
    items = csv_read(f"id{delimiter}text{delimiter}lang\n1{delimiter}a, with comma{delimiter}en\n")
    assert items == [Record(id="1", text="a, with comma", metadata={"lang": "en"})]


def test_gzip_and_unicode():
    data = gz("id,text\nü,日本語 \U0001f600\n".encode())
    assert read(data, "in.csv.gz") == [Record(id="ü", text="日本語 \U0001f600")]


def test_content_type():
    assert len(records(read(b"id,text\n1,a\n", "blob", content_type="text/csv"))) == 1


def test_fields_larger_than_the_csv_default_limit():
    text = "word " * 30_000  # 150 kB, above csv's default 128 kB field limit, below the record limit
    items = csv_read(f"id,text\n1,{text}\n", limits=ReadLimits(max_input_tokens=100_000))
    assert [len(r.text) for r in records(items)] == [len(text)]
