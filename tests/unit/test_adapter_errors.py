"""Each adapter maps its vendor's errors into the pipeline's tree in one place, for every method."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest
from google.api_core import exceptions as gexc
from pydantic import BaseModel, ValidationError

from shared.adapters import firestore_jobs, gcs_blobs, gemini_provider
from shared.errors import CapacityExhausted, NotFound, PermanentError, TransientError
from shared.gemini.errors import GeminiNotFoundError, PermanentGeminiError, RetryableGeminiError


class _Strict(BaseModel):
    n: int


def _invalid() -> ValidationError:
    try:
        _Strict(n="x")
    except ValidationError as exc:
        return exc
    raise AssertionError


@pytest.mark.parametrize(("raised", "expected", "code"), [
    (gexc.ServiceUnavailable("down"), TransientError, None),
    (gexc.DeadlineExceeded("slow"), TransientError, None),
    (gexc.Aborted("contention"), TransientError, None),
    (gexc.PermissionDenied("iam"), TransientError, None),  # configuration: retried until fixed, then dead-lettered
    (gexc.InvalidArgument("Document exceeds maximum size"), PermanentError, "DOCUMENT_TOO_LARGE"),
    (_invalid(), PermanentError, "CORRUPT_DOCUMENT"),
    (ValueError("Failed to commit transaction in 5 attempts."), firestore_jobs._Contended, None),
])
def test_firestore_errors_map_to_the_pipelines(raised, expected, code):
    with pytest.raises(expected) as caught, firestore_jobs._mapped("job x"):
        raise raised
    if code:
        assert caught.value.code == code


@pytest.mark.parametrize(("raised", "expected"), [
    (gexc.NotFound("gone"), NotFound),
    (gexc.ServiceUnavailable("down"), TransientError),
    (gexc.TooManyRequests("slow down"), TransientError),
    (gexc.Forbidden("iam"), TransientError),
    (gexc.BadRequest("bad"), PermanentError),
    (ConnectionError("reset"), TransientError),
])
def test_storage_errors_map_to_the_pipelines(raised, expected):
    with pytest.raises(expected), gcs_blobs._mapped("gs://b/o"):
        raise raised


@pytest.mark.parametrize(("raised", "capacity", "expected"), [
    (RetryableGeminiError("quota", status_code=429, status="RESOURCE_EXHAUSTED"), True, CapacityExhausted),
    (RetryableGeminiError("rate", status_code=429, status="RESOURCE_EXHAUSTED"), False, TransientError),
    (RetryableGeminiError("down", status_code=503, status="UNAVAILABLE"), True, TransientError),
    (GeminiNotFoundError("no batch", status_code=404, status="NOT_FOUND"), False, NotFound),
    (PermanentGeminiError("bad", status_code=400, status="INVALID_ARGUMENT"), False, PermanentError),
])
def test_gemini_errors_map_to_the_pipelines(raised, capacity, expected):
    with pytest.raises(expected) as caught, gemini_provider._mapped("x", quota_means_capacity=capacity):
        raise raised
    assert type(caught.value) is expected or issubclass(type(caught.value), expected)


def _methods_without_mapping(cls: type, helpers: set[str]) -> list[str]:
    """Public methods whose body neither enters `_mapped` nor calls a method that does."""
    missing = []
    for name, function in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_") or function.__qualname__.split(".")[0] != cls.__name__:
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        calls = {node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Attribute)}
        names = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        if "_mapped" not in names and not (calls | names) & helpers:
            missing.append(name)
    return missing


@pytest.mark.parametrize(("cls", "helpers"), [
    (firestore_jobs.FirestoreJobRepository, {"_replace", "_in_rounds", "get", "_job", "_shard"}),
    (firestore_jobs.FirestoreLedgerRepository, {"_in_rounds"}),
    (gcs_blobs.GcsBlobStore, {"_compose"}),
    (gemini_provider.GeminiBatchProvider, set()),
])
def test_every_public_method_maps_its_vendors_errors(cls, helpers):
    exempt = {"capabilities", "result_bytes"}  # pure: no vendor call
    assert [m for m in _methods_without_mapping(cls, helpers) if m not in exempt] == []
