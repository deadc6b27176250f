from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from shared.gemini.errors import GeminiError, PermanentGeminiError, RetryableGeminiError
from shared.gemini.polling import poll_interval_for, timeout_for
from shared.gemini.retry import (
    RetryPolicy,
    backoff_delay,
    may_retry_create,
    parse_duration,
    parse_retry_after,
    retry_call,
)
from shared.gemini.vectors import cosine_similarity, normalize

# -- retry ---------------------------------------------------------------------------------------------


class Flaky:
    def __init__(self, errors: list[GeminiError]):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_full_jitter_backoff_grows_exponentially_and_is_capped():
    policy = RetryPolicy(max_retries=6, base_delay=1.0, max_delay=10.0)
    sleeps: list[float] = []
    flaky = Flaky([RetryableGeminiError("busy", status_code=503) for _ in range(6)])
    assert retry_call(flaky, policy=policy, sleep=sleeps.append, rand=lambda: 1.0) == "done"
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_delay(3, base=1.0, cap=60.0, rand=lambda: 0.25) == 2.0  # a draw within [0, 8]


def test_retry_after_is_honoured_and_capped():
    policy = RetryPolicy(max_retries=3, max_retry_after=30.0)
    sleeps: list[float] = []
    flaky = Flaky(
        [
            RetryableGeminiError("slow down", status_code=429, retry_after=7.0),
            RetryableGeminiError("x", status_code=429, retry_after=500.0),
        ]
    )
    retry_call(flaky, policy=policy, sleep=sleeps.append, rand=lambda: 0.0)
    assert sleeps == [7.0, 30.0]


def test_retries_are_bounded_and_the_last_error_propagates():
    sleeps: list[float] = []
    last = RetryableGeminiError("still down", status_code=503)
    flaky = Flaky([RetryableGeminiError("down", status_code=503)] * 2 + [last])
    with pytest.raises(RetryableGeminiError) as caught:
        retry_call(flaky, policy=RetryPolicy(max_retries=2), sleep=sleeps.append, rand=lambda: 0.0)
    assert caught.value is last
    assert flaky.calls == 3 and len(sleeps) == 2


def test_permanent_errors_are_not_retried():
    flaky = Flaky([PermanentGeminiError("bad", status_code=400)])
    with pytest.raises(PermanentGeminiError):
        retry_call(flaky, policy=RetryPolicy(), sleep=pytest.fail)
    assert flaky.calls == 1


def test_create_is_retried_only_when_nothing_can_have_been_created():
    assert may_retry_create(RetryableGeminiError("quota", status_code=429, reached_server=True))
    assert may_retry_create(RetryableGeminiError("refused", reached_server=False))
    assert not may_retry_create(RetryableGeminiError("oops", status_code=503, reached_server=True))
    assert not may_retry_create(RetryableGeminiError("read timeout", reached_server=None))
    assert not may_retry_create(PermanentGeminiError("bad", status_code=400))


def test_parse_retry_after():
    now = datetime(2025, 11, 25, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("Tue, 25 Nov 2025 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Tue, 25 Nov 2025 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_duration("37s") == 37.0 and parse_duration("0.5s") == 0.5 and parse_duration("x") is None


# -- polling -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "interval"),
    [(0, 2.0), (99, 2.0), (100, 5.0), (999, 5.0), (1000, 10.0), (9999, 10.0), (10_000, 30.0)],
)
def test_poll_interval_by_batch_size(size, interval):
    assert poll_interval_for(size) == interval


def test_timeout_is_a_second_per_request_plus_two_minutes():
    assert timeout_for(0) == 120.0
    assert timeout_for(1000) == 1120.0


# -- vectors -------------------------------------------------------------------------------------------


def test_normalize_a_vector():
    out = normalize([3.0, 4.0])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.6, 0.8], rtol=1e-6)


def test_normalize_rows_and_keep_zero_rows_zero():
    out = normalize([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.0, 1.0]], rtol=1e-6)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(
        np.linalg.norm(normalize(np.random.default_rng(1).normal(size=(5, 768))), axis=1), 1.0, rtol=1e-5
    )


def test_normalize_refuses_3d():
    with pytest.raises(ValueError):
        normalize(np.zeros((2, 2, 2)))


def test_cosine_similarity():
    assert cosine_similarity([1, 0], [1, 0]) == pytest.approx(1.0)
    assert cosine_similarity([1, 0], [0, 2]) == pytest.approx(0.0)
    assert cosine_similarity([1, 1], [-2, -2]) == pytest.approx(-1.0)
    assert cosine_similarity([0, 0], [1, 2]) == 0.0
    # Scale does not matter: the reason shorter outputs must be normalised before a dot product.
    assert cosine_similarity([3, 4], [6, 8]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cosine_similarity([1, 2], [1, 2, 3])
