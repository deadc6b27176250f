"""How a job is shown to operators (status API, CLI): the document without its internals."""

from __future__ import annotations

from typing import Any

from shared.domain.jobs import Job

__all__ = ["job_view"]


def job_view(job: Job) -> dict[str, Any]:
    view = job.model_dump(mode="json", exclude={"lease_owner", "lease_until"})
    view["counts"] = job.counts.to_dict()
    return view
