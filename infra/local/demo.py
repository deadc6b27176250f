"""`make run`: the whole pipeline on a local stack, driven by the operators' CLI (`embedpipe`).

Starts a LocalStack on free ports (so it never clashes with `make up`), uploads `examples/` with
`embedpipe upload`, follows the jobs with `embedpipe watch`, waits for their completion events on a
subscription made before the uploads, prints each job's outcome, fetches one as a matrix and runs a
similarity search on it. Everything is stopped at the end, on errors and on Ctrl-C or SIGTERM too.
Exit code 0 when every step worked. State and logs: `.local/demo/stack/`.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = ROOT / ".local" / "demo"
EXAMPLES = ROOT / "examples"
QUERY = "I was charged but want my money back"
TIMEOUT_SECONDS = 120


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"\n==> {text}", flush=True)


def embedpipe(env_file: Path, *args: str, capture: bool = True) -> tuple[int, str]:
    """Run one CLI command in this process, showing it as typed and what it prints; return its exit code
    and, when `capture`, its stdout (else it goes straight to the terminal: live progress, its width)."""
    from embedpipe.cli import run

    shown = " ".join(shlex.quote(str(a)) for a in args)
    print(f"$ embedpipe {shown}", flush=True)
    argv = ["--env-file", str(env_file), *[str(a) for a in args]]
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if capture else contextlib.nullcontext():
        code = run(argv)
    print(out.getvalue(), end="", flush=True)
    if code == 130:  # Ctrl-C or SIGTERM while the command ran: stop the demo, not just the command
        raise KeyboardInterrupt
    return code, out.getvalue()


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    from infra.local.processes import StartupError
    from infra.local.stack import LocalStack, StackError, stop_orphaned

    began = time.monotonic()
    signal.signal(signal.SIGTERM, _terminate)
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    stop_orphaned(DEMO_DIR)  # a demo killed outright (SIGKILL) left its stack running: stop it
    provider = {"PROVIDER": os.environ["PROVIDER"]} if os.environ.get("PROVIDER") else {}  # PROVIDER=vertex make run
    stack = LocalStack(ROOT, overrides={"POLLER_TICK_SECONDS": "1", **provider}, state_dir=DEMO_DIR / "stack")
    try:
        say("Starting the local stack (emulators, functions, relay, ticker) on free ports")
        with stack:
            print(f"Up in {stack.startup_seconds:.1f}s; settings in {stack.env_path}; logs in {stack.state_dir / 'logs'}")
            print(f"Dashboard (while the demo runs): {stack.env['STATUS_URL'].rstrip('/')}/dashboard"
                  f"#token={stack.env['POLLER_TOKEN']}")
            return _run(stack, began)
    except KeyboardInterrupt:
        print("\nInterrupted: the stack was stopped.", file=sys.stderr)
        return 130
    except (StackError, StartupError, TimeoutError) as exc:
        print(f"\nThe demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print(f"\nDemo finished in {time.monotonic() - began:.1f}s (stack stopped).", flush=True)


def _run(stack: Any, began: float) -> int:
    from google.cloud import pubsub_v1

    from embedpipe.config import Config
    from embedpipe.events import TemporarySubscription, listen
    from embedpipe.render import event_line

    env_file = stack.env_path
    config = Config.load(env_file)
    with config.client_environment():
        subscriber = pubsub_v1.SubscriberClient()
        try:
            with TemporarySubscription(subscriber, config.project, config.require("EVENTS_TOPIC"), "demo") as events:
                say("Uploading the examples (options travel as object metadata; the job id is known at once)")
                code, faq_out = embedpipe(env_file, "upload", EXAMPLES / "faq.jsonl", "--dimensions", "256",
                                          "--display-name", "FAQ demo")
                code2, handbook_out = embedpipe(env_file, "upload", EXAMPLES / "handbook.md", "--chunk-size", "64",
                                                "--chunk-overlap", "8")
                if code or code2:
                    return 1
                faq_job, handbook_job = faq_out.split()[0], handbook_out.split()[0]

                say("Following them until they end")
                code, _ = embedpipe(env_file, "watch", faq_job, handbook_job, "--interval", "1",
                                    "--timeout", str(TIMEOUT_SECONDS), capture=False)
                if code != 0:
                    print(f"watch exited {code}: not every job succeeded", file=sys.stderr)
                    return 1

                say("Completion events (the public contract subscribers get)")
                received: dict[str, dict] = {}

                def show(event: dict) -> None:
                    received[event["job_id"]] = event
                    print(event_line(event), flush=True)

                listen(events.pull, show, count=2, timeout=60)
                if set(received) != {faq_job, handbook_job}:
                    print(f"expected the events of both jobs, got {sorted(received)}", file=sys.stderr)
                    return 1
        finally:
            subscriber.close()

    say("Per job")
    for job_id in (faq_job, handbook_job):
        event = received[job_id]
        counts, output = event["counts"], event.get("output") or {}
        print(f"{job_id}  {event['status']}")
        print(f"  source      gs://{event['source']['bucket']}/{event['source']['name']}#{event['source']['generation']}")
        print(f"  counts      {counts['succeeded']} succeeded, {counts['failed']} failed of {counts['total']} "
              f"(success rate {event.get('success_rate')}%)")
        print(f"  dimensions  {event.get('dimensions')} ({event.get('model')}, {event.get('task_type')})")
        print(f"  output      {output.get('manifest')}")

    say("Fetching the FAQ's vectors as a matrix")
    code, _ = embedpipe(env_file, "fetch", faq_job, "--out", stack.state_dir / "faq.npy", capture=False)
    if code:
        return 1

    say("Similarity search over the FAQ (the query is embedded at the interactive endpoint)")
    code, _ = embedpipe(env_file, "search", QUERY, "--job", faq_job, "-k", "3", capture=False)
    if code:
        return 1
    say("Searching the handbook's passages")
    code, _ = embedpipe(env_file, "search", "Can I work from a café?", "--job", handbook_job, "-k", "2", capture=False)
    if code:
        return 1
    print(f"\nAll steps passed in {time.monotonic() - began:.1f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
