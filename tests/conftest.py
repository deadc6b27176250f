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


def pytest_collection_modifyitems(config, items) -> None:
    """Each suite that runs on one local stack of its own (integration, hostile) is one xdist group, so
    `make test` (`-n 2 --dist loadgroup`) runs each on a single worker, its stack started once, while the
    rest of the tests spread over both."""
    for item in items:
        suite = item.path.relative_to(config.rootpath).parts[1:2]
        if suite and suite[0] in ("integration", "hostile"):
            item.add_marker(pytest.mark.xdist_group(suite[0]))
