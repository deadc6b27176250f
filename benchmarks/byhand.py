"""What users write by hand instead of the pipeline: a plain google-genai script that embeds a JSONL of
`{"id", "text"}` records with one Batch Mode job and writes L2-normalised vectors to Parquet.

    python -m benchmarks.byhand TEXTS.jsonl OUT.parquet [--base-url URL] [--dims 768]

Upload the requests file (Files API), create the embedding batch, poll it every 2 seconds, download the
responses file, normalise, write Parquet (`id`, `embedding`). The key comes from GEMINI_API_KEY; with
`--base-url` (or GEMINI_API_BASE_URL) it talks to that server, e.g. the local Gemini emulator. It prints
one JSON line: the seconds of each step, from reading the texts to the Parquet file written (imports and
interpreter start are not counted), and the batch's name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

MODEL = "gemini-embedding-001"
POLL_SECONDS = 2.0
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.byhand", description=__doc__.split("\n\n")[0])
    parser.add_argument("texts", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--base-url", default=os.environ.get("GEMINI_API_BASE_URL"))
    parser.add_argument("--dims", type=int, default=768)
    args = parser.parse_args(argv)

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from google import genai
    from google.genai import types

    options = types.HttpOptions(base_url=args.base_url) if args.base_url else None
    client = genai.Client(api_key=os.environ["GEMINI_API_KEY"], http_options=options)
    marks = {"start": time.perf_counter()}
    records = [json.loads(line) for line in args.texts.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        requests = Path(tmp) / "requests.jsonl"
        with requests.open("w") as out:
            for record in records:
                out.write(json.dumps({"key": record["id"], "request": {
                    "content": {"parts": [{"text": record["text"]}]}, "task_type": "RETRIEVAL_DOCUMENT",
                    "output_dimensionality": args.dims}}) + "\n")
        marks["prepared"] = time.perf_counter()
        uploaded = client.files.upload(file=requests, config={"mime_type": "application/jsonl",
                                                              "display_name": "by-hand requests"})
    marks["uploaded"] = time.perf_counter()
    job = client.batches.create_embeddings(model=MODEL, src={"file_name": uploaded.name},
                                           config={"display_name": "by-hand embeddings"})
    marks["created"] = time.perf_counter()
    while job.state.name not in TERMINAL:
        time.sleep(POLL_SECONDS)
        job = client.batches.get(name=job.name)
    marks["ended"] = time.perf_counter()
    if job.state.name != "JOB_STATE_SUCCEEDED":
        print(f"batch {job.name} ended {job.state.name}: {job.error}", file=sys.stderr)
        return 1
    data = client.files.download(file=job.dest.file_name)
    marks["downloaded"] = time.perf_counter()
    ids, vectors = [], []
    for line in data.splitlines():
        result = json.loads(line)
        if "response" in result:
            ids.append(result["key"])
            vectors.append(result["response"]["embedding"]["values"])
    matrix = np.asarray(vectors, dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    column = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), args.dims)
    pq.write_table(pa.table({"id": ids, "embedding": column}), args.out)
    marks["written"] = time.perf_counter()
    steps = list(marks)
    print(json.dumps({"batch": job.name, "items": len(ids), "total": marks["written"] - marks["start"],
                      **{f"{b}": marks[b] - marks[a] for a, b in zip(steps, steps[1:], strict=False)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
