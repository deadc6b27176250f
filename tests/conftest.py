"""Suite-wide settings. Property tests are deterministic by default (the same examples on every run, no
example database, no deadlines: CI on two loaded cores must not flake). `HYPOTHESIS_PROFILE=explore` draws
fresh examples, for hunting new counterexamples locally."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", derandomize=True, database=None, deadline=None, suppress_health_check=_QUIET)
settings.register_profile("explore", deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
