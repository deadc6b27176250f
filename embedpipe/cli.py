"""`embedpipe`: the operators' command line of the embeddings pipeline.

Every command is a thin edge: read the settings (`embedpipe.config`), build the clients it needs
(`embedpipe.services`), call one module that does the work, print with `embedpipe.render`. Errors end as
one line on stderr and an exit code (`embedpipe.errors`), never a traceback (EMBEDPIPE_DEBUG=1 shows one
for an unexpected error).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from typer.core import TyperGroup

try:  # typer 0.20 and later carry their own copy of click
    from typer._click import exceptions as _click_errors
except ImportError:  # earlier ones run on click
    from click import exceptions as _click_errors

from embedpipe import errors, render
from embedpipe.config import Config
from embedpipe.errors import EXIT_USAGE, CliError, NoOutput
from embedpipe.services import Services, translate_error
from shared.domain.jobs import Job, JobState, job_id_for

__all__ = ["app", "run"]

HELP = (
    "Operate the embeddings pipeline: upload files, follow and cancel jobs, fetch and search results; in the "
    "cloud, open the dashboard and replay dead letters.\n\n"
    "Settings (the names of shared/config.py: GOOGLE_CLOUD_PROJECT, INPUT_BUCKET, EVENTS_TOPIC, STATUS_URL, ...) "
    "come from --env-file, else $EMBEDPIPE_ENV_FILE, else .local/env in the current directory (written by "
    "`make up`), else the process environment.\n\n"
    "Exit codes: 0 success; 1, 2, 3 see `watch` (3 also: `events --count` timed out); 4 an error (unknown "
    "job, missing setting, unreachable service, no output yet); 64 bad arguments; 130 interrupted."
)


class _Group(TyperGroup):
    """Every error as one line on stderr with its exit code (click's own usage errors included)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name or "embedpipe", complete_var, standalone_mode=False, **extra)
        except _click_errors.NoArgsIsHelpError as exc:
            text = exc.format_message()  # empty when typer's rich help has printed itself already
            if text.strip():
                typer.echo(text)
            sys.exit(errors.EXIT_OK)
        except _click_errors.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "embedpipe"
            _error(f"{exc.format_message()} (see `{where} --help`)")
            sys.exit(EXIT_USAGE)
        except _click_errors.ClickException as exc:
            _error(exc.format_message())
            sys.exit(exc.exit_code)
        except (typer.Abort, getattr(_click_errors, "Abort", typer.Abort)):
            _error("interrupted")
            sys.exit(errors.EXIT_INTERRUPTED)
        except Exception as exc:  # noqa: BLE001 - the edge: anything becomes one line and an exit code
            error = translate_error(exc)
            if error is None:
                if os.environ.get("EMBEDPIPE_DEBUG"):
                    raise
                error = CliError(f"unexpected {type(exc).__name__}: {exc} (EMBEDPIPE_DEBUG=1 shows the traceback)")
            _error(error.message)
            sys.exit(error.exit_code)
        sys.exit(result if isinstance(result, int) else errors.EXIT_OK)


def _error(message: str) -> None:
    typer.echo(f"embedpipe: error: {' '.join(str(message).split())}", err=True)


def _note(message: str) -> None:
    typer.echo(message, err=True)


app = typer.Typer(
    cls=_Group, name="embedpipe", help=HELP, no_args_is_help=True, add_completion=False, rich_markup_mode="markdown",
    pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class _State:
    env_file: Path | None


@app.callback()
def _main(
    ctx: typer.Context,
    env_file: Annotated[Path | None, typer.Option(
        "--env-file", envvar="EMBEDPIPE_ENV_FILE", dir_okay=False,
        help="Settings file (KEY=VALUE lines). Default: .local/env when present, else the environment.")] = None,
) -> None:
    ctx.obj = _State(env_file)


def _config(ctx: typer.Context) -> Config:
    state = ctx.find_object(_State)
    return Config.load(state.env_file if state else None)


@contextlib.contextmanager
def _services(ctx: typer.Context) -> Iterator[Services]:
    config = _config(ctx)
    services = Services(config)
    with config.client_environment():
        try:
            yield services
        finally:
            services.close()


def _console() -> Console:
    """stdout; wide when it is not a terminal (a pipe or a file), so tables are not cut at 80 columns."""
    terminal = sys.stdout.isatty()
    return Console(highlight=False, width=None if terminal or os.environ.get("COLUMNS") else 200)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


# -- upload ---------------------------------------------------------------------------------------------


@app.command()
def upload(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(metavar="PATH...", exists=True, dir_okay=False, readable=True,
                                                help=".txt, .md, .jsonl, .ndjson or .csv files (optionally .gz)")],
    task_type: Annotated[str | None, typer.Option(help="e.g. RETRIEVAL_DOCUMENT, SEMANTIC_SIMILARITY")] = None,
    dimensions: Annotated[int | None, typer.Option(help="Output dimensionality, 128..3072 (768 recommended)")] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first")] = None,
    display_name: Annotated[str | None, typer.Option(help="Name of the job's batches")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="Tokens per passage (.txt, .md)")] = None,
    chunk_overlap: Annotated[int | None, typer.Option(help="Tokens shared by neighbouring passages")] = None,
    on_bad_record: Annotated[str | None, typer.Option(help="skip (report it, embed the rest) or fail")] = None,
    model: Annotated[str | None, typer.Option(help="Embedding model (default: the deployment's)")] = None,
    name: Annotated[str | None, typer.Option(
        help="Object name under INPUT_PREFIX (one PATH); ending with / a folder for every PATH")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the job ids, one per line")] = False,
) -> None:
    """Upload files to the input bucket (options as object metadata) and print each one's job id."""
    from google.api_core import exceptions as gexc

    from embedpipe.uploads import check_format, content_type_for, object_name, upload_metadata

    with _services(ctx) as services:
        bucket_name = services.config.require("INPUT_BUCKET", "where files are uploaded")
        prefix = services.settings.input_prefix
        metadata = upload_metadata(
            services.settings.default_options(), task_type=task_type, output_dimensionality=dimensions,
            priority=priority, display_name=display_name, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
            on_bad_record=on_bad_record, model=model,
        )
        plans = []
        for path in paths:
            content_type = content_type_for(path)
            check_format(path, content_type)
            plans.append((path, object_name(prefix, path, name, len(paths) > 1), content_type))
        bucket = services.storage.bucket(bucket_name)
        uploaded = []
        for path, object_name_, content_type in plans:
            blob = bucket.blob(object_name_)
            blob.metadata = metadata or None
            try:
                blob.upload_from_filename(str(path), content_type=content_type)
            except gexc.NotFound:
                raise CliError(f"no bucket {bucket_name}: check INPUT_BUCKET") from None
            job_id = job_id_for(bucket_name, blob.name, blob.generation)
            uploaded.append(job_id)
            if quiet:
                typer.echo(job_id)
            else:
                typer.echo(f"{job_id}  gs://{bucket_name}/{blob.name}#{blob.generation}")
        if not quiet:
            _note(f"Follow: embedpipe watch {' '.join(uploaded)}")


# -- jobs, status, watch ---------------------------------------------------------------------------------


@app.command()
def jobs(
    ctx: typer.Context,
    state: Annotated[JobState | None, typer.Option(case_sensitive=False, help="Only jobs in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many (newest first)")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="The job documents as JSON")] = False,
) -> None:
    """List the newest jobs: state, source, progress, counts, success rate, age."""
    with _services(ctx) as services:
        found, _ = services.jobs.list(state=state, limit=limit)
    if as_json:
        from shared.views import job_view

        _print_json([job_view(job) for job in found])
    elif not found:
        _note(f"No {state.value + ' ' if state else ''}jobs.")
    else:
        _console().print(render.jobs_table(found))


@app.command()
def status(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    as_json: Annotated[bool, typer.Option("--json", help="The job document as JSON")] = False,
) -> None:
    """One job: progress, counts, success rate, cost estimates, shards, errors, input problems, outputs."""
    with _services(ctx) as services:
        job = services.job(job_id)
        view = services.describe(job_id)
    if as_json:
        _print_json(view)
    else:
        _console().print(render.status_view(job, view))


@app.command()
def watch(
    ctx: typer.Context,
    job_ids: Annotated[list[str], typer.Argument(metavar="JOB...")],
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between reads")] = 2.0,
    timeout: Annotated[float | None, typer.Option(min=0, help="Give up after this many seconds (exit 3)")] = None,
    appear_timeout: Annotated[float, typer.Option(
        min=0, help="How long to wait for a job that does not exist yet (just uploaded)")] = 30.0,
) -> None:
    """Show live progress bars until every job has ended.

    Exit codes: 0 every job SUCCEEDED; 2 a job PARTIALLY_SUCCEEDED (none failed); 1 a job FAILED or was
    CANCELLED; 3 --timeout passed first; 4 an error (e.g. a job that never appeared).
    """
    from embedpipe.watch import exit_code_for, watch_jobs

    console = _console()
    with _services(ctx) as services:
        progress = Progress(
            TextColumn("{task.fields[job]}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[state]}"), TextColumn("{task.fields[counts]}"),
            console=console, refresh_per_second=4,
        )
        tasks = {job_id: progress.add_task("", total=100, job=job_id, state="[dim]waiting[/]", counts="")
                 for job_id in dict.fromkeys(job_ids)}

        def update(seen: Mapping[str, Job | None]) -> None:
            for job_id, job in seen.items():
                if job is not None:
                    style = render.STATE_STYLES.get(job.state, "")
                    progress.update(tasks[job_id], completed=services.progress(job), state=f"[{style}]{job.state.value}[/]",
                                    counts=f"{job.counts.succeeded} ok, {job.counts.failed} failed of {job.counts.total}")

        with progress:
            ended = watch_jobs(list(tasks), services.jobs.get, update, interval=interval, timeout=timeout,
                               appear_timeout=appear_timeout)
    for job in ended.values():
        where = f" -> {job.output.manifest}" if job.output and job.output.manifest else ""
        error = f" ({job.error.code}: {job.error.message})" if job.error else ""
        console.print(f"{job.job_id} {job.state.value}: {job.counts.succeeded}/{job.counts.total} succeeded, "
                      f"success rate {render.percent(job.success_rate)}{where}{error}", markup=False)
    raise typer.Exit(exit_code_for(job.state for job in ended.values()))


# -- cancel ------------------------------------------------------------------------------------------------


@app.command()
def cancel(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="JOB")]) -> None:
    """Cancel a job through the status function (STATUS_URL), as an authorised caller.

    The token: POLLER_TOKEN (local stack), else STATUS_TOKEN, else a Google ID token for STATUS_URL from
    Application Default Credentials (a service account, or impersonation of the operator service account).
    """
    from embedpipe.status_api import cancel as cancel_job

    answer = cancel_job(_config(ctx), job_id)
    if answer.cancelled:
        typer.echo(f"{answer.job_id} CANCELLED ({answer.message})")
    else:
        typer.echo(f"{answer.job_id} {answer.state}: {answer.message}")


# -- fetch, search -----------------------------------------------------------------------------------------


def _with_output(services: Services, job: Job) -> tuple[list[str], list[str]]:
    """The job's embeddings and Parquet files (from its manifest), or `NoOutput` saying why there are none."""
    if job.output is None or not job.output.manifest:
        if job.active:
            raise NoOutput(f"job {job.job_id} is {job.state.value}: it has no output yet "
                           f"(`embedpipe watch {job.job_id}` waits for it)")
        raise NoOutput(f"job {job.job_id} ended {job.state.value} without output")
    embeddings, parquet = services.output_files(job)
    if not embeddings:
        raise NoOutput(f"job {job.job_id} ended {job.state.value} with no embeddings ({job.counts.succeeded} items succeeded)")
    return embeddings, parquet


@app.command()
def fetch(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, help="FILE.jsonl, FILE.parquet or FILE.npy")],
) -> None:
    """Download a job's embeddings as one file, in the format its extension names.

    .jsonl: the embeddings files concatenated ({"id", "embedding", ...metadata} per line). .parquet: the
    Parquet files as one. .npy: a float32 matrix (one unit vector per row) and FILE.npy.ids.txt, the id of
    each row in the same order, one per line.
    """
    from embedpipe.fetch import fetch_output, output_format

    output_format(out)
    with _services(ctx) as services:
        embeddings, parquet = _with_output(services, services.job(job_id))
        result = fetch_output(embeddings, parquet, out, services.blobs.open_read)
    if result.ids_path is not None:
        typer.echo(f"Wrote a {result.rows} x {result.dimensions} float32 matrix to {result.path}; the id of each row, "
                   f"in the same order, one per line: {result.ids_path}")
    else:
        typer.echo(f"Wrote {result.rows} rows to {result.path}")


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="The text to look for")],
    job_id: Annotated[str, typer.Option("--job", metavar="JOB", help="The job whose output is searched")],
    k: Annotated[int, typer.Option("-k", "--top", min=1, max=100, help="How many results")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Results as JSON")] = False,
) -> None:
    """The passages of a job nearest a query (cosine similarity of unit vectors).

    The query is embedded at the interactive endpoint (RETRIEVAL_QUERY, the job's model and dimensions);
    the passages' texts are read again from the job's source object.
    """
    from embedpipe.fetch import iter_vectors
    from embedpipe.search import Hit, texts_for, top_k
    from shared.errors import NotFound
    from shared.gemini import normalize
    from shared.ingest import read_source
    from shared.ingest.splitter import SPLITTER_VERSION

    if not query.strip():
        raise errors.BadArgument("the query is empty")
    with _services(ctx) as services:
        job = services.job(job_id)
        _, parquet = _with_output(services, job)
        if not parquet:
            raise NoOutput(f"job {job_id} has no Parquet output to search")
        options = job.options
        values = services.provider(options.provider).embed_query(query, options)
        hits = top_k(normalize(values), iter_vectors(parquet, services.blobs.open_read), k)
        if job.staging.splitter_version != SPLITTER_VERSION:
            _note("note: this job's documents were cut into passages by an earlier version: a passage shown "
                  "may differ from the one embedded under its id")
        try:
            with services.blobs.open_read(job.source.uri, job.source.generation) as stream:
                records = texts_for([hit.id for hit in hits],
                                    read_source(stream, job.source, options, services.settings))
        except NotFound:
            _note(f"note: {job.source.uri}#{job.source.generation} no longer exists: showing ids without passages")
            records = {}
    found = [(h, records.get(h.id)) for h in hits]
    hits = [Hit(h.id, h.score, r.text if r else None, r.title if r else None) for h, r in found]
    if as_json:
        _print_json([{"rank": i, "id": h.id, "score": round(h.score, 6), "title": h.title, "text": h.text}
                     for i, h in enumerate(hits, 1)])
        return
    _console().print(render.search_table(hits))


# -- events ------------------------------------------------------------------------------------------------


@app.command()
def events(
    ctx: typer.Context,
    count: Annotated[int | None, typer.Option("--count", "-n", min=1, help="Stop after this many events")] = None,
    timeout: Annotated[float | None, typer.Option(min=0, help="Stop after this many seconds")] = None,
    job_id: Annotated[str | None, typer.Option("--job", metavar="JOB", help="Only this job's event")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Each event as pretty JSON")] = False,
) -> None:
    """Print completion events (EVENTS_TOPIC) as they arrive, through a temporary subscription.

    The subscription is deleted on exit, Ctrl-C included. Only events published after it was created
    arrive. Exit 3 when --timeout passes before --count events came.
    """
    from embedpipe.events import TemporarySubscription, listen
    from embedpipe.watch import WatchTimeout

    def show(event: dict[str, Any]) -> None:
        typer.echo(render.event_json(event) if as_json else render.event_line(event))
        sys.stdout.flush()

    with _services(ctx) as services, _terminate_as_interrupt():
        topic = services.config.require("EVENTS_TOPIC", "the completion events' topic")
        with TemporarySubscription(services.subscriber, services.config.project, topic) as subscription:
            _note(f"Listening on {subscription.topic} (subscription {subscription.path.rsplit('/', 1)[-1]}, "
                  "deleted on exit); Ctrl-C stops.")
            received = listen(subscription.pull, show, count=count, timeout=timeout, job_id=job_id)
    if count is not None and received < count:
        raise WatchTimeout(f"timed out after {timeout:.0f}s with {received} of {count} events")


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (e.g. `kill`, a container stop) ends the block like Ctrl-C, so its cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- a deployment's operations: dead letters, the dashboard (embedpipe/ops_commands.py) ---------------------
from embedpipe.ops_commands import dashboard, dead_letters_app  # noqa: E402 - they use this module's helpers

app.add_typer(dead_letters_app, name="dead-letters")
app.command()(dashboard)


def run(argv: list[str]) -> int:
    """Run the command line in this process; return its exit code (for the demo and scripts)."""
    try:
        app(argv, prog_name="embedpipe")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
