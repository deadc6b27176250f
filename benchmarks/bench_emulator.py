"""How much does the Gemini API emulator add on top of its model? Texts/s through the HTTP API against
the bare encoder, on the same texts, in the same run.

The emulator path is the whole job as a client sees it: resumable upload of a JSONL file (8 MB
chunks, as google-genai sends them), create the batch, poll it (with `fields`, every 0.25 s),
download the responses file and parse every line. The bare path is `OnnxMiniLMEncoder.encode` in
this process on all texts sorted by word pieces, in batches of 32 (the emulator sorts windows of
2,048 lines). Bare runs go before and after each emulator run (the emulator's embedding cache is
emptied between runs); the best run of each side is compared, so a busy neighbour on a shared
machine slows both alike. Target: overhead under 10%.

Run from the repo root with the project venv active:
    python benchmarks/bench_emulator.py                 # 5,000 texts, 768 dimensions
    python benchmarks/bench_emulator.py --dims 3072     # the default output size: 4x the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from bench_models import realistic_sentences  # noqa: E402

from infra.local.processes import ManagedProcess, free_port, wait_until  # noqa: E402

__all__ = ["main"]

KEY = "bench-key"
MODEL = "gemini-embedding-001"
CHUNK = 8 * 1024 * 1024
BATCH = 32


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of this process (all threads), or of `pid` from /proc."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_encoder(texts: list[str], threads: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to encode `texts` with the emulator's encoder, in this process."""
    from infra.local.gemini_emulator.encoder import OnnxMiniLMEncoder

    encoder = OnnxMiniLMEncoder(threads=threads)
    encoder.encode(["warm up"])
    started, cpu = time.perf_counter(), cpu_seconds()
    tokens = encoder.token_counts(texts)  # the best order for padding: every text sorted by word pieces
    order = sorted(range(len(texts)), key=tokens.__getitem__)
    for start in range(0, len(order), BATCH):
        encoder.encode([texts[i] for i in order[start : start + BATCH]])
    return time.perf_counter() - started, cpu_seconds() - cpu


def emulator_job(base: str, pid: int, texts: list[str], dims: int, workdir: Path) -> dict:
    """Upload, create, poll, download, parse: wall time of each step, CPU of emulator and client."""
    lines = [
        json.dumps(
            {"key": f"k{i}", "request": {"content": {"parts": [{"text": t}]}, "output_dimensionality": dims}}
        )
        for i, t in enumerate(texts)
    ]
    data = ("\n".join(lines) + "\n").encode()
    steps: dict[str, float] = {}
    with httpx.Client(base_url=base, headers={"x-goog-api-key": KEY}, timeout=600, trust_env=False) as api:
        t0, cpu0 = time.perf_counter(), cpu_seconds() + cpu_seconds(pid)
        start = api.post(
            "/upload/v1beta/files",
            json={"file": {"display_name": "bench", "mime_type": "application/jsonl"}},
            headers={
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(len(data)),
                "X-Goog-Upload-Header-Content-Type": "application/jsonl",
            },
        )
        start.raise_for_status()
        url = start.headers["x-goog-upload-url"]
        for offset in range(0, len(data), CHUNK):
            piece = data[offset : offset + CHUNK]
            command = "upload, finalize" if offset + len(piece) >= len(data) else "upload"
            response = api.post(
                url,
                content=piece,
                headers={"X-Goog-Upload-Command": command, "X-Goog-Upload-Offset": str(offset)},
            )
            response.raise_for_status()
        file_name = response.json()["file"]["name"]
        t1 = time.perf_counter()
        op = api.post(
            f"/v1beta/models/{MODEL}:asyncBatchEmbedContent",
            json={"batch": {"displayName": "bench", "inputConfig": {"fileName": file_name}}},
        ).json()
        name = op["name"]
        while True:
            op = api.get(f"/v1beta/{name}", params={"fields": "done,metadata(state,output)"}).json()
            if op.get("done"):
                break
            time.sleep(0.25)
        t2 = time.perf_counter()
        if op["metadata"]["state"] != "BATCH_STATE_SUCCEEDED":
            raise SystemExit(f"the batch ended {op['metadata']['state']}")
        responses = op["metadata"]["output"]["responsesFile"]
        target = workdir / "responses.jsonl"
        with api.stream("GET", f"/download/v1beta/{responses}:download", params={"alt": "media"}) as stream:
            stream.raise_for_status()
            with target.open("wb") as out:
                for block in stream.iter_bytes(1 << 20):
                    out.write(block)
        ok = 0
        with target.open("rb") as fh:
            for line in fh:
                record = orjson.loads(line)
                ok += len(record["response"]["embedding"]["values"]) == dims
        t3, cpu3 = time.perf_counter(), cpu_seconds() + cpu_seconds(pid)
        full = api.get(f"/v1beta/{name}", params={"fields": "metadata(createTime,endTime)"}).json()[
            "metadata"
        ]
    steps = {"upload": t1 - t0, "run (create + poll)": t2 - t1, "download + parse": t3 - t2}
    return {
        "cpu_seconds": cpu3 - cpu0,
        "seconds": t3 - t0,
        "steps": steps,
        "ok": ok,
        "bytes_out": target.stat().st_size,
        "bytes_in": len(data),
        "times": full,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=5000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="emulator runs; bare runs go around each")
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    texts = realistic_sentences(args.texts, seed=5000)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = ManagedProcess(
        name="gemini-emulator-bench",
        argv=[
            sys.executable,
            "-m",
            "infra.local.gemini_emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        log_path=ROOT / ".local" / f"gemini-emulator-bench-{os.getpid()}.log",
        health_url=f"{base}/_emulator/health",
        env={
            "PYTHONPATH": str(ROOT),
            "GEMINI_EMULATOR_API_KEY": KEY,
            "GEMINI_EMULATOR_THREADS": str(args.threads),
        },
        cwd=ROOT,
    )
    process.start()
    bare_runs: list[tuple[float, float]] = []
    jobs: list[dict] = []
    try:
        process.wait_ready(60)
        wait_until(
            lambda: httpx.get(process.health_url, trust_env=False).json().get("ready"),
            120,
            0.1,
            "the model to load",
        )
        # Interleaved, so a busy neighbour slows both sides alike; the best run of each is compared.
        bare_runs.append(bare_encoder(texts, args.threads))
        for _ in range(args.repeats):
            httpx.post(f"{base}/_emulator/reset", trust_env=False).raise_for_status()  # empties the cache too
            with tempfile.TemporaryDirectory() as tmp:
                jobs.append(emulator_job(base, process.pid, texts, args.dims, Path(tmp)))
            stats = httpx.get(f"{base}/_emulator/stats", trust_env=False).json()
            bare_runs.append(bare_encoder(texts, args.threads))
    finally:
        process.stop()

    for job in jobs:
        if job["ok"] != len(texts):
            raise SystemExit(f"only {job['ok']} of {len(texts)} responses had {args.dims} values")
    n = len(texts)
    bare_wall, bare_cpu = min(w for w, _ in bare_runs), min(c for _, c in bare_runs)
    best = min(jobs, key=lambda j: j["seconds"])
    best_cpu = min(j["cpu_seconds"] for j in jobs)
    walls = ", ".join(f"{w:.1f}" for w, _ in bare_runs)
    job_walls = ", ".join(f"{j['seconds']:.1f}" for j in jobs)
    print(f"{n} texts, {args.dims} dimensions, {args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    print(f"bare encoder : {n / bare_wall:7.1f} texts/s  (wall, best of {walls} s); {bare_cpu:.1f} CPU s")
    print(
        f"emulator API : {n / best['seconds']:7.1f} texts/s  (wall, best of "
        f"{job_walls} s); {best_cpu:.1f} CPU s (emulator + client)"
    )
    print(
        f"overhead     : {(best['seconds'] - bare_wall) / bare_wall * 100:+.1f}% wall, "
        f"{(best_cpu - bare_cpu) / bare_cpu * 100:+.1f}% CPU  (target < 10%)"
    )
    print("steps (best) : " + ", ".join(f"{k} {v:.2f} s" for k, v in best["steps"].items()))
    print(f"files        : {best['bytes_in'] / 1e6:.1f} MB in, {best['bytes_out'] / 1e6:.1f} MB out")
    print(f"provider calls for one job: {stats['total']} {stats['calls']}")
    print(
        f"rerun        : python benchmarks/bench_emulator.py --texts {args.texts} --dims {args.dims} "
        f"--threads {args.threads} --repeats {args.repeats}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
