"""embedpipe: the operators' command line of the embeddings pipeline (`embedpipe --help`).

    config      settings from an env file (`.local/env`) or the environment
    services    the Google clients a command needs, built lazily; their errors as one line
    uploads     object names, content types and option metadata of `upload`
    watch       polling jobs to their end; the exit codes of their end states
    fetch       a job's output files as one .jsonl, .parquet or .npy file, streaming
    search      top-k cosine search over the output, texts re-read from the source
    events      completion events through a temporary subscription
    status_api  the status function's cancel endpoint, with the right bearer token
    render      rich tables and lines
    cli         the typer app
"""
