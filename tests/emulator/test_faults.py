"""The fault plan: validation, atomic counters, deterministic item failures, the per-request header."""

from __future__ import annotations

import threading

import pytest

from infra.local.gemini_emulator.faults import FaultPlanError, Faults, parse_fault_header, text_fraction
from infra.local.gemini_emulator.wire import ApiError


def test_counted_faults_are_consumed_exactly_n_times_even_concurrently():
    faults = Faults({"create_429": {"count": 50, "retry_after_seconds": 2}})
    got: list[ApiError] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(20):
            error = faults.take_create_429()
            if error is not None:
                with lock:
                    got.append(error)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 50
    assert {(e.code, e.status, e.headers["Retry-After"]) for e in got} == {(429, "RESOURCE_EXHAUSTED", "2")}
    assert faults.snapshot()["create_429"]["count"] == 0
    assert faults.injected == 50


def test_http_5xx_only_matches_its_path():
    faults = Faults({"http_5xx": {"count": 2, "status": 502, "path_contains": ":download"}})
    assert faults.take_http_5xx("/v1beta/batches/abc") is None
    first = faults.take_http_5xx("/download/v1beta/files/x:download")
    assert (first.code, first.status) == (502, "UNAVAILABLE")
    assert faults.take_http_5xx("/v1beta/files/x:download") is not None
    assert faults.take_http_5xx("/v1beta/files/x:download") is None
    assert Faults({"http_5xx": {"count": 1}}).take_http_5xx("/any").code == 503  # default status, any path


def test_item_failures_are_chosen_by_text_and_reproducible():
    faults = Faults({"item_failure_rate": 0.3})
    texts = [f"text number {i}" for i in range(2000)]
    first = [faults.item_failure(t) is not None for t in texts]
    second = [faults.item_failure(t) is not None for t in texts]
    assert first == second
    assert 0.25 < sum(first) / len(first) < 0.35
    assert all(text_fraction(t) < 0.3 for t, failed in zip(texts, first, strict=True) if failed)
    assert faults.item_failure(texts[first.index(True)]).status == "INTERNAL"


def test_item_failure_attempts_let_a_resubmission_succeed():
    faults = Faults(
        {"item_failure_rate": 1.0, "item_failure_attempts": 2, "item_failure_status": "UNAVAILABLE"}
    )
    outcomes = [faults.item_failure("same text") for _ in range(3)]
    assert [o.status if o else None for o in outcomes] == ["UNAVAILABLE", "UNAVAILABLE", None]
    faults.clear()
    assert faults.item_failure("same text") is None


def test_texts_containing_a_marker_always_fail():
    faults = Faults({"fail_texts_containing": "POISON", "item_failure_attempts": 1})
    assert all(faults.item_failure("a POISON pill") is not None for _ in range(3))
    assert faults.item_failure("a healthy text") is None


def test_batch_fate_and_live_knobs():
    faults = Faults(
        '{"pending_seconds": 1.5, "expire_batches": true, "seconds_per_item": 0.01, "hold_queue": true}'
    )
    fate = faults.batch_fate()
    assert (fate.pending_seconds, fate.expire, fate.fail) == (1.5, True, False)
    assert (faults.seconds_per_item, faults.hold_queue) == (0.01, True)
    faults.replace({"fail_batches": True})
    assert faults.batch_fate().fail and not faults.batch_fate().expire and faults.seconds_per_item == 0.0


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"create_429": {"count": 1, "retry_after": 2}}, "unknown keys"),
        ({"create_429": {"count": -1}}, "count must be an integer"),
        ({"http_5xx": {"count": 1, "status": 404}}, "status must be an integer >= 500"),
        ({"item_failure_rate": 1.5}, "between 0.0 and 1.0"),
        ({"item_failure_rate": "0.1"}, "must be a number"),
        ({"item_failure_status": "NOPE"}, "google.rpc.Code"),
        ({"expire_batches": 1}, "true or false"),
        ({"bogus": 1}, "unknown fault keys"),
        ({"lose_create_response": {"count": 1, "status": 501}}, "lose_create_response.status must be one of"),
        ({"lose_create_response": {"status": 503}}, "lose_create_response.count is required"),
        ({"lose_create_response": {"count": 1, "retry": 1}}, "unknown keys"),
        ({"list_order": "shuffled"}, "list_order must be one of"),
        ("[1, 2]", "JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_plans_are_rejected_with_a_reason(plan, message):
    faults = Faults({"fail_batches": True})
    with pytest.raises(FaultPlanError, match=message):
        faults.replace(plan)
    assert faults.batch_fate().fail  # the old plan stays


def test_the_per_request_header():
    error = parse_fault_header("429; retry-after=2")
    assert (error.code, error.status, error.headers) == (429, "RESOURCE_EXHAUSTED", {"Retry-After": "2"})
    assert parse_fault_header("503").status == "UNAVAILABLE"
    assert parse_fault_header("429;retry-after=0.5").headers["Retry-After"] == "0.5"
    for bad in ("abc", "200", "429;backoff=1", "429;retry-after=x"):
        with pytest.raises(ApiError) as caught:
            parse_fault_header(bad)
        assert caught.value.code == 400


def test_lost_create_answers_are_counted_and_default_to_503():
    faults = Faults({"lose_create_response": {"count": 2}, "list_order": "oldest"})
    first, second = faults.take_lost_create(), faults.take_lost_create()
    assert (first.code, first.status) == (503, "UNAVAILABLE") and "Retry-After" not in first.headers
    assert second is not None and faults.take_lost_create() is None
    assert faults.list_order == "oldest"
    faults.replace({"lose_create_response": {"count": 1, "status": 504}})
    assert faults.take_lost_create().status == "DEADLINE_EXCEEDED"
    assert faults.list_order == "newest"  # the default, as observed live
