"""The commands through typer's CliRunner, over in-memory fakes: exit codes and one-line errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
from typer.testing import CliRunner

from embedpipe import cli
from embedpipe.config import Config
from embedpipe.errors import JobNotFound, Refused
from embedpipe.events import listen
from embedpipe.services import Services
from embedpipe.status_api import cancel
from shared.domain.jobs import Counts, Job, JobState, SourceObject
from tests.fakes import FakeJobRepository, FakeLedgerRepository

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def env_file(tmp_path):
    path = tmp_path / "env"
    path.write_text("GOOGLE_CLOUD_PROJECT=p\nINPUT_BUCKET=in\nEVENTS_TOPIC=events\nSTATUS_URL=http://status.test/\n"
                    "POLLER_TOKEN=secret\n")
    return path


@pytest.fixture
def repo(monkeypatch) -> FakeJobRepository:
    fake = FakeJobRepository()
    ledgers = FakeLedgerRepository()
    monkeypatch.setattr(cli, "Services", lambda config: Services(config, jobs=fake, ledgers=ledgers))
    return fake


def add(repo: FakeJobRepository, job_id: str, state: JobState, succeeded: int = 0, failed: int = 0) -> Job:
    job = Job(job_id=job_id, source=SourceObject(bucket="in", name=f"incoming/{job_id}.jsonl", generation="1"),
              state=state, created_at=NOW, updated_at=NOW, counts=Counts(total=succeeded + failed, succeeded=succeeded,
                                                                          failed=failed),
              progress_percentage=100.0 if state not in (JobState.RUNNING,) else 0.0)
    repo.create(job)
    return job


def invoke(env_file, *args: str):
    return CliRunner().invoke(cli.app, ["--env-file", str(env_file), *args])


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("embedpipe: error: ")
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(("states", "code"), [
    ([JobState.SUCCEEDED], 0),
    ([JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED], 2),
    ([JobState.PARTIALLY_SUCCEEDED, JobState.FAILED], 1),
    ([JobState.CANCELLED], 1),
])
def test_watch_exit_codes(env_file, repo, states, code):
    ids = [add(repo, f"job-{i}", state, succeeded=3).job_id for i, state in enumerate(states)]
    result = invoke(env_file, "watch", *ids, "--interval", "0.2")
    assert result.exit_code == code, result.output
    for job_id, state in zip(ids, states, strict=True):
        assert f"{job_id} {state.value}" in result.stdout


def test_watch_help_documents_the_exit_codes(env_file):
    result = invoke(env_file, "watch", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "0 every job SUCCEEDED" in text and "2 a job PARTIALLY_SUCCEEDED" in text
    assert "1 a job FAILED or was CANCELLED" in text


def test_status_and_jobs_over_the_repository(env_file, repo):
    add(repo, "job-a", JobState.SUCCEEDED, succeeded=4, failed=1)
    result = invoke(env_file, "status", "job-a")
    assert result.exit_code == 0 and "4 succeeded, 1 failed, 0 pending of 5" in result.stdout
    result = invoke(env_file, "jobs", "--state", "succeeded")
    assert result.exit_code == 0 and "job-a" in result.stdout and "4/1/5" in result.stdout
    result = invoke(env_file, "jobs", "--json")
    assert [j["job_id"] for j in json.loads(result.stdout)] == ["job-a"]


def test_an_unknown_job_is_one_line_and_exit_4(env_file, repo):
    result = invoke(env_file, "status", "job-missing")
    assert result.exit_code == 4
    assert "no job job-missing" in one_line_error(result)


def test_a_missing_setting_names_it(tmp_path):
    env = tmp_path / "env"
    env.write_text("GOOGLE_CLOUD_PROJECT=p\n")
    result = invoke(env, "upload", __file__)  # an existing file: the setting is checked before the upload
    assert result.exit_code == 4
    line = one_line_error(result)
    assert "INPUT_BUCKET is not set" in line and "make up" in line


@pytest.mark.parametrize("args", [
    ["watch"], ["fetch", "job-1", "--out", "x.csv"], ["jobs", "--state", "DONE"], ["nope"], ["jobs", "--limit", "0"],
])
def test_bad_arguments_are_one_line_and_exit_64(env_file, repo, args):
    result = invoke(env_file, *args)
    assert result.exit_code == 64, result.output
    one_line_error(result)


def test_no_output_yet(env_file, repo):
    add(repo, "job-r", JobState.RUNNING)
    result = invoke(env_file, "fetch", "job-r", "--out", "x.npy")
    assert result.exit_code == 4 and "is RUNNING: it has no output yet" in one_line_error(result)


# -- cancel over a fake status function ------------------------------------------------------------------


def status_function(answers: dict[str, tuple[int, dict]]):
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, body = answers[request.url.path]
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle), seen


def test_cancel_posts_with_the_bearer_token(env_file):
    transport, seen = status_function({"/jobs/job-1:cancel": (200, {"job_id": "job-1", "state": "CANCELLED",
                                                                     "cancelled": True, "message": "cancelled"})})
    answer = cancel(Config.load(env_file), "job-1", transport=transport)
    assert answer.cancelled and seen[0].method == "POST"
    assert seen[0].headers["Authorization"] == "Bearer secret"


def test_cancel_errors(env_file):
    transport, _ = status_function({"/jobs/job-x:cancel": (404, {"error": "no job job-x"}),
                                    "/jobs/job-y:cancel": (401, {"error": "invalid token"})})
    with pytest.raises(JobNotFound, match="no job job-x"):
        cancel(Config.load(env_file), "job-x", transport=transport)
    with pytest.raises(Refused, match="refused the credentials \\(401: invalid token\\)"):
        cancel(Config.load(env_file), "job-y", transport=transport)


# -- events ---------------------------------------------------------------------------------------------


def test_listen_filters_by_job_and_stops_at_count():
    batches = [
        [({"job_id": "a"}, b'{"job_id": "a"}'), ({}, b"not json"), ({"job_id": "b"}, b'{"job_id": "b"}')],
        [({"job_id": "b"}, b'{"job_id": "b", "n": 2}')],
    ]
    got = []
    received = listen(lambda wait: batches.pop(0) if batches else [], got.append, count=2, job_id="b")
    assert received == 2 and got == [{"job_id": "b"}, {"job_id": "b", "n": 2}]


def test_listen_stops_at_the_timeout():
    now = [0.0]

    def pull(wait):
        now[0] += wait
        return []

    assert listen(pull, lambda e: None, count=1, timeout=5, clock=lambda: now[0]) == 0
    assert now[0] == pytest.approx(5)
