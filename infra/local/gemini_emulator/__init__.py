"""A local Gemini API emulator for embeddings: the same REST surface, real vectors from a small model.

Any official client (google-genai, plain httpx) works against it unchanged: batch embedding
(`models/{m}:asyncBatchEmbedContent`, batches get/list/cancel/delete), the Files API (resumable
upload, get, list, delete, download), and the interactive `embedContent` / `batchEmbedContents`.
Start it with `python -m infra.local.gemini_emulator --host 127.0.0.1 --port N`.

Modules:
    config    EmulatorSettings, from GEMINI_EMULATOR_* variables
    wire      Google's JSON conventions: errors, field names, timestamps, field masks
    schema    request bodies, validated as the live API does
    faults    fault injection (per process and per request)
    encoder   TextEncoder port; ONNX MiniLM (default) and sentence-transformers adapters
    lift      the fixed orthonormal map from the model's dimensions to 3072
    embedder  encoder + lift + LRU cache, loaded in the background
    store     batches, files and upload sessions (bytes on disk)
    engine    the background workers that run batches
    app       the Starlette routes
"""

__all__ = ["Emulator", "EmulatorSettings", "create_app"]


def __getattr__(name: str):
    # Lazy, so that `python -m infra.local.gemini_emulator` sets OPENBLAS_NUM_THREADS before numpy loads:
    # an eager import here starts one busy-waiting OpenBLAS thread per core beside onnxruntime's.
    if name in ("Emulator", "create_app"):
        from . import app

        return getattr(app, name)
    if name == "EmulatorSettings":
        from .config import EmulatorSettings

        return EmulatorSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
