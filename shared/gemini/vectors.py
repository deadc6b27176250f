"""Vector helpers. gemini-embedding-001 normalises only its 3072-dimension output; shorter (truncated)
vectors must be L2-normalised before cosine or dot-product similarity."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["cosine_similarity", "normalize"]


def normalize(vectors: ArrayLike) -> np.ndarray:
    """L2-normalise one vector (1-D) or each row of a matrix (2-D); float32 out. A zero vector stays
    zero (it has no direction to keep)."""
    array = np.asarray(vectors, dtype=np.float64)  # norms in float64: float32 loses digits on 3072 dims
    if array.ndim not in (1, 2):
        raise ValueError(f"normalize takes a vector or a 2-D array, not {array.ndim}-D")
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    out = np.zeros_like(array)
    np.divide(array, norms, out=out, where=norms > 0)
    return out.astype(np.float32)


def cosine_similarity(a: ArrayLike | Sequence[float], b: ArrayLike | Sequence[float]) -> float:
    """Cosine of the angle between two vectors of the same length, in [-1, 1]; 0.0 if either is zero."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"vectors differ in length: {x.size} and {y.size}")
    denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
    if denominator == 0.0:
        return 0.0
    return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0))
