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

from .app import Emulator, create_app
from .config import EmulatorSettings

__all__ = ["Emulator", "EmulatorSettings", "create_app"]
