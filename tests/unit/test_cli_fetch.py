"""`fetch`'s format conversions and `search`'s scoring, over small files made here (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedpipe.errors import BadArgument, CliError
from embedpipe.fetch import fetch_output, ids_path_for, iter_vectors
from embedpipe.search import texts_for, top_k
from shared.domain.records import InputProblem, Record

DIMS = 8


def unit_rows(seed: int, n: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, DIMS)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def write_shard(folder: Path, index: int, ids: list[str], vectors: np.ndarray, extra: dict[str, list] | None = None):
    """One shard's output as the complete function writes it: JSONL and Parquet with the same rows."""
    jsonl = folder / f"embeddings-{index:05d}.jsonl"
    with jsonl.open("w") as out:
        for i, (item_id, vector) in enumerate(zip(ids, vectors, strict=True)):
            row = {"id": item_id, "embedding": vector.tolist()}
            row.update({k: v[i] for k, v in (extra or {}).items()})
            out.write(json.dumps(row) + "\n")
    columns = {"id": pa.array(ids, pa.string()),
               "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), DIMS)}
    columns.update({k: pa.array(v, pa.string()) for k, v in (extra or {}).items()})
    parquet = folder / f"embeddings-{index:05d}.parquet"
    pq.write_table(pa.table(columns), parquet, row_group_size=3)
    return str(jsonl), str(parquet)


@pytest.fixture
def shards(tmp_path):
    """Two shards; only the second has a `category` column (metadata keys differ per shard)."""
    first = write_shard(tmp_path, 0, ["a", "b", "c", "d"], unit_rows(1, 4))
    second = write_shard(tmp_path, 1, ["e", "f"], unit_rows(2, 2), {"category": ["x", "y"]})
    return [first[0], second[0]], [first[1], second[1]]


def opener(uri: str):
    return open(uri, "rb")  # noqa: SIM115 - the caller closes it (a context manager, like open_read)


def test_jsonl_is_the_files_concatenated(shards, tmp_path):
    embeddings, parquet = shards
    result = fetch_output(embeddings, parquet, tmp_path / "all.jsonl", opener)
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    assert result.rows == 6 and [json.loads(line)["id"] for line in lines] == list("abcdef")


def test_jsonl_without_a_final_newline_does_not_glue_lines(tmp_path):
    (tmp_path / "1.jsonl").write_bytes(b'{"id": "a"}')
    (tmp_path / "2.jsonl").write_bytes(b'{"id": "b"}\n')
    result = fetch_output([str(tmp_path / "1.jsonl"), str(tmp_path / "2.jsonl")], [], tmp_path / "o.jsonl", opener)
    assert result.rows == 2 and (tmp_path / "o.jsonl").read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'


def test_parquet_is_one_file_with_the_columns_unified(shards, tmp_path):
    embeddings, parquet = shards
    result = fetch_output(embeddings, parquet, tmp_path / "all.parquet", opener)
    table = pq.read_table(tmp_path / "all.parquet")
    assert result.rows == table.num_rows == 6
    assert table.column_names == ["id", "embedding", "category"]
    assert table.column("category").to_pylist() == [None] * 4 + ["x", "y"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIMS)


def test_npy_is_a_float32_matrix_with_the_ids_beside_it(shards, tmp_path):
    embeddings, parquet = shards
    out = tmp_path / "all.npy"
    result = fetch_output(embeddings, parquet, out, opener)
    matrix = np.load(out)
    assert (result.rows, result.dimensions) == (6, DIMS) and matrix.shape == (6, DIMS) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-6)
    assert result.ids_path == ids_path_for(out) == tmp_path / "all.npy.ids.txt"
    assert result.ids_path.read_text().splitlines() == list("abcdef")
    np.testing.assert_array_equal(matrix[:4], unit_rows(1, 4))


def test_the_extension_picks_the_format(tmp_path):
    with pytest.raises(BadArgument, match=r"\.jsonl, \.parquet, \.npy"):
        fetch_output([], [], tmp_path / "out.csv", opener)


def test_a_failed_fetch_leaves_no_file(tmp_path, shards):
    embeddings, _ = shards

    def broken(uri):
        raise OSError("connection reset")

    with pytest.raises(OSError):
        fetch_output(embeddings, [], tmp_path / "out.jsonl", broken)
    assert list(tmp_path.glob("out.jsonl*")) == [] and list(tmp_path.glob(".out.jsonl*")) == []


def test_parquet_and_npy_need_parquet_files(tmp_path, shards):
    embeddings, _ = shards
    with pytest.raises(CliError, match="no Parquet files"):
        fetch_output(embeddings, [], tmp_path / "out.npy", opener)


# -- search -----------------------------------------------------------------------------------------------


def test_top_k_over_batches_equals_brute_force(shards):
    _, parquet = shards
    query = unit_rows(9, 1)[0]
    hits = top_k(query, iter_vectors(parquet, opener), k=3)
    ids = list("abcdef")
    matrix = np.vstack([unit_rows(1, 4), unit_rows(2, 2)])
    expected = sorted(zip(ids, matrix @ query, strict=True), key=lambda p: -p[1])[:3]
    assert [h.id for h in hits] == [i for i, _ in expected]
    assert [h.score for h in hits] == pytest.approx([s for _, s in expected], abs=1e-6)


def test_a_query_equal_to_a_row_finds_that_row_first(shards):
    _, parquet = shards
    hits = top_k(unit_rows(2, 2)[1], iter_vectors(parquet, opener), k=2)
    assert hits[0].id == "f" and hits[0].score == pytest.approx(1.0, abs=1e-6)


def test_texts_are_read_only_as_far_as_the_last_wanted_id():
    consumed = []

    def items():
        for i in range(100):
            consumed.append(i)
            yield InputProblem("BAD", "bad line", line=i) if i == 1 else Record(id=f"r{i}", text=f"text {i}")

    found = texts_for(["r5", "r2"], items())
    assert {k: v.text for k, v in found.items()} == {"r5": "text 5", "r2": "text 2"}
    assert consumed[-1] == 5
