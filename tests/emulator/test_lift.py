"""The 384 -> 3072 lift: orthonormal, deterministic, and kind to Matryoshka truncation.

Measured (30 sentences, 435 pairs, seeds 3072001/1/2/3), |cosine of the renormalised truncations -
model cosine|: d = 384, 768, 1536, 3072 (multiples of 384): 0 (float rounding); d = 512, 1000:
mean 0.0015, max 0.007; d = 256: mean 0.027, max 0.13; d = 128: mean 0.055, max 0.25. The tests
assert these with a margin.
"""

from __future__ import annotations

import numpy as np
import pytest

from infra.local.gemini_emulator.encoder import OnnxMiniLMEncoder
from infra.local.gemini_emulator.lift import DEFAULT_HEAD_WEIGHT, DimensionLift, truncate

SENTENCES = [
    "The cat sat on the mat.",
    "A cat was sitting on the rug.",
    "Stock markets fell sharply today.",
    "Shares dropped steeply on Wall Street.",
    "How do I reset my password?",
    "I forgot my login credentials, how can I change them?",
    "The recipe needs two eggs and flour.",
    "Bake the cake for 30 minutes.",
    "Quantum computers use qubits.",
    "The train to Paris leaves at noon.",
    "My dog loves playing fetch in the park.",
    "Photosynthesis converts light into chemical energy.",
    "The invoice is due at the end of the month.",
    "Please pay the bill by the 30th.",
    "Rain is expected tomorrow afternoon.",
    "The weather forecast predicts showers.",
    "He scored the winning goal in the final minute.",
    "The football match ended in a dramatic victory.",
    "Python is a popular programming language.",
    "She writes code in Java and Go.",
    "The museum opens at nine.",
    "Our server is down, customers cannot log in.",
    "The database migration failed overnight.",
    "Vaccines train the immune system.",
    "The river flooded the village.",
    "Buy low, sell high.",
    "A gentle breeze moved the leaves.",
    "The contract was signed yesterday.",
    "Mount Everest is the highest mountain.",
    "Coffee contains caffeine.",
]
# (paraphrase pair, unrelated pair) by index into SENTENCES
PAIRS = [((0, 1), (0, 2)), ((2, 3), (2, 10)), ((4, 5), (4, 29)), ((12, 13), (12, 8)), ((14, 15), (14, 18))]


@pytest.fixture(scope="module")
def model_vectors() -> np.ndarray:
    return OnnxMiniLMEncoder().encode(SENTENCES)


def unit_rows(n: int, dims: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dims))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_columns_are_orthonormal_so_inner_products_are_preserved():
    lift = DimensionLift(384)
    q = lift.matrix.astype(np.float64)
    assert q.shape == (3072, 384)
    np.testing.assert_allclose(q.T @ q, np.eye(384), atol=2e-6)
    u = unit_rows(50, 384, seed=1)
    lifted = lift(u)
    np.testing.assert_allclose(lifted @ lifted.T, u @ u.T, atol=2e-6)


def test_norms_are_one_at_3072_and_below_one_when_truncated():
    lifted = DimensionLift(384)(unit_rows(20, 384))
    np.testing.assert_allclose(np.linalg.norm(lifted, axis=1), 1.0, atol=1e-6)
    for dims in (128, 256, 768, 1536):
        norms = np.linalg.norm(truncate(lifted.T, dims).T, axis=1)
        assert (norms < 0.999).all(), dims
    head = np.linalg.norm(lifted[:, :384], axis=1)
    np.testing.assert_allclose(head, DEFAULT_HEAD_WEIGHT, atol=1e-5)  # a = 0.8 of each vector in front


def test_a_prefix_is_computed_without_the_rest():
    lift = DimensionLift(384)
    vectors = unit_rows(5, 384, seed=3)
    np.testing.assert_allclose(lift(vectors, 768), lift(vectors)[:, :768], atol=1e-6)
    with pytest.raises(ValueError, match="dims"):
        lift(vectors, 4000)


def test_the_map_is_fixed_by_its_seed():
    np.testing.assert_array_equal(DimensionLift(384).matrix, DimensionLift(384).matrix)
    assert not np.allclose(DimensionLift(64, seed=1).matrix, DimensionLift(64, seed=2).matrix)


def test_other_model_sizes_and_bad_arguments():
    for source in (96, 100):  # 3072 - 96 is a multiple of 96 (stacked rotations); 3072 - 100 is not
        lift = DimensionLift(source)
        q = lift.matrix.astype(np.float64)
        np.testing.assert_allclose(q.T @ q, np.eye(source), atol=2e-6)
        np.testing.assert_allclose(np.linalg.norm(lift(unit_rows(3, source)), axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="source_dims"):
        DimensionLift(4000)
    with pytest.raises(ValueError, match="head_weight"):
        DimensionLift(384, head_weight=1.5)
    with pytest.raises(ValueError, match="expected"):
        DimensionLift(384)(unit_rows(2, 96))


@pytest.mark.parametrize(
    ("dims", "mean_tol", "max_tol"),
    [
        (128, 0.08, 0.35),
        (256, 0.045, 0.2),
        (384, 1e-5, 1e-5),
        (512, 0.005, 0.02),
        (768, 1e-5, 1e-5),
        (1000, 0.005, 0.02),
        (1536, 1e-5, 1e-5),
        (3072, 1e-5, 1e-5),
    ],
)
def test_truncated_cosines_stay_close_to_the_model_cosines(model_vectors, dims, mean_tol, max_tol):
    lifted = DimensionLift(384)(model_vectors)
    model_cos = model_vectors @ model_vectors.T
    cut = lifted[:, :dims] / np.linalg.norm(lifted[:, :dims], axis=1, keepdims=True)
    upper = np.triu_indices(len(SENTENCES), 1)
    error = np.abs(cut @ cut.T - model_cos)[upper]
    assert error.mean() <= mean_tol, (dims, error.mean())
    assert error.max() <= max_tol, (dims, error.max())


@pytest.mark.parametrize("dims", [128, 256, 768, 1536, 3072])
def test_paraphrases_stay_closer_than_unrelated_texts_at_every_size(model_vectors, dims):
    lifted = DimensionLift(384)(model_vectors)[:, :dims]
    unit = lifted / np.linalg.norm(lifted, axis=1, keepdims=True)
    for (a, b), (c, d) in PAIRS:
        assert unit[a] @ unit[b] > unit[c] @ unit[d] + 0.1, (dims, SENTENCES[a], SENTENCES[b], SENTENCES[d])
