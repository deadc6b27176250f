"""The pipeline's benchmarks: `make bench` (= `python -m benchmarks`) runs them and writes
docs/benchmarks.md and docs/benchmarks.png.

    pipeline   upload -> completion event through the local stack, against the bare embedding model
    submit     the submit use case at 10 MB, 100 MB and 1 GB: seconds, MB/s, peak RSS
    complete   fetch, normalise and write 100k x 768 results, against numpy's normalise-and-save
    poller     Firestore reads and writes per poller run with 1,000 active jobs
    calls      Gemini API calls per job against the minimum the API allows

`bench_ingest.py`, `bench_emulator.py` and `bench_models.py` are standalone scripts (their docstrings say
how to run them).
"""
