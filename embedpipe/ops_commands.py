"""Operators' commands for a deployment: `embedpipe dead-letters list|replay` and `embedpipe dashboard`.

Registered on the main app by embedpipe/cli.py; they use its settings and error handling (one line on
stderr, exit 4), and the modules that do the work: embedpipe/dead_letters.py and embedpipe/dashboard.py.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Annotated

import typer

from embedpipe.errors import BadArgument, CliError

__all__ = ["dashboard", "dead_letters_app"]

dead_letters_app = typer.Typer(
    help="Messages whose delivery attempts ran out, held in the dead-letter subscriptions "
         "(`PREFIX-FUNCTION-dlq-hold`): list them, replay them once the cause is fixed.",
    no_args_is_help=True,
)

SubscriptionOption = Annotated[list[str] | None, typer.Option(
    "--subscription", "-s", metavar="NAME",
    help="A hold subscription (repeatable). Default: DEAD_LETTER_SUBSCRIPTIONS (comma-separated; Terraform's "
         "dead_letter_subscriptions_setting output), else every *-dlq-hold subscription of the project.")]
LimitOption = Annotated[int, typer.Option(min=1, max=10_000, help="At most this many messages per subscription")]


@contextlib.contextmanager
def _bus(ctx: typer.Context) -> Iterator[tuple[object, object]]:
    from embedpipe import cli
    from embedpipe.dead_letters import PubSubDeadLetters
    from embedpipe.services import check_emulator

    with cli._services(ctx) as services:
        check_emulator(services.config, "PUBSUB_EMULATOR_HOST")
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        try:
            yield PubSubDeadLetters(services.subscriber, publisher, services.config.project), services.config
        finally:
            publisher.stop()


def _holds(bus, config, given: list[str] | None) -> list[str]:
    names = given or [n.strip() for n in (config.get("DEAD_LETTER_SUBSCRIPTIONS") or "").split(",") if n.strip()]
    holds = [bus.path(name) for name in names] if names else bus.holds()
    if not holds:
        raise CliError(f"no dead-letter subscription (*-dlq-hold) in project {config.project}: pass --subscription "
                       "or set DEAD_LETTER_SUBSCRIPTIONS")
    return holds


def _short(path: str | None) -> str:
    return (path or "?").rsplit("/", 1)[-1]


def _preview(data: bytes, width: int = 100) -> str:
    text = data.decode("utf-8", errors="replace")
    return " ".join(text.split())[:width]


@dead_letters_app.command("list")
def list_dead_letters(
    ctx: typer.Context,
    subscription: SubscriptionOption = None,
    limit: LimitOption = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Each message as JSON (data as UTF-8 text)")] = False,
) -> None:
    """Show the held messages without consuming them: where each came from, how often it was delivered."""
    from rich.table import Table

    from embedpipe import cli
    from embedpipe.dead_letters import peek

    with _bus(ctx) as (bus, config):
        holds = _holds(bus, config, subscription)
        held = peek(bus, holds, limit)
    if as_json:
        cli._print_json([{"subscription": _short(m.hold), "message_id": m.message_id, "source": m.source,
                          "deliveries": m.deliveries, "dead_lettered_at": m.published,
                          "attributes": m.original_attributes(), "data": m.data.decode("utf-8", errors="replace")}
                         for m in held])
        return
    if not held:
        cli._note(f"No dead letters in {', '.join(_short(h) for h in holds)}.")
        return
    table = Table(show_lines=False)
    for column in ("Held in", "Message", "From", "Deliveries", "Dead-lettered", "Data"):
        table.add_column(column, overflow="fold")
    for m in held:
        table.add_row(_short(m.hold), m.message_id, _short(m.source), m.deliveries, m.published, _preview(m.data))
    cli._console().print(table)
    cli._note(f"{len(held)} message(s). Replay them with `embedpipe dead-letters replay` once the cause is fixed.")


@dead_letters_app.command("replay")
def replay_dead_letters(
    ctx: typer.Context,
    subscription: SubscriptionOption = None,
    limit: LimitOption = 100,
    to_topic: Annotated[str | None, typer.Option(
        metavar="TOPIC", help="Publish here instead of the topic of the subscription each message came from")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say where each would go; replay nothing")] = False,
) -> None:
    """Publish held messages back to where they came from, acknowledging each only once it is published.

    Exit 4 when some could not be replayed (they stay held).
    """
    from embedpipe import cli
    from embedpipe.dead_letters import replay

    with _bus(ctx) as (bus, config):
        holds = _holds(bus, config, subscription)
        topic = None
        if to_topic:
            topic = to_topic if to_topic.startswith("projects/") else f"projects/{config.project}/topics/{to_topic}"
        report = replay(bus, holds, limit, to_topic=topic, dry_run=dry_run)
    verb = "would replay" if dry_run else "replayed"
    for message, destination, new_id in report.replayed:
        typer.echo(f"{verb} {message.message_id} from {_short(message.hold)} to {_short(destination)}"
                   + (f" as {new_id}" if new_id else ""))
    for message, why in report.kept:
        cli._note(f"kept {message.message_id} in {_short(message.hold)}: {why}")
    cli._note(f"{len(report.replayed)} {verb}, {len(report.kept)} kept.")
    if report.kept:
        raise CliError(f"{len(report.kept)} message(s) could not be replayed and stay held")


def dashboard(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Local port (0: any free one)")] = 0,
    impersonate: Annotated[str | None, typer.Option(
        metavar="SERVICE_ACCOUNT", envvar="OPERATOR_SERVICE_ACCOUNT",
        help="Mint the ID token as this account (the operator account: Terraform's operator_service_account "
             "output) through your ADC; needs roles/iam.serviceAccountTokenCreator on it")] = None,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the page in a browser")] = True,
) -> None:
    """Open the status function's dashboard through a local proxy that adds your ID token.

    The proxy listens on 127.0.0.1 only and forwards only the page's reads; the token never reaches the
    browser. Ctrl-C stops it. Locally (make up) it uses POLLER_TOKEN.
    """
    from embedpipe import cli
    from embedpipe.dashboard import DashboardProxy, token_source

    config = cli._config(ctx)
    upstream = config.require("STATUS_URL", "the status function's URL")
    if not upstream.startswith(("http://", "https://")):
        raise BadArgument(f"STATUS_URL must be an http(s) URL, got {upstream!r}")
    tokens = token_source(config, upstream.rstrip("/"), impersonate or config.get("OPERATOR_SERVICE_ACCOUNT"))
    tokens.token()  # fail now, with the reason, rather than in the browser
    try:
        proxy = DashboardProxy(upstream, tokens, port=port)
    except OSError as exc:
        raise CliError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    cli._note(f"Dashboard of {upstream} at {proxy.url}\n(the key after #token= opens it; Ctrl-C stops the proxy)")
    if open_browser:
        import webbrowser

        webbrowser.open(proxy.url)
    sys.stdout.flush()
    try:
        proxy.serve_until_interrupted()
    except KeyboardInterrupt:
        cli._note("stopped")
