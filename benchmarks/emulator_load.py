"""The Gemini emulator alone, its real model: the same texts as 1 batch and as K batches created at once,
with and without a neighbour that keeps half a core busy, with onnxruntime's idle threads spinning or not.

    python -m benchmarks.emulator_load                 # 6,000 texts, 8 batches
    python -m benchmarks.emulator_load --texts 20000   # the size of section 1's large run

Why: in section 1 the pipeline's batches took longer than the hand-written script's one batch of the same
texts, while the stack's own processes (Firestore, the functions) used the same 2 cores. This separates the
emulator's part: does splitting into batches cost it time, and how much does a busy neighbour slow it down?
Each configuration runs its own emulator process (`GEMINI_EMULATOR_SPIN` 0 or 1), its vector cache cleared
before each run. Measured per run: seconds from the first create to the last batch's end (polled every
0.5 s), and the emulator process's CPU seconds over that time (/proc). The neighbour is a child process that
alternates 30 ms of busy loop and 30 ms of sleep. One JSON line per run on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import ROOT, passages
from infra.local.processes import free_port, wait_until

KEY = "emulator-load-key"
MODEL = "gemini-embedding-001"
ENDED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
NEIGHBOUR = "import time\nwhile True:\n    t = time.time()\n    while time.time() - t < 0.03: pass\n    time.sleep(0.03)\n"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _requests(texts: list[str], part: int) -> str:
    return "".join(json.dumps({"key": f"{part}-{i}", "request": {
        "content": {"parts": [{"text": text}]}, "task_type": "RETRIEVAL_DOCUMENT", "output_dimensionality": 768}})
        + "\n" for i, text in enumerate(texts))


def _run(client, base: str, pid: int, texts: list[str], batches: int) -> tuple[float, float]:
    httpx.delete(f"{base}/_emulator/cache", headers={"x-goog-api-key": KEY})
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        for part in range(batches):
            path = Path(tmp) / f"requests-{part}.jsonl"
            path.write_text(_requests(texts[part * len(texts) // batches:(part + 1) * len(texts) // batches], part))
            files.append(client.files.upload(file=path, config={"mime_type": "application/jsonl",
                                                                "display_name": path.name}))
    cpu, began = _cpu_seconds(pid), time.monotonic()
    pending = {client.batches.create_embeddings(model=MODEL, src={"file_name": f.name},
                                                config={"display_name": "emulator-load"}).name for f in files}
    while pending:
        time.sleep(0.5)
        pending = {name for name in pending if client.batches.get(name=name).state.name not in ENDED}
    return time.monotonic() - began, _cpu_seconds(pid) - cpu


def _configuration(texts: list[str], batches: int, spin: bool, neighbour: bool) -> list[dict]:
    from google import genai
    from google.genai import types

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GEMINI_EMULATOR_API_KEY": KEY,
           "GEMINI_EMULATOR_SPIN": "1" if spin else "0",
           "GEMINI_EMULATOR_QUOTAS": json.dumps({"concurrent_batches": 100, "file_storage_bytes": 20 * 1024**3,
                                                 "file_bytes": 2 * 1024**3})}
    emulator = subprocess.Popen([sys.executable, "-m", "infra.local.gemini_emulator", "--port", str(port),
                                 "--log-level", "warning"], cwd=ROOT, env=env, start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], start_new_session=True) if neighbour else None
    base = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            try:
                return bool(httpx.get(f"{base}/_emulator/health").json().get("ready"))
            except httpx.HTTPError:
                return False

        wait_until(ready, 300, what="the emulator's model")
        client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=base))
        rows = []
        for count in (1, batches):
            seconds, cpu = _run(client, base, emulator.pid, texts, count)
            rows.append({"spin": spin, "neighbour": neighbour, "texts": len(texts), "batches": count,
                         "seconds": round(seconds, 1), "emulator_cpu_s": round(cpu, 1)})
            print(json.dumps(rows[-1]), flush=True)
        return rows
    finally:
        for process in (other, emulator):
            if process is not None:
                os.killpg(process.pid, 15)
                process.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.emulator_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=6_000)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args(argv)
    texts = passages(args.texts, seed=40_000)
    for neighbour in (False, True):
        for spin in (True, False):
            _configuration(texts, args.batches, spin, neighbour)
    return 0


if __name__ == "__main__":
    sys.exit(main())
