"""`fetch`: a job's output files as one local file, streaming (memory holds one row group).

    .jsonl    the embeddings JSONL files, concatenated byte for byte
    .parquet  the Parquet files rewritten as one (columns unified; a column a shard lacks is null there)
    .npy      a float32 matrix, one row per item, plus FILE.ids.txt: the id of each row, one per line
              (an id containing a line break is written JSON-quoted)

Sources are opened through `opener(uri)` (a context manager giving a binary stream), so the same code
reads Cloud Storage (`GcsBlobStore.open_read`) or local files (tests). The result is written to a
temporary file next to FILE and renamed at the end: an interrupted fetch leaves no partial FILE.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedpipe.errors import BadArgument, CliError

__all__ = ["FORMATS", "FetchResult", "Opener", "fetch_output", "ids_path_for", "output_format"]

Opener = Callable[[str], AbstractContextManager[BinaryIO]]
FORMATS = (".jsonl", ".parquet", ".npy")
BATCH_ROWS = 4096
COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FetchResult:
    path: Path
    rows: int
    dimensions: int | None = None
    ids_path: Path | None = None


def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise BadArgument(f"--out {path}: the extension picks the format: {', '.join(FORMATS)}")
    return suffix


def ids_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".ids.txt")


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path next to `path`, renamed to it when the block succeeds, removed otherwise."""
    temporary = path.with_name(f".{path.name}.part")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def fetch_output(embeddings: list[str], parquet: list[str], out: Path, opener: Opener) -> FetchResult:
    """Write the output files as `out` in the format its extension names."""
    kind = output_format(out)
    if not out.parent.exists():
        raise BadArgument(f"--out {out}: the folder {out.parent} does not exist")
    if kind == ".jsonl":
        return write_jsonl(embeddings, out, opener)
    if not parquet:
        raise CliError("the job's output has no Parquet files (needed for .parquet and .npy): fetch .jsonl instead")
    if kind == ".parquet":
        return write_parquet(parquet, out, opener)
    return write_npy(parquet, out, opener)


def write_jsonl(sources: list[str], out: Path, opener: Opener) -> FetchResult:
    rows = 0
    with _replacing(out) as temporary, temporary.open("wb") as sink:
        for uri in sources:
            last = b"\n"
            with opener(uri) as stream:
                while chunk := stream.read(COPY_CHUNK):
                    rows += chunk.count(b"\n")
                    sink.write(chunk)
                    last = chunk[-1:]
            if last != b"\n":  # a file without a final newline must not glue its last line to the next file's first
                sink.write(b"\n")
                rows += 1
    return FetchResult(out, rows)


def _parquet_files(sources: list[str], opener: Opener, stack: contextlib.ExitStack) -> list[pq.ParquetFile]:
    return [pq.ParquetFile(stack.enter_context(opener(uri))) for uri in sources]


def write_parquet(sources: list[str], out: Path, opener: Opener) -> FetchResult:
    rows = 0
    with contextlib.ExitStack() as stack:
        files = _parquet_files(sources, opener, stack)
        try:
            schema = pa.unify_schemas([f.schema_arrow for f in files], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise CliError(f"the job's Parquet files do not share a schema: {exc}") from None
        with _replacing(out) as temporary:
            writer = pq.ParquetWriter(temporary, schema, compression="zstd")
            try:
                for parquet_file in files:
                    for batch in parquet_file.iter_batches(batch_size=BATCH_ROWS):
                        writer.write_table(_conform(pa.Table.from_batches([batch]), schema))
                        rows += batch.num_rows
            finally:
                writer.close()
    return FetchResult(out, rows)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns in its order (nulls for those it lacks)."""
    columns = [table.column(field.name).cast(field.type) if field.name in table.column_names
               else pa.nulls(table.num_rows, field.type) for field in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _dimensions(files: list[pq.ParquetFile]) -> int:
    dims = set()
    for parquet_file in files:
        field = parquet_file.schema_arrow.field("embedding")
        if not pa.types.is_fixed_size_list(field.type):
            raise CliError(f"the embedding column is {field.type}, not a fixed-size list of floats")
        dims.add(field.type.list_size)
    if len(dims) != 1:
        raise CliError(f"the job's Parquet files differ in dimensions: {sorted(dims)}")
    return dims.pop()


def _batches(files: list[pq.ParquetFile], dims: int) -> Iterator[tuple[list[str], np.ndarray]]:
    for parquet_file in files:
        for batch in parquet_file.iter_batches(batch_size=BATCH_ROWS, columns=["id", "embedding"]):
            values = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
            yield batch.column("id").to_pylist(), values.astype(np.float32, copy=False).reshape(-1, dims)


def iter_vectors(sources: list[str], opener: Opener) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, float32 matrix) per row group batch of the Parquet files, in file order."""
    with contextlib.ExitStack() as stack:
        files = _parquet_files(sources, opener, stack)
        yield from _batches(files, _dimensions(files) if files else 0)


def _id_line(item_id: str) -> str:
    return (json.dumps(item_id) if "\n" in item_id or "\r" in item_id else item_id) + "\n"


def write_npy(sources: list[str], out: Path, opener: Opener) -> FetchResult:
    ids_path = ids_path_for(out)
    with contextlib.ExitStack() as stack:
        files = _parquet_files(sources, opener, stack)
        dims = _dimensions(files)
        total = sum(f.metadata.num_rows for f in files)
        with _replacing(out) as matrix_path, _replacing(ids_path) as ids_temporary, ids_temporary.open("w") as ids:
            matrix = np.lib.format.open_memmap(matrix_path, mode="w+", dtype=np.float32, shape=(total, dims))
            row = 0
            for batch_ids, vectors in _batches(files, dims):
                if row + len(batch_ids) > total:
                    raise CliError("the Parquet files changed while they were read: fetch again")
                matrix[row:row + len(batch_ids)] = vectors
                ids.writelines(_id_line(item_id) for item_id in batch_ids)
                row += len(batch_ids)
            if row != total:
                raise CliError("the Parquet files changed while they were read: fetch again")
            matrix.flush()
            del matrix
    return FetchResult(out, total, dims, ids_path)
