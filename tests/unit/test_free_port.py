"""infra/local/processes.free_port: ports below the ephemeral range, never twice, a slice per xdist worker."""

from __future__ import annotations

from infra.local import processes
from infra.local.processes import free_port


def test_ports_are_below_the_ephemeral_range_and_never_handed_out_twice():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(processes._LOWEST_PORT <= port < processes._ephemeral_start() for port in ports)


def test_each_xdist_worker_draws_from_a_slice_of_its_own(monkeypatch):
    drawn = {}
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        drawn[worker] = {free_port() for _ in range(20)}
    assert not (drawn["gw0"] & drawn["gw1"]) and not (drawn["gw1"] & drawn["gw2"])
    assert max(drawn["gw0"]) < min(drawn["gw1"]) and max(drawn["gw1"]) < min(drawn["gw2"])


def test_ephemeral_ports_come_from_the_kernels_range_never_a_stacks():
    port = free_port(ephemeral=True)
    assert port >= processes._ephemeral_start()
