"""The pipeline's benchmarks: `make bench` (= `python -m benchmarks`) runs them and writes
docs/benchmarks.md and docs/benchmarks.png; `python -m benchmarks NAME --quick` runs one at smaller sizes.

    pipeline   upload -> event on the default stack, against the bare model and a hand-written google-genai script
    submit     the submit use case at 10 MB, 100 MB and 1 GB: seconds, MB/s, peak RSS
    complete   one invocation writing 100k x 768 results, against numpy's normalise-and-save
    poller     Firestore reads and writes per due item, one tick and its workers, 1,000 active jobs
    calls      Gemini API calls per batch against the minimum the API allows
    quota      200 files, 5M tokens, against a 300k-token, 10-batch emulator quota (issue 13)
    bounded    1 GB JSONL and 1 GB gzip with 60 s function timeouts (issue 14)
    fanout     100k x 768 in 4 shards, 2 complete instances against 1 (issue 14)
    scale      10,000 active jobs over the in-memory fakes, one scheduler minute (issue 14)

`byhand.py` is the hand-written script `pipeline` compares with. `bench_ingest.py`, `bench_emulator.py` and
`bench_models.py` are standalone scripts (their docstrings say how to run them).
"""
