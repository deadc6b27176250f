"""Lift a small model's unit vectors into gemini-embedding-001's 3072 dimensions.

`DimensionLift` is a fixed linear map Q (target x source) with orthonormal columns, so
||Qv|| = ||v|| = 1 and <Qu, Qv> = <u, v>: similarities of the full 3072-d vectors are exactly the
model's. Its rows are built for Matryoshka-style truncation (s = source dims, 384 for MiniLM):

    rows 0 .. s-1        a * R0              (R0 a seeded random rotation of the s model dimensions)
    rows s .. 2s-1       b/sqrt(m) * R1      (m = (t-s)/s further seeded rotations, 7 for 384 -> 3072)
    ...                  b/sqrt(m) * Rm
    a^2 + b^2 = 1        (a = 0.8 by default: 64% of every vector's energy is in the first s rows)

Truncating to a multiple of s keeps whole rotated copies of the model vector, so the cosine of two
truncated, renormalised vectors equals the model's (to float rounding); between multiples it is
within ~0.01; below s it is a random projection of the model vector, whose error grows as d shrinks
(measured in tests/emulator/test_lift.py). When (t-s) is not a multiple of s the tail is one random
(t-s) x s matrix with orthonormal columns instead. Truncated vectors are returned as they come,
not renormalised (||.|| < 1), as the real API does.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["DEFAULT_HEAD_WEIGHT", "DEFAULT_SEED", "DimensionLift", "truncate"]

DEFAULT_SEED = 3072_001
DEFAULT_HEAD_WEIGHT = 0.8


def _orthonormal_columns(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A rows x cols matrix with orthonormal columns; signs fixed so the result is reproducible."""
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


@functools.lru_cache(maxsize=8)
def _matrix_t(source_dims: int, target_dims: int, head_weight: float, seed: int) -> np.ndarray:
    """Q transposed, float32, read-only; built once per parameter set (QR is slow on some BLAS builds)."""
    rng = np.random.default_rng(seed)
    blocks = [head_weight * _orthonormal_columns(rng, source_dims, source_dims)]
    tail_rows = target_dims - source_dims
    tail_weight = float(np.sqrt(1.0 - head_weight**2))
    if tail_rows and tail_rows % source_dims == 0:
        copies = tail_rows // source_dims
        scale = tail_weight / np.sqrt(copies)
        blocks += [scale * _orthonormal_columns(rng, source_dims, source_dims) for _ in range(copies)]
    elif tail_rows:
        blocks.append(tail_weight * _orthonormal_columns(rng, tail_rows, source_dims))
    matrix_t = np.ascontiguousarray(np.vstack(blocks).T, dtype=np.float32)
    matrix_t.setflags(write=False)
    return matrix_t


class DimensionLift:
    """The map from `source_dims` model dimensions to `target_dims`; built once, immutable."""

    def __init__(
        self,
        source_dims: int,
        target_dims: int = 3072,
        head_weight: float = DEFAULT_HEAD_WEIGHT,
        seed: int = DEFAULT_SEED,
    ) -> None:
        if not 0 < source_dims <= target_dims:
            raise ValueError(f"source_dims must be in 1..{target_dims}, got {source_dims}")
        if not 0.0 < head_weight <= 1.0:
            raise ValueError(f"head_weight must be in (0, 1], got {head_weight}")
        self.source_dims, self.target_dims, self.head_weight = source_dims, target_dims, head_weight
        self._matrix_t = _matrix_t(source_dims, target_dims, head_weight, seed)  # (source, target)

    @property
    def matrix(self) -> np.ndarray:
        """Q, (target_dims, source_dims)."""
        return self._matrix_t.T

    def __call__(self, vectors: np.ndarray, dims: int | None = None) -> np.ndarray:
        """(n, source) unit rows -> (n, dims) float32: the first `dims` (default all) of Q v.

        Full-size rows are unit-norm; shorter ones are the truncation of those, not renormalised.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.source_dims:
            raise ValueError(f"expected (n, {self.source_dims}) vectors, got {vectors.shape}")
        dims = self.target_dims if dims is None else dims
        if not 0 < dims <= self.target_dims:
            raise ValueError(f"dims must be in 1..{self.target_dims}, got {dims}")
        # Q is orthonormal, so ||Q v|| = ||v||: dividing by ||v|| removes float32 rounding and
        # makes 3072-d output unit-norm without computing the coordinates that are cut off.
        norms = np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return (vectors / norms) @ self._matrix_t[:, :dims]


def truncate(vector: np.ndarray, dims: int) -> np.ndarray:
    """The first `dims` coordinates, not renormalised (a contiguous view)."""
    return vector[:dims]
