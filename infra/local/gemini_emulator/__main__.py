"""`python -m infra.local.gemini_emulator --host 127.0.0.1 --port N`: serve the emulator until SIGTERM/SIGINT.

Flags override GEMINI_EMULATOR_HOST / GEMINI_EMULATOR_PORT; everything else is read from
GEMINI_EMULATOR_* variables (see config.py). The model loads on a background thread at start, so
/_emulator/health answers at once ("ready": false until the model is loaded). The data directory
(uploads, responses files) is a temporary folder removed on shutdown.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.gemini_emulator", description=__doc__)
    parser.add_argument(
        "--host", default=None, help="bind address (default GEMINI_EMULATOR_HOST or 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=None, help="port (default GEMINI_EMULATOR_PORT or 8090)")
    parser.add_argument("--log-level", default=os.environ.get("GEMINI_EMULATOR_LOG_LEVEL", "info"))
    args = parser.parse_args(argv)
    # numpy's own work here is small matrix products; OpenBLAS threads would only compete with
    # onnxruntime's for the cores (set before numpy is first imported, below).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    import uvicorn

    from .config import EmulatorSettings, SettingsError
    from .encoder import AssetError, locate_onnx_assets
    from .faults import FaultPlanError
    from .quotas import QuotaError
    from .webhooks import WebhookConfigError

    try:
        settings = EmulatorSettings.from_env(host=args.host, port=args.port)
        if settings.encoder == "onnx":
            # Fail at once, with the fix in the message, rather than on the first request.
            locate_onnx_assets(settings.model_path, settings.tokenizer_path)
        from .app import create_app

        app = create_app(settings)
    except (SettingsError, AssetError, FaultPlanError, QuotaError, WebhookConfigError) as exc:
        print(f"gemini emulator: {exc}", file=sys.stderr)
        return 2
    emulator = app.state.emulator
    logging.getLogger("gemini_emulator").info(
        "Gemini API emulator on http://%s:%d (encoder %s, %d workers, key %s, data %s)",
        settings.host,
        settings.port,
        emulator.intended_model,
        settings.workers,
        "required: GEMINI_EMULATOR_API_KEY" if settings.api_key else "any non-empty",
        emulator.data_dir,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level.lower(),
        access_log=False,  # our own access log leaves out query strings, which may carry the key
        timeout_graceful_shutdown=3,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
