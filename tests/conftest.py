"""Suite-wide settings. Property tests are deterministic by default (the same examples on every run, no
example database, no deadlines: CI on two loaded cores must not flake). `HYPOTHESIS_PROFILE=explore` draws
fresh examples, for hunting new counterexamples locally."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", derandomize=True, database=None, deadline=None, suppress_health_check=_QUIET)
settings.register_profile("explore", deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


#: Suites that run on one local stack each: under xdist, each runs whole on one worker (its stack started once).
STACK_SUITES = ("integration", "hostile")


@pytest.hookimpl(optionalhook=True)  # an xdist hook: without xdist, nothing to schedule
def pytest_xdist_make_scheduler(config, log):
    """`make test` (`-n 2`): each stack suite is one scope, given whole to one worker; every other test is
    a scope of its own, spread over both. (xdist's loadgroup marks do not reach the node ids under pytest 9.)"""
    from xdist.scheduler import LoadScopeScheduling

    class StackSuitesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            parts = nodeid.split("/")
            return parts[1] if len(parts) > 2 and parts[0] == "tests" and parts[1] in STACK_SUITES else nodeid

    return StackSuitesTogether(config, log)
