"""How jobs and events look in a terminal (rich). Pure: data in, renderables or text out."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from shared.domain.jobs import Job, JobState

if TYPE_CHECKING:
    from embedpipe.search import Hit

__all__ = [
    "STATE_STYLES",
    "age",
    "event_json",
    "event_line",
    "jobs_table",
    "percent",
    "search_table",
    "state_text",
    "status_view",
    "usd",
]

STATE_STYLES = {
    JobState.SUBMITTING: "cyan",
    JobState.RUNNING: "blue",
    JobState.COMPLETING: "blue",
    JobState.SUCCEEDED: "green",
    JobState.PARTIALLY_SUCCEEDED: "yellow",
    JobState.FAILED: "red",
    JobState.CANCELLED: "magenta",
}


def age(since: datetime | None, now: datetime) -> str:
    """`42s`, `5m`, `2h05m`, `3d04h`: the time from `since` to `now`, to two units at most."""
    if since is None:
        return "-"
    seconds = max(int((now - since).total_seconds()), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s" if minutes < 10 else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def usd(value: float) -> str:
    return f"${value:.6f}" if value < 0.01 else f"${value:,.2f}"


def state_text(state: JobState | str) -> Text:
    state = JobState(state)
    return Text(state.value, style=STATE_STYLES.get(state, ""))


def _now() -> datetime:
    return datetime.now(UTC)


def jobs_table(jobs: Iterable[Job], now: datetime | None = None) -> Table:
    now = now or _now()
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("JOB", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("SOURCE", overflow="fold", min_width=16)
    table.add_column("PROGRESS", justify="right", no_wrap=True)
    table.add_column("OK/FAILED/TOTAL", justify="right", no_wrap=True)
    table.add_column("SUCCESS", justify="right", no_wrap=True)
    table.add_column("AGE", justify="right", no_wrap=True)
    table.add_column("CAPACITY", justify="right", no_wrap=True)
    for job in jobs:
        counts = job.counts
        table.add_row(
            job.job_id, state_text(job.state), job.source.name, percent(job.progress()),
            f"{counts.succeeded}/{counts.failed}/{counts.total}", percent(job.success_rate), age(job.created_at, now),
            _capacity(job, now),
        )
    return table


def _capacity(job: Job, now: datetime) -> Text:
    """How long the job waited for capacity, or that it still waits."""
    if job.first_admitted_at is not None:
        return Text(f"waited {age(job.created_at, job.first_admitted_at)}")
    if job.active and job.counts.total:
        return Text(f"waiting {age(job.created_at, now)}", style="yellow")
    return Text("-")


def search_table(hits: Iterable[Hit]) -> Table:
    """The hits of `search`, best first: rank, score, id and the passage (on one line, at most 300 characters)."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("SCORE", justify="right", no_wrap=True)
    table.add_column("ID", overflow="fold")
    table.add_column("PASSAGE", overflow="fold")
    for rank, hit in enumerate(hits, 1):
        passage = " ".join((hit.text or "(text unavailable)").split())
        table.add_row(str(rank), f"{hit.score:.4f}", hit.id, passage if len(passage) <= 300 else passage[:299] + "…")
    return table


def _pairs(rows: Iterable[tuple[str, Any]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value if isinstance(value, Text) else str(value))
    return table


def _bar(fraction: float, width: int = 30) -> str:
    filled = round(max(0.0, min(fraction, 1.0)) * width)
    return "█" * filled + "░" * (width - filled)


def status_view(job: Job, view: Mapping[str, Any], now: datetime | None = None) -> RenderableType:
    """Everything an operator asks about one job (`shared.views.describe_job`): progress, counts, cost, its
    place in the queue, the capacity in use, shards, problems, outputs."""
    now = now or _now()
    counts, options = job.counts, job.options
    progress = view.get("progress_percentage", job.progress())
    parts: list[RenderableType] = []
    summary = [
        ("Job", job.job_id),
        ("State", state_text(job.state)),
        ("Source", f"{job.source.uri}#{job.source.generation}"),
    ]
    if options is not None:
        summary.append(("Options", f"{options.provider}/{options.model}, {options.output_dimensionality} dims, "
                                   f"{options.task_type}" + (f", {options.display_name!r}" if options.display_name else "")))
    summary += [
        ("Progress", f"{_bar(progress / 100)} {percent(progress)}"),
        ("Items", f"{counts.succeeded} succeeded, {counts.failed} failed, {counts.pending} pending of {counts.total}"
                  + (f" ({counts.input_problems} input problems)" if counts.input_problems else "")
                  + (f"; {counts.reused} reused from the cache" if counts.reused else "")),
        ("Success rate", percent(job.success_rate)),
        ("Created", f"{job.created_at:%Y-%m-%d %H:%M:%S} UTC ({age(job.created_at, now)} ago)"),
    ]
    queue = view.get("queue")
    if queue:
        start = queue.get("estimated_start")
        summary.append(("Queue", f"position {queue['position']}, {queue['tokens_ahead']:,} tokens ahead"
                                 + (f", estimated start {start}" if start else ", start not yet estimable")))
    if view.get("waited_seconds") is not None:
        summary.append(("Waited", f"{view['waited_seconds']:.0f} s for capacity"))
    capacity = view.get("capacity")
    if capacity:
        limit = capacity.get("effective_limit")
        summary.append(("Capacity", f"{capacity['tokens_held']:,} tokens in flight of "
                                    f"{f'{limit:,}' if limit is not None else 'no limit'} ({capacity['ledger']}), "
                                    f"{capacity['batches_held']} batches"))
    if job.completed_at:
        summary.append(("Completed", f"{job.completed_at:%Y-%m-%d %H:%M:%S} UTC "
                                     f"(took {age(job.created_at, job.completed_at)})"))
    estimate = job.estimate
    if estimate.input_tokens:
        saved = estimate.cost_interactive_usd - estimate.cost_batch_usd
        summary.append(("Cost estimate", f"{usd(estimate.cost_batch_usd)} batch vs {usd(estimate.cost_interactive_usd)} "
                                         f"interactive ({estimate.input_tokens:,} tokens; saves {usd(saved)})"))
    if estimate.reused_tokens or counts.reused:
        summary.append(("Reuse", f"{counts.succeeded - counts.reused} embedded, {counts.reused} reused from the cache "
                                 f"({estimate.reused_tokens:,} tokens: saves {usd(estimate.saved_usd)}; the cache cost "
                                 f"{usd(estimate.cache_usd)}, {estimate.cache_reads:,} reads, {estimate.cache_writes:,} writes)"))
    changes = job.output.changes if job.output else None
    if changes:
        summary.append(("Changes", f"{changes.added} added, {changes.changed} changed, {changes.removed} removed, "
                                   f"{changes.unchanged} unchanged "
                                   + (f"since {changes.previous_manifest}" if changes.previous_manifest else "(first generation)")))
    if job.cancel_requested and job.active:
        summary.append(("Cancel", "requested"))
    parts.append(_pairs(summary))

    rows = (view.get("shards") or {}).get("list") or []
    if rows:
        shards = Table(title=f"Shards ({view['shards']['count']}, {view['shards']['open']} open)", title_justify="left",
                       box=None, header_style="bold", pad_edge=False)
        numeric = ("#", "REQUESTS", "TOKENS", "OK", "FAILED", "PENDING", "TRY")
        for name in ("#", "BATCH", "STATE", "REQUESTS", "TOKENS", "OK", "FAILED", "PENDING", "TRY"):
            shards.add_column(name, justify="right" if name in numeric else "left", overflow="fold")
        for row in rows:
            shards.add_row(str(row["index"]), row["batch"] or "-", row["state"], str(row["requests"]), f"{row['tokens']:,}",
                           str(row["succeeded"]), str(row["failed"]), str(row["pending"]), str(row["attempt"]))
        parts += [Text(""), shards]

    errors = [(f"job {job.state.value}", job.error)] if job.error else []
    if job.last_error and job.active:
        errors.append(("last error", job.last_error))
    errors += [(f"shard {row['index']}", _Error(**row["error"])) for row in rows if row.get("error")]
    if errors:
        parts += [Text(""), Text("Errors", style="bold")]
        parts += [Text(f"  {where}: {error.code}: {error.message}", style="red") for where, error in errors[:10]]
    if job.input_problems.count:
        parts += [Text(""), Text(f"Input problems ({job.input_problems.count})", style="bold")]
        for problem in job.input_problems.sample[:10]:
            line = f"line {problem['line']}: " if problem.get("line") else ""
            parts.append(Text(f"  {line}{problem.get('code', '?')}: {problem.get('message', '')}", style="yellow"))
        if job.input_problems.uri:
            parts.append(Text(f"  all of them: {job.input_problems.uri}"))

    output = job.output
    if output and output.manifest:
        rows_out = [("Manifest", output.manifest), ("Prefix", output.prefix), ("Files", f"{output.files} embeddings files "
                                                                                     "(JSONL and Parquet each; the manifest lists them)")]
        if output.errors:
            rows_out.append(("Failed items", output.errors))
        if output.input_errors:
            rows_out.append(("Input errors", output.input_errors))
        parts += [Text(""), Text("Outputs", style="bold"), _pairs(rows_out)]
    return Group(*parts)


@dataclass(frozen=True)
class _Error:
    code: str
    message: str
    at: Any = None


def event_line(event: Mapping[str, Any]) -> str:
    """One completion event on one line: when, status, job, counts, where its output is."""
    counts = event.get("counts") or {}
    source = event.get("source") or {}
    rate = event.get("success_rate")
    text = (f"{event.get('completed_at', '?')} {event.get('status', '?'):<19} {event.get('job_id', '?')} "
            f"gs://{source.get('bucket', '?')}/{source.get('name', '?')} "
            f"{counts.get('succeeded', 0)}/{counts.get('total', 0)} ok")
    if rate is not None:
        text += f" ({rate:.1f}%)"
    if event.get("dimensions"):
        text += f" {event['dimensions']}d"
    output = event.get("output") or {}
    if output.get("manifest"):
        text += f" -> {output['manifest']}"
    error = event.get("error")
    if error:
        text += f" [{error.get('code')}: {error.get('message')}]"
    return text


def event_json(event: Mapping[str, Any]) -> str:
    return json.dumps(event, indent=2, sort_keys=False)
