"""A function's instances: one call at a time each, a call past the timeout kills its instance's process
group and the instance comes back, a dead instance is replaced, close stops everything.

The instances are real processes (tests/unit/instance_server.py, a few milliseconds to start), on
127.0.0.1 and free ports.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.local.processes import InstancePool, PoolClosed, group_alive, wait_until

SERVER = Path(__file__).with_name("instance_server.py")


def make_pool(tmp_path: Path, **options) -> InstancePool:
    options = {"timeout": 30.0, "count": 1, **options}
    return InstancePool("fn", [sys.executable, str(SERVER), "{port}"], log_path=lambda i: tmp_path / f"fn-{i}.log",
                        health_path="/health", ready_timeout=30, **options)


@pytest.fixture
def pool_of(tmp_path) -> Iterator:
    made: list[InstancePool] = []

    def build(**options) -> InstancePool:
        pool = make_pool(tmp_path, **options)
        made.append(pool)
        pool.start()
        return pool

    yield build
    for pool in made:
        pool.close()
    assert not [i.process.pid for pool in made for i in pool.instances if group_alive(i.process.pid)]


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def call(pool: InstancePool, path: str, timeout: float = 60):
    with pool.instance() as instance:
        return pool.invoke(instance, lambda base: httpx.get(base.rstrip("/") + path, timeout=timeout, trust_env=False))


def test_a_call_past_the_timeout_kills_the_instances_group_and_the_instance_comes_back(pool_of, tmp_path):
    pool = pool_of(timeout=1.0)
    before = pool.instances[0].process.pid

    ended = call(pool, "/child/30")

    assert ended.timed_out and ended.value is None and isinstance(ended.error, httpx.HTTPError)
    assert 1.0 <= ended.seconds < 10
    log = (tmp_path / "fn-0.log").read_text()
    child = int(log.split('"child": ')[1].split("}")[0])
    wait_until(lambda: gone(child), 10, what="the instance's child to die with its group")
    wait_until(lambda: pool.ready(), 30, what="the instance to come back")
    after = pool.instances[0].process.pid
    assert after != before and not group_alive(before)
    answer = call(pool, "/")
    assert not answer.timed_out and answer.value.json()["pid"] == after
    state = pool.state()
    assert (state["invocations"], state["timeouts"], state["crashes"]) == (2, 1, 0)
    assert state["longest_invocation_s"] >= 1.0 and state["instances"][0]["restarts"] == 1
    assert "restarted after a timeout" in (tmp_path / "fn-0.log").read_text()


def test_each_instance_takes_one_call_at_a_time_and_calls_go_to_free_instances(pool_of):
    pool = pool_of(count=2)
    results, lock = [], threading.Lock()

    def work() -> None:
        started = time.monotonic()
        answer = call(pool, "/sleep/0.5")
        with lock:
            results.append((answer.value.json()["pid"], started, time.monotonic()))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: pool.state()["busy"] == 2, 10, what="both instances busy")
    assert pool.state()["busy"] == 2, "a third call waits: concurrency 1 per instance"
    for thread in threads:
        thread.join(30)

    pids = {pid for pid, _, _ in results}
    assert len(results) == 4 and pids == {i.process.pid for i in pool.instances}
    assert [i["calls"] for i in pool.state()["instances"]] == [2, 2]


def test_an_instance_may_serve_several_calls_when_its_concurrency_allows(pool_of):
    pool = pool_of(concurrency=3)
    threads = [threading.Thread(target=call, args=(pool, "/sleep/0.5")) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_until(lambda: pool.state()["busy"] == 3, 10, what="three calls on one instance")
    for thread in threads:
        thread.join(30)
    assert pool.state()["invocations"] == 3


def test_an_instance_that_dies_is_counted_and_replaced(pool_of):
    pool = pool_of()
    before = pool.instances[0].process.pid

    died = call(pool, "/exit")

    assert not died.timed_out and isinstance(died.error, httpx.HTTPError)
    wait_until(lambda: pool.ready() and pool.instances[0].process.pid != before, 30, what="a new instance")
    assert call(pool, "/").value.status_code == 200
    assert pool.state()["crashes"] == 1 and pool.state()["timeouts"] == 0


def test_close_ends_waiting_callers_and_stops_every_instance(tmp_path):
    pool = make_pool(tmp_path, count=2)
    pool.start()
    pids = [i.process.pid for i in pool.instances]
    holders = [threading.Thread(target=call, args=(pool, "/sleep/1")) for _ in range(2)]
    for thread in holders:
        thread.start()
    wait_until(lambda: pool.state()["busy"] == 2, 10, what="both instances busy")
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            call(pool, "/")
        except PoolClosed as exc:
            outcome.append(exc)

    third = threading.Thread(target=waiter)
    third.start()
    pool.close()
    third.join(10)
    for thread in holders:
        thread.join(10)

    assert outcome and "stopping" in str(outcome[0])
    assert not [pid for pid in pids if group_alive(pid)]


def test_an_instance_that_does_not_start_is_named_with_its_log(tmp_path):
    pool = InstancePool("broken", [sys.executable, "-c", "import sys; print('no such thing'); sys.exit(2)"],
                        log_path=lambda i: tmp_path / "broken.log", timeout=5, ready_timeout=10)
    with pytest.raises(Exception, match="exited with 2") as raised:
        pool.start()
    assert "no such thing" in str(raised.value)


@pytest.mark.parametrize("options", [{"count": 0}, {"concurrency": 0}, {"timeout": 0}])
def test_nonsense_sizes_are_refused(tmp_path, options):
    with pytest.raises(ValueError, match="at least 1"):
        make_pool(tmp_path, **options)


def test_a_timed_out_call_leaves_its_threads_stacks_in_the_instances_log(pool_of, tmp_path):
    pool = pool_of(timeout=1.0, env={"PYTHONFAULTHANDLER": "1"})

    ended = call(pool, "/sleep/30")

    assert ended.timed_out
    log = tmp_path / "fn-0.log"
    wait_until(lambda: "restarted after a timeout" in log.read_text(), 30, what="the instance to come back")
    before_restart = log.read_text().split("restarted after a timeout")[0]
    assert 'instance_server.py", line' in before_restart and "in _handle" in before_restart  # the call's frame
