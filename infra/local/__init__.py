"""The pipeline on 127.0.0.1 with real components: emulators, functions, and the relay and ticker that
play Eventarc and Cloud Scheduler. Entry points: `python -m infra.local.stack up|down|status|env`,
`infra.local.stack.LocalStack` (tests and tools)."""

__all__: list[str] = []
